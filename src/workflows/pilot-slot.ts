/**
 * One pilot slot (issue 7 item 3; seed 003; Nimbus's pilot slot manager): borrow one node's time from the
 * site's batch system for one workspace, and give it back with nothing left.
 *
 *   submitting ─job id─▶ queued ─`reserved` (signed, fresh)─▶ reserved ─release / evict─▶ releasing ─▶ ended
 *
 * - queued: waits for the pilot's `reserved` with a deadline; asks the batch system every poll whether
 *   the job still exists. Timeout, a job that ended first, or a pilot `error`: the workspace is told the
 *   slot failed (typed), and the job is cancelled.
 * - reserved: the node's time is lent to the allocator as a lease; the workspace allocates inside it.
 *   The VMs are evacuated (the workspace is preempted: trashed at once) before the slot ends, on a fresh
 *   `early-unreserving` or `unreserving` (scancel, preemption, node shutdown), or when the batch system
 *   no longer has the job. A notification older than the slot's reservation or outside the window is
 *   stale: recorded, never acted on.
 * - releasing (always, even on cancellation): cancel the job, wait until the batch system confirms it is
 *   gone (the pilot has then handed the node back: VMs gone, memory restored), have the node checked (a
 *   pilot killed before it handed back, even one whose `reserved` never arrived, left it to vws), and only
 *   then end the lease.
 *
 * No run timeout: the release must always run. Workflow code: deterministic, no I/O.
 */
import {
  ApplicationFailure,
  CancellationScope,
  condition,
  getExternalWorkflowHandle,
  patched,
  proxyActivities,
  setHandler,
  sleep,
  workflowInfo,
} from '@temporalio/workflow';
import type { PilotSlotActivities } from '../activities/head/pilot-slot';
import type { NodeActivities } from '../activities/node';
import type { BatchJobStatus } from '../activities/lrm/types';
import { FailureType, NON_RETRYABLE_FAILURES } from '../domain/errors';
import { pilotNotificationSignal, preemptSignal, slotFailedSignal, slotReadySignal, slotReleaseSignal, type PilotNotification } from '../domain/messages';
import { pilotSlotQuery, type PilotSlotDescription, type PilotSlotInput } from '../domain/pilot-slot';

/**
 * The patch under which the reserved loop reads a notification that arrives while it asks the batch
 * system about the job, instead of after the answer (slots recorded before it replay without it).
 */
export const SLOT_INBOX_PATCH = 'slot-inbox-races-job-status';
/** The same for the queued loop: a `reserved` that arrives while the job's status is asked is read at once. */
export const QUEUED_INBOX_PATCH = 'slot-queued-inbox-races-job-status';

/**
 * The patch under which a slot that never heard `reserved` still has the node its job ran on checked
 * after the job: a pilot killed after it reserved memory, but before its `reserved` reached vws, left the
 * node short of that memory, and only the node's next pilot or boot would have put it right.
 */
export const RAN_ON_CHECK_PATCH = 'slot-checks-node-job-ran-on';

/**
 * The patch under which the node check after the job names the slot, so that a pilot of this slot found
 * still alive (the batch system lost it: its job step died) is stopped instead of left holding the node
 * until its own end. Slots recorded before it replay the check without the slot.
 */
export const ORPHAN_PILOT_PATCH = 'slot-stops-its-orphan-pilot';

/** The one node a status names (a batch system's host list of one name), or undefined. */
function singleNode(s: BatchJobStatus | undefined): string | undefined {
  const nodes = s && s.state !== 'unknown' ? s.nodes : undefined;
  return nodes && /^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(nodes) ? nodes : undefined;
}

/** True once the batch system no longer runs the job (ended, or forgotten). */
const gone = (s: BatchJobStatus) => s.state === 'ended' || s.state === 'unknown';

/** The job's end in a sentence. */
function endText(s: BatchJobStatus): string {
  if (s.state === 'ended') return `the pilot job ${s.jobId} ended (${s.outcome}${s.exitCode !== undefined ? `, exit ${s.exitCode}` : ''})`;
  return `the batch system no longer knows the pilot job ${s.jobId}`;
}

