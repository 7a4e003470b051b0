/**
 * Locks made of files, for activities on one host that must not interleave (two propagations of one
 * image, two DHCP changes on one network). Everything goes through the {@link Executor}, so the same
 * lock works in a node worker and over SSH, and between the two.
 *
 * A lock is a file created with O_EXCL holding `{owner, at}`. The holder rewrites `at` every few
 * seconds; a lock not refreshed for `staleMs` belongs to a holder that died and may be taken over.
 * Taking over goes through a second O_EXCL file (`<lock>.takeover`), so of several waiters that see the
 * same stale lock at once only one replaces it; without that gate two of them could each overwrite it
 * and both believe they hold it.
 */
import type { Executor } from '../exec/executor';

/** The content of a lock file. */
interface LockBody {
  owner: string;
  at: number;
}

/** Timings and hooks of a lock; all optional. */
export interface FileLockOptions {
  /** A lock not refreshed for this long belongs to a dead holder (default 30 s). */
  staleMs?: number;
  /** How often the holder refreshes its lock (default 5 s; keep it well under `staleMs`). */
  refreshMs?: number;
  /** How often a waiter looks at a lock held by someone else (default 500 ms). */
  pollMs?: number;
  /** Clock (ms since the epoch); injectable for tests. */
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
  /** Called on every poll while waiting for another holder (an activity's heartbeat). */
  waiting?: () => void;
  /**
   * True once the caller no longer wants the lock: an activity attempt that timed out (Temporal cancels
   * it). Checked before every try, so it gives up instead of taking the lock, free or later, and acting on
   * an old decision (a late add after the removal that followed it).
   */
  abandoned?: () => boolean;
}

/** Thrown by {@link acquireFileLock} when its caller abandoned the wait. */
export class LockWaitAbandoned extends Error {
  constructor(path: string) {
    super(`gave up waiting for the lock ${path}: the caller was cancelled`);
    this.name = 'LockWaitAbandoned';
  }
}

/** A held lock; `release` is idempotent. */
export interface FileLock {
  release(): Promise<void>;
}

const defaultSleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Reads a lock file; `null` if there is none. A body cut short by a crash reads as stale. */
async function readLock(exec: Executor, path: string): Promise<LockBody | null> {
  const text = await exec.readFile(path);
  if (text === null) return null;
  try {
    const v = JSON.parse(text) as { owner?: unknown; at?: unknown };
    if (typeof v.owner === 'string' && typeof v.at === 'number') return { owner: v.owner, at: v.at };
  } catch {
    // Created but not yet (or never) written: treated as stale below.
  }
  return { owner: '', at: 0 };
}

/**
 * Takes the lock at `path` for `owner`, waiting while another live holder has it. A lock already held by
 * the same owner (a retried activity whose earlier attempt died) is taken over at once, so give every
 * concurrent user its own owner. The directory of `path` must exist. The lock is refreshed until released.
 */
export async function acquireFileLock(exec: Executor, path: string, owner: string, options: FileLockOptions = {}): Promise<FileLock> {
  const { staleMs = 30_000, refreshMs = 5_000, pollMs = 500, now = Date.now, sleep = defaultSleep } = options;
  const body = () => JSON.stringify({ owner, at: now() });
  const gate = `${path}.takeover`;

  /** Replaces a stale lock under the takeover gate; true if this call now holds the lock. */
  async function takeOver(seen: LockBody): Promise<boolean> {
    if (!(await exec.createExclusive(gate, body()))) {
      // Someone else is taking over; their gate is only ever held for two file operations, so an old
      // one was left by a holder that died in between and may go.
      const g = await readLock(exec, gate);
      if (g && now() - g.at > staleMs) await exec.remove(gate);
      return false;
    }
    try {
      const held = await readLock(exec, path);
      // Still the very lock we judged stale: nobody else can change it while we hold the gate.
      if (held === null || (held.owner === seen.owner && held.at === seen.at)) {
        await exec.writeFileAtomic(path, body());
        return true;
      }
      return false;
    } finally {
      await exec.remove(gate);
    }
  }

  for (;;) {
    if (options.abandoned?.()) throw new LockWaitAbandoned(path);
    if (await exec.createExclusive(path, body())) break;
    const held = await readLock(exec, path);
    if (held === null) continue; // released between our two calls
    if (held.owner === owner) {
      await exec.writeFileAtomic(path, body());
      break;
    }
    if (now() - held.at > staleMs && (await takeOver(held))) break;
    options.waiting?.();
    await sleep(pollMs);
  }

  let released = false;
  let refreshing: Promise<void> = Promise.resolve();
  const timer = setInterval(() => {
    if (released) return;
    refreshing = (async () => {
      // Only our own lock is refreshed: if we stalled past `staleMs` and it was taken over, writing
      // it again would hand the new holder's lock back to us.
      if ((await readLock(exec, path))?.owner === owner && !released) await exec.writeFileAtomic(path, body());
    })().catch(() => undefined);
  }, refreshMs);
  timer.unref?.();
  return {
    async release() {
      if (released) return;
      released = true;
      clearInterval(timer);
      // A refresh still in flight would recreate the lock after we removed it.
      await refreshing;
      if ((await readLock(exec, path))?.owner === owner) await exec.remove(path);
    },
  };
}

/** Runs `fn` holding the lock at `path`, and releases it however `fn` ends. */
export async function withFileLock<T>(exec: Executor, path: string, owner: string, options: FileLockOptions, fn: () => Promise<T>): Promise<T> {
  const lock = await acquireFileLock(exec, path, owner, options);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}
