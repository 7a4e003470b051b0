/**
 * The reconciler's head activities: what only the Temporal client can see (the allocator's grants,
 * which workflows are open, this installation's workspaces) and the reconciler's files under
 * `<stateDir>/reconcile/` (first-seen times of unowned VMs, the drift listing the API serves). Every
 * activity is idempotent: reads, an idempotent release, and whole-file atomic rewrites.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ApplicationFailure, WorkflowNotFoundError, type Client } from '@temporalio/client';
import { AllocatorClient } from '../../clients/allocator';
import { describeWorkspace } from '../../clients/workspace-view';
import type { VwsConfig } from '../../config/schema';
import type { Grant, NodeLease } from '../../domain/allocation';
import { FailureType } from '../../domain/errors';
import {
  DRIFT_FILE,
  emptyListing,
  FIRST_SEEN_FILE,
  RECONCILE_DIR,
  withReport,
  type DriftListing,
  type DriftReport,
  type HolderStatus,
  type WorkspaceSighting,
} from '../../domain/reconcile';
import { isPilotJobName, JOBS_FIRST_SEEN_FILE, pilotJobPrefix, slotIdsToLookUp, type BatchSighting, type PilotJobSighting } from '../../domain/reconcile-pilot';
import type { Executor } from '../../exec/executor';
import { log } from '../../log';
import { batchSystemFor } from '../lrm';
import type { BatchJobStatus, BatchSystem } from '../lrm/types';

/** What the reconciler reads through Temporal in one go (after the nodes were listed). */
export interface ReconcileWorld {
  grants: Grant[];
  holders: Record<string, HolderStatus>;
  openWorkspaceWorkflowIds: string[];
  firstSeen: Record<string, string>;
}

/** What the reconciler reads about pilot mode in one go: the batch system's jobs first, then leases and slots. */
export interface PilotWorld {
  jobs: BatchSighting;
  leases: NodeLease[];
  slots: Record<string, HolderStatus>;
  jobsFirstSeen: Record<string, string>;
}

/** Writes `path` whole or not at all (a reader never sees half a file). */
async function writeAtomic(path: string, data: unknown): Promise<void> {
  const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(tmp, `${JSON.stringify(data, null, 2)}\n`, { mode: 0o640 });
  await rename(tmp, path);
}

/** Reads a JSON file; `fallback` when it does not exist. */
async function readJson<T>(path: string, fallback: T): Promise<T> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as T;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return fallback;
    throw e;
  }
}

/** True once the batch system no longer runs the job (ended, or forgotten). */
const gone = (s: BatchJobStatus): boolean => s.state === 'ended' || s.state === 'unknown';

/** Path of the drift listing of an installation (the API reads it too). */
export function driftFilePath(config: VwsConfig): string {
  return join(config.stateDir, RECONCILE_DIR, DRIFT_FILE);
}

/** What the reconciler's head activities need; `batch` and `executor` are injected by tests or built from the configuration. */
export interface ReconcileDeps {
  client: Client;
  config: VwsConfig;
  batch?: BatchSystem;
  executor?: Executor;
}

