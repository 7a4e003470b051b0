/**
 * One structured log line per request: method, route (the OpenAPI path, not the raw URL), status,
 * duration, the client's name, and the workspace, group or ensemble the request was about (from its
 * path, or from the `Location` a create answered). Built from chosen fields only: headers, query strings
 * and bodies are never logged, so a bearer token cannot reach the log.
 */
import type { NextFunction, Request, Response } from 'express';
import type { Logger } from 'pino';
import { ensembleIdSchema, groupIdSchema, workspaceIdSchema } from '../domain/requests';
import type { Principal } from './auth';
import { routeOf } from './openapi';

const ID_FIELDS = [
  { field: 'workspace', collection: 'workspaces', schema: workspaceIdSchema },
  { field: 'group', collection: 'groups', schema: groupIdSchema },
  { field: 'ensemble', collection: 'ensembles', schema: ensembleIdSchema },
] as const;

/** The ids a path names (`/workspaces/ws-…/start` → `{ workspace: 'ws-…' }`); only well-formed ids. */
export function idsOf(path: string): Record<string, string> {
  const m = /^\/(workspaces|groups|ensembles)\/([^/?#]+)/.exec(path);
  if (!m) return {};
  const f = ID_FIELDS.find((x) => x.collection === m[1])!;
  return f.schema.safeParse(m[2]).success ? { [f.field]: m[2] } : {};
}

/** Middleware: logs each request once its answer is finished (or the client went away). */
export function requestLog(logger: Logger) {
  return (req: Request, res: Response, next: NextFunction) => {
    const start = process.hrtime.bigint();
    res.once('close', () => {
      const principal = res.locals.principal as Principal | undefined;
      const location = res.getHeader('location');
      const line = {
        method: req.method,
        route: routeOf(req.method, req.path),
        status: res.statusCode,
        durationMs: Math.round(Number(process.hrtime.bigint() - start) / 1e4) / 100,
        ...(principal ? { client: principal.name } : {}),
        ...(typeof location === 'string' ? idsOf(location) : {}),
        ...idsOf(req.path),
        ...(res.writableFinished ? {} : { aborted: true }),
      };
      if (res.statusCode >= 500) logger.error(line, 'request failed');
      else logger.info(line, 'request');
    });
    next();
  };
}
