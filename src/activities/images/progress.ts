/** Progress of a long copy, reported as heartbeat details. */
import { Transform } from 'node:stream';
import { Context, heartbeat } from '@temporalio/activity';

/** True inside an activity (heartbeat needs one; tests call the activities directly). */
export function inActivity(): boolean {
  try {
    return Context.current() !== undefined;
  } catch {
    return false;
  }
}

/** The default progress reporter of copies: the activity's heartbeat, nothing outside an activity. */
export function heartbeatProgress(p: Progress): void {
  if (inActivity()) heartbeat(p);
}

/** Bytes done of a total, as heartbeats report it. */
export interface Progress {
  bytes: number;
  total: number;
}

/**
 * A pass-through stream that counts the bytes of a copy and reports them every 8 MiB or every 5 s
 * (often enough for the heartbeat timeout even on a slow link; not on every chunk). `seen` sees each
 * chunk too (e.g. a hash). `bytes()` is the count so far (without the offset).
 */
export function progressCounter(
  total: number,
  report: (p: Progress) => void,
  seen?: (chunk: Buffer) => void,
  /** Bytes already there before this copy (a resumed copy reports its whole progress). */
  offset = 0,
): Transform & { bytes(): number } {
  let bytes = 0;
  let lastReport = 0;
  let lastReportAt = Date.now();
  const counter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      seen?.(chunk);
      bytes += chunk.length;
      if (bytes - lastReport >= 8 * 1024 * 1024 || Date.now() - lastReportAt > 5000) {
        lastReport = bytes;
        lastReportAt = Date.now();
        report({ bytes: offset + bytes, total });
      }
      done(null, chunk);
    },
  });
  return Object.assign(counter, { bytes: () => bytes });
}