/** Creates the reconciler's head activities. */
export function createReconcileActivities(deps: ReconcileDeps) {
  const { client, config } = deps;
  let batch = deps.batch;
  /** Built on first use, and only for a site with a batch system (`lrm`). */
  const batchSystem = (): BatchSystem | undefined => {
    if (!batch && config.lrm) batch = batchSystemFor(config, deps.executor);
    return batch;
  };
  /** The batch system, or a non-retryable failure: asking about jobs on a site without one is a mistake. */
  const requireBatch = (): BatchSystem => {
    const b = batchSystem();
    if (!b) throw ApplicationFailure.create({ type: FailureType.InvalidSpec, nonRetryable: true, message: 'this site has no batch system (lrm) to ask about jobs' });
    return b;
  };
  const allocator = new AllocatorClient(client, config);
  const dir = join(config.stateDir, RECONCILE_DIR);
  const prefix = `${config.temporal.prefix}-`;

  /** Open `workspaceWorkflow` executions in the namespace, every prefix (visibility). */
  async function openWorkspaceWorkflowIds(): Promise<string[]> {
    const ids: string[] = [];
    for await (const w of client.workflow.list({ query: `WorkflowType = 'workspaceWorkflow' AND ExecutionStatus = 'Running'` })) ids.push(w.workflowId);
    return ids;
  }

  async function status(workflowId: string): Promise<HolderStatus> {
    try {
      const d = await client.workflow.getHandle(workflowId).describe();
      return d.status.name === 'RUNNING' ? 'open' : 'closed';
    } catch (e) {
      if (e instanceof WorkflowNotFoundError) return 'missing';
      throw e;
    }
  }

  return {
    /**
     * This installation's open workspaces with their state, task and node (the view in each one's memo). Read before
     * the nodes are listed, so a VM that boots meanwhile is never taken for one that vanished.
     */
    async reconcileWorkspaces(): Promise<WorkspaceSighting[]> {
      const out: WorkspaceSighting[] = [];
      for (const workflowId of (await openWorkspaceWorkflowIds()).filter((id) => id.startsWith(prefix))) {
        try {
          // From the view in the memo (no query): every open workspace each run, which over a head cache
          // smaller than the live set would replay each one.
          const d = await describeWorkspace(client, workflowId);
          out.push({ workflowId, workspaceId: d.id, state: d.state, task: d.task, ...(d.node ? { node: d.node } : {}) });
        } catch (e) {
          // Closed meanwhile, or not answering: not judged this run.
          log.debug({ err: e, workflowId }, 'reconciler could not describe a workspace');
        }
      }
      return out;
    },

    /** The grants, whether each holder (and gang) is open, every open workspace workflow, and first-seen times. */
    async reconcileWorld(): Promise<ReconcileWorld> {
      let grants: Grant[] = [];
      try {
        grants = await allocator.grants();
      } catch (e) {
        // No allocator yet: nothing was ever granted.
        if (!(e instanceof WorkflowNotFoundError)) throw e;
      }
      const holders: Record<string, HolderStatus> = {};
      for (const id of new Set(grants.flatMap((g) => [g.holder, ...(g.gang ? [g.gang] : [])]))) holders[id] = await status(id);
      const open = await openWorkspaceWorkflowIds();
      const firstSeen = await readJson<Record<string, string>>(join(dir, FIRST_SEEN_FILE), {});
      return { grants, holders, openWorkspaceWorkflowIds: open, firstSeen };
    },

    /** Releases a grant no live workflow holds (idempotent); answers whether there was one. */
    async reconcileRelease(input: { holder: string }): Promise<boolean> {
      return allocator.release(input.holder);
    },

    /** Keeps the first-seen times of unowned VMs for the next run. */
    async reconcileSaveFirstSeen(firstSeen: Record<string, string>): Promise<void> {
      await mkdir(dir, { recursive: true });
      await writeAtomic(join(dir, FIRST_SEEN_FILE), firstSeen);
    },

    /**
     * Pilot mode as it is: the batch system's live vws pilot jobs (listed first, so a slot that submits
     * meanwhile is already open when the slots are looked up), the allocator's pilot leases, and whether
     * each lease holder and job owner is open. A job whose owner is not open is asked about once more
     * after that look-up, so one its slot cancelled in between is not taken for unowned.
     */
    async reconcilePilotWorld(): Promise<PilotWorld> {
      const b = batchSystem();
      let jobs: BatchSighting = { batch: 'none' };
      if (b) {
        try {
          const listed = await b.listByPrefix(pilotJobPrefix(config.temporal.prefix));
          jobs = {
            batch: 'ok',
            jobs: listed
              .filter((j) => j.state !== 'ended' && j.name !== undefined && isPilotJobName(config.temporal.prefix, j.name))
              .map((j) => ({ jobId: j.jobId, name: j.name!, state: j.state as PilotJobSighting['state'], ...(j.nodes ? { nodes: j.nodes } : {}) })),
          };
        } catch (e) {
          jobs = { batch: 'unavailable', error: (e as Error).message };
        }
      }
      let leases: NodeLease[] = [];
      try {
        leases = await allocator.leases();
      } catch (e) {
        // No allocator yet: nothing was ever leased.
        if (!(e instanceof WorkflowNotFoundError)) throw e;
      }
      const slots: Record<string, HolderStatus> = {};
      for (const id of slotIdsToLookUp(config.temporal.prefix, leases, jobs.batch === 'ok' ? jobs.jobs : [])) slots[id] = await status(id);
      if (jobs.batch === 'ok' && b) {
        const still: PilotJobSighting[] = [];
        for (const j of jobs.jobs) {
          if (slots[j.name] === 'open') still.push(j);
          else if (!gone(await b.status(j.jobId))) still.push(j);
        }
        jobs = { batch: 'ok', jobs: still };
      }
      const jobsFirstSeen = await readJson<Record<string, string>>(join(dir, JOBS_FIRST_SEEN_FILE), {});
      return { jobs, leases, slots, jobsFirstSeen };
    },

    /** Cancels a pilot job (SIGTERM to the pilot, which hands the node back); an ended or unknown job counts as success. */
    async reconcileCancelJob(input: { jobId: string }): Promise<void> {
      await requireBatch().cancel(input.jobId);
    },

    /** A pilot job's state as the batch system reports it. */
    async reconcileJobStatus(input: { jobId: string }): Promise<BatchJobStatus> {
      return requireBatch().status(input.jobId);
    },

    /** Ends a pilot lease whose slot workflow is not open (idempotent); answers whether there was one. */
    async reconcileEndLease(input: { holder: string }): Promise<boolean> {
      return allocator.endLease(input.holder);
    },

    /** Keeps the first-seen times of unowned pilot jobs for the next run. */
    async reconcileSaveJobsFirstSeen(firstSeen: Record<string, string>): Promise<void> {
      await mkdir(dir, { recursive: true });
      await writeAtomic(join(dir, JOBS_FIRST_SEEN_FILE), firstSeen);
    },

    /** Adds a run's report to the drift listing (last report, cumulative counts); answers the listing. */
    async reconcileRecord(report: DriftReport): Promise<DriftListing> {
      await mkdir(dir, { recursive: true });
      const path = join(dir, DRIFT_FILE);
      const listing = await readJson<DriftListing>(path, emptyListing());
      // A retried activity must not count the same run twice.
      if (listing.last?.runId === report.runId) return listing;
      const next = withReport(listing, report);
      await writeAtomic(path, next);
      return next;
    },
  };
}

/** The reconciler's head activities' type, for `proxyActivities`. */
export type ReconcileActivities = ReturnType<typeof createReconcileActivities>;
