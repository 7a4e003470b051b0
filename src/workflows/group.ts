/**
 * A group (seed 000's group service; seed 002 NodeNumber > 1): `count` identical workspaces granted in
 * one atomic allocation and run as child workspace workflows of this one. In pilot mode each member
 * waits in the batch queue for its own pilot job instead (best effort, as one pilot-mode workspace does).
 *
 * All or nothing: the allocator grants every member or none. If a member ends Corrupted or Cancelled
 * while the group is being created (in pilot mode also when its pilot job did not run within the reserve
 * timeout), every member is destroyed and the group ends with the reason, holding nothing. Operations
 * fan out to every live member and answer per member. The group ends when every member has ended.
 */
import { allHandlersFinished, ApplicationFailure, CancellationScope, condition, isCancellation, setHandler, workflowInfo } from '@temporalio/workflow';
import type { Grant } from '../domain/allocation';
import { FailureType } from '../domain/errors';
import type { GroupDescription, GroupInput, GroupOperation, GroupOperationResult } from '../domain/groups';
import { groupDescribeQuery, groupOperateUpdate } from '../domain/messages';
import { awaitTarget, endAll, failureOf, fanOut, gangActivities, newId, pendingView, prefixOf, reserveGang, startMembers, summaryOf, type GangMember } from './gang';

const OPERATIONS: GroupOperation['op'][] = ['start', 'pause', 'unpause', 'reboot', 'shutdown', 'shutdown-save', 'destroy'];

/** Runs a group from its allocation until every member has ended; answers its final description. */
export async function groupWorkflow(input: GroupInput): Promise<GroupDescription> {
  const self = workflowInfo().workflowId;
  const prefix = prefixOf(self, input.id);
  const acts = gangActivities(input.routing.headTaskQueue);
  for (const [field, given] of [['grants', input.grants], ['pilots', input.pilots]] as const) {
    if (given && given.length !== input.count) {
      throw ApplicationFailure.create({ type: FailureType.InvalidSpec, message: `${field}: ${given.length} given for count ${input.count}`, nonRetryable: true });
    }
  }
  const members: GangMember[] = Array.from({ length: input.count }, (_, i) => {
    const workflowId = input.grants ? input.grants[i].holder : input.pilots ? input.pilots[i].slot.workspaceWorkflowId : `${prefix}-${newId('ws')}`;
    const id = workflowId.slice(prefix.length + 1);
    return { id, workflowId, index: i, position: i, spec: input.spec, group: input.id, view: pendingView(id), ended: false };
  });
  const d: Omit<GroupDescription, 'members'> = {
    id: input.id,
    owner: input.owner,
    count: input.count,
    state: 'Deploying',
    ...(input.ensemble ? { ensemble: input.ensemble } : {}),
    createdAt: input.createdAt,
  };
  const describe = (): GroupDescription => ({ ...d, members: members.map(summaryOf) });
  let destroyRequested = false;
  /** The creation watch in flight; destroy cancels it. */
  let watch: CancellationScope | undefined;
  let ops = 0;

  setHandler(groupDescribeQuery, describe);
  setHandler(
    groupOperateUpdate,
    async (op: GroupOperation): Promise<GroupOperationResult> => {
      const opId = `${self}/${op.op}-${++ops}`;
      if (op.op === 'destroy') {
        destroyRequested = true;
        watch?.cancel();
      }
      // Members not started yet (still being allocated) have nothing to answer; destroy reaches them by ending the group.
      const live = members.filter((m) => m.handle && !m.ended);
      const outcomes = await fanOut(acts, live, op, opId);
      return {
        op: op.op,
        members: outcomes.map((o, i) => ({
          id: live[i].id,
          ok: o.ok,
          ...(o.error ? { error: o.error } : {}),
          ...(o.view ? { state: o.view.state } : {}),
        })),
      };
    },
    {
      validator: (op: GroupOperation) => {
        const refuse = (message: string) => {
          throw ApplicationFailure.create({ type: FailureType.OperationNotAllowed, message, nonRetryable: true });
        };
        if (!op || !OPERATIONS.includes(op.op)) refuse(`op: must be one of ${OPERATIONS.join(', ')}`);
        if (d.state === 'Ended') refuse('the group has ended');
        if (op.op === 'destroy') return;
        if (destroyRequested || d.state !== 'Ready') refuse(`cannot ${op.op} a group in state ${destroyRequested ? 'BackingOut' : d.state}; allowed now: destroy`);
      },
    },
  );

  const end = async (reason?: string) => {
    d.state = 'BackingOut';
    if (reason) d.reason = reason;
    await CancellationScope.nonCancellable(async () => {
      await endAll(acts, self, members, `${self}/backout`);
      // Operations still answering (a client's destroy) finish before the group closes.
      await condition(allHandlersFinished);
    });
    d.state = 'Ended';
  };

  try {
    // One allocation for every member, unless the factory already reserved them. In pilot mode nothing is
    // reserved here: each member allocates inside the node time its own pilot job obtains.
    let grants: Record<string, Grant> = {};
    const pilots = Object.fromEntries((input.pilots ?? []).map((p) => [p.slot.workspaceWorkflowId, p]));
    try {
      if (input.grants) grants = Object.fromEntries(input.grants.map((g) => [g.holder, g]));
      else if (!input.pilots) grants = await reserveGang(acts, self, input.owner, members);
    } catch (err) {
      if (isCancellation(err)) throw err;
      await end(`refused: ${failureOf(err).message}`);
      return describe();
    }
    if (destroyRequested) {
      await end();
      return describe();
    }
    await startMembers(members, grants, {
      owner: input.owner,
      routing: input.routing,
      createdAt: input.createdAt,
      ...(input.ensemble ? { ensemble: input.ensemble } : {}),
      targetState: input.spec.targetState,
    }, pilots);

    let failure: string | undefined;
    if (!destroyRequested) {
      watch = new CancellationScope();
      try {
        failure = await watch.run(() => awaitTarget(acts, members, input.spec.targetState));
      } catch (err) {
        if (!(isCancellation(err) && destroyRequested)) throw err;
      } finally {
        watch = undefined;
      }
    }
    if (failure || destroyRequested) {
      // All or nothing: a member that failed during creation takes every member with it.
      await end(failure ? `backed out: ${failure}` : undefined);
      return describe();
    }
    d.state = 'Ready';
    // Members live on their own (operations, deadlines); the group ends when all of them have.
    await condition(() => destroyRequested || members.every((m) => m.ended));
    await end();
    return describe();
  } catch (err) {
    if (!isCancellation(err)) throw err;
    // The group itself was cancelled: its members go with it.
    await end('the group was cancelled');
    throw err;
  }
}
