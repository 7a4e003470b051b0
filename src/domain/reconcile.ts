/**
 * The reconciler's decisions (issue 6, seed 004's slot that stayed lost for good): pure functions from
 * what was observed (the allocator's grants, which workflows are open, what each node's hypervisor
 * runs, when each unowned VM was first seen) to what must be put right. No I/O: the reconciler
 * workflow observes and acts through activities, and unit tests drive this directly.
 */
import type { Grant } from './allocation';
import type { UnownedJob } from './reconcile-pilot';
import type { WorkspaceState, WorkspaceTask } from './states';

/** Every kind of drift the reconciler counts. */
export const DRIFT_KINDS = [
  'orphan-grant-released',
  'unowned-vm-reported',
  'unowned-vm-destroyed',
  'vm-vanished',
  'node-unreachable',
  // Pilot mode (issue 7): leases whose slot workflow is gone, and vws pilot jobs no slot workflow owns.
  'orphan-lease-job-cancelled',
  'orphan-lease-ended',
  'unowned-job-reported',
  'unowned-job-cancelled',
] as const;
/** A kind of drift. */
export type DriftKind = (typeof DRIFT_KINDS)[number];
/** Drift counts by kind. */
export type DriftCounts = Record<DriftKind, number>;

/** The directory under `stateDir` where the reconciler keeps its files. */
export const RECONCILE_DIR = 'reconcile';
/** The drift listing (last report and cumulative counts), read by `GET /admin/drift`. */
export const DRIFT_FILE = 'drift.json';
/** First-seen times of unowned VMs (the Schedule's runs are independent workflows, so they share this file). */
export const FIRST_SEEN_FILE = 'first-seen.json';

/** The shape of a workspace id (and so of a VM name vws gives). */
const WORKSPACE_ID = /^ws-[0-9a-f]{12}$/;

/** Zero counts of every kind. */
export function zeroCounts(): DriftCounts {
  return Object.fromEntries(DRIFT_KINDS.map((k) => [k, 0])) as DriftCounts;
}

/** Adds `b` to `a`, kind by kind (counts of unknown kinds in an older file are kept). */
export function addCounts(a: Partial<DriftCounts>, b: Partial<DriftCounts>): DriftCounts {
  const out = { ...zeroCounts(), ...a };
  for (const k of DRIFT_KINDS) out[k] = (a[k] ?? 0) + (b[k] ?? 0);
  return out;
}

/** Whether a workflow is open, as Temporal answered: `missing` = no such workflow (never started, or gone). */
export type HolderStatus = 'open' | 'closed' | 'missing';

/** One of this installation's open workspaces, as its `describe` query answered before the nodes were listed. */
export interface WorkspaceSighting {
  workflowId: string;
  workspaceId: string;
  state: WorkspaceState;
  task: WorkspaceTask;
  node?: string;
}

/** Everything one reconcile run observed. */
export interface ReconcileObservation {
  /** This installation's prefix: its grants' holders are `<prefix>-<workspace id>`. */
  prefix: string;
  /** ISO time of the decision. */
  now: string;
  graceSeconds: number;
  /** The allocator's live grants. */
  grants: Grant[];
  /** Status of each grant's holder and gang workflow, by workflow id. */
  holders: Record<string, HolderStatus>;
  /** VM names each configured node's hypervisor runs; `null` when the node did not answer. */
  nodes: Record<string, string[] | null>;
  /** Workflow ids of every open `workspaceWorkflow` in the namespace, under any prefix. */
  openWorkspaceWorkflowIds: string[];
  /** This installation's open workspaces, described before the nodes were listed. */
  workspaces: WorkspaceSighting[];
  /** When each unowned VM (`<node>/<vm>`) was first seen unowned. */
  firstSeen: Record<string, string>;
}

/** A grant to release: its holder is gone, it is older than the grace period and its VM is gone (or goes first). */
export interface ReleaseAction {
  grant: Grant;
  /** The workspace the holder ran, when the holder is a workspace workflow of this installation (its files go too). */
  workspaceId?: string;
  /** Set when the grant's VM is destroyed in this same run: release only once that destroy succeeded. */
  afterDestroy?: string;
  detail: string;
}

