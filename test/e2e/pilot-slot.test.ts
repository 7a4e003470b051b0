/**
 * Pilot mode end to end (issue 7 item 3; the seed's Tests A and B, CI-sized): a workspace deployed with
 * `pilot: true` waits in the testbed's real Slurm queue while its pilot slot submits the real pilot
 * program (`dist/pilot/main.js run`) as a batch job on vmm3; the pilot reserves host memory and notifies
 * the real API with a signed message; the slot lends the node time to the allocator as a lease; the
 * workspace boots a real QEMU VM inside it.
 * - A: destroyed through vws: the VM goes, the slot cancels the job, the pilot hands the node back, the
 *   batch system confirms the job gone, and only then the lease ends.
 * - B: the job is cancelled with scancel behind vws's back: the pilot's early-unreserving evacuates the
 *   workspace (trashed, reason given), and the same hand-back follows.
 * After each: no VM, DHCP entry or files on the node, no grant, no lease, no reservation file, no job.
 * Refusals (count > 1, a feature no node has, ordinary requests on a pilot-only site) change nothing.
 *
 * vmm3 is the pilot node: the pilot destroys every vws VM in its node directory when it hands the node
 * back, and no other test runs VMs on vmm3.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { SlurmBatchSystem } from '../../src/activities/lrm/slurm';
import { AllocatorClient } from '../../src/clients/allocator';
import { pilotSlotWorkflowId } from '../../src/config/names';
import { pilotSlotQuery } from '../../src/domain/pilot-slot';
import { cancelStackJobs, startPilotStack, testbedSlurm } from '../helpers/pilot-stack';
import { eventually, TESTBED_DIR, type Stack } from '../helpers/stack';
import { settled, show } from '../helpers/workspace';

jest.setTimeout(600_000);

const NODE = 'vmm3';
/** vmm3's node directory as the head sees it. */
const NODE_DIR = join(TESTBED_DIR, 'hosts', NODE, 'node');
const RESERVATION = join(NODE_DIR, 'pilot', 'reserved-memory.json');
const LOCK = join(NODE_DIR, 'pilot', 'pilot.lock');
/** vws's mark that it resets the node after a job (`restoreAfterPilot`): gone once it is done. */
const RESET_INTENT = join(NODE_DIR, 'pilot', 'reset.intent');

let stack: Stack;
let slurm: SlurmBatchSystem;
let allocator: AllocatorClient;

beforeAll(async () => {
  slurm = testbedSlurm();
  stack = await startPilotStack({ label: 'pilot-slot', first: '10.213.0.80', last: '10.213.0.82', node: NODE });
  allocator = new AllocatorClient(stack.conn.client, stack.config);
});
afterAll(async () => {
  // Nothing of this test's may stay in the batch system, whatever failed.
  await cancelStackJobs(stack, slurm);
  await stack?.stop();
});

/** The slot of workspace `id`, as its workflow describes it. */
async function slotOf(id: string) {
  return stack.conn.client.workflow.getHandle(pilotSlotWorkflowId(stack.config, id)).query(pilotSlotQuery);
}

/** Everything the pilot, the slot and the allocator could leave: all must be gone. */
async function expectNothingLeft(id: string, jobId: string): Promise<void> {
  await eventually(60, async () => (await stack.conn.client.workflow.getHandle(pilotSlotWorkflowId(stack.config, id)).describe()).status.name === 'COMPLETED', `slot of ${id} completed`);
  const job = await slurm.status(jobId);
  expect(job.state === 'ended' || job.state === 'unknown').toBe(true);
  expect(await allocator.leases()).toEqual([]);
  expect(await stack.grants()).toEqual([]);
  expect(existsSync(RESERVATION)).toBe(false);
  expect(existsSync(LOCK)).toBe(false);
  expect(existsSync(RESET_INTENT)).toBe(false);
  expect(await stack.leftovers()).toEqual([]);
  expect(await stack.vmStatus(id)).toBe('absent');
}

/** Deploys in pilot mode and waits until Running with its address; checks the slot, the lease and the reservation. */
async function deployInPilotMode(): Promise<{ id: string; jobId: string }> {
  const r = await stack.call('alice', 'POST', '/workspaces', { image: 'sample', memoryMiB: 128, durationSeconds: 600, pilot: true });
  expect(r.status).toBe(202);
  expect(r.body).toMatchObject({ task: 'queued-in-batch', pilot: { slotId: r.body.id } });
  return runningInPilotMode(String(r.body.id));
}

