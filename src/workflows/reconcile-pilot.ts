/**
 * The pilot part of a reconcile run (issue 6 item 6, issue 7's "nothing leaked"), called by
 * `reconcilerWorkflow` behind its `patched` marker: compares the allocator's pilot leases and the batch
 * system's vws pilot jobs with the open pilot-slot workflows, and puts right what drifted.
 *
 * - A lease whose slot workflow is not open ends, but only after each of its jobs still known to the
 *   batch system is cancelled and confirmed gone (the pilot has then handed the node back: its VMs gone,
 *   its memory restored), the same order the slot's own release keeps. A lease is a loan of a node: one
 *   kept by nobody would block the node's memory for good.
 * - A vws pilot job no open slot workflow owns is reported at once and cancelled (and confirmed gone)
 *   once it has been seen unowned for the grace period, like an unknown VM.
 *
 * Workflow code: deterministic, activities only. Every failure is reported and left to the next run.
 */
import { sleep, type ActivityInterfaceFor } from '@temporalio/workflow';
import type { ReconcileActivities } from '../activities/head/reconcile';
import type { BatchJobStatus } from '../activities/lrm/types';
import { zeroCounts, type DriftCounts, type DriftEntry, type WaitingGrant } from '../domain/reconcile';
import { planPilotReconcile, type UnownedJob } from '../domain/reconcile-pilot';

/** The patch that brings the pilot part into reconcile runs (runs recorded before it replay without it). */
export const PILOT_PATCH = 'reconcile-pilot-leases-and-jobs';

/** How long a cancelled job may take to leave the batch system (KillWait, the pilot's hand-back, epilogue) before the run gives up on it for now. */
export const JOB_GONE_SECONDS = 120;
/** How often a cancelled job's state is asked while waiting for it to go. */
const JOB_POLL = '2s';

/** What the pilot part of a run found and did. */
export interface PilotOutcome {
  counts: DriftCounts;
  drifts: DriftEntry[];
  errors: string[];
  waitingLeases: WaitingGrant[];
  /** Unowned jobs still within their grace period (or whose cancel failed). */
  pendingJobs: UnownedJob[];
}

/** True once the batch system no longer runs the job (ended, or forgotten). */
const gone = (s: BatchJobStatus) => s.state === 'ended' || s.state === 'unknown';

/** The message of an activity failure (its cause's, which says what the activity hit). */
const errorText = (e: unknown): string => {
  const err = e as Error & { cause?: Error };
  return err.cause?.message ?? err.message ?? String(e);
};

/** Reconciles pilot leases and jobs; never throws (what fails is in `errors`). */
export async function reconcilePilot(head: ActivityInterfaceFor<ReconcileActivities>, input: { prefix: string; graceSeconds: number }): Promise<PilotOutcome> {
  const counts = zeroCounts();
  const out: PilotOutcome = { counts, drifts: [], errors: [], waitingLeases: [], pendingJobs: [] };
  let world: Awaited<ReturnType<ReconcileActivities['reconcilePilotWorld']>>;
  try {
    world = await head.reconcilePilotWorld();
  } catch (e) {
    out.errors.push(`could not read the pilot leases and jobs, nothing decided about them: ${errorText(e)}`);
    return out;
  }
  if (world.jobs.batch === 'unavailable') out.errors.push(`the batch system did not answer, its jobs are not judged this run: ${world.jobs.error}`);
  const plan = planPilotReconcile({ prefix: input.prefix, now: new Date().toISOString(), graceSeconds: input.graceSeconds, ...world });
  Object.assign(counts, plan.counts);
  out.waitingLeases = plan.waitingLeases;

  for (const u of plan.unowned.filter((x) => x.newlySeen)) {
    out.drifts.push({
      kind: 'unowned-job-reported',
      jobId: u.jobId,
      workflowId: u.name,
      ...(u.nodes ? { node: u.nodes } : {}),
      detail: `pilot job ${u.jobId} (${u.name}, ${u.state}${u.nodes ? ` on ${u.nodes}` : ''}) has no open slot workflow; cancelled after ${u.cancelAfter}`,
    });
  }

  /** Cancels a job and waits until the batch system confirms it gone; answers whether it was still live. */
  const cancelAndConfirm = async (jobId: string): Promise<boolean> => {
    if (gone(await head.reconcileJobStatus({ jobId }))) return false;
    await head.reconcileCancelJob({ jobId });
    const until = Date.now() + JOB_GONE_SECONDS * 1000;
    for (;;) {
      const s = await head.reconcileJobStatus({ jobId });
      if (gone(s)) return true;
      if (Date.now() >= until) throw new Error(`job ${jobId} is still ${s.state} ${JOB_GONE_SECONDS} s after it was cancelled`);
      await sleep(JOB_POLL);
    }
  };

  // Leases of slots that are gone: their jobs go first, then the lease.
  await Promise.all(
    plan.endLeases.map(async (e) => {
      const { holder, node } = e.lease;
      try {
        const cancelled: string[] = [];
        for (const jobId of e.jobIds) if (await cancelAndConfirm(jobId)) cancelled.push(jobId);
        if (!(await head.reconcileEndLease({ holder }))) return; // its slot ended it meanwhile: no drift
        for (const jobId of cancelled) {
          counts['orphan-lease-job-cancelled'] += 1;
          out.drifts.push({ kind: 'orphan-lease-job-cancelled', holder, node, jobId, detail: `pilot job ${jobId} of lease ${holder}, whose slot workflow is not open, cancelled and confirmed gone` });
        }
        counts['orphan-lease-ended'] += 1;
        out.drifts.push({ kind: 'orphan-lease-ended', holder, node, ...(e.lease.jobId ? { jobId: e.lease.jobId } : {}), detail: e.detail });
      } catch (err) {
        out.errors.push(`could not end the lease of ${holder} on ${node}: ${errorText(err)}`);
      }
    }),
  );

  // Unowned jobs past their grace period.
  const firstSeen = { ...plan.jobsFirstSeen };
  const done = new Set<string>();
  await Promise.all(
    plan.cancel.map(async (u) => {
      try {
        const wasLive = await cancelAndConfirm(u.jobId);
        done.add(u.jobId);
        delete firstSeen[u.jobId];
        if (!wasLive) return;
        counts['unowned-job-cancelled'] += 1;
        out.drifts.push({
          kind: 'unowned-job-cancelled',
          jobId: u.jobId,
          workflowId: u.name,
          ...(u.nodes ? { node: u.nodes } : {}),
          detail: `pilot job ${u.jobId} (${u.name}), unowned since ${u.firstSeen}, cancelled and confirmed gone`,
        });
      } catch (err) {
        out.errors.push(`could not cancel pilot job ${u.jobId} (${u.name}): ${errorText(err)}`);
      }
    }),
  );
  out.pendingJobs = plan.unowned.filter((u) => !done.has(u.jobId));

  if (world.jobs.batch !== 'none' || Object.keys(world.jobsFirstSeen).length) {
    try {
      await head.reconcileSaveJobsFirstSeen(firstSeen);
    } catch (e) {
      out.errors.push(`could not keep the first-seen times of unowned pilot jobs: ${errorText(e)}`);
    }
  }
  return out;
}
