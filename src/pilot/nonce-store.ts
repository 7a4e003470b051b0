/**
 * Nonces on disk, for the SSH fallback's receiver (`vws-pilot receive`): each message starts a new
 * process, so an in-memory cache would forget every nonce at once and let any captured message be
 * replayed within the window. One file per nonce (`<dir>/<nonce>`, holding its expiry), created with
 * O_EXCL: of two receivers given the same message at the same instant, exactly one delivers it. Nonces
 * are checked by the message schema before they get here (`[A-Za-z0-9_-]{16,128}`), so they are safe
 * file names. Expired files are swept on each new nonce, so the directory holds about a window's worth.
 */
import { mkdirSync, readdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { NonceStore } from './message';

const NONCE = /^[A-Za-z0-9_-]{16,128}$/;

/** A {@link NonceStore} in a directory shared by every receiver on one host. */
export class FileNonceStore implements NonceStore {
  constructor(private readonly dir: string) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  remember(nonce: string, expiresAt: number, now: number): boolean {
    if (!NONCE.test(nonce)) throw new Error(`not a nonce: ${JSON.stringify(nonce.slice(0, 40))}`);
    this.sweep(now);
    const file = join(this.dir, nonce);
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        writeFileSync(file, `${expiresAt}\n`, { flag: 'wx', mode: 0o600 });
        return true;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      // Held: a replay while live; an expired one is removed and taken afresh (once).
      if (this.expiry(file) >= now) return false;
      this.unlink(file);
    }
    return false;
  }

  forget(nonce: string): void {
    if (NONCE.test(nonce)) this.unlink(join(this.dir, nonce));
  }

  /** Removes the files of expired nonces. */
  sweep(now: number): void {
    for (const name of readdirSync(this.dir)) {
      if (!NONCE.test(name)) continue;
      const file = join(this.dir, name);
      if (this.expiry(file) < now) this.unlink(file);
    }
  }

  /** A nonce file's expiry (ms); a file being written (empty) counts as live. */
  private expiry(file: string): number {
    try {
      const text = readFileSync(file, 'utf8').trim();
      return text === '' ? Number.POSITIVE_INFINITY : Number(text);
    } catch {
      return Number.NEGATIVE_INFINITY;
    }
  }

  private unlink(file: string): void {
    try {
      unlinkSync(file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
}
