/**
 * The HTTP API (express): the factory (workspaces, groups, ensembles), workspace operations, listing,
 * status and admin routes for clients, and the image repository for nodes. It talks to Temporal through
 * the client SDK only. Every error is problem+json; nothing a client sends can produce a 500.
 */
import { resolve as resolvePath } from 'node:path';
import express, { type NextFunction, type Request, type Response } from 'express';
import type { Logger } from 'pino';
import { WorkflowNotFoundError, WorkflowUpdateFailedError, WorkflowUpdateStage, type Client } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { AllocatorClient } from '../clients/allocator';
import { workspaceWorkflowId } from '../config/names';
import type { VwsConfig } from '../config/schema';
import { FailureType } from '../domain/errors';
import { destroyUpdate } from '../domain/messages';
import { createWorkspaceSchema, imageNameSchema } from '../domain/requests';
import { refusalReason, type WorkspaceOperation } from '../domain/states';
import type { WorkspaceDescription } from '../domain/workspace';
import { acceptUpload, resolveImage, UploadRefused } from '../repository';
import { invalid, targetProblem } from './workspace-spec';
import { log } from '../log';
import { requireToken, type Principal, type TokenEntry } from './auth';
import { requireClient } from './client-auth';
import { adminRoutes } from './admin';
import { createDriftRouter } from './drift';
import { eventRoutes, type EventStreamOptions } from './events';
import { Factory } from './factory';
import { ensembleRoutes, groupRoutes } from './groups';
import { idempotencyKey, parseBody, requireAdmin, wrap } from './http';
import { listingRoutes } from './listing';
import { ApiMetrics } from './metrics';
import { openApiDocument } from './openapi';
import { requestLog } from './request-log';
import { WORKSPACE_OPERATIONS } from './operations';
import { HttpProblem, sendProblem } from './problem';
import { statusRoutes } from './status';
import { pilotRoutes } from './pilot';
import { presentWorkspace, readOwnedDescription, readOwnedWorkspace } from './workspace-view';

/** Dependencies of the API. */
export interface ApiDeps {
  config: VwsConfig;
  client: Client;
  /** Client tokens (by digest). */
  clientTokens: () => readonly TokenEntry[];
  /** Node tokens (by digest), for the repository. */
  nodeTokens: () => readonly TokenEntry[];
  /** The allocator (default: one over `client`). */
  allocator?: AllocatorClient;
  /** Where request lines go (default: the process logger). */
  logger?: Logger;
  /** The metrics `/metrics` serves (default: new ones over `client` and the allocator). */
  metrics?: ApiMetrics;
  /** How event streams poll and keep alive (default: see `events.ts`). */
  events?: EventStreamOptions;
}

/** The operations clients reach as `POST /workspaces/:id/<operation>` (see `operations.ts`). */
const OPERATIONS = WORKSPACE_OPERATIONS;

/** True when an Update was rejected by the workflow's validator (the state table said no). */
function isRefusal(e: unknown): e is WorkflowUpdateFailedError & { cause: ApplicationFailure } {
  return e instanceof WorkflowUpdateFailedError && e.cause instanceof ApplicationFailure && e.cause.type === FailureType.OperationNotAllowed;
}

const present = presentWorkspace;

