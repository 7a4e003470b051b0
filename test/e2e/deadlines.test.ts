/**
 * DeploymentTime and the ShutdownMechanism at the deadline, with real VMs: Normal (graceful shutdown,
 * unpropagate), Serialize (VM state with RAM saved, unpropagated, and started again from it: the guest
 * resumes, it does not boot again), Trash (evicted, nothing kept), trash-at-shutdown, and a pause that
 * does not stop the clock. The node holds nothing afterwards and no grant is left.
 */
import { exec, startStack, testNodes, type Stack, type TestNode } from '../helpers/stack';
import { deploy, destroyAndCheck, operate, settled, show } from '../helpers/workspace';

const RANGES: Record<string, [string, string]> = {
  vmm1: ['10.213.0.235', '10.213.0.239'],
  xen1: ['10.213.0.240', '10.213.0.244'],
};
/** Short enough for a test, long enough for a TCG guest to get its address first. */
const DURATION = 12;
/** Trash needs no address first: the deadline may fire as soon as the VM runs. */
const TRASH_DURATION = 2;

describe.each(testNodes(['vmm1', 'xen1'] as TestNode[]))('deadlines on %s', (node) => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ label: `deadlines-${node}`, first: RANGES[node][0], last: RANGES[node][1], node });
  });
  afterAll(async () => {
    await stack?.stop();
  });

  it('Normal: shuts the guest down gracefully and unpropagates it when the time runs out', async () => {
    const id = await deploy(stack, { durationSeconds: DURATION });
    await settled(stack, id, 'Running');
    const ws = await settled(stack, id, 'StagedOut', 90);
    expect(ws.reason).toBe(`DeploymentTime of ${DURATION} s ran out; shut down`);
    expect(ws.lastShutdown).toBe('graceful');
    expect(ws.saved).toMatchObject({ disk: `sample-${id}`, sha256: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect(ws.runningTimeLeftSeconds).toBe(0);
    expect(await stack.leftovers()).toEqual([]);
    expect(await stack.grants()).toEqual([]);
    await destroyAndCheck(stack, id);
    await stack.recordHistory(id, `deadline-normal-${node}`);
  });

  // On xen1 the saved state (~134 MB for 128 MiB) is digested and staged out from a TCG-emulated dom0
  // over SFTP, which took longer than this suite's budget; the Xen driver's save and restore are tested
  // on the real node in test/integration/xen-driver.test.ts.
  const serializeTest = node === 'xen1' ? it.skip : it;
  serializeTest('Serialize: saves the VM with its RAM, unpropagates it, and a later start resumes it', async () => {
    const id = await deploy(stack, { durationSeconds: DURATION, shutdownMechanism: 'Serialize' });
    const running = await settled(stack, id, 'Running');
    const banners = async () => (await stack.console(id)).split('VWS-GUEST: image=').length - 1;
    const bannersBefore = await banners();
    const ws = await settled(stack, id, 'StagedOut', 120);
    expect(ws.reason).toBe(`DeploymentTime of ${DURATION} s ran out; serialized`);
    expect(ws.saved).toMatchObject({ disk: `sample-${id}`, state: `sample-${id}.vmstate` });
    expect(await stack.vmStatus(id)).toBe('absent');
    expect(await stack.grants()).toHaveLength(1); // kept: it resumes on the same node with the same address

    // No time left: a start must bring new running time.
    const noTime = await stack.call('alice', 'POST', `/workspaces/${id}/start`, {});
    expect(noTime.status).toBe(400);
    expect(noTime.body.errors).toEqual([expect.objectContaining({ field: 'durationSeconds' })]);

    const { ws: resumed } = await operate(stack, id, 'start', 'Running', { durationSeconds: 600 });
    expect(resumed.runningTimeLeftSeconds).toBeGreaterThan(590);
    expect(await stack.vmStatus(id)).toBe('running');
    // Resumed, not rebooted: no boot banner since the save (QEMU's serial log went with the node files at
    // stage-out, so it starts empty; Xen's console log is appended to), and it answers at its old address.
    await new Promise((r) => setTimeout(r, 3000));
    expect(await banners()).toBe(node === 'xen1' ? bannersBefore : 0);
    const ping = await exec.run(['ping', '-c', '1', '-W', '5', running.network!.ip], { okCodes: [0, 1] });
    expect(ping.stdout).toContain('1 received');
    await destroyAndCheck(stack, id);
    await stack.recordHistory(id, `deadline-serialize-${node}`);
  });

  // On xen1 (TCG: a boot takes ~25 s) only the mechanism: the flag takes the same path to the same
  // driver call (`xl destroy`), and the workflow's side of both is tested on vmm1.
  it('Trash and trash-at-shutdown: evict at once and keep nothing', async () => {
    const trash = await deploy(stack, { durationSeconds: TRASH_DURATION, shutdownMechanism: 'Trash' });
    const flag = node === 'xen1' ? undefined : await deploy(stack, { durationSeconds: TRASH_DURATION, trashAtShutdown: true });
    for (const id of flag ? [trash, flag] : [trash]) {
      const ws = await settled(stack, id, 'Cancelled', 120);
      expect(ws.reason).toBe(`DeploymentTime of ${TRASH_DURATION} s ran out; trashed`);
      expect(ws.shutdownMechanism).toBe('Trash');
      expect(ws.saved).toBeUndefined();
    }
    expect(await stack.leftovers()).toEqual([]);
    expect(await stack.grants()).toEqual([]);
  });

  // The clock is the workflow's, whatever the hypervisor; destroying a paused Xen domain is tested in
  // test/e2e/operations.test.ts on xen1. So on vmm1 only.
  const pausedTest = node === 'xen1' ? it.skip : it;
  pausedTest('a paused workspace still uses its running time', async () => {
    const id = await deploy(stack, { durationSeconds: DURATION, shutdownMechanism: 'Trash' });
    await settled(stack, id, 'Running');
    await operate(stack, id, 'pause', 'Paused');
    const ws = await settled(stack, id, 'Cancelled', 60);
    expect(ws.reason).toBe(`DeploymentTime of ${DURATION} s ran out; trashed`);
    expect((await show(stack, id)).endedAt).toBeDefined();
    expect(await stack.leftovers()).toEqual([]);
  });
});
