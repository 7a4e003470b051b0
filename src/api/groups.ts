/**
 * Groups and ensembles over HTTP (seed 000's group and ensemble services). A group is created by
 * `POST /workspaces` with `count` > 1 (seed 002 NodeNumber: one deployment request for every member), so
 * there is no `POST /groups`; here are its reads, its fanned-out operations and its destroy. Ensembles
 * are created empty, members register (allocated and propagated at `done`, not launched before), and
 * `done` co-schedules them all.
 */
import { createHash } from 'node:crypto';
import express from 'express';
import { WorkflowNotFoundError, WorkflowUpdateStage, type Client, type WorkflowHandle } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import { ensembleWorkflowId, groupWorkflowId } from '../config/names';
import type { VwsConfig } from '../config/schema';
import type { EnsembleMemberRequest, GroupOperation } from '../domain/groups';
import {
  ensembleDescribeQuery,
  ensembleDestroyUpdate,
  ensembleDoneUpdate,
  ensembleRegisterUpdate,
  groupDescribeQuery,
  groupOperateUpdate,
} from '../domain/messages';
import { createEnsembleSchema, emptyRequestSchema, ensembleIdSchema, ensembleMemberSchema, groupIdSchema } from '../domain/requests';
import { log } from '../log';
import type { Factory } from './factory';
import { idempotencyKey, parseBody, principalOf, queryOwned, wrap } from './http';
import { bodyHash } from './idempotency';
import { GROUP_OPERATIONS } from './operations';
import { failureProblem, HttpProblem, problemType } from './problem';
import { invalid, targetProblem } from './workspace-spec';

/** What the group and ensemble routes need. */
export interface GangRouteDeps {
  config: VwsConfig;
  client: Client;
  factory: Factory;
}

/** A failed Update on a group or ensemble: its typed refusal, or 409 when the workflow has ended. */
function updateProblem(e: unknown, what: string, id: string): never {
  const problem = failureProblem(e);
  if (problem) throw problem;
  if (e instanceof WorkflowNotFoundError) throw new HttpProblem(409, 'Operation not allowed', `the ${what} ${id} has ended`, { state: 'Ended' });
  throw e;
}

/** Routes under /groups. */
export function groupRoutes({ config, client }: GangRouteDeps): express.Router {
  const r = express.Router();
  const owned = (id: string, res: express.Response) =>
    queryOwned(client, groupWorkflowId(config, id), groupDescribeQuery, principalOf(res), 'group', id, groupIdSchema);

  r.get(
    '/groups/:id',
    wrap(async (req, res) => {
      const id = String(req.params.id);
      res.json({ ...(await owned(id, res)), links: { self: `/groups/${id}` } });
    }),
  );

  /** Sends an operation to every live member; answers what each member did. */
  async function operate(id: string, res: express.Response, op: GroupOperation): Promise<void> {
    await owned(id, res);
    try {
      const result = await client.workflow.getHandle(groupWorkflowId(config, id)).executeUpdate(groupOperateUpdate, { args: [op] });
      log.info({ group: id, operation: op.op }, 'group operation done');
      res.status(202).location(`/groups/${id}`).json({ id, ...result, links: { self: `/groups/${id}` } });
    } catch (e) {
      updateProblem(e, 'group', id);
    }
  }

  r.post(
    '/groups/:id/:operation',
    wrap(async (req, res) => {
      const id = String(req.params.id);
      const op = String(req.params.operation);
      if (!Object.hasOwn(GROUP_OPERATIONS, op)) {
        throw new HttpProblem(404, 'Not Found', `no group operation ${op}; operations: ${Object.keys(GROUP_OPERATIONS).join(', ')}, and DELETE to destroy`);
      }
      const args = parseBody(GROUP_OPERATIONS[op as keyof typeof GROUP_OPERATIONS], req.body) as GroupOperation['args'] & object;
      const problem = args.target ? targetProblem(config, principalOf(res), args.target) : null;
      if (problem) throw invalid([{ field: 'target', message: problem }]);
      await operate(id, res, { op: op as GroupOperation['op'], ...(Object.keys(args).length ? { args } : {}) });
    }),
  );

  r.delete(
    '/groups/:id',
    wrap(async (req, res) => {
      await operate(String(req.params.id), res, { op: 'destroy' });
    }),
  );
  return r;
}

/**
 * The arguments of an Update the workflow accepted with `updateId`, read from its history, or null.
 * Temporal answers a repeated update id with the first one's result and never runs it twice; this tells
 * a repeat with another body apart.
 */