/** Creates the express application. */
export function createApp(deps: ApiDeps): express.Express {
  const { config, client } = deps;
  const allocator = deps.allocator ?? new AllocatorClient(client, config);
  const factory = new Factory(config, client, allocator);
  const metrics = deps.metrics ?? new ApiMetrics({ config, client, allocator });
  const app = express();
  app.disable('x-powered-by');
  // First, so that every answer is counted and logged, refusals of bad JSON and of tokens included.
  app.use(metrics.middleware());
  app.use(requestLog(deps.logger ?? log));
  app.use(express.json({ limit: '64kb' }));

  /** Reads a workspace the principal owns; others' workspaces do not exist for it (404). */
  const ownedWorkspace = (id: string, principal: Principal): Promise<WorkspaceDescription> => readOwnedDescription(client, config, principal, id);

  app.get('/healthz', (_req, res) => {
    res.json({ ok: true });
  });

  app.get('/openapi.json', (_req, res) => {
    res.json(openApiDocument());
  });

  // Admin-only unless the site opts in (`api.metricsPublic`): the metrics show the site's nodes and use.
  const metricsAuth = config.api.metricsPublic
    ? [(_req: Request, _res: Response, next: NextFunction) => next()]
    : [requireClient(deps.clientTokens, config.api.tls), (_req: Request, res: Response, next: NextFunction) => (requireAdmin(res), next())];
  app.get(
    '/metrics',
    ...metricsAuth,
    wrap(async (_req, res) => {
      const { contentType, body } = await metrics.render();
      res.type(contentType).send(body);
    }),
  );

  // Image repository, for node workers (node token).
  app.get(
    '/repository/:name',
    requireToken(deps.nodeTokens),
    wrap(async (req, res) => {
      const name = String(req.params.name);
      if (!imageNameSchema.safeParse(name).success || !(await resolveImage(config, name))) {
        throw new HttpProblem(404, 'Not Found', `no image ${name} in the repository`);
      }
      await new Promise<void>((ok, fail) =>
        res.sendFile(name, { root: resolvePath(config.repository.dir), dotfiles: 'deny' }, (e) => (e ? fail(e) : ok())),
      );
    }),
  );

  // Stage-out from nodes (node token): the body is the file, the header its sha256 taken on the node.
  app.put(
    '/repository/:name',
    requireToken(deps.nodeTokens),
    wrap(async (req, res) => {
      const name = String(req.params.name);
      try {
        const image = await acceptUpload(config, name, req, String(req.headers['x-vws-sha256'] ?? ''));
        log.info({ image: name, sha256: image.sha256, bytes: image.sizeBytes }, 'image staged out to the repository');
        res.status(201).json(image);
      } catch (e) {
        if (e instanceof UploadRefused) throw new HttpProblem(e.status, e.status === 409 ? 'Conflict' : 'Invalid upload', e.message);
        throw e;
      }
    }),
  );

  // Pilots authenticate by their message's signature, not a bearer token: before the token middleware.
  app.use(pilotRoutes({ config, client }));

  const clients = express.Router();
  // The token, or with mutual TLS the client certificate (and a token, if sent, of the same client).
  clients.use(requireClient(deps.clientTokens, config.api.tls));

  // One workspace, or a group when count > 1 (seed 002 NodeNumber); reserved before anything starts.
  clients.post(
    '/workspaces',
    wrap(async (req, res) => {
      const principal = res.locals.principal as Principal;
      const key = idempotencyKey(req);
      const body = parseBody(createWorkspaceSchema, req.body);
      const created = await factory.createWorkspaces(principal, body, key);
      res.status(202).location(created.location).json(created.answer);
    }),
  );

  clients.get(
    '/workspaces/:id',
    wrap(async (req, res) => {
      // From the view in the workflow's memo (no query, so no worker and no replay); see workspace-view.ts.
      res.json(present(config, await readOwnedWorkspace(client, config, res.locals.principal as Principal, String(req.params.id))));
    }),
  );

  /** Early refusal from the state table; the workflow's validator checks again (the state may move meanwhile). */
  function refuseEarly(d: WorkspaceDescription, op: WorkspaceOperation): void {
    const reason = refusalReason({ state: d.state, task: d.task, hasSavedState: !!d.saved?.state }, op);
    if (reason) throw new HttpProblem(409, 'Operation not allowed', reason, { state: d.state, task: d.task });
  }

  /** Maps the workflow's refusal (or its completion since we looked) to 409 naming the current state. */
  async function asConflict(e: unknown, id: string, principal: Principal, op: WorkspaceOperation): Promise<never> {
    if (isRefusal(e) || e instanceof WorkflowNotFoundError) {
      const current = await ownedWorkspace(id, principal);
      const detail = isRefusal(e) ? e.cause.message : `cannot ${op} a workspace in state ${current.state}`;
      throw new HttpProblem(409, 'Operation not allowed', detail, { state: current.state, task: current.task });
    }
    throw e;
  }

  clients.delete(
    '/workspaces/:id',
    wrap(async (req, res) => {
      const id = String(req.params.id);
      const principal = res.locals.principal as Principal;
      refuseEarly(await ownedWorkspace(id, principal), 'destroy');
      try {
        const d = await client.workflow.getHandle(workspaceWorkflowId(config, id)).executeUpdate(destroyUpdate);
        log.info({ workspace: id }, 'workspace destroy requested');
        res.status(202).location(`/workspaces/${id}`).json(present(config, d));
      } catch (e) {
        await asConflict(e, id, principal, 'destroy');
      }
    }),
  );

  clients.post(
    '/workspaces/:id/:operation',
    wrap(async (req, res) => {
      const id = String(req.params.id);
      const op = String(req.params.operation);
      const principal = res.locals.principal as Principal;
      if (!Object.hasOwn(OPERATIONS, op)) {
        throw new HttpProblem(404, 'Not Found', `no operation ${op}; operations: ${Object.keys(OPERATIONS).join(', ')}, and DELETE to destroy`);
      }
      const { schema, update, takesArgs } = OPERATIONS[op as keyof typeof OPERATIONS];
      const args = parseBody(schema, req.body);
      const target = (args as { target?: string }).target;
      const problem = target ? targetProblem(config, principal, target) : null;
      if (problem) throw invalid([{ field: 'target', message: problem }]);
      const before = await ownedWorkspace(id, principal);
      refuseEarly(before, op as WorkspaceOperation);
      if (op === 'start' && before.runningTimeLeftSeconds <= 0 && !(args as { durationSeconds?: number }).durationSeconds) {
        const errors = [{ field: 'durationSeconds', message: 'this workspace has no running time left; give it more' }];
        throw new HttpProblem(400, 'Invalid request', `durationSeconds: ${errors[0].message}`, { errors });
      }
      const handle = client.workflow.getHandle(workspaceWorkflowId(config, id));
      try {
        // Accepted means validated and queued; the client follows the state (the operation may take minutes).
        const waitForStage = WorkflowUpdateStage.ACCEPTED;
        if (takesArgs) await handle.startUpdate(update.name, { args: [args], waitForStage });
        else await handle.startUpdate(update.name, { waitForStage });
      } catch (e) {
        await asConflict(e, id, principal, op as WorkspaceOperation);
      }
      log.info({ workspace: id, operation: op }, 'workspace operation accepted');
      res.status(202).location(`/workspaces/${id}`).json(present(config, await ownedWorkspace(id, principal)));
    }),
  );

  clients.use(listingRoutes(config, client));
  clients.use(eventRoutes(config, client, deps.events));
  clients.use(groupRoutes({ config, client, factory }));
  clients.use(ensembleRoutes({ config, client, factory }));
  clients.use(statusRoutes(config, client, allocator));
  clients.use(adminRoutes(config, allocator, client));
  clients.use(createDriftRouter({ ...deps, authenticate: requireClient(deps.clientTokens, config.api.tls) }));
  app.use(clients);

  app.use((req, _res, next) => next(new HttpProblem(404, 'Not Found', `no route ${req.method} ${req.path}`)));
  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    if (err instanceof HttpProblem) return sendProblem(res, err);
    const e = err as { type?: string; status?: number; message?: string };
    if (e?.type === 'entity.parse.failed') {
      return sendProblem(res, new HttpProblem(400, 'Invalid request', 'the body is not valid JSON', { errors: [{ field: '(body)', message: 'not valid JSON' }] }));
    }
    if (e?.type === 'entity.too.large') return sendProblem(res, new HttpProblem(413, 'Payload Too Large', 'the body is larger than 64 KiB'));
    // Not the client's fault (a bug, or Temporal unreachable): logged in full, answered without detail.
    log.error({ err, method: req.method, path: req.path }, 'request failed');
    return sendProblem(res, new HttpProblem(500, 'Internal Server Error', 'vws could not complete the request; see the head log'));
  });
  return app;
}
