/**
 * An ensemble (seed 000's ensemble service): workspaces and groups register as members without being
 * allocated or launched; `done` (or a member registered with `done`) co-schedules them: "all cluster
 * members will be scheduled at same time or none will run".
 *
 * Co-scheduling: one atomic allocation covering every member workspace (the allocator grants all or
 * none, so a waiting ensemble never holds part of the site and two gangs cannot deadlock); while
 * capacity is short it retries with bounded exponential backoff until `deadlineSeconds` after `done`,
 * then ends holding nothing. Then every member is propagated (as a child workspace with its grant,
 * target Propagated), and once all are Propagated all are started at once. If any member fails on the
 * way, every member is destroyed and the ensemble reports why. `destroyAll` ends everything.
 */
import { allHandlersFinished, ApplicationFailure, CancellationScope, condition, isCancellation, setHandler, workflowInfo } from '@temporalio/workflow';
import type { Grant } from '../domain/allocation';
import { FailureType } from '../domain/errors';
import type { EnsembleDescription, EnsembleInput, EnsembleMemberRequest, EnsembleRegistration } from '../domain/groups';
import { ensembleStartLeadMs } from '../domain/groups';
import { ensembleDescribeQuery, ensembleDestroyUpdate, ensembleDoneUpdate, ensembleRegisterUpdate } from '../domain/messages';
import { awaitTarget, endAll, failureOf, fanOut, gangActivities, newId, pendingView, prefixOf, reserveGang, startMembers, summaryOf, type GangMember } from './gang';

/** Capacity retries: the first after 2 s, doubling up to 30 s between attempts, until the deadline. */
const BACKOFF_FIRST_MS = 2_000;
const BACKOFF_MAX_MS = 30_000;
/** Refusals that waiting cannot fix: the ensemble ends at once. */
const FINAL_REFUSALS: string[] = [FailureType.QuotaExceeded, FailureType.PolicyViolation, FailureType.InvalidSpec];

/** A registered member: a single workspace or a group of them. */
interface Registered {
  memberId: string;
  count: number;
  workspaces: GangMember[];
}

