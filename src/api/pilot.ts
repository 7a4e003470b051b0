/**
 * `POST /pilot/notifications`: where pilots on the nodes tell vws about their slots (reserved,
 * unreserving, early-unreserving, error). Authenticated ONLY by the message's HMAC signature with the
 * site's pilot secret (`pilot.secretFile`): pilots hold no bearer token, and a bearer token is no use here.
 *
 * Answers (all problems are problem+json):
 * - 202: verified and delivered as the `pilotNotification` Signal to the slot's workflow.
 * - 400: the body is not a pilot message; `errors` names every bad field.
 * - 401: forged: the signature does not match (wrong secret or a changed message).
 * - 409: signed correctly but stale (outside the time window: `urn:vws:problem:PilotMessageStale`) or
 *   replayed (nonce already received: `urn:vws:problem:PilotMessageReplayed`). 409, not 401: the sender
 *   proved it holds the secret; resending this very message will never work, a fresh one will.
 * - 404: no running workflow for the slot (never started, or already ended).
 * - 503: pilot notifications are not configured (`pilot` absent), or the replay cache is full.
 * The checks and the delivery are `src/pilot/accept.ts`, shared with the SSH fallback's `vws-pilot receive`.
 * Nothing is delivered unless every check passed; a message that was not delivered (404, Temporal down)
 * is forgotten by the replay cache, so the pilot may resend it unchanged.
 */
import express, { type Router } from 'express';
import type { Client } from '@temporalio/client';
import type { VwsConfig } from '../config/schema';
import { ensureToken } from '../config/secrets';
import { log } from '../log';
import { acceptPilotMessage, pilotAnswer, PilotSlotNotRunning } from '../pilot/accept';
import { DEFAULT_PILOT_WINDOW_MS, PilotMessageError, ReplayCache } from '../pilot/message';
import { wrap } from './http';
import { HttpProblem } from './problem';

/** What the pilot routes need. */
export interface PilotRouteDeps {
  config: VwsConfig;
  client: Client;
  /** The replay cache (default: a new one for this app). */
  replay?: ReplayCache;
  /** Clock (ms since the epoch); for tests. */
  now?: () => number;
}

/** The problem for a refused message (the same status and type `vws-pilot receive` answers over SSH). */
function refusal(e: PilotMessageError): HttpProblem {
  const a = pilotAnswer(e);
  return new HttpProblem(a.status, a.title, a.detail, e.reason === 'busy' ? undefined : { ...(a.type ? { type: a.type } : {}), errors: e.errors });
}

/** The pilot's routes; mount before any bearer-token middleware. */
export function pilotRoutes(deps: PilotRouteDeps): Router {
  const { config, client } = deps;
  const router = express.Router();
  const replay = deps.replay ?? new ReplayCache();
  const now = deps.now ?? Date.now;
  const settings = config.pilot;
  // Created now if missing (mode 0600), so the site can copy it to its nodes before the first pilot runs.
  const secretFile = settings?.secretFile;
  if (secretFile) ensureToken(secretFile);
  const windowMs = settings ? settings.windowSeconds * 1000 : DEFAULT_PILOT_WINDOW_MS;

  router.post(
    '/pilot/notifications',
    wrap(async (req, res) => {
      if (!secretFile) throw new HttpProblem(503, 'Service Unavailable', 'pilot notifications are not configured on this site (no pilot.secretFile)');
      // Read per request, so a rotated secret takes effect without a restart.
      const secret = ensureToken(secretFile);
      let message;
      try {
        message = await acceptPilotMessage(req.body, { config, client, secret, replay, windowMs, now, via: 'http' });
      } catch (e) {
        if (e instanceof PilotMessageError) {
          const slot = (req.body as { slotId?: unknown } | undefined)?.slotId;
          log.warn({ reason: e.reason, field: e.field, slot: typeof slot === 'string' ? slot.slice(0, 64) : undefined }, 'pilot message refused');
          throw refusal(e);
        }
        if (e instanceof PilotSlotNotRunning) throw new HttpProblem(404, 'Not Found', e.message);
        throw e;
      }
      log.info({ slot: message.slotId, node: message.node, event: message.event, at: message.at }, 'pilot notification delivered');
      res.status(202).json({ delivered: true, slotId: message.slotId, event: message.event, receivedAt: message.receivedAt });
    }),
  );
  return router;
}
