/**
 * The reconciler's decisions about pilot mode (issue 6 item 6, issue 7's "nothing leaked"): pure
 * functions from what was observed (the allocator's pilot leases, which pilot-slot workflows are open,
 * the batch system's vws pilot jobs, when each unowned job was first seen) to what must be put right.
 *
 * A slot's workflow id, its lease's holder and its batch job's name are the same string
 * (`<prefix>-pilot-<slot id>`), so a job names the workflow that owns it, and a lease the job it lives on.
 */
import type { NodeLease } from './allocation';
import { zeroCounts, type DriftCounts, type HolderStatus, type WaitingGrant } from './reconcile';

/** First-seen times of unowned pilot jobs, by job id (in the reconciler's directory, beside the VMs' file). */
export const JOBS_FIRST_SEEN_FILE = 'jobs-first-seen.json';

/** The shape of a slot id after `<prefix>-pilot-` (a workspace id, or any lowercase name with digits and `-`). */
const SLOT_ID = /^[a-z0-9][a-z0-9-]*$/;

/** A live vws pilot job as the batch system listed it. */
export interface PilotJobSighting {
  jobId: string;
  /** The job's name: the workflow id of the slot that submitted it. */
  name: string;
  state: 'queued' | 'running' | 'completing';
  /** The node(s) it runs on, as the batch system lists them. */
  nodes?: string;
}

/**
 * What the batch system answered: `none` when the site has no `lrm` section (no pilot jobs to compare),
 * `unavailable` when it did not answer (nothing about jobs is decided this run).
 */
export type BatchSighting = { batch: 'none' } | { batch: 'unavailable'; error: string } | { batch: 'ok'; jobs: PilotJobSighting[] };

/** Everything a run observed about pilot mode. */
export interface PilotObservation {
  /** This installation's prefix: its jobs are named `<prefix>-pilot-<slot id>`. */
  prefix: string;
  /** ISO time of the decision. */
  now: string;
  graceSeconds: number;
  /** The allocator's live pilot leases. */
  leases: NodeLease[];
  /** Status of each lease holder and each job's owner (the workflow its name names), by workflow id. */
  slots: Record<string, HolderStatus>;
  /** The batch system's live jobs of this installation (listed before the slots were looked up). */
  jobs: BatchSighting;
  /** When each unowned job (by job id) was first seen unowned. */
  jobsFirstSeen: Record<string, string>;
}

/** A lease to end: its slot workflow is not open. Its jobs are cancelled and confirmed gone first. */
export interface LeaseEnd {
  lease: NodeLease;
  /** Jobs of the lease the batch system may still run (the lease's own and any live job named like its holder). */
  jobIds: string[];
  detail: string;
}

/** A vws pilot job no open slot workflow owns. */
export interface UnownedJob {
  jobId: string;
  name: string;
  state: PilotJobSighting['state'];
  nodes?: string;
  firstSeen: string;
  /** When it may be cancelled (first seen + grace). */
  cancelAfter: string;
  /** Seen unowned for the first time in this run. */
  newlySeen: boolean;
}

/** What one run must do about pilot mode. */
export interface PilotPlan {
  endLeases: LeaseEnd[];
  /** Leases kept for now although their slot is not open, and why. */
  waitingLeases: WaitingGrant[];
  /** Every unowned job (reported); those past the grace period are in {@link cancel} too. */
  unowned: UnownedJob[];
  cancel: UnownedJob[];
  /** First-seen times to keep: every job unowned now (the caller drops those it cancelled). */
  jobsFirstSeen: Record<string, string>;
  /** Drifts found, by kind; lease ends and cancels are counted by the caller once they are done. */
  counts: DriftCounts;
}

/** The prefix of this installation's pilot job names (what `listByPrefix` is asked for). */
export function pilotJobPrefix(prefix: string): string {
  return `${prefix}-pilot`;
}

/** Whether `name` is a pilot job name of this installation (`<prefix>-pilot-<slot id>`). */
export function isPilotJobName(prefix: string, name: string): boolean {
  const head = `${pilotJobPrefix(prefix)}-`;
  return name.startsWith(head) && SLOT_ID.test(name.slice(head.length));
}