/** A VM no open workspace workflow owns. */
export interface UnownedVm {
  node: string;
  vm: string;
  firstSeen: string;
  /** When it may be destroyed (first seen + grace). */
  destroyAfter: string;
  /** Seen unowned for the first time in this run. */
  newlySeen: boolean;
}

/** A workspace whose VM is no longer on its node. */
export interface VanishedVm {
  workflowId: string;
  workspaceId: string;
  node: string;
  reason: string;
}

/** A grant kept for now although its holder is not open, and why. */
export interface WaitingGrant {
  holder: string;
  detail: string;
}

/** What one run must do. */
export interface ReconcilePlan {
  release: ReleaseAction[];
  /** Every unowned VM (reported); those past the grace period are in {@link destroy} too. */
  unowned: UnownedVm[];
  destroy: UnownedVm[];
  vanished: VanishedVm[];
  unreachable: string[];
  waiting: WaitingGrant[];
  /** First-seen times to keep: every VM unowned now (the caller drops those it destroyed). */
  firstSeen: Record<string, string>;
  /** Drifts found, by kind; releases and destroys are counted by the caller once they are done. */
  counts: DriftCounts;
}

/** The workspace id a holder of this installation names (`<prefix>-<id>`), if it names one. */
export function holderWorkspaceId(prefix: string, holder: string): string | undefined {
  if (!holder.startsWith(`${prefix}-`)) return undefined;
  const id = holder.slice(prefix.length + 1);
  return WORKSPACE_ID.test(id) ? id : undefined;
}

/** Whether some open workspace workflow, under any prefix, runs workspace `vm` (its id ends in `-<vm>`). */
export function isOwned(vm: string, openWorkflowIds: readonly string[]): boolean {
  return openWorkflowIds.some((id) => id.endsWith(`-${vm}`));
}

/** The reason a vanished workspace is marked Corrupted with. */
export function vanishedReason(node: string): string {
  return `VM vanished from ${node}: found by the reconciler`;
}

const seconds = (from: string, to: string) => (Date.parse(to) - Date.parse(from)) / 1000;

/**
 * Decides one run.
 *
 * - A grant is held while its holder workflow is open. A gang member's grant whose holder was never
 *   started is held while its gang workflow is open (the gang reserves first, then starts its members).
 *   Otherwise it is released (a holder that was never found: once the grant is older than the grace
 *   period, since the API reserves before it starts the workspace), but never before its VM is confirmed
 *   gone: not while the node does not answer, and not while the VM still runs (the VM, unowned, is
 *   destroyed after its own grace period first; an address must not be handed out to a second VM).
 * - A VM named like a workspace id that no open workspace workflow under any prefix owns is reported at
 *   once and destroyed once it has been seen unowned for the grace period. Other names are not vws's.
 * - A workspace that was Running or Paused with nothing in flight, on a node that answered, whose VM the
 *   node does not run, has vanished.
 */
