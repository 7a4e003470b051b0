/**
 * Head activities over the Temporal client for group and ensemble workflows, which cannot send Updates
 * or Queries to other workflows themselves: fan an operation out to member workspaces (their Updates),
 * and watch members by the view each keeps in its memo until they settle.
 *
 * Both are idempotent: a fanned-out Update carries an id fixed by the calling workflow, so a retried
 * activity attaches to the Update it already sent instead of asking twice; watching only reads.
 */
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { WorkflowNotFoundError, WorkflowUpdateFailedError, type Client, type WorkflowHandle } from '@temporalio/client';
import { FailureType } from '../../domain/errors';
import type { GroupOperation, MemberSummary } from '../../domain/groups';
import {
  destroyUpdate,
  pauseUpdate,
  rebootUpdate,
  shutdownSaveUpdate,
  shutdownUpdate,
  startUpdate,
  unpauseUpdate,
} from '../../domain/messages';
import type { WorkspaceState } from '../../domain/states';
import type { WorkspaceDescription } from '../../domain/workspace';
import { describeWorkspace } from '../../clients/workspace-view';

/** A member as the head saw it: its summary without the index (the calling workflow knows that). */
export type MemberView = Omit<MemberSummary, 'index'>;

/** Input of `operateMembers`. */
export interface OperateMembersInput {
  /** The members' workflow ids. */
  workflowIds: string[];
  op: GroupOperation;
  /**
   * Fixed by the calling workflow for this fan-out and used as every member's Update id, so a retry of
   * this activity re-attaches to the Updates it sent rather than sending them again.
   */
  opId: string;
}

/** What one member answered to a fanned-out operation. */
export interface MemberOutcome {
  workflowId: string;
  ok: boolean;
  /** Why the member refused or failed (its typed failure's message). */
  error?: string;
  errorType?: string;
  /** The member after the operation (absent when it could not be read). */
  view?: MemberView;
}

/** Input of `awaitMembers`. */
export interface AwaitMembersInput {
  workflowIds: string[];
  /** The state every member should reach with nothing in flight. */
  target: WorkspaceState;
  /** How often to look (default: 500 ms, more for large gangs so the server is not flooded). */
  pollMs?: number;
}

/** The summary of a workspace description. */
export function viewOf(d: WorkspaceDescription): MemberView {
  return {
    id: d.id,
    state: d.state,
    task: d.task,
    ...(d.node ? { node: d.node } : {}),
    ...(d.obtainedIp || d.network?.ip ? { ip: d.obtainedIp ?? d.network?.ip } : {}),
    ...(d.reason ? { reason: d.reason } : {}),
    ...(d.firstStartedAt ? { firstStartedAt: d.firstStartedAt } : {}),
  };
}

/** Sends one operation's Update to a member and waits for its answer. */
function sendUpdate(h: WorkflowHandle, op: GroupOperation, updateId: string): Promise<WorkspaceDescription> {
  switch (op.op) {
    case 'start':
      return h.executeUpdate(startUpdate, {
        args: [{ ...(op.args?.durationSeconds ? { durationSeconds: op.args.durationSeconds } : {}), ...(op.args?.notBefore ? { notBefore: op.args.notBefore } : {}) }],
        updateId,
      });
    case 'pause':
      return h.executeUpdate(pauseUpdate, { updateId });
    case 'unpause':
      return h.executeUpdate(unpauseUpdate, { updateId });
    case 'reboot':
      return h.executeUpdate(rebootUpdate, { updateId });
    case 'shutdown':
      return h.executeUpdate(shutdownUpdate, { updateId });
    case 'shutdown-save':
      return h.executeUpdate(shutdownSaveUpdate, { args: [op.args?.target ? { target: op.args.target } : {}], updateId });
    case 'destroy':
      return h.executeUpdate(destroyUpdate, { updateId });
  }
}

/** Resolves when the running activity is cancelled (rejecting with the cancellation), never otherwise. */
function cancelled(): Promise<never> {
  return Context.current().cancelled as Promise<never>;
}

/** Creates the member activities over a Temporal client. */
export function createMemberActivities(deps: { client: Client }) {
  const { client } = deps;

  /** A member's summary, or null while its workflow does not exist yet (or cannot be read right now). */
  async function look(workflowId: string): Promise<MemberView | null> {
    try {
      // From the view in the memo (no query): a 100-member watch polls every second, and a query of a
      // member the head's cache does not hold would replay it.
      return viewOf(await describeWorkspace(client, workflowId));
    } catch {
      return null;
    }
  }

  return {
    /**
     * Sends `op` to every member at once and answers per member once each has answered. A destroy that
     * finds the member already being destroyed or gone counts as done: backout must converge, not fail.
     */
    async operateMembers(input: OperateMembersInput): Promise<MemberOutcome[]> {
      if (!input.workflowIds.length) return [];
      const beat = setInterval(() => Context.current().heartbeat(), 2_000);
      try {
        const all = Promise.all(
          input.workflowIds.map(async (workflowId): Promise<MemberOutcome> => {
            const h = client.workflow.getHandle(workflowId);
            try {
              return { workflowId, ok: true, view: viewOf(await sendUpdate(h, input.op, input.opId)) };
            } catch (e) {
              const cause = e instanceof WorkflowUpdateFailedError && e.cause instanceof ApplicationFailure ? e.cause : undefined;
              const gone = e instanceof WorkflowNotFoundError;
              if (input.op.op === 'destroy' && (gone || cause?.type === FailureType.OperationNotAllowed)) {
                const view = await look(workflowId);
                return { workflowId, ok: true, ...(view ? { view } : {}) };
              }
              if (!cause && !gone) throw e; // the server or the connection: let the activity retry
              const view = await look(workflowId);
              return {
                workflowId,
                ok: false,
                error: gone ? 'the workspace has ended' : cause!.message,
                errorType: gone ? FailureType.OperationNotAllowed : (cause!.type ?? FailureType.CommandFailed),
                ...(view ? { view } : {}),
              };
            }
          }),
        );
        all.catch(() => undefined); // a cancelled fan-out's late failures are nobody's to handle
        return await Promise.race([all, cancelled()]);
      } finally {
        clearInterval(beat);
      }
    },

    /**
     * Watches the members until every one is in `target` with nothing in flight, or until any one is
     * Corrupted or Cancelled (the caller backs out at once); answers each member's summary (null for a
     * member whose workflow does not exist). Heartbeats every look, so a cancelled watch stops promptly.
     */
    async awaitMembers(input: AwaitMembersInput): Promise<Array<MemberView | null>> {
      const pollMs = input.pollMs ?? Math.max(500, input.workflowIds.length * 10);
      for (;;) {
        const views = await Promise.all(input.workflowIds.map(look));
        Context.current().heartbeat({ settled: views.filter((v) => v && v.state === input.target && v.task === null).length });
        const failed = views.some((v) => v && (v.state === 'Corrupted' || v.state === 'Cancelled'));
        const done = views.every((v) => v && v.state === input.target && v.task === null);
        if (failed || done) return views;
        await Context.current().sleep(pollMs);
      }
    },
  };
}

/** The member activities' type, for `proxyActivities` in workflows. */
export type MemberActivities = ReturnType<typeof createMemberActivities>;
