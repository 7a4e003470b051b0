/**
 * Accepting a pilot notification, whichever way it came: `POST /pilot/notifications` (HTTP) and
 * `vws-pilot receive` (the SSH fallback) both call {@link acceptPilotMessage}, so both check the
 * signature, the time window and the nonce alike and deliver alike: the `pilotNotification` Signal to
 * the slot's workflow (`<prefix>-pilot-<slotId>`). Both answer with the same status numbers
 * ({@link pilotAnswer}), so the pilot's notifier judges an answer the same way over either transport.
 */
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import { pilotSlotWorkflowId } from '../config/names';
import type { VwsConfig } from '../config/schema';
import { pilotNotificationSignal, type PilotNotification } from '../domain/messages';
import { PilotMessageError, verifyPilotMessage, type NonceStore } from './message';

/** No running workflow for the message's slot (never started, or already ended): 404. */
export class PilotSlotNotRunning extends Error {
  override name = 'PilotSlotNotRunning';
  constructor(readonly slotId: string) {
    super(`no running slot ${slotId}`);
  }
}

/** What {@link acceptPilotMessage} needs. */
export interface AcceptOptions {
  config: VwsConfig;
  client: Client;
  /** The site's pilot secret (never logged). */
  secret: string;
  replay: NonceStore;
  windowMs: number;
  now: () => number;
  via: PilotNotification['via'];
}

/**
 * Verifies `body` and delivers it to its slot's workflow. A message that was not delivered (no such
 * slot, Temporal unreachable) is forgotten by `replay`, so the pilot may send it again unchanged.
 * @throws PilotMessageError (refused: nothing delivered), PilotSlotNotRunning, or Temporal's error.
 */
export async function acceptPilotMessage(body: unknown, o: AcceptOptions): Promise<PilotNotification> {
  const message = verifyPilotMessage(body, o.secret, { windowMs: o.windowMs, now: o.now, replay: o.replay });
  const notification: PilotNotification = { ...message, receivedAt: new Date(o.now()).toISOString(), via: o.via };
  try {
    await o.client.workflow.getHandle(pilotSlotWorkflowId(o.config, message.slotId)).signal(pilotNotificationSignal, notification);
  } catch (e) {
    o.replay.forget(message.nonce);
    if (e instanceof WorkflowNotFoundError) throw new PilotSlotNotRunning(message.slotId);
    throw e;
  }
  return notification;
}

/** An answer to a pilot: the HTTP status (also what `receive` prints), a problem type and a message. */
export interface PilotAnswer {
  status: number;
  /** The problem type the notifier reads (`urn:vws:problem:PilotMessageReplayed` counts as delivered). */
  type?: string;
  title: string;
  detail: string;
}

/** The answer for an error of {@link acceptPilotMessage} (anything unknown: 503, try again later). */
export function pilotAnswer(e: unknown): PilotAnswer {
  if (e instanceof PilotSlotNotRunning) return { status: 404, title: 'Not Found', detail: e.message };
  if (!(e instanceof PilotMessageError)) return { status: 503, title: 'Service Unavailable', detail: `the slot could not be told: ${(e as Error).message}` };
  switch (e.reason) {
    case 'malformed':
      return { status: 400, title: 'Invalid request', detail: e.message };
    case 'forged':
      return { status: 401, type: 'urn:vws:problem:PilotMessageForged', title: 'Unauthorized', detail: e.message };
    case 'stale':
      return { status: 409, type: 'urn:vws:problem:PilotMessageStale', title: 'Stale pilot message', detail: e.message };
    case 'replayed':
      return { status: 409, type: 'urn:vws:problem:PilotMessageReplayed', title: 'Replayed pilot message', detail: e.message };
    case 'busy':
      return { status: 503, title: 'Service Unavailable', detail: e.message };
  }
}