/** Runs one pilot slot; returns its final description. */
export async function pilotSlotWorkflow(input: PilotSlotInput): Promise<PilotSlotDescription> {
  const { settings } = input;
  const holder = workflowInfo().workflowId;
  const acts = proxyActivities<PilotSlotActivities>({
    taskQueue: input.headTaskQueue,
    startToCloseTimeout: '2m',
    retry: { initialInterval: '2s', maximumInterval: '30s', nonRetryableErrorTypes: NON_RETRYABLE_FAILURES },
  });
  const workspace = getExternalWorkflowHandle(input.workspaceWorkflowId);
  const d: PilotSlotDescription = { slotId: input.slotId, state: 'submitting', notices: [] };
  const inbox: PilotNotification[] = [];
  let released: string | undefined;
  let leased = false;
  /** The node the batch system ran the job on, as its statuses named it (before any `reserved`). */
  let ranOn: string | undefined;
  setHandler(pilotSlotQuery, () => d);
  setHandler(pilotNotificationSignal, (n) => void inbox.push(n));
  setHandler(slotReleaseSignal, (r) => void (released ??= r?.reason ?? 'released'));
  const pollMs = settings.pollSeconds * 1000;

  /** A notification is acted on only if it is about this job's reservation and was fresh on receipt. */
  const fresh = (n: PilotNotification): string | undefined => {
    const at = Date.parse(n.at);
    if (Date.parse(n.receivedAt) - at > settings.windowSeconds * 1000) return `stale: sent ${n.at}, received ${n.receivedAt}`;
    if (d.reservedAt && at < Date.parse(d.reservedAt)) return `stale: sent ${n.at}, before the reservation at ${d.reservedAt}`;
    return undefined;
  };
  const note = (n: PilotNotification, what: string) => d.notices.push(`${n.event} from ${n.node} over ${n.via} at ${n.at}: ${what}`);
  /** Tells the workspace, which may be gone already (then there is nothing to tell). */
  const tell = async (send: () => Promise<void>) => {
    try {
      await send();
    } catch {
      released ??= 'the workspace is gone';
    }
  };
  /**
   * The job's status, or undefined as soon as a notification or a release arrives first. On a starved
   * head the status activity was seen to take two minutes (Test B): an `early-unreserving` that came
   * meanwhile waited for it, and the grace period the pilot gives vws ran out before vws acted. The
   * status activity left behind finishes on its own; its answer (or failure) is dropped.
   */
  const statusUnlessMessage = async (jobId: string): Promise<BatchJobStatus | undefined> => {
    const status = acts.pilotJobStatus(jobId);
    const waiting = new CancellationScope();
    const message = waiting.run(() => condition(() => inbox.length > 0 || released !== undefined));
    try {
      return await Promise.race([status, message.then(() => undefined)]);
    } finally {
      waiting.cancel();
      message.catch(() => undefined); // cancelled once the status answered
      status.catch(() => undefined); // dropped when a message came first; the next poll asks again
    }
  };
  const fail = (message: string) => ApplicationFailure.create({ type: FailureType.NoCapacity, message, nonRetryable: true });

  try {
    const job = await acts.submitPilotJob({
      slotId: input.slotId,
      memoryMiB: input.memoryMiB,
      vcpus: input.vcpus,
      holdSeconds: input.holdSeconds,
      ...(input.constraints?.length ? { constraints: input.constraints } : {}),
    });
    d.jobId = job.jobId;
    d.submittedAt = new Date().toISOString();
    d.state = 'queued';

    // ---- queued: the pilot's `reserved`, within the deadline --------------------------------------------
    const deadline = Date.now() + settings.reserveTimeoutSeconds * 1000;
    let reserved: PilotNotification | undefined;
    while (!reserved && released === undefined) {
      const left = deadline - Date.now();
      if (left <= 0) throw fail(`the batch system did not start pilot job ${job.jobId} within ${settings.reserveTimeoutSeconds} s (reserveTimeoutSeconds); it is cancelled`);
      const woke = await condition(() => inbox.length > 0 || released !== undefined, Math.min(left, pollMs));
      for (const n of inbox.splice(0)) {
        const stale = fresh(n);
        if (stale) note(n, `ignored (${stale})`);
        else if (n.event === 'reserved' && !reserved) {
          note(n, 'acted on');
          reserved = n;
        } else if (n.event === 'error') {
          note(n, 'acted on');
          throw fail(`the pilot on ${n.node} failed before it reserved: ${n.detail ?? 'no detail'}`);
        } else note(n, 'ignored (not reserved yet)');
      }
      if (!woke && !reserved) {
        const s = patched(QUEUED_INBOX_PATCH) ? await statusUnlessMessage(job.jobId) : await acts.pilotJobStatus(job.jobId);
        ranOn = singleNode(s) ?? ranOn;
        if (s && gone(s)) throw fail(`${endText(s)} before its pilot reserved the node`);
      }
    }
    if (!reserved) return d; // released while queued: the finally cancels the job

    // ---- reserved: lend the node's time to the allocator, then hold ------------------------------------
    d.reservedAt = reserved.at;
    d.node = reserved.node;
    d.memoryMiB = reserved.memoryMiB ?? input.memoryMiB;
    const until = new Date(Date.parse(reserved.at) + (input.holdSeconds - settings.marginSeconds) * 1000).toISOString();
    d.until = until;
    await acts.leaseNode({ holder, node: reserved.node, memoryMiB: d.memoryMiB, vcpus: input.vcpus, until, jobId: job.jobId });
    leased = true;
    d.state = 'reserved';
    await tell(() => workspace.signal(slotReadySignal, { lease: holder, node: reserved.node, memoryMiB: d.memoryMiB!, until, jobId: job.jobId }));

    const evacuateAt = Date.parse(until) - settings.evacuateSeconds * 1000;
    let evicted = false;
    const evict = async (reason: string) => {
      if (evicted) return;
      evicted = true;
      d.reason = reason;
      await tell(() => workspace.signal(preemptSignal, { reason }));
    };
    while (released === undefined) {
      const wait = evicted ? pollMs : Math.max(0, Math.min(evacuateAt - Date.now(), pollMs));
      const woke = await condition(() => inbox.length > 0 || released !== undefined, wait);
      if (released !== undefined) {
        // Released (the workspace is gone) with messages not yet read: noted, so the notices tell all.
        for (const n of inbox.splice(0)) note(n, 'not acted on: the slot is being released');
        break;
      }
      for (const n of inbox.splice(0)) {
        const stale = fresh(n);
        if (stale) note(n, `ignored (${stale})`);
        else if (n.event === 'early-unreserving' || n.event === 'unreserving' || n.event === 'error') {
          note(n, evicted ? 'already evacuating' : 'acted on: evacuating');
          await evict(`the batch system is taking node ${n.node} back (${n.event}${n.detail ? `: ${n.detail}` : ''})`);
        } else note(n, 'ignored (already reserved)');
      }
      if (!evicted && Date.now() >= evacuateAt) await evict(`the pilot slot on ${reserved.node} ends at ${until}`);
      if (!woke) {
        const s = patched(SLOT_INBOX_PATCH) ? await statusUnlessMessage(job.jobId) : await acts.pilotJobStatus(job.jobId);
        if (s && gone(s)) await evict(endText(s));
      }
    }
    return d;
  } catch (err) {
    const failure = err as Error & { type?: string; cause?: Error & { type?: string } };
    const cause = failure.cause ?? failure;
    d.reason = cause.message;
    if (!leased) await tell(() => workspace.signal(slotFailedSignal, { type: cause.type ?? FailureType.NoCapacity, reason: cause.message }));
    throw err;
  } finally {
    await CancellationScope.nonCancellable(async () => {
      d.state = 'releasing';
      d.reason ??= released;
      if (d.jobId) {
        // Cancel (the pilot hands the node back on SIGTERM), then wait until the batch system confirms the
        // job is gone: only then are the VMs gone and the memory restored, and may the lease end.
        await acts.cancelPilotJob(d.jobId);
        for (;;) {
          const s = await acts.pilotJobStatus(d.jobId);
          ranOn = singleNode(s) ?? ranOn;
          if (gone(s)) break;
          await sleep('2s');
        }
      }
      // Never reserved as far as vws knows, yet the job ran on a node: its pilot may have reserved memory
      // and died (SIGKILL, node trouble) before its `reserved` arrived. Same check as after a reservation.
      if (!d.node && ranOn && input.nodeTaskQueuePrefix && patched(RAN_ON_CHECK_PATCH)) d.node = ranOn;
      if (d.node && input.nodeTaskQueuePrefix) {
        // A pilot that was killed (SIGKILL, node trouble) never handed back: unless a later pilot holds
        // the node now, its worker resets it (VMs destroyed, memory exactly configured). Bounded: a node
        // that stays unreachable is left to its boot-time reset, and the lease still ends.
        const node = proxyActivities<NodeActivities>({
          taskQueue: `${input.nodeTaskQueuePrefix}${d.node}`,
          startToCloseTimeout: '2m',
          scheduleToCloseTimeout: '10m',
          retry: { initialInterval: '2s', maximumInterval: '30s' },
        });
        try {
          const r = patched(ORPHAN_PILOT_PATCH) ? await node.restoreAfterPilot({ slotId: input.slotId }) : await node.restoreAfterPilot();
          if (r.orphan) d.notices.push(`node ${d.node}: the pilot (pid ${r.orphan.pid}) outlived its job; stopped with ${r.orphan.signal} in ${r.orphan.ms} ms`);
          d.notices.push(r.reset ? `node ${d.node} checked after the job: ${r.report?.destroyed.length ?? 0} VMs left, memory at ${r.report?.memoryMiB} MiB` : `node ${d.node} now held by ${r.liveHolder}: left alone`);
        } catch (e) {
          d.notices.push(`node ${d.node} could not be checked after the job: ${(e as Error).message}`);
        }
      }
      if (leased) await acts.endNodeLease(holder);
      d.state = 'ended';
    });
  }
}
