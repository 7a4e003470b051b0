/**
 * Admin routes (admin principals only; anyone else gets 403): the nodes with their capacity, use and
 * drain flag, drain and undrain (no new grants on a drained node; live ones stay), the live grants and
 * pilot leases,
 * and the emergency stop (kill-all: a workflow; 202, then its report at the URL it gives).
 */
import { randomBytes } from 'node:crypto';
import express from 'express';
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import type { AllocatorClient } from '../clients/allocator';
import { headTaskQueue, workspaceRouting } from '../config/names';
import type { VwsConfig } from '../config/schema';
import type { KillAllInput, KillAllReport } from '../domain/kill-all';
import { emptyRequestSchema, killAllRequestSchema } from '../domain/requests';
import type { Principal } from './auth';
import { parseBody, requireAdmin, unavailable, wrap } from './http';
import { failureProblem, HttpProblem } from './problem';

/** Reads from the allocator; before its first grant there is no allocator, which reads as empty. */
async function read<T>(f: () => Promise<T>, empty: T): Promise<T> {
  try {
    return await f();
  } catch (e) {
    if (e instanceof WorkflowNotFoundError) return empty;
    throw unavailable(e) ?? e;
  }
}

/** Routes under /admin. */
export function adminRoutes(config: VwsConfig, allocator: AllocatorClient, client: Client): express.Router {
  const r = express.Router();
  r.use('/admin', (_req, res, next) => {
    requireAdmin(res);
    next();
  });

  r.get(
    '/admin/nodes',
    wrap(async (_req, res) => {
      res.json({ nodes: await read(() => allocator.nodes(), []) });
    }),
  );

  for (const action of ['drain', 'undrain'] as const) {
    r.post(
      `/admin/nodes/:name/${action}`,
      wrap(async (req, res) => {
        const name = String(req.params.name);
        parseBody(emptyRequestSchema, req.body);
        if (!config.nodes.some((n) => n.name === name)) {
          throw new HttpProblem(404, 'Not Found', `no node ${name} (nodes: ${config.nodes.map((n) => n.name).join(', ')})`);
        }
        try {
          const nodes = await allocator.drain(name, action === 'drain');
          res.json({ node: name, drained: action === 'drain', nodes });
        } catch (e) {
          throw failureProblem(e) ?? e;
        }
      }),
    );
  }

  // `leases` keeps its old meaning (every live grant) for older clients; `pilotLeases` are the node time
  // pilot jobs lent the allocator, each with what the grants inside it use.
  r.get(
    '/admin/leases',
    wrap(async (_req, res) => {
      const [leases, pilot] = await Promise.all([read(() => allocator.grants(), []), read(() => allocator.leases(), [])]);
      const pilotLeases = pilot.map((l) => {
        const inside = leases.filter((g) => g.lease === l.holder);
        return { ...l, grants: inside.length, usedMemoryMiB: inside.reduce((s, g) => s + g.memoryMiB, 0), usedVcpus: inside.reduce((s, g) => s + g.vcpus, 0) };
      });
      res.json({ leases, count: leases.length, pilotLeases, pilotCount: pilotLeases.length });
    }),
  );

  const killAllWorkflowId = (id: string) => `${config.temporal.prefix}-${id}`;
  r.post(
    '/admin/kill-all',
    wrap(async (req, res) => {
      parseBody(killAllRequestSchema, req.body);
      const principal = res.locals.principal as Principal;
      const id = `kill-all-${randomBytes(6).toString('hex')}`;
      const input: KillAllInput = { nodes: config.nodes.map((n) => n.name), routing: workspaceRouting(config), requestedBy: principal.identity };
      try {
        await client.workflow.start('killAllWorkflow', { workflowId: killAllWorkflowId(id), taskQueue: headTaskQueue(config), args: [input] });
      } catch (e) {
        throw unavailable(e) ?? e;
      }
      res.status(202).location(`/admin/kill-all/${id}`).json({ id, state: 'running', nodes: input.nodes, links: { self: `/admin/kill-all/${id}` } });
    }),
  );
  r.get(
    '/admin/kill-all/:id',
    wrap(async (req, res) => {
      const id = String(req.params.id);
      if (!/^kill-all-[0-9a-f]{12}$/.test(id)) throw new HttpProblem(404, 'Not Found', `no kill-all ${id}`);
      const handle = client.workflow.getHandle(killAllWorkflowId(id));
      let status: string;
      try {
        status = (await handle.describe()).status.name;
      } catch (e) {
        if (e instanceof WorkflowNotFoundError) throw new HttpProblem(404, 'Not Found', `no kill-all ${id}`);
        throw unavailable(e) ?? e;
      }
      if (status === 'RUNNING') return void res.json({ id, state: 'running' });
      if (status !== 'COMPLETED') return void res.json({ id, state: 'failed', reason: `the kill-all workflow is ${status.toLowerCase()}` });
      const report = (await handle.result()) as KillAllReport;
      res.json({ id, state: 'done', report });
    }),
  );
  return r;
}
