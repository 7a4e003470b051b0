/**
 * The pilot-slot workflow reads a pilot's `early-unreserving` while it is still asking the batch system
 * about the job (Test B on a starved head: the status activity took two minutes and the notification
 * waited behind it, so the grace period ran out before vws trashed the VMs), and likewise a `reserved`
 * while the queued slot asks about its job.
 *
 * The workflow and the stand-in workspace run on the real dev server. The head's batch-system activities
 * are STAND-INS defined here: a status call that hangs until the test lets it answer is what this test
 * is about, and no real squeue can be made to hang on cue. The real activities are tested against the
 * testbed's Slurm in test/integration/lrm-slurm.test.ts and the pilot e2e files.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { historyToJSON } from '@temporalio/common/lib/proto-utils';
import type { WorkflowHandle } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import type { PilotSlotActivities } from '../../src/activities/head/pilot-slot';
import type { BatchJobStatus } from '../../src/activities/lrm/types';
import { pilotNotificationSignal, type PilotNotification } from '../../src/domain/messages';
import { pilotSlotQuery, type PilotSlotInput } from '../../src/domain/pilot-slot';
import { stopRecorderSignal, toldQuery } from '../fixtures/slot-inbox-workflows';
import { connect, uniquePrefix, type TestConnections } from '../helpers/temporal';

jest.setTimeout(120_000);

let conn: TestConnections;
let worker: Worker;
let running: Promise<void>;
const prefix = uniquePrefix();
const taskQueue = `${prefix}-head`;
const JOB = '4242';

/** The stand-in batch system: the job runs until cancelled; while `hold` is set, a status call hangs. */
const batch = {
  cancelled: false,
  hold: undefined as Promise<void> | undefined,
  hanging: 0,
  calls: 0,
};
let letAnswer: () => void = () => undefined;

const activities: Pick<PilotSlotActivities, 'submitPilotJob' | 'pilotJobStatus' | 'cancelPilotJob' | 'leaseNode' | 'endNodeLease'> = {
  async submitPilotJob() {
    return { jobId: JOB, name: `vws-pilot-${prefix}` };
  },
  async pilotJobStatus(jobId: string): Promise<BatchJobStatus> {
    batch.calls++;
    if (batch.hold) {
      batch.hanging++;
      await batch.hold;
      batch.hanging--;
    }
    return batch.cancelled ? { jobId, state: 'ended', outcome: 'cancelled' } : { jobId, state: 'running', nodes: 'vmm3' };
  },
  async cancelPilotJob() {
    batch.cancelled = true;
  },
  async leaseNode(lease) {
    return lease;
  },
  async endNodeLease() {
    return true;
  },
};

const notification = (event: PilotNotification['event']): PilotNotification => {
  const now = new Date().toISOString();
  return { slotId: 'slot-inbox', node: 'vmm3', event, at: now, nonce: `${event}-${prefix}-nonce`, memoryMiB: 512, receivedAt: now, via: 'http' };
};

