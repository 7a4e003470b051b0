/**
 * Small pieces every router uses: async handlers, body and query validation, the caller, the
 * `Idempotency-Key` header, and queries on workflows the caller owns (others' are 404).
 */
import type { NextFunction, Request, Response } from 'express';
import { ServiceError, WorkflowNotFoundError, type Client } from '@temporalio/client';
import type { QueryDefinition } from '@temporalio/common';
import { fieldProblems, idempotencyKeySchema } from '../domain/requests';
import type { z } from 'zod';
import type { Principal } from './auth';
import { HttpProblem, problemType } from './problem';

type Handler = (req: Request, res: Response) => Promise<void>;

/** An async handler whose failures reach the error middleware. */
export const wrap = (h: Handler) => (req: Request, res: Response, next: NextFunction) => void h(req, res).catch(next);

/** Parses a body (or query) with a schema or throws a 400 naming every bad field. */
export function parseBody<T extends z.ZodType>(schema: T, body: unknown): z.infer<T> {
  const parsed = schema.safeParse(body ?? {});
  if (!parsed.success) {
    const errors = fieldProblems(parsed.error);
    throw new HttpProblem(400, 'Invalid request', errors.map((e) => `${e.field}: ${e.message}`).join('; '), { errors });
  }
  return parsed.data;
}

/** The authenticated caller (set by `requireToken`). */
export function principalOf(res: Response): Principal {
  return res.locals.principal as Principal;
}

/** Refuses a non-admin caller with 403. */
export function requireAdmin(res: Response): Principal {
  const p = principalOf(res);
  if (!p.admin) throw new HttpProblem(403, 'Forbidden', 'this operation is for site administrators only', { type: problemType('Forbidden') });
  return p;
}

/** The request's `Idempotency-Key` header, if any, or a 400 naming the header. */
export function idempotencyKey(req: Request): string | undefined {
  const raw = req.headers['idempotency-key'];
  if (raw === undefined) return undefined;
  const parsed = idempotencyKeySchema.safeParse(Array.isArray(raw) ? raw.join(',') : raw);
  if (parsed.success) return parsed.data;
  const errors = parsed.error.issues.map((i) => ({ field: 'Idempotency-Key', message: i.message }));
  throw new HttpProblem(400, 'Invalid request', errors.map((e) => `${e.field}: ${e.message}`).join('; '), { errors });
}

/** Maps "no worker answers queries" to a 503 that says the object is safe; anything else is rethrown. */
export function unavailable(e: unknown): HttpProblem | null {
  if (e instanceof ServiceError && /no poller seen|query timed out/.test(String((e.cause as Error | undefined)?.message ?? e.message))) {
    return new HttpProblem(503, 'Service Unavailable', 'the vws head worker is not answering; nothing is lost, try again shortly');
  }
  return null;
}

/**
 * Queries a workflow the caller owns; a workflow that does not exist, or belongs to another client
 * (unless the caller is an admin), is a 404 naming the id, so ids of others are never confirmed.
 */
export async function queryOwned<T extends { owner: string }>(
  client: Client,
  workflowId: string,
  query: QueryDefinition<T, []>,
  principal: Principal,
  what: string,
  id: string,
  idSchema: z.ZodType,
): Promise<T> {
  const notFound = new HttpProblem(404, 'Not Found', `no ${what} ${id}`);
  if (!idSchema.safeParse(id).success) throw notFound;
  try {
    const d = await client.workflow.getHandle(workflowId).query(query);
    if (d.owner !== principal.identity && !principal.admin) throw notFound;
    return d;
  } catch (e) {
    if (e instanceof WorkflowNotFoundError) throw notFound;
    throw unavailable(e) ?? e;
  }
}