const seconds = (from: string, to: string) => (Date.parse(to) - Date.parse(from)) / 1000;

/**
 * Decides one run.
 *
 * - A lease is held while its slot workflow is open. Otherwise it ends, at once (the slot records its
 *   lease itself, so a holder that is not open never comes back), but only after every job of it the
 *   batch system may still run is cancelled and confirmed gone: until then the pilot may still hold the
 *   node and its VMs. A lease without a job id waits while the batch system does not answer (its job
 *   could not be looked for).
 * - A live job named like this installation's pilots whose slot workflow is not open is reported at once
 *   and cancelled once it has been seen unowned for the grace period. A job already ending (completing)
 *   is not judged, nor is one that belongs to a lease ended this run (it is cancelled with the lease).
 */
export function planPilotReconcile(o: PilotObservation): PilotPlan {
  const counts = zeroCounts();
  const live = o.jobs.batch === 'ok' ? o.jobs.jobs.filter((j) => isPilotJobName(o.prefix, j.name)) : [];

  const endLeases: LeaseEnd[] = [];
  const waitingLeases: WaitingGrant[] = [];
  const withLease = new Set<string>();
  for (const l of [...o.leases].sort((a, b) => a.holder.localeCompare(b.holder))) {
    const status = o.slots[l.holder] ?? 'missing';
    if (status === 'open') continue;
    const named = live.filter((j) => j.name === l.holder).map((j) => j.jobId);
    const jobIds = [...new Set([...(l.jobId ? [l.jobId] : []), ...named])];
    const why = `slot workflow ${l.holder} is ${status === 'missing' ? 'not found' : 'closed'}`;
    if (o.jobs.batch === 'unavailable' && !l.jobId) {
      waitingLeases.push({ holder: l.holder, detail: `${why}; the batch system did not answer, so its job cannot be confirmed gone` });
      continue;
    }
    for (const id of jobIds) withLease.add(id);
    const jobs = o.jobs.batch === 'none' ? 'no batch system is configured to ask about its job' : jobIds.length ? `job ${jobIds.join(', ')} cancelled and confirmed gone first` : 'no job of it is left';
    endLeases.push({ lease: l, jobIds: o.jobs.batch === 'none' ? [] : jobIds, detail: `${why}; lease of ${l.memoryMiB} MiB on ${l.node} since ${l.leasedAt ?? '?'}; ${jobs}` });
  }

  const unowned: UnownedJob[] = [];
  const jobsFirstSeen: Record<string, string> = {};
  if (o.jobs.batch === 'unavailable') Object.assign(jobsFirstSeen, o.jobsFirstSeen); // not seen this time: kept as it was
  for (const j of [...live].sort((a, b) => a.jobId.localeCompare(b.jobId))) {
    if (j.state === 'completing' || withLease.has(j.jobId) || o.slots[j.name] === 'open') continue;
    const seen = o.jobsFirstSeen[j.jobId] ?? o.now;
    jobsFirstSeen[j.jobId] = seen;
    const cancelAfter = new Date(Date.parse(seen) + o.graceSeconds * 1000).toISOString();
    unowned.push({ jobId: j.jobId, name: j.name, state: j.state, ...(j.nodes ? { nodes: j.nodes } : {}), firstSeen: seen, cancelAfter, newlySeen: !o.jobsFirstSeen[j.jobId] });
  }
  counts['unowned-job-reported'] = unowned.filter((u) => u.newlySeen).length;
  const cancel = unowned.filter((u) => seconds(u.firstSeen, o.now) >= o.graceSeconds);
  return { endLeases, waitingLeases, unowned, cancel, jobsFirstSeen, counts };
}

/** The workflow ids whose status a run needs: every lease holder and every job's owner. */
export function slotIdsToLookUp(prefix: string, leases: readonly NodeLease[], jobs: readonly PilotJobSighting[]): string[] {
  return [...new Set([...leases.map((l) => l.holder), ...jobs.filter((j) => isPilotJobName(prefix, j.name)).map((j) => j.name)])].sort();
}