async function until<T>(what: string, seconds: number, get: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const v = await get();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${seconds} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Starts a stand-in workspace and the real slot workflow serving it (polling every second). */
async function startSlot(name: string) {
  const workspaceId = `${prefix}-ws-${name}`;
  const workspace = await conn.client.workflow.start('slotWorkspaceRecorderWorkflow', { taskQueue, workflowId: workspaceId });
  const input: PilotSlotInput = {
    slotId: 'slot-inbox',
    workspaceWorkflowId: workspaceId,
    memoryMiB: 512,
    vcpus: 1,
    holdSeconds: 3600,
    headTaskQueue: taskQueue,
    settings: { reserveTimeoutSeconds: 60, marginSeconds: 0, evacuateSeconds: 0, pollSeconds: 1, windowSeconds: 60 },
  };
  const slot = await conn.client.workflow.start('pilotSlotWorkflow', { taskQueue, workflowId: `${prefix}-pilot-slot-${name}`, args: [input] });
  return { workspace, slot };
}

/** With VWS_RECORD_HISTORIES=DIR, saves the slot's history as DIR/FILE.json for the replay test; ends the stand-in. */
async function finish(workspace: WorkflowHandle, slot: WorkflowHandle, file: string): Promise<void> {
  const out = process.env.VWS_RECORD_HISTORIES;
  if (out) {
    mkdirSync(out, { recursive: true });
    writeFileSync(join(out, `${file}.json`), historyToJSON(await slot.fetchHistory()));
  }
  await workspace.signal(stopRecorderSignal);
  await workspace.result();
}

beforeAll(async () => {
  conn = await connect();
  worker = await Worker.create({
    connection: conn.native,
    taskQueue,
    workflowsPath: require.resolve('../fixtures/slot-inbox-workflows'),
    activities,
  });
  running = worker.run();
});

afterAll(async () => {
  letAnswer();
  worker?.shutdown();
  await running;
  await conn?.close();
});

it('acts on an early-unreserving that arrives while the job status is still being asked', async () => {
  const { workspace, slot } = await startSlot('inbox');

  await slot.signal(pilotNotificationSignal, notification('reserved'));
  await until('the slot to reserve', 30, async () => ((await slot.query(pilotSlotQuery)).state === 'reserved' ? true : undefined));
  expect(await workspace.query(toldQuery)).toEqual(['ready']);

  // The next poll's status call hangs, as on a starved head.
  batch.hold = new Promise<void>((r) => (letAnswer = r));
  await until('a status call to hang', 30, async () => (batch.hanging > 0 ? true : undefined));
  await slot.signal(pilotNotificationSignal, notification('early-unreserving'));
  let toldWhileHanging: string[] = [];
  try {
    toldWhileHanging = await until('the preempt', 10, async () => {
      const told = await workspace.query(toldQuery);
      return told.length > 1 ? told : undefined;
    }).catch(() => workspace.query(toldQuery));
  } finally {
    const stillHanging = batch.hanging > 0;
    batch.hold = undefined;
    letAnswer();
    expect(stillHanging).toBe(true); // the preempt did not wait for the status answer
  }
  expect(toldWhileHanging).toEqual(['ready', 'preempt: the batch system is taking node vmm3 back (early-unreserving)']);

  // The workspace is gone: the slot is released, cancels the job and ends once the batch system confirms.
  await slot.signal('slot-release', { reason: 'the workspace is destroyed' });
  const final = await slot.result();
  expect(final).toMatchObject({ state: 'ended', jobId: JOB, node: 'vmm3' });
  expect(final.notices).toEqual([expect.stringMatching(/^reserved from vmm3 over http at .*: acted on$/), expect.stringMatching(/^early-unreserving from vmm3 over http at .*: acted on: evacuating$/)]);
  expect(batch.cancelled).toBe(true);

  await finish(workspace, slot, 'pilot-slot-early-unreserving-during-status');
});

it('acts on a reserved that arrives while the queued slot is still asking about the job', async () => {
  Object.assign(batch, { cancelled: false, calls: 0 });
  // The first poll of the queued job hangs, as on a starved head.
  batch.hold = new Promise<void>((r) => (letAnswer = r));
  const { workspace, slot } = await startSlot('queued');
  await until('a status call to hang', 30, async () => (batch.hanging > 0 ? true : undefined));
  await slot.signal(pilotNotificationSignal, notification('reserved'));
  let state: string | undefined;
  try {
    state = await until('the slot to reserve', 10, async () => ((await slot.query(pilotSlotQuery)).state === 'reserved' ? 'reserved' : undefined)).catch(async () => (await slot.query(pilotSlotQuery)).state);
  } finally {
    const stillHanging = batch.hanging > 0;
    batch.hold = undefined;
    letAnswer();
    expect(stillHanging).toBe(true); // the reservation did not wait for the status answer
  }
  expect(state).toBe('reserved');
  expect(await workspace.query(toldQuery)).toEqual(['ready']);

  await slot.signal('slot-release', { reason: 'the workspace is destroyed' });
  const final = await slot.result();
  expect(final).toMatchObject({ state: 'ended', jobId: JOB, node: 'vmm3' });
  expect(final.notices).toEqual([expect.stringMatching(/^reserved from vmm3 over http at .*: acted on$/)]);
  expect(batch.cancelled).toBe(true);

  await finish(workspace, slot, 'pilot-slot-reserved-during-queued-status');
});
