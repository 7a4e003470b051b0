/**
 * `GET /admin/drift`: what the reconciler found, for admins only. It serves the drift listing the
 * reconciler's runs keep in `<stateDir>/reconcile/drift.json` (the last report and cumulative counts
 * by kind); the Temporal UI shows each run in full.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import express, { type NextFunction, type Request, type Response } from 'express';
import type { VwsConfig } from '../config/schema';
import { addCounts, DRIFT_FILE, emptyListing, RECONCILE_DIR, type DriftListing } from '../domain/reconcile';
import { requireToken, type Principal, type TokenEntry } from './auth';
import { HttpProblem, problemType } from './problem';

/** Dependencies of the drift route (a subset of the API's). */
export interface DriftRouteDeps {
  config: VwsConfig;
  clientTokens: () => readonly TokenEntry[];
  /** How the caller is authenticated (default: its bearer token); the API passes its certificate-aware check. */
  authenticate?: express.RequestHandler;
}

/** Reads the listing; before the first run there is none, which is an empty listing, not an error. */
export async function readListing(config: VwsConfig): Promise<DriftListing> {
  try {
    const listing = JSON.parse(await readFile(join(config.stateDir, RECONCILE_DIR, DRIFT_FILE), 'utf8')) as DriftListing;
    // Every kind is present, even one an older file never counted.
    return { ...listing, totals: addCounts(listing.totals ?? {}, {}) };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return emptyListing();
    throw e;
  }
}

/** The router of `GET /admin/drift`. */
export function createDriftRouter(deps: DriftRouteDeps): express.Router {
  const router = express.Router();
  router.get('/admin/drift', deps.authenticate ?? requireToken(deps.clientTokens), (req: Request, res: Response, next: NextFunction) => {
    const principal = res.locals.principal as Principal;
    if (!principal.admin) {
      next(new HttpProblem(403, 'Forbidden', 'the drift listing is for site administrators only', { type: problemType('Forbidden') }));
      return;
    }
    readListing(deps.config).then(
      (listing) => res.json({ reconciler: deps.config.reconciler, ...listing }),
      (e: unknown) => next(e),
    );
  });
  return router;
}