async function acceptedUpdateArgs(handle: WorkflowHandle, updateId: string): Promise<unknown[] | null> {
  const history = await handle.fetchHistory();
  for (const event of history.events ?? []) {
    const request = event.workflowExecutionUpdateAcceptedEventAttributes?.acceptedRequest;
    if (request?.meta?.updateId !== updateId) continue;
    return (request.input?.args?.payloads ?? []).map((p) => defaultPayloadConverter.fromPayload(p));
  }
  return null;
}

/** Routes under /ensembles. */
export function ensembleRoutes({ config, client, factory }: GangRouteDeps): express.Router {
  const r = express.Router();
  const handle = (id: string) => client.workflow.getHandle(ensembleWorkflowId(config, id));
  const owned = (id: string, res: express.Response) =>
    queryOwned(client, ensembleWorkflowId(config, id), ensembleDescribeQuery, principalOf(res), 'ensemble', id, ensembleIdSchema);
  const links = (id: string) => ({ self: `/ensembles/${id}`, members: `/ensembles/${id}/members`, done: `/ensembles/${id}/done` });

  r.post(
    '/ensembles',
    wrap(async (req, res) => {
      const key = idempotencyKey(req);
      const body = parseBody(createEnsembleSchema, req.body);
      const created = await factory.createEnsemble(principalOf(res), body, key);
      res.status(202).location(created.location).json(created.answer);
    }),
  );

  r.get(
    '/ensembles/:id',
    wrap(async (req, res) => {
      const id = String(req.params.id);
      res.json({ ...(await owned(id, res)), links: links(id) });
    }),
  );

  r.post(
    '/ensembles/:id/members',
    wrap(async (req, res) => {
      const id = String(req.params.id);
      const principal = principalOf(res);
      const key = idempotencyKey(req);
      await owned(id, res);
      const body = parseBody(ensembleMemberSchema, req.body);
      const member: EnsembleMemberRequest = await factory.memberRequest(principal, body);
      const h = handle(id);
      // A keyed registration is an Update with an id derived from the owner and the key: Temporal runs it once.
      const updateId = key === undefined ? undefined : `register-${createHash('sha256').update(`${principal.identity}\0${key}`).digest('hex').slice(0, 32)}`;
      if (updateId) {
        const earlier = await acceptedUpdateArgs(h, updateId);
        if (earlier && bodyHash(earlier[0]) !== bodyHash(member)) {
          const message = `this key was already used to register a member of ${id} with another request body; use a new key`;
          throw new HttpProblem(422, 'Idempotency key reused', `Idempotency-Key: ${message}`, { type: problemType('IdempotencyKeyReused'), errors: [{ field: 'Idempotency-Key', message }] });
        }
      }
      try {
        const registration = await h.executeUpdate(ensembleRegisterUpdate, { args: [member], ...(updateId ? { updateId } : {}) });
        log.info({ ensemble: id, member: registration.memberId, count: member.count, done: !!member.done }, 'ensemble member registered');
        res
          .status(202)
          .location(`/ensembles/${id}`)
          .json({ ensemble: id, ...registration, count: member.count, memoryMiB: member.spec.memoryMiB, vcpus: member.spec.vcpus, durationSeconds: member.spec.durationSeconds, links: links(id) });
      } catch (e) {
        updateProblem(e, 'ensemble', id);
      }
    }),
  );

  r.post(
    '/ensembles/:id/done',
    wrap(async (req, res) => {
      const id = String(req.params.id);
      parseBody(emptyRequestSchema, req.body);
      await owned(id, res);
      try {
        // Accepted is enough: co-scheduling may wait for capacity until the deadline; the client follows the report.
        const u = await handle(id).startUpdate(ensembleDoneUpdate, { waitForStage: WorkflowUpdateStage.ACCEPTED });
        log.info({ ensemble: id, update: u.updateId }, 'ensemble done');
      } catch (e) {
        updateProblem(e, 'ensemble', id);
      }
      res.status(202).location(`/ensembles/${id}`).json({ ...(await owned(id, res)), links: links(id) });
    }),
  );

  r.delete(
    '/ensembles/:id',
    wrap(async (req, res) => {
      const id = String(req.params.id);
      await owned(id, res);
      try {
        const d = await handle(id).executeUpdate(ensembleDestroyUpdate);
        log.info({ ensemble: id }, 'ensemble destroy-all requested');
        res.status(202).location(`/ensembles/${id}`).json({ ...d, links: links(id) });
      } catch (e) {
        updateProblem(e, 'ensemble', id);
      }
    }),
  );
  return r;
}
