/**
 * Edge paths of the skeleton's lifecycle on real parts: a refused allocation is the create's answer and holds nothing; a
 * workspace whose image fails its digest check becomes Corrupted (saying where it was heading and
 * why) and can still be destroyed; DeploymentTime running out with the Trash mechanism evicts the
 * VM. Nothing is left after any of them.
 */
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stageLocalFile } from '../../src/repository';
import { eventually, exec, GUEST_DISK, startStack, type Stack } from '../helpers/stack';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ label: 'lifecycle-edges', first: '10.213.0.210', last: '10.213.0.219' });
});
afterAll(async () => {
  await stack?.stop();
});
type Ws = Record<string, unknown> & { state: string };
const get = async (id: string) => (await stack.call('alice', 'GET', `/workspaces/${id}`)).body as Ws;
const create = async (body: Record<string, unknown>) => {
  const r = await stack.call('alice', 'POST', '/workspaces', body);
  expect(r.status).toBe(202);
  created.push(String(r.body.id));
  return String(r.body.id);
};
const until = (id: string, seconds: number, ok: (w: Ws) => boolean, what: string) =>
  eventually(seconds, async () => {
    const w = await get(id);
    return ok(w) ? w : null;
  }, what);

const created: string[] = [];
afterEach(async () => {
  // A failed test must not hold the node for the next one: destroy what is still open, then check.
  for (const id of created.splice(0)) {
    const w = await get(id);
    if (w.state === 'Cancelled') continue;
    await stack.call('alice', 'DELETE', `/workspaces/${id}`);
    await until(id, 60, (x) => x.state === 'Cancelled', `cleanup of ${id}`);
  }
  expect(await stack.grants()).toEqual([]);
  expect(await stack.leftovers()).toEqual([]);
});

describe('lifecycle edges', () => {
  it('stops at the requested target state, and a refused allocation holds nothing', async () => {
    // The node has 1024 MiB: the first workspace holds all of it, parked at Propagated (no VM booted).
    const first = await create({ image: 'sample', memoryMiB: 1024, targetState: 'Propagated' });
    const parked = await until(first, 60, (w) => w.state === 'Propagated' && w.task === null, 'Propagated');
    expect(parked.node).toBe('vmm1');
    expect(parked.obtainedIp).toBeUndefined();
    expect((await stack.leftovers()).some((l) => l.startsWith('qemu process'))).toBe(false);

    // The factory reserves before it starts anything, so the refusal is the create's own answer.
    const second = await stack.call('alice', 'POST', '/workspaces', { image: 'sample', memoryMiB: 1024 });
    expect(second.status).toBe(409);
    expect(second.body).toMatchObject({ type: 'urn:vws:problem:NoCapacity', title: 'No capacity' });
    expect(String(second.body.detail)).toMatch(/^no node has 1024 MiB and 1 CPU free \(free: vmm1 0 MiB/);
    expect(await stack.grants()).toHaveLength(1);
    // Nothing was started for the refused request: the client has one workspace.
    expect((await stack.call('alice', 'GET', '/workspaces')).body.count).toBe(1);

    expect((await stack.call('alice', 'DELETE', `/workspaces/${first}`)).status).toBe(202);
    await until(first, 30, (w) => w.state === 'Cancelled', 'Cancelled');
    await stack.recordHistory(first, 'target-propagated');
  });

  it('becomes Corrupted when the image fails its digest check, and can still be destroyed', async () => {
    const staged = await stageLocalFile(stack.config, 'tampered', GUEST_DISK);
    // The repository now promises a digest the bytes do not have.
    writeFileSync(join(stack.config.repository.dir, 'tampered.sha256'), `${'0'.repeat(64)}\n`);
    const id = await create({ image: 'tampered' });
    const corrupted = await until(id, 60, (w) => w.state === 'Corrupted', 'Corrupted');
    expect(corrupted).toMatchObject({ heading: 'Propagated', node: 'vmm1', task: null });
    expect(String(corrupted.reason)).toMatch(new RegExp(`sha256 ${staged.sha256} .*does not match the expected ${'0'.repeat(64)}`));
    // Nothing unverified entered the node's image cache.
    const cache = readdirSync(join(stack.nodeDir, 'cache'));
    expect(cache.filter((f) => f.includes('.part') || f.startsWith('0000'))).toEqual([]);

    expect((await stack.call('alice', 'DELETE', `/workspaces/${id}`)).status).toBe(202);
    await until(id, 30, (w) => w.state === 'Cancelled', 'Cancelled');
    await stack.recordHistory(id, 'corrupted-then-destroyed');
  });

  it.each(['propagating', 'starting', 'awaiting-address'])('leaves nothing when destroyed while %s', async (task) => {
    const id = await create({ image: 'sample' });
    // Aim the destroy at the step in flight: poll fast and send DELETE the moment it shows.
    await eventually(60, async () => (await get(id)).task === task, `task ${task}`, 10);
    expect((await stack.call('alice', 'DELETE', `/workspaces/${id}`)).status).toBe(202);
    await until(id, 60, (w) => w.state === 'Cancelled', 'Cancelled');
    // A step the destroy interrupted must not leave a VM, tap or file behind once Cancelled.
    await new Promise((r) => setTimeout(r, 1000));
    expect(await stack.leftovers()).toEqual([]);
    await stack.recordHistory(id, `destroyed-while-${task}`);
  });

  it('has a guest that powers off on the ACPI power button; destroy of a VM already gone still cleans up', async () => {
    const id = await create({ image: 'sample' });
    await until(id, 60, (w) => w.state === 'Running' && !!w.obtainedIp, 'Running');
    // QMP system_powerdown from inside vmm1 (the guest's busybox acpid runs poweroff), as issue 3's
    // graceful shutdown will; here vws does not know, so its VM vanishes behind its back.
    const code = `
      const { QmpSession } = require('./dist/activities/qemu/qmp');
      QmpSession.connectUnix(process.argv[1]).then(async (q) => { await q.execute('system_powerdown'); q.close(); });`;
    await exec.run([join(__dirname, '../../testbed/testbed.sh'), 'exec', 'vmm1', '--', process.execPath, '-e', code, `/var/lib/vws/node/workspaces/${id}/qmp.sock`]);
    await eventually(20, async () => !(await stack.leftovers()).some((l) => l.startsWith('qemu process')), 'the guest to power off');
    expect(await exec.readFile(join(stack.nodeDir, 'workspaces', id, 'serial.log'))).toContain('VWS-GUEST');

    expect((await stack.call('alice', 'DELETE', `/workspaces/${id}`)).status).toBe(202);
    await until(id, 30, (w) => w.state === 'Cancelled', 'Cancelled');
  });

  it('evicts the VM when its DeploymentTime runs out (Trash)', async () => {
    const id = await create({ image: 'sample', durationSeconds: 3, shutdownMechanism: 'Trash' });
    const running = await until(id, 60, (w) => w.state === 'Running' && !!w.obtainedIp, 'Running');
    const ended = await until(id, 30, (w) => w.state === 'Cancelled', 'Cancelled at the deadline');
    expect(ended.reason).toBe('DeploymentTime of 3 s ran out; trashed');
    const ran = Date.parse(String(ended.endedAt)) - Date.parse(String(running.firstStartedAt));
    expect(ran).toBeGreaterThanOrEqual(3000);
    await stack.recordHistory(id, 'deadline');
  });
});
