/**
 * Secrets (bearer tokens) live in files, never in the configuration or in logs. The head creates a
 * missing token file with a random token, mode 0600, so a fresh site works without a manual step.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

/** Reads a token file (trimmed). */
export function readToken(file: string): string {
  const token = readFileSync(file, 'utf8').trim();
  if (!token) throw new Error(`token file ${file} is empty`);
  return token;
}

/** Reads a token file, first creating it with a random 256-bit token if it does not exist. */
export function ensureToken(file: string): string {
  if (!existsSync(file)) {
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    // 'wx' fails if another process created it meanwhile; then we read theirs.
    try {
      writeFileSync(file, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600, flag: 'wx' });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
  return readToken(file);
}

/** sha256 of a token, hex; tokens are compared by digest only. */
export function tokenDigest(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}
