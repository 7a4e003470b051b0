import { ApplicationFailure } from '@temporalio/common';
import { BenchDriver } from '../../src/activities/bench/driver';

const spec = {
  name: 'ws-0000000000b1',
  hostname: 'b1',
  memoryMiB: 128,
  vcpus: 1,
  rootDisk: '/n/workspaces/ws-0000000000b1/root.qcow2',
  kernel: { vmlinuz: '/k/vmlinuz', initrd: '/k/initrd.gz' },
  nics: [{ mac: '52:54:00:aa:bb:b1', bridge: 'br0', iface: 'vw0000000000b10' }],
};
const state = '/n/workspaces/ws-0000000000b1/vmstate';

async function failureType(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(ApplicationFailure);
    expect((e as ApplicationFailure).nonRetryable).toBe(true);
    return (e as ApplicationFailure).type ?? undefined;
  }
  throw new Error('expected a failure');
}

describe('BenchDriver', () => {
  it('walks the real transitions, idempotently', async () => {
    const d = new BenchDriver();
    expect(d.kind).toBe('bench');
    expect(d.diskFormat).toBe('qcow2');
    expect(await d.status(spec.name)).toBe('absent');
    await d.create(spec);
    await d.create(spec);
    expect(await d.status(spec.name)).toBe('running');
    await d.pause(spec.name);
    await d.pause(spec.name);
    expect(await d.status(spec.name)).toBe('paused');
    await d.reboot(spec.name);
    expect(await d.status(spec.name)).toBe('paused');
    await d.unpause(spec.name);
    await d.unpause(spec.name);
    expect(await d.status(spec.name)).toBe('running');
    expect(await d.list()).toEqual([spec.name]);

    await d.save(spec.name, state);
    expect(await d.status(spec.name)).toBe('absent');
    await d.save(spec.name, state);
    await d.restore(spec, state);
    await d.restore(spec, state);
    expect(await d.status(spec.name)).toBe('running');

    expect(await d.shutdown(spec.name, 1000)).toEqual({ graceful: true });
    expect(await d.shutdown(spec.name, 1000)).toEqual({ graceful: true });
    expect(await d.list()).toEqual([]);

    await d.create(spec);
    await d.destroy(spec.name);
    await d.destroy(spec.name);
    expect(await d.status(spec.name)).toBe('absent');
  });

  it('fails with VmNotFound on an absent VM', async () => {
    const d = new BenchDriver();
    expect(await failureType(d.pause(spec.name))).toBe('VmNotFound');
    expect(await failureType(d.unpause(spec.name))).toBe('VmNotFound');
    expect(await failureType(d.reboot(spec.name))).toBe('VmNotFound');
    expect(await failureType(d.save(spec.name, state))).toBe('VmNotFound');
    expect(await failureType(d.restore(spec, state))).toBe('VmNotFound');
  });
});
