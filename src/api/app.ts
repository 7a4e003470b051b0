/**
 * The HTTP API (express): workspace create/read/destroy for clients, and the image repository for
 * nodes. It talks to Temporal through the client SDK only. Every error is problem+json; nothing a
 * client sends can produce a 500.
 */
import { randomBytes } from 'node:crypto';
import { resolve as resolvePath } from 'node:path';
import express, { type NextFunction, type Request, type Response } from 'express';
import { WorkflowNotFoundError, WorkflowUpdateFailedError, type Client } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { headTaskQueue, nodeTaskQueuePrefix, workspaceWorkflowId } from '../config/names';
import type { VwsConfig } from '../config/schema';
import { FailureType } from '../domain/errors';
import { describeQuery, destroyUpdate, VwsOwner, VwsState } from '../domain/messages';
import { createWorkspaceSchema, fieldProblems, imageNameSchema, workspaceIdSchema } from '../domain/requests';
import { isOperationAllowed, refusalMessage } from '../domain/states';
import type { WorkspaceDescription, WorkspaceInput } from '../domain/workspace';
import { resolveImage } from '../repository';
import { log } from '../log';
import { requireToken, type Principal, type TokenEntry } from './auth';
import { HttpProblem, sendProblem } from './problem';

/** Dependencies of the API. */
export interface ApiDeps {
  config: VwsConfig;
  client: Client;
  /** Client tokens (by digest). */
  clientTokens: () => readonly TokenEntry[];
  /** Node tokens (by digest), for the repository. */
  nodeTokens: () => readonly TokenEntry[];
}

type Handler = (req: Request, res: Response) => Promise<void>;
const wrap = (h: Handler) => (req: Request, res: Response, next: NextFunction) => void h(req, res).catch(next);

/** The API's view of a workspace: the description plus links. */
function present(config: VwsConfig, d: WorkspaceDescription) {
  const wf = encodeURIComponent(workspaceWorkflowId(config, d.id));
  return {
    ...d,
    links: {
      self: `/workspaces/${d.id}`,
      temporalUi: `${config.temporal.uiUrl}/namespaces/${encodeURIComponent(config.temporal.namespace)}/workflows/${wf}`,
    },
  };
}

/** Creates the express application. */
export function createApp(deps: ApiDeps): express.Express {
  const { config, client } = deps;
  const app = express();
  app.disable('x-powered-by');
  app.use(express.json({ limit: '64kb' }));

  /** Reads a workspace the principal owns; others' workspaces do not exist for it (404). */
  async function ownedWorkspace(id: string, principal: Principal): Promise<WorkspaceDescription> {
    const parsed = workspaceIdSchema.safeParse(id);
    const notFound = new HttpProblem(404, 'Not Found', `no workspace ${id}`);
    if (!parsed.success) throw notFound;
    try {
      const d = await client.workflow.getHandle(workspaceWorkflowId(config, id)).query(describeQuery);
      if (d.owner !== principal.identity && !principal.admin) throw notFound;
      return d;
    } catch (e) {
      if (e instanceof WorkflowNotFoundError) throw notFound;
      throw e;
    }
  }

  app.get('/healthz', (_req, res) => {
    res.json({ ok: true });
  });

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

  const clients = express.Router();
  clients.use(requireToken(deps.clientTokens));

  clients.post(
    '/workspaces',
    wrap(async (req, res) => {
      const principal = res.locals.principal as Principal;
      const parsed = createWorkspaceSchema.safeParse(req.body ?? {});
      if (!parsed.success) {
        const errors = fieldProblems(parsed.error);
        throw new HttpProblem(400, 'Invalid request', errors.map((e) => `${e.field}: ${e.message}`).join('; '), { errors });
      }
      const body = parsed.data;
      const largest = Math.max(...config.nodes.map((n) => n.memoryMiB));
      if (body.memoryMiB > largest) {
        const errors = [{ field: 'memoryMiB', message: `${body.memoryMiB} MiB exceeds the largest node (${largest} MiB)` }];
        throw new HttpProblem(400, 'Invalid request', `memoryMiB: ${errors[0].message}`, { errors });
      }
      const image = await resolveImage(config, body.image);
      if (!image) {
        const errors = [{ field: 'image', message: `no image ${body.image} in the site repository` }];
        throw new HttpProblem(400, 'Invalid request', `image: ${errors[0].message}`, { errors });
      }
      const id = `ws-${randomBytes(6).toString('hex')}`;
      const input: WorkspaceInput = {
        id,
        owner: principal.identity,
        spec: { image, memoryMiB: body.memoryMiB, vcpus: body.vcpus, durationSeconds: body.durationSeconds, targetState: body.targetState },
        routing: {
          headTaskQueue: headTaskQueue(config),
          nodeTaskQueuePrefix: nodeTaskQueuePrefix(config),
          addressTimeoutSeconds: config.timeouts.addressSeconds,
        },
        createdAt: new Date().toISOString(),
      };
      await client.workflow.start('workspaceWorkflow', {
        workflowId: workspaceWorkflowId(config, id),
        taskQueue: headTaskQueue(config),
        args: [input],
        typedSearchAttributes: [
          { key: VwsOwner, value: principal.identity },
          { key: VwsState, value: 'Unpropagated' },
        ],
      });
      log.info({ workspace: id, owner: principal.name, image: image.name }, 'workspace created');
      res.status(202).location(`/workspaces/${id}`).json({ id, state: 'Unpropagated', links: { self: `/workspaces/${id}` } });
    }),
  );

  clients.get(
    '/workspaces/:id',
    wrap(async (req, res) => {
      res.json(present(config, await ownedWorkspace(String(req.params.id), res.locals.principal as Principal)));
    }),
  );

  clients.delete(
    '/workspaces/:id',
    wrap(async (req, res) => {
      const id = String(req.params.id);
      const principal = res.locals.principal as Principal;
      const before = await ownedWorkspace(id, principal);
      // Early refusal from the state table; the workflow's validator checks again (the state may move).
      if (!isOperationAllowed(before.state, 'destroy')) {
        throw new HttpProblem(409, 'Operation not allowed', refusalMessage(before.state, 'destroy'), { state: before.state });
      }
      try {
        const d = await client.workflow.getHandle(workspaceWorkflowId(config, id)).executeUpdate(destroyUpdate);
        log.info({ workspace: id }, 'workspace destroy requested');
        res.status(202).location(`/workspaces/${id}`).json(present(config, d));
      } catch (e) {
        const refused = e instanceof WorkflowUpdateFailedError && e.cause instanceof ApplicationFailure && e.cause.type === FailureType.OperationNotAllowed;
        // "Not found" here means the workflow completed since the query: it is Cancelled now.
        if (refused || e instanceof WorkflowNotFoundError) {
          const current = await ownedWorkspace(id, principal);
          throw new HttpProblem(409, 'Operation not allowed', refused ? (e.cause as Error).message : refusalMessage(current.state, 'destroy'), {
            state: current.state,
          });
        }
        throw e;
      }
    }),
  );

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
