/**
 * What the group and ensemble workflows share: their members as child workspace workflows, one atomic
 * allocation for all of them (a gang), watching them settle, fanning operations out, and backing out so
 * that nothing runs and nothing stays held. Workflow code: deterministic, activities by `import type`.
 */
import {
  ApplicationFailure,
  condition,
  ParentClosePolicy,
  proxyActivities,
  startChild,
  uuid4,
  type ChildWorkflowHandle,
} from '@temporalio/workflow';
import type { HeadActivities } from '../activities/head/allocator-client';
import type { MemberActivities, MemberOutcome, MemberView } from '../activities/head/members';
import type { Grant } from '../domain/allocation';
import { FailureType, NON_RETRYABLE_FAILURES } from '../domain/errors';
import type { GroupOperation, MemberSummary } from '../domain/groups';
import { VwsEnsemble, VwsGroup, VwsOwner, VwsState } from '../domain/messages';
import type { WorkspaceDescription, WorkspaceInput, WorkspaceRouting, WorkspaceSpec } from '../domain/workspace';
import { workspaceWorkflow } from './workspace';

/** One member workspace of a group or ensemble, as its parent tracks it. */
export interface GangMember {
  /** Public workspace id (`ws-…`). */
  id: string;
  workflowId: string;
  /** Index inside its group (absent for a single-workspace ensemble member). */
  index?: number;
  /** Position in the parent's member list (what `describe` shows as `index` for ensembles' single members). */
  position: number;
  spec: WorkspaceSpec;
  /** The public group id, when the member belongs to a group. */
  group?: string;
  /** Last known summary. */
  view: MemberView;
  handle?: ChildWorkflowHandle<typeof workspaceWorkflow>;
  /** True once its child workflow has closed (every artifact gone, its grant released). */
  ended: boolean;
}

/** The activities a gang's parent uses, on the head's task queue. */
export function gangActivities(taskQueue: string) {
  return {
    /** Allocator calls: a refusal (NoCapacity, QuotaExceeded, …) fails at once; anything else retries. */
    allocator: proxyActivities<HeadActivities>({
      taskQueue,
      startToCloseTimeout: '30s',
      retry: { initialInterval: '1s', maximumInterval: '30s', nonRetryableErrorTypes: NON_RETRYABLE_FAILURES },
    }),
    /** Fan-outs and watches: long, heartbeating; retried until they answer (they are idempotent). */
    members: proxyActivities<MemberActivities>({
      taskQueue,
      startToCloseTimeout: '24h',
      heartbeatTimeout: '30s',
      retry: { initialInterval: '1s', maximumInterval: '10s', nonRetryableErrorTypes: [FailureType.InvalidSpec] },
    }),
  };
}

/** A fresh public id, `<kind>-` and 12 hex digits, deterministic in the workflow (replays make the same). */
export function newId(kind: 'ws' | 'grp'): string {
  return `${kind}-${uuid4().replace(/-/g, '').slice(0, 12)}`;
}

/**
 * The prefix of this workflow's id (`<prefix>-<id>`), which member workflow ids share: a member's is
 * `<prefix>-<member ws id>`, the same id the API derives from a workspace id.
 */
export function prefixOf(workflowId: string, id: string): string {
  if (!workflowId.endsWith(`-${id}`)) {
    throw ApplicationFailure.create({
      type: FailureType.InvalidSpec,
      message: `workflow id ${workflowId} does not end with -${id} (id): the member ids are derived from it`,
      nonRetryable: true,
    });
  }
  return workflowId.slice(0, workflowId.length - id.length - 1);
}

/** A member not started yet. */
export function pendingView(id: string): MemberView {
  return { id, state: 'Unpropagated', task: null };
}

/** The summary of a member's final description. */
function endedView(d: WorkspaceDescription): MemberView {
  return {
    id: d.id,
    state: d.state,
    task: d.task,
    ...(d.node ? { node: d.node } : {}),
    ...(d.reason ? { reason: d.reason } : {}),
    ...(d.firstStartedAt ? { firstStartedAt: d.firstStartedAt } : {}),
  };
}

/** A member as `describe` shows it. */
export function summaryOf(m: GangMember): MemberSummary {
  return { ...m.view, index: m.index ?? m.position };
}

/** The type and message of a failed activity's cause (the allocator's typed refusal, for instance). */
export function failureOf(err: unknown): { type: string; message: string } {
  const e = err as Error & { type?: string; cause?: Error & { type?: string } };
  const cause = e.cause ?? e;
  return { type: cause.type ?? FailureType.CommandFailed, message: cause.message };
}

/**
 * Reserves every member in one atomic allocation (`gang` = the parent's workflow id, each member held
 * by its own workflow id); answers the grants by holder. A refusal throws (typed) holding nothing.
 */
