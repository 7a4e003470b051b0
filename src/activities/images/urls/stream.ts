/**
 * What every copy is built from, whatever the scheme: a stall guard, a hashing byte counter, the
 * sha256 of a stream, and the hidden temporary name a file or sftp target is written under.
 */
import { createHash, randomBytes } from 'node:crypto';
import { posix } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { progressCounter, type Progress } from '../progress';
import { transient } from './failures';

/**
 * A pass-through that fails the copy when no byte has gone through for `ms` (a server that stopped
 * sending, or a target that stopped taking: backpressure stops the flow here too). Retryable.
 */
export function stallGuard(ms: number, what: string): Transform {
  let timer: NodeJS.Timeout | undefined;
  const guard: Transform = new Transform({
    transform(chunk: Buffer, _enc, done) {
      arm();
      done(null, chunk);
    },
    flush(done) {
      clearTimeout(timer);
      done();
    },
  });
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => guard.destroy(transient(`${what}: no data moved for ${ms / 1000} s`)), ms);
  };
  arm();
  guard.once('close', () => clearTimeout(timer));
  return guard;
}

/** A pass-through that feeds a hash and counts bytes, reporting progress through `report`. */
export function hashingCounter(total: number, hash: ReturnType<typeof createHash>, report?: (p: Progress) => void) {
  return progressCounter(total, report ?? (() => undefined), (chunk) => hash.update(chunk));
}

/** sha256 of a stream, hex. */
export async function digestOf(stream: Readable): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(stream, hash);
  return hash.digest('hex');
}

/** A temporary name next to `path`: hidden, unique per attempt (two attempts never share one). */
export function partName(path: string): string {
  return posix.join(posix.dirname(path), `.${posix.basename(path)}.part-${randomBytes(6).toString('hex')}`);
}