/** Waits until pilot-mode workspace `id` is Running with its address; checks its slot, lease and reservation. */
async function runningInPilotMode(id: string): Promise<{ id: string; jobId: string }> {
  const t0 = Date.now();
  let ws = await show(stack, id);
  // Fails at once when the workspace ends instead (the job failed, the slot was refused): the reason says why.
  while (!(ws.state === 'Running' && ws.task === null && ws.obtainedIp)) {
    if (ws.state === 'Cancelled' || ws.state === 'Corrupted') throw new Error(`${id} ended ${ws.state} instead of Running: ${ws.reason}`);
    if (Date.now() - t0 > 240_000) throw new Error(`${id} not Running after 240 s: ${JSON.stringify(ws)}`);
    await new Promise((r) => setTimeout(r, 500));
    ws = await show(stack, id);
  }
  const slot = await slotOf(id);
  expect(slot).toMatchObject({ state: 'reserved', node: NODE, memoryMiB: 128 + 64 });
  expect(ws).toMatchObject({ node: NODE, pilot: { slotId: id, node: NODE, jobId: slot.jobId } });
  const job = await slurm.status(slot.jobId!);
  expect(job).toMatchObject({ state: 'running', nodes: NODE });
  // The allocator holds the slot's lease, and the workspace's grant lives inside it.
  expect(await allocator.leases()).toEqual([expect.objectContaining({ holder: pilotSlotWorkflowId(stack.config, id), node: NODE, memoryMiB: 192, jobId: slot.jobId })]);
  expect(await stack.grants()).toEqual([expect.objectContaining({ node: NODE, lease: pilotSlotWorkflowId(stack.config, id) })]);
  // The pilot reserved exactly what it said, on the node itself.
  expect(JSON.parse(readFileSync(RESERVATION, 'utf8'))).toMatchObject({ reservedMiB: 192 });
  console.log(`pilot mode: POST → Running with ${ws.obtainedIp} in ${Date.now() - t0} ms (job ${slot.jobId})`);
  return { id, jobId: slot.jobId! };
}

describe('pilot mode on real Slurm (vmm3)', () => {
  it('refuses what it cannot do, changing nothing', async () => {
    const group = await stack.call('alice', 'POST', '/workspaces', { image: 'sample', pilot: true, count: 2 });
    expect(group.status).toBe(400);
    expect(group.body).toMatchObject({ errors: [expect.objectContaining({ field: 'count' })] });
    // The site's only node is a pilot node: an ordinary request finds no node.
    const ordinary = await stack.call('alice', 'POST', '/workspaces', { image: 'sample', memoryMiB: 128 });
    expect(ordinary.status).toBe(409);
    expect(await stack.grants()).toEqual([]);
    expect(await allocator.leases()).toEqual([]);
  });

  it('a property no node has is refused before anything is submitted', async () => {
    const r = await stack.call('alice', 'POST', '/workspaces', { image: 'sample', pilot: true, nodeProperties: ['nosuchfeature'] });
    expect(r.status).toBe(400);
    expect(r.body).toMatchObject({ errors: [expect.objectContaining({ field: 'nodeProperties.0' })] });
    expect(await slurm.listByPrefix(`${stack.config.temporal.prefix}-pilot`)).toEqual([]);
  });

  it('two pilot-mode workspaces for one node: the second job waits in the queue (the node to one pilot) and runs once the first is gone', async () => {
    const first = await deployInPilotMode();
    const lock = readFileSync(LOCK, 'utf8');
    const r = await stack.call('alice', 'POST', '/workspaces', { image: 'sample', memoryMiB: 128, durationSeconds: 600, pilot: true });
    expect(r.status).toBe(202);
    const second = String(r.body.id);
    await eventually(30, async () => (await slotOf(second)).state === 'queued', `slot of ${second} queued`);
    // Slurm keeps it pending (the node belongs to the first pilot), rather than starting a pilot that
    // would refuse at the node lock and fail the workspace.
    await new Promise((res) => setTimeout(res, 5_000));
    const waiting = await slurm.status((await slotOf(second)).jobId!);
    expect(waiting.state).toBe('queued');
    expect(await show(stack, second)).toMatchObject({ task: 'queued-in-batch' });
    expect(readFileSync(LOCK, 'utf8')).toBe(lock);
    expect((await stack.call('alice', 'DELETE', `/workspaces/${first.id}`)).status).toBe(202);
    await settled(stack, first.id, 'Cancelled', 120);
    const next = await runningInPilotMode(second);
    expect((await stack.call('alice', 'DELETE', `/workspaces/${second}`)).status).toBe(202);
    await settled(stack, second, 'Cancelled', 120);
    await expectNothingLeft(second, next.jobId);
    await expectNothingLeft(first.id, first.jobId);
  });

  it('Test A: deploy in pilot mode, destroy through vws: the node is handed back with nothing left', async () => {
    const { id, jobId } = await deployInPilotMode();
    const t0 = Date.now();
    expect((await stack.call('alice', 'DELETE', `/workspaces/${id}`)).status).toBe(202);
    await settled(stack, id, 'Cancelled', 120);
    await expectNothingLeft(id, jobId);
    console.log(`Test A: destroy → job gone, lease ended in ${Date.now() - t0} ms`);
  });

  it('Test B: scancel of the pilot job evacuates the workspace (early-unreserving) and hands the node back', async () => {
    const { id, jobId } = await deployInPilotMode();
    const t0 = Date.now();
    await slurm.cancel(jobId);
    const ws = await settled(stack, id, 'Cancelled', 120);
    expect(ws.reason).toMatch(/preempted: the batch system is taking node vmm3 back \(early-unreserving/);
    const slot = await slotOf(id);
    expect(slot.notices.some((n) => n.startsWith('early-unreserving') && n.endsWith('acted on: evacuating'))).toBe(true);
    await expectNothingLeft(id, jobId);
    expect((await show(stack, id)).state).toBe('Cancelled');
    console.log(`Test B: scancel → workspace Cancelled, job gone, lease ended in ${Date.now() - t0} ms`);
  });
});
