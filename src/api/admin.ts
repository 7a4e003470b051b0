/**
 * Admin routes (admin principals only; anyone else gets 403): the nodes with their capacity, use and
 * drain flag, drain and undrain (no new grants on a drained node; live ones stay), and the live leases.
 */
import express from 'express';
import { WorkflowNotFoundError } from '@temporalio/client';
import type { AllocatorClient } from '../clients/allocator';
import type { VwsConfig } from '../config/schema';
import { emptyRequestSchema } from '../domain/requests';
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
export function adminRoutes(config: VwsConfig, allocator: AllocatorClient): express.Router {
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

  r.get(
    '/admin/leases',
    wrap(async (_req, res) => {
      const leases = await read(() => allocator.grants(), []);
      res.json({ leases, count: leases.length });
    }),
  );
  return r;
}