export async function reserveGang(
  acts: ReturnType<typeof gangActivities>,
  gang: string,
  owner: string,
  members: GangMember[],
): Promise<Record<string, Grant>> {
  const grants = await acts.allocator.reserveGang({
    gang,
    members: members.map((m) => ({
      holder: m.workflowId,
      memoryMiB: m.spec.memoryMiB,
      vcpus: m.spec.vcpus,
      owner,
      reservedSeconds: m.spec.durationSeconds,
      ...(m.spec.networks ? { networks: m.spec.networks } : {}),
    })),
  });
  return Object.fromEntries(grants.map((g) => [g.holder, g]));
}

/** What every member's child workflow shares. */
export interface MemberContext {
  owner: string;
  routing: WorkspaceRouting;
  createdAt: string;
  ensemble?: string;
  targetState: WorkspaceSpec['targetState'];
}

/**
 * Starts each member as a child workspace workflow with its grant, or in pilot mode its pilot slot
 * (REQUEST_CANCEL: closing the parent asks its members to clean up), and tracks when each closes.
 */
export async function startMembers(members: GangMember[], grants: Record<string, Grant>, ctx: MemberContext, pilots: Record<string, NonNullable<WorkspaceInput['pilot']>> = {}): Promise<void> {
  await Promise.all(
    members.map(async (m) => {
      const grant = grants[m.workflowId];
      const pilot = pilots[m.workflowId];
      if (!grant && !pilot) throw ApplicationFailure.nonRetryable(`the allocator answered no grant for ${m.workflowId}`, FailureType.InvalidSpec);
      m.handle = await startChild(workspaceWorkflow, {
        workflowId: m.workflowId,
        parentClosePolicy: ParentClosePolicy.REQUEST_CANCEL,
        typedSearchAttributes: [
          { key: VwsOwner, value: ctx.owner },
          { key: VwsState, value: m.spec.imageSource ? 'Unstaged' : 'Unpropagated' },
          ...(m.group ? [{ key: VwsGroup, value: m.group }] : []),
          ...(ctx.ensemble ? [{ key: VwsEnsemble, value: ctx.ensemble }] : []),
        ],
        args: [
          {
            id: m.id,
            owner: ctx.owner,
            spec: { ...m.spec, targetState: ctx.targetState, ...(m.index !== undefined ? { memberIndex: m.index } : {}) },
            routing: ctx.routing,
            createdAt: ctx.createdAt,
            ...(grant ? { grant } : { pilot }),
            ...(m.group ? { group: m.group } : {}),
            ...(ctx.ensemble ? { ensemble: ctx.ensemble } : {}),
          },
        ],
      });
      m.handle.result().then(
        (d) => {
          m.view = endedView(d);
          m.ended = true;
        },
        () => {
          m.view = { ...m.view, state: 'Cancelled', task: null };
          m.ended = true;
        },
      );
    }),
  );
}

/** Copies what a watch or a fan-out learned into the members' summaries (an ended member keeps its final one). */
export function learn(members: GangMember[], views: Array<MemberView | null | undefined>): void {
  views.forEach((v, i) => {
    if (v && !members[i].ended) members[i].view = v;
  });
}

/**
 * Watches the members until each is in `target` with nothing in flight; answers why not if one ended
 * Corrupted or Cancelled first (the caller backs out).
 */
export async function awaitTarget(acts: ReturnType<typeof gangActivities>, members: GangMember[], target: WorkspaceSpec['targetState']): Promise<string | undefined> {
  const views = await acts.members.awaitMembers({ workflowIds: members.map((m) => m.workflowId), target });
  learn(members, views);
  const failed = members.find((m) => m.view.state === 'Corrupted' || m.view.state === 'Cancelled');
  if (!failed) return undefined;
  return `member ${failed.id} ${failed.view.state === 'Corrupted' ? 'became Corrupted' : 'was cancelled'}${failed.view.reason ? `: ${failed.view.reason}` : ''}`;
}

/** Fans `op` out to the members (through the head), learns their summaries and answers per member. */
export async function fanOut(acts: ReturnType<typeof gangActivities>, members: GangMember[], op: GroupOperation, opId: string): Promise<MemberOutcome[]> {
  if (!members.length) return [];
  const outcomes = await acts.members.operateMembers({ workflowIds: members.map((m) => m.workflowId), op, opId });
  learn(members, outcomes.map((o) => o.view));
  return outcomes;
}

/**
 * Destroys every member that has not ended and waits until every child has closed (each cleans its
 * node and releases its own grant); then releases whatever the gang still holds, as a safety net for
 * members that never started. Nothing runs and nothing is held afterwards.
 */
export async function endAll(acts: ReturnType<typeof gangActivities>, gang: string, members: GangMember[], opId: string): Promise<void> {
  const live = members.filter((m) => m.handle && !m.ended);
  await fanOut(acts, live, { op: 'destroy' }, opId);
  await condition(() => members.every((m) => !m.handle || m.ended));
  await acts.allocator.releaseGang(gang);
  for (const m of members) if (!m.handle) m.view = { ...m.view, state: 'Cancelled', task: null };
}
