/**
 * One real VM through every state and operation, on each driver and node mode of the testbed:
 * vmm1 (QEMU, node worker), vmm2 (QEMU, SSH mode from the head), xen1 (Xen `xl`, SSH mode). Every
 * refused operation answers 409 naming the state and changes nothing; at the end the node holds
 * nothing and the allocator no grant. Prints each operation's time (the bench gives medians).
 */
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { eventually, exec, startStack, testNodes, type Stack, type TestNode } from '../helpers/stack';
import { deploy, destroyAndCheck, operate, refused, settled } from '../helpers/workspace';

const RANGES: Partial<Record<TestNode, [string, string]>> = {
  vmm1: ['10.213.0.220', '10.213.0.224'],
  vmm2: ['10.213.0.225', '10.213.0.229'],
  xen1: ['10.213.0.230', '10.213.0.234'],
};

describe.each(testNodes(['vmm1', 'vmm2', 'xen1'] as TestNode[]))('every operation on %s', (node) => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ label: `operations-${node}`, first: RANGES[node]![0], last: RANGES[node]![1], node });
  });
  afterAll(async () => {
    await stack?.stop();
  });

  it('goes through every state and operation, refusing what the state table forbids', async () => {
    expect(await stack.leftovers()).toEqual([]);
    const times: Record<string, number> = {};

    // Target state Propagated: the service advances only that far.
    const id = await deploy(stack, { targetState: 'Propagated', durationSeconds: 3600 });
    let ws = await settled(stack, id, 'Propagated');
    expect(ws).toMatchObject({ node, task: null, runningTimeLeftSeconds: 3600 });
    expect(await stack.vmStatus(id)).toBe('absent');
    for (const op of ['pause', 'unpause', 'reboot', 'shutdown']) await refused(stack, id, op, 'Propagated');

    // A later start goes on.
    ({ ws, seconds: times.start } = await operate(stack, id, 'start', 'Running'));
    expect(ws.obtainedIp).toBe(ws.network!.ip);
    expect(await stack.vmStatus(id)).toBe('running');
    // The guest prints its ready line after the DHCP script has run; the serial log may lag the lease.
    const ready = `VWS-GUEST-READY host=${ws.network!.hostname}`;
    expect(await eventually(30, async () => ((await stack.console(id)).includes(ready) ? await stack.console(id) : null), 'the ready line')).toContain(ready);
    for (const op of ['start', 'unpause']) await refused(stack, id, op, 'Running');

    ({ seconds: times.pause } = await operate(stack, id, 'pause', 'Paused'));
    expect(await stack.vmStatus(id)).toBe('paused');
    for (const op of ['pause', 'reboot', 'start']) await refused(stack, id, op, 'Paused');
    ({ seconds: times.unpause } = await operate(stack, id, 'unpause', 'Running'));
    expect(await stack.vmStatus(id)).toBe('running');

    const bootsBefore = (await stack.console(id)).split('VWS-GUEST: image=').length;
    ({ seconds: times.reboot } = await operate(stack, id, 'reboot', 'Running'));
    // The guest really rebooted: it boots (and prints its banner) once more.
    await expectEventually(async () => (await stack.console(id)).split('VWS-GUEST: image=').length > bootsBefore, 'the guest boots again');

    ({ ws, seconds: times.shutdown } = await operate(stack, id, 'shutdown', 'Propagated'));
    // With the notices: a forced shutdown says why.
    expect({ lastShutdown: ws.lastShutdown, notices: ws.notices }).toEqual({ lastShutdown: 'graceful', notices: [] });
    expect(await stack.vmStatus(id)).toBe('absent');
    expect(await stack.grants()).toHaveLength(1); // a shut-down workspace keeps its slot: it can start again

    ({ ws, seconds: times.restart } = await operate(stack, id, 'start', 'Running'));
    expect(await stack.vmStatus(id)).toBe('running');
    // Booted again from the same disk, with a fresh lease for the same address.
    expect(ws.obtainedIp).toBe(ws.network!.ip);

    // shutdown-save to an alternate target: the disk ends in the repository under that name, digest checked.
    ({ ws, seconds: times['shutdown-save'] } = await operate(stack, id, 'shutdown-save', 'StagedOut', { target: `saved-${id}` }));
    expect(ws).toMatchObject({ saved: { disk: `saved-${id}` }, lastShutdown: 'graceful' });
    const repo = stack.config.repository.dir;
    const digest = readFileSync(join(repo, `saved-${id}.sha256`), 'utf8').trim();
    expect((await exec.run(['sha256sum', join(repo, `saved-${id}`)])).stdout.split(' ')[0]).toBe(digest);
    // Nothing is left on the node and the slot is released already; only destroy remains.
    expect(await stack.leftovers()).toEqual([]);
    expect(await stack.grants()).toEqual([]);
    expect((await refused(stack, id, 'start', 'StagedOut')).detail).toContain('only a workspace serialized');
    for (const op of ['pause', 'shutdown', 'shutdown-save']) await refused(stack, id, op, 'StagedOut');

    await destroyAndCheck(stack, id);
    await refused(stack, id, 'destroy', 'Cancelled');
    console.log(`operations on ${node} (s, API to settled): ${JSON.stringify(times)}`);
    await stack.recordHistory(id, `operations-${node}`);
  });

  it('destroys a workspace in every state it can be in, including Paused and Corrupted', async () => {
    const running = await deploy(stack);
    await settled(stack, running, 'Running');
    await operate(stack, running, 'pause', 'Paused');
    await destroyAndCheck(stack, running);

    // Corrupted: the repository's digest of the image does not match its bytes, so propagation fails for good.
    const repo = stack.config.repository.dir;
    copyFileSync(join(repo, 'sample'), join(repo, 'tampered'));
    writeFileSync(join(repo, 'tampered.sha256'), `${'0'.repeat(64)}\n`);
    const id = await deploy(stack, { image: 'tampered' });
    const ws = await settled(stack, id, 'Corrupted');
    expect(ws).toMatchObject({ heading: 'Propagated', task: null });
    expect(ws.reason).toContain('does not match the expected');
    for (const op of ['start', 'pause', 'shutdown', 'shutdown-save']) await refused(stack, id, op, 'Corrupted');
    await destroyAndCheck(stack, id);
  });
});

async function expectEventually(check: () => Promise<boolean>, what: string, seconds = 60): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}