export function planReconcile(o: ReconcileObservation): ReconcilePlan {
  const counts = zeroCounts();
  const unreachable = Object.entries(o.nodes)
    .filter(([, vms]) => vms === null)
    .map(([n]) => n);
  counts['node-unreachable'] = unreachable.length;

  // Unowned VMs, with their first-seen times carried across runs.
  const unowned: UnownedVm[] = [];
  const firstSeen: Record<string, string> = {};
  for (const [node, vms] of Object.entries(o.nodes)) {
    if (vms === null) {
      // Not seen this time: what was known about this node stays as it was.
      for (const [key, at] of Object.entries(o.firstSeen)) if (key.startsWith(`${node}/`)) firstSeen[key] = at;
      continue;
    }
    for (const vm of [...new Set(vms)].sort()) {
      if (!WORKSPACE_ID.test(vm) || isOwned(vm, o.openWorkspaceWorkflowIds)) continue;
      const key = `${node}/${vm}`;
      const seen = o.firstSeen[key] ?? o.now;
      firstSeen[key] = seen;
      const destroyAfter = new Date(Date.parse(seen) + o.graceSeconds * 1000).toISOString();
      unowned.push({ node, vm, firstSeen: seen, destroyAfter, newlySeen: !o.firstSeen[key] });
    }
  }
  counts['unowned-vm-reported'] = unowned.filter((u) => u.newlySeen).length;
  const destroy = unowned.filter((u) => seconds(u.firstSeen, o.now) >= o.graceSeconds);
  const destroying = new Set(destroy.map((d) => `${d.node}/${d.vm}`));

  // Grants no live workflow holds.
  const release: ReleaseAction[] = [];
  const waiting: WaitingGrant[] = [];
  for (const g of o.grants) {
    const status = o.holders[g.holder] ?? 'missing';
    if (status === 'open') continue;
    if (status === 'missing' && g.gang && o.holders[g.gang] === 'open') continue;
    const age = seconds(g.grantedAt, o.now);
    // A holder not found may yet start (the API and gangs reserve before they start the workspace);
    // a closed one never comes back, so its grant needs no grace.
    if (status === 'missing' && age < o.graceSeconds) {
      waiting.push({ holder: g.holder, detail: `holder ${status}; granted ${Math.floor(age)} s ago, within the grace period of ${o.graceSeconds} s` });
      continue;
    }
    const workspaceId = holderWorkspaceId(o.prefix, g.holder);
    const vms = o.nodes[g.node];
    if (vms === undefined || vms === null) {
      waiting.push({ holder: g.holder, detail: `holder ${status}; node ${g.node} did not answer, so its VM cannot be confirmed gone` });
      continue;
    }
    const detail = `holder ${g.holder} is ${status === 'missing' ? 'not found' : 'closed'}; granted at ${g.grantedAt} on ${g.node}`;
    if (workspaceId && vms.includes(workspaceId)) {
      const key = `${g.node}/${workspaceId}`;
      if (destroying.has(key)) {
        release.push({ grant: g, workspaceId, afterDestroy: key, detail });
      } else {
        waiting.push({ holder: g.holder, detail: `holder ${status}; its VM ${workspaceId} still runs on ${g.node} and is destroyed first, after the grace period` });
      }
      continue;
    }
    release.push({ grant: g, ...(workspaceId ? { workspaceId } : {}), detail });
  }

  // Workspaces whose VM vanished.
  const vanished: VanishedVm[] = [];
  for (const w of o.workspaces) {
    if (w.state !== 'Running' && w.state !== 'Paused') continue;
    if (w.task !== null || !w.node) continue;
    const vms = o.nodes[w.node];
    if (!vms || vms.includes(w.workspaceId)) continue;
    vanished.push({ workflowId: w.workflowId, workspaceId: w.workspaceId, node: w.node, reason: vanishedReason(w.node) });
  }
  counts['vm-vanished'] = vanished.length;

  return { release, unowned, destroy, vanished, unreachable, waiting, firstSeen, counts };
}

/** One drift found by a run, as the report lists it. */
export interface DriftEntry {
  kind: DriftKind;
  detail: string;
  node?: string;
  vm?: string;
  holder?: string;
  workflowId?: string;
  /** The batch system's job id (pilot jobs). */
  jobId?: string;
}

/** The outcome of one reconcile run (its workflow result, and the last report of the drift listing). */
export interface DriftReport {
  /** The run's workflow id and run id (the Temporal UI shows it). */
  workflowId: string;
  runId: string;
  startedAt: string;
  finishedAt: string;
  counts: DriftCounts;
  drifts: DriftEntry[];
  /** Grants kept for now although no open workflow holds them. */
  waiting: WaitingGrant[];
  /** Unowned VMs still within their grace period. */
  pending: UnownedVm[];
  /** Pilot leases kept for now although their slot workflow is not open, and why (absent before pilot mode). */
  waitingLeases?: WaitingGrant[];
  /** vws pilot jobs no slot workflow owns, still within their grace period (absent before pilot mode). */
  pendingJobs?: UnownedJob[];
  /** Actions that failed (retried by the next run). */
  errors: string[];
}

/** The drift listing kept in `<stateDir>/reconcile/drift.json`. */
export interface DriftListing {
  updatedAt: string | null;
  runs: number;
  totals: DriftCounts;
  last: DriftReport | null;
}

/** The listing before any run. */
export function emptyListing(): DriftListing {
  return { updatedAt: null, runs: 0, totals: zeroCounts(), last: null };
}

/** The listing with one more run's report. */
export function withReport(listing: DriftListing, report: DriftReport): DriftListing {
  return { updatedAt: report.finishedAt, runs: listing.runs + 1, totals: addCounts(listing.totals, report.counts), last: report };
}
