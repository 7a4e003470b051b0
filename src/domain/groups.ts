/**
 * Groups and ensembles (seed 000's group and ensemble services): DTOs shared by the API, the group and
 * ensemble workflows and the tests. Types only, no I/O: workflow code imports it.
 *
 * A group is NodeNumber > 1 identical workspaces granted in one atomic allocation (in pilot mode: each
 * member in the node time of its own pilot job) and started as child workflows of one group workflow.
 * An ensemble is a set of members (single workspaces or groups) that register without launching; `done`
 * co-schedules them: one atomic allocation for every member, propagation of all, then all started at
 * once, or none runs and nothing stays held.
 */
import type { Grant } from './allocation';
import type { WorkspaceState } from './states';
import type { WorkspaceDescription, WorkspaceInput, WorkspaceRouting, WorkspaceSpec } from './workspace';

/** Everything the group workflow needs, fixed at its start. */
export interface GroupInput {
  /** Public group id, `grp-` and 12 hex digits (the workflow id is derived from it). */
  id: string;
  owner: string;
  /** The spec every member runs (each member's unpropagation target gets its index appended). */
  spec: WorkspaceSpec;
  /** Seed 002 NodeNumber: how many members. */
  count: number;
  routing: WorkspaceRouting;
  createdAt: string;
  /**
   * Grants reserved for the members before the group started (the factory reserves synchronously so
   * that a refusal is the create's answer), in member order; absent: the group reserves them itself.
   */
  grants?: Grant[];
  /**
   * Pilot mode: each member's pilot slot, in member order (its workflow id names the member); the members
   * wait in the batch queue, each for a node of its own. Exclusive with `grants`.
   */
  pilots?: Array<NonNullable<WorkspaceInput['pilot']>>;
  /** Set when the group is a member of an ensemble (the members' search attribute VwsEnsemble). */
  ensemble?: string;
}

/** One member as its group or ensemble reports it. */
export interface MemberSummary {
  id: string;
  index: number;
  state: WorkspaceState;
  task: WorkspaceDescription['task'];
  node?: string;
  ip?: string;
  reason?: string;
  firstStartedAt?: string;
}

/** A group's or ensemble's overall state, derived from its members and its own progress. */
export type GangState =
  /** Ensemble members registered, `done` not yet given. */
  | 'Registering'
  /** Waiting for capacity (an ensemble retries with bounded backoff until its deadline). */
  | 'Waiting'
  /** Allocating, propagating or starting the members. */
  | 'Deploying'
  /** Every member reached its target state. */
  | 'Ready'
  /** Backing out (a member failed) or being destroyed. */
  | 'BackingOut'
  /** Finished: every member is Cancelled and nothing is held; `reason` says why if it failed. */
  | 'Ended';

/** What the group's `describe` query answers. */
export interface GroupDescription {
  id: string;
  owner: string;
  count: number;
  state: GangState;
  /** Why the group failed or was backed out. */
  reason?: string;
  ensemble?: string;
  members: MemberSummary[];
  createdAt: string;
}

/** A group operation, fanned out to every live member. */
export interface GroupOperation {
  op: 'start' | 'pause' | 'unpause' | 'reboot' | 'shutdown' | 'shutdown-save' | 'destroy';
  args?: { durationSeconds?: number; target?: string; notBefore?: string };
}

/**
 * How far ahead of now an ensemble sets its members' common start time: long enough for its start
 * fan-out to reach every member's node (measured on 2 cores with 100 members over 10 nodes: the last
 * bootVm was waiting 0.8 s after the fan-out began), so they boot together rather than in the order
 * the fan-out reached them. A member reached later boots at once, and the report's spread shows it.
 */
export function ensembleStartLeadMs(members: number): number {
  return Math.min(1_000 + 30 * members, 15_000);
}

/** What a fanned-out operation did on each member. */
export interface GroupOperationResult {
  op: GroupOperation['op'];
  members: Array<{ id: string; ok: boolean; error?: string; state?: WorkspaceState }>;
}

/** Everything the ensemble workflow needs, fixed at its start. */
export interface EnsembleInput {
  /** Public ensemble id, `ens-` and 12 hex digits. */
  id: string;
  owner: string;
  routing: WorkspaceRouting;
  createdAt: string;
  /**
   * How long co-scheduling may wait for capacity after `done`, in seconds; then the ensemble ends with
   * the reason, holding nothing.
   */
  deadlineSeconds: number;
}

/** A member registered with an ensemble (seed 000: a workspace or a group, "registered, not launched"). */
export interface EnsembleMemberRequest {
  /** The member's spec (target state is ignored: members are always started together). */
  spec: WorkspaceSpec;
  /** 1 for a single workspace; > 1 for a group. */
  count: number;
  /** Seed 000's done flag on the last member's create: co-schedule right after registering it. */
  done?: boolean;
}

/** What registering a member answers: its id(s) inside the ensemble. */
export interface EnsembleRegistration {
  /** `ws-…` for a single workspace, `grp-…` for a group. */
  memberId: string;
  /** The member workspace ids (one for a single workspace). */
  workspaceIds: string[];
}

/** The ensemble's report (seed 000's ensemble report; `vws ensemble report`). */
export interface EnsembleDescription {
  id: string;
  owner: string;
  state: GangState;
  reason?: string;
  /** Capacity attempts after `done` and the last refusal, while Waiting. */
  attempts: number;
  lastRefusal?: string;
  members: Array<{ memberId: string; count: number; workspaces: MemberSummary[] }>;
  createdAt: string;
  doneAt?: string;
  /** When every member was Running: the first and last start times and their spread. */
  started?: { first: string; last: string; skewMs: number; planned?: string };
}
