/**
 * The pilot's log: one JSON line per step on stdout (the batch job's output file), written
 * synchronously so the last lines are there even when the pilot exits right after them or the batch
 * system kills it. The secret is never a field of any line. Level: `VWS_PILOT_LOG_LEVEL` (default info;
 * not `VWS_LOG_LEVEL`, which quiets the services: the pilot's steps are the slot's record).
 */
import pino, { type Logger } from 'pino';

/** A logger for one pilot command, with `bindings` (slot, node) on every line; on stdout, or stderr (`receive`, whose stdout is its answer). */
export function pilotLogger(bindings: Record<string, unknown> = {}, dest: 1 | 2 = 1): Logger {
  return pino({ level: process.env.VWS_PILOT_LOG_LEVEL ?? 'info', base: { service: 'vws-pilot', pid: process.pid, ...bindings }, timestamp: pino.stdTimeFunctions.isoTime }, pino.destination({ dest, sync: true }));
}

export type { Logger };
