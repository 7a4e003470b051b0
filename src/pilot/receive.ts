/**
 * `vws-pilot receive`: the head's end of the SSH fallback. A pilot whose HTTP notification got no
 * answer connects over SSH and runs this (a fixed argv from `pilot.sshFallback.command`) with the signed
 * message on stdin. It checks and delivers the message exactly as `POST /pilot/notifications` does
 * (`accept.ts`: signature, time window, nonce; then the `pilotNotification` Signal, marked `via: ssh`),
 * and prints one JSON line with the status HTTP would have answered. Its nonces live on disk
 * (`<stateDir>/pilot-nonces`, {@link FileNonceStore}), because every message starts a new process.
 */
import { join } from 'node:path';
import { Connection, Client } from '@temporalio/client';
import type { VwsConfig } from '../config/schema';
import { readToken } from '../config/secrets';
import { acceptPilotMessage, pilotAnswer, type PilotAnswer } from './accept';
import { PilotMessageError } from './message';
import { FileNonceStore } from './nonce-store';

/** The most a message may weigh on stdin (a real one is well under 3 KiB). */
export const MAX_MESSAGE_BYTES = 64 * 1024;

/** Where `receive` keeps the nonces it has seen. */
export function nonceDir(config: VwsConfig): string {
  return join(config.stateDir, 'pilot-nonces');
}

/** What `receive` answers: the status and, when delivered, what. */
export type ReceiveAnswer = PilotAnswer & { slotId?: string; event?: string; reason?: string; field?: string };

/** Reads stdin to its end, refusing more than {@link MAX_MESSAGE_BYTES}. */
export async function readInput(stream: NodeJS.ReadableStream = process.stdin): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of stream) {
    const b = Buffer.isBuffer(c) ? c : Buffer.from(c as string);
    size += b.length;
    if (size > MAX_MESSAGE_BYTES) throw new PilotMessageError('malformed', '(body)', `the message is larger than ${MAX_MESSAGE_BYTES} bytes`);
    chunks.push(b);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * Checks and delivers one message (`input`: its JSON text) with the site configuration `config`.
 * Never throws: every outcome is an answer (503 when the site or Temporal cannot take it now).
 */
export async function receivePilotMessage(config: VwsConfig, input: string, now: () => number = Date.now): Promise<ReceiveAnswer> {
  const secretFile = config.pilot?.secretFile;
  if (!secretFile) return { status: 503, title: 'Service Unavailable', detail: 'pilot notifications are not configured on this site (no pilot.secretFile)' };
  let secret: string;
  try {
    secret = readToken(secretFile);
  } catch (e) {
    return { status: 503, title: 'Service Unavailable', detail: `cannot read pilot.secretFile (${(e as NodeJS.ErrnoException).code ?? 'unreadable'})` };
  }
  let body: unknown;
  try {
    body = JSON.parse(input);
  } catch {
    return { status: 400, title: 'Invalid request', detail: '(body): not JSON', reason: 'malformed', field: '(body)' };
  }
  let connection: Connection | undefined;
  try {
    const replay = new FileNonceStore(nonceDir(config));
    const windowMs = (config.pilot?.windowSeconds ?? 60) * 1000;
    // Lazy: the connection is made at the Signal, so a refused message costs no Temporal connection.
    connection = Connection.lazy({ address: config.temporal.address, connectTimeout: '10s' });
    const client = new Client({ connection, namespace: config.temporal.namespace });
    const n = await acceptPilotMessage(body, { config, client, secret, replay, windowMs, now, via: 'ssh' });
    return { status: 202, title: 'Accepted', detail: `delivered to slot ${n.slotId}`, slotId: n.slotId, event: n.event };
  } catch (e) {
    return { ...pilotAnswer(e), ...(e instanceof PilotMessageError ? { reason: e.reason, field: e.field } : {}) };
  } finally {
    await connection?.close().catch(() => undefined);
  }
}