/** Runs an ensemble from registration until every member has ended; answers its final report. */
export async function ensembleWorkflow(input: EnsembleInput): Promise<EnsembleDescription> {
  const self = workflowInfo().workflowId;
  const prefix = prefixOf(self, input.id);
  const acts = gangActivities(input.routing.headTaskQueue);
  const registered: Registered[] = [];
  const all = (): GangMember[] => registered.flatMap((r) => r.workspaces);
  const d: Omit<EnsembleDescription, 'members'> = { id: input.id, owner: input.owner, state: 'Registering', attempts: 0, createdAt: input.createdAt };
  const describe = (): EnsembleDescription => ({
    ...d,
    members: registered.map((r) => ({ memberId: r.memberId, count: r.count, workspaces: r.workspaces.map(summaryOf) })),
  });
  let doneRequested = false;
  let destroyRequested = false;
  /** The step in flight that destroy-all interrupts (a backoff wait, a watch). */
  let step: CancellationScope | undefined;

  const refuse = (message: string, type: string = FailureType.OperationNotAllowed) => {
    throw ApplicationFailure.create({ type, message, nonRetryable: true });
  };
  const done = () => {
    doneRequested = true;
    d.doneAt = new Date().toISOString();
    d.state = 'Waiting';
  };

  setHandler(ensembleDescribeQuery, describe);
  setHandler(
    ensembleRegisterUpdate,
    (req: EnsembleMemberRequest): EnsembleRegistration => {
      const group = req.count > 1;
      const memberId = group ? newId('grp') : newId('ws');
      const workspaces = Array.from({ length: req.count }, (_, i): GangMember => {
        const id = group ? newId('ws') : memberId;
        return {
          id,
          workflowId: `${prefix}-${id}`,
          ...(group ? { index: i, group: memberId } : {}),
          position: group ? i : registered.length,
          spec: req.spec,
          view: pendingView(id),
          ended: false,
        };
      });
      registered.push({ memberId, count: req.count, workspaces });
      if (req.done) done();
      return { memberId, workspaceIds: workspaces.map((w) => w.id) };
    },
    {
      validator: (req: EnsembleMemberRequest) => {
        if (d.state !== 'Registering' || doneRequested || destroyRequested) refuse(`cannot register a member with an ensemble in state ${d.state}: members register before done`);
        if (!req || typeof req !== 'object' || !req.spec) refuse('spec: required', FailureType.InvalidSpec);
        if (!Number.isInteger(req.count) || req.count < 1) refuse('count: must be a positive integer', FailureType.InvalidSpec);
      },
    },
  );
  setHandler(
    ensembleDoneUpdate,
    (): EnsembleDescription => {
      done();
      return describe();
    },
    {
      validator: () => {
        if (d.state !== 'Registering' || doneRequested || destroyRequested) refuse(`done was already given (the ensemble is ${d.state})`);
        if (!registered.length) refuse('the ensemble has no members: register at least one before done');
      },
    },
  );
  setHandler(
    ensembleDestroyUpdate,
    (): EnsembleDescription => {
      destroyRequested = true;
      step?.cancel();
      return describe();
    },
    { validator: () => (d.state === 'Ended' ? refuse('the ensemble has ended') : undefined) },
  );

  /** Runs `work` so that destroy-all can interrupt it; answers undefined when it was interrupted. */
  const interruptible = async <T>(work: () => Promise<T>): Promise<T | undefined> => {
    if (destroyRequested) return undefined;
    step = new CancellationScope();
    try {
      return await step.run(work);
    } catch (err) {
      if (isCancellation(err) && destroyRequested) return undefined;
      throw err;
    } finally {
      step = undefined;
    }
  };

  const end = async (reason?: string) => {
    d.state = 'BackingOut';
    if (reason) d.reason = reason;
    await CancellationScope.nonCancellable(async () => {
      await endAll(acts, self, all(), `${self}/backout`);
      await condition(allHandlersFinished);
    });
    d.state = 'Ended';
    return describe();
  };

  try {
    await condition(() => doneRequested || destroyRequested);
    if (destroyRequested) return await end();

    // One atomic allocation for every member, retried with bounded backoff while capacity is short.
    const deadline = Date.now() + input.deadlineSeconds * 1000;
    let backoff = BACKOFF_FIRST_MS;
    let grants: Record<string, Grant> | undefined;
    while (!grants) {
      d.attempts++;
      try {
        grants = await reserveGang(acts, self, input.owner, all());
      } catch (err) {
        if (isCancellation(err)) throw err;
        const why = failureOf(err);
        d.lastRefusal = why.message;
        if (FINAL_REFUSALS.includes(why.type)) return await end(`refused: ${why.message}`);
        const left = deadline - Date.now();
        if (left <= 0) {
          return await end(`no capacity within ${input.deadlineSeconds} s after done (${d.attempts} attempt(s)); last refusal: ${why.message}`);
        }
        await interruptible(() => condition(() => destroyRequested, Math.min(backoff, left)));
        backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
        if (destroyRequested) return await end();
      }
    }
    if (destroyRequested) return await end();

    // Propagate every member (each holds its own grant), not started.
    d.state = 'Deploying';
    await startMembers(all(), grants, { owner: input.owner, routing: input.routing, createdAt: input.createdAt, ensemble: input.id, targetState: 'Propagated' });
    const failure = await interruptible(() => awaitTarget(acts, all(), 'Propagated'));
    if (destroyRequested) return await end();
    if (failure) return await end(`backed out before start: ${failure}`);

    // Start every member at once: one concurrent fan-out carrying one common start time a little ahead,
    // which each node waits for before it boots; none keeps running unless all started.
    const planned = new Date(Date.now() + ensembleStartLeadMs(all().length)).toISOString();
    const outcomes = (await interruptible(() => fanOut(acts, all(), { op: 'start', args: { notBefore: planned } }, `${self}/start`))) ?? [];
    if (destroyRequested) return await end();
    const failed = outcomes.findIndex((o) => !o.ok || o.view?.state !== 'Running');
    if (failed >= 0) {
      const o = outcomes[failed];
      return await end(`backed out at start: member ${all()[failed].id} did not start: ${o.error ?? `it is ${o.view?.state ?? 'unknown'}`}`);
    }
    const starts = all()
      .map((m) => m.view.firstStartedAt)
      .filter((t): t is string => !!t)
      .sort();
    if (starts.length) {
      const first = starts[0];
      const last = starts[starts.length - 1];
      d.started = { first, last, skewMs: Date.parse(last) - Date.parse(first), planned };
    }
    d.state = 'Ready';

    // Members live on their own now; the ensemble ends on destroy-all or when every member has ended.
    await condition(() => destroyRequested || all().every((m) => m.ended));
    return await end();
  } catch (err) {
    if (!isCancellation(err)) throw err;
    await end('the ensemble was cancelled');
    throw err;
  }
}
