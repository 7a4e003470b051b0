/**
 * The pilot's kill matrix (issue 7 item 6), on the testbed's real Slurm and vmm3 with real VMs: at a pilot
 * state, something is killed or cancelled; afterwards the node's memory is exactly its configured value and
 * nothing is held (no slot, lease, grant, batch job, VM, DHCP entry or file).
 * - queued: the workspace is destroyed while its job waits behind a job that fills the node;
 * - queued: the job is cancelled with scancel while it waits;
 * - reserved: the pilot process is killed with SIGKILL (it never hands back: vws resets the node);
 * - reserved: vws's head and node workers are killed, the job is cancelled while they are down (the pilot
 *   hands back alone), and the workers come back.
 * Not covered here: node reboot (the namespace restarted) and the unreserving states.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { SlurmBatchSystem } from '../../src/activities/lrm/slurm';
import { AllocatorClient } from '../../src/clients/allocator';
import { pilotSlotWorkflowId } from '../../src/config/names';
import { pilotSlotQuery } from '../../src/domain/pilot-slot';
import { hostReservationProbe } from '../helpers/memory-monitor';
import { cancelStackJobs, startPilotStack, testbedSlurm } from '../helpers/pilot-stack';
import { eventually, TESTBED_DIR, TEST_NODES, type Stack } from '../helpers/stack';
import { settled, show } from '../helpers/workspace';

jest.setTimeout(600_000);

const NODE = 'vmm3';
const memory = hostReservationProbe(NODE, join(TESTBED_DIR, 'hosts', NODE, 'node'), TEST_NODES[NODE].memoryMiB);

let stack: Stack;
let slurm: SlurmBatchSystem;
let allocator: AllocatorClient;

beforeAll(async () => {
  slurm = testbedSlurm();
  stack = await startPilotStack({ label: 'pilot-kill-matrix', first: '10.213.0.78', last: '10.213.0.79', node: NODE, headProcess: true, pilot: { pollSeconds: 3 } });
  allocator = new AllocatorClient(stack.conn.client, stack.config);
});
afterAll(async () => {
  await cancelStackJobs(stack, slurm);
  await stack?.stop();
});

const create = async () => {
  const r = await stack.call('alice', 'POST', '/workspaces', { image: 'sample', memoryMiB: 128, durationSeconds: 600, pilot: true });
  expect(r.status).toBe(202);
  return String(r.body.id);
};
const slot = (id: string) => stack.conn.client.workflow.getHandle(pilotSlotWorkflowId(stack.config, id));

/** The slot ended; no job, lease, grant or leftover; memory exactly configured. */
async function expectClean(id: string): Promise<void> {
  await eventually(120, async () => (await slot(id).describe()).status.name !== 'RUNNING', `slot of ${id} ended`);
  expect(await slurm.listByPrefix(`${stack.config.temporal.prefix}-pilot`)).toEqual([]);
  expect(await allocator.leases()).toEqual([]);
  expect(await stack.grants()).toEqual([]);
  expect(await stack.leftovers()).toEqual([]);
  expect(await memory.read()).toBe(TEST_NODES[NODE].memoryMiB);
}

/** A job that takes every CPU of vmm3, so the next pilot waits in the queue. */
async function fillNode(): Promise<string> {
  const { jobId } = await slurm.submit({ name: `${stack.config.temporal.prefix}-blocker`, command: { kind: 'argv', argv: ['/bin/sleep', '600'] }, node: NODE, cpus: 4, walltimeSeconds: 600, workDir: '/tmp' });
  await eventually(30, async () => (await slurm.status(jobId)).state === 'running', 'the blocker running');
  return jobId;
}

/** Waits until the workspace is Running in its slot; answers the job id. */
async function running(id: string): Promise<string> {
  await settled(stack, id, 'Running', 240);
  return (await slot(id).query(pilotSlotQuery)).jobId!;
}

describe('pilot kill matrix on vmm3', () => {
  it('queued + destroy: the waiting job is cancelled, nothing was ever reserved', async () => {
    const blocker = await fillNode();
    const id = await create();
    const jobId = await eventually(60, async () => (await slot(id).query(pilotSlotQuery)).jobId, 'the pilot job submitted');
    expect((await slurm.status(jobId)).state).toBe('queued');
    expect(await show(stack, id)).toMatchObject({ task: 'queued-in-batch' });
    expect((await stack.call('alice', 'DELETE', `/workspaces/${id}`)).status).toBe(202);
    await settled(stack, id, 'Cancelled', 120);
    await slurm.cancel(blocker);
    await expectClean(id);
  });

  it('queued + scancel: the workspace ends with the reason, nothing held', async () => {
    const blocker = await fillNode();
    const id = await create();
    const jobId = await eventually(60, async () => (await slot(id).query(pilotSlotQuery)).jobId, 'the pilot job submitted');
    await slurm.cancel(jobId);
    const ws = await settled(stack, id, 'Cancelled', 120);
    expect(ws.reason).toMatch(/refused: pilot mode: the pilot job \d+ ended \(cancelled.*before its pilot reserved the node/);
    await slurm.cancel(blocker);
    await expectClean(id);
  });

  it('reserved + SIGKILL of the pilot: the workspace is evacuated and vws resets the node it never handed back', async () => {
    const id = await create();
    const jobId = await running(id);
    expect(await memory.read()).toBe(TEST_NODES[NODE].memoryMiB - 192);
    await promisify(execFile)('pkill', ['-KILL', '-f', `pilot/main.js run --slot ${id}`]);
    const ws = await settled(stack, id, 'Cancelled', 120);
    expect(ws.reason).toMatch(new RegExp(`preempted: the pilot job ${jobId} ended`));
    await expectClean(id);
    expect((await slot(id).query(pilotSlotQuery)).notices.some((n) => n.startsWith(`node ${NODE} checked after the job`))).toBe(true);
  });

  it('reserved + vws workers down + scancel: the pilot hands back alone; back up, vws finds it all gone', async () => {
    const id = await create();
    const jobId = await running(id);
    stack.killHead();
    stack.killNodeWorker();
    await slurm.cancel(jobId);
    // The pilot waits out vws's share of the grace, destroys the VM itself and restores the memory.
    await eventually(60, async () => (await slurm.status(jobId)).state === 'ended' && (await memory.read()) === TEST_NODES[NODE].memoryMiB, 'the pilot handing back alone');
    expect(await stack.vmStatus(id)).toBe('absent');
    await stack.startHead();
    await stack.startNodeWorker();
    const ws = await settled(stack, id, 'Cancelled', 180);
    expect(ws.reason).toMatch(/preempted: the batch system is taking node vmm3 back \(early-unreserving\)/);
    await expectClean(id);
  });
});
