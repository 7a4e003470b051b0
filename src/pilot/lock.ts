/**
 * The node lock of the pilot: two pilots never run on one node at once (Nimbus 2.7's pilot lockfile),
 * whatever the batch system does (two jobs scheduled on one node by a misconfiguration, a job restarted
 * while its predecessor still cleans up).
 *
 * The lock is a file holding its holder's identity: pid, the process's start time and the kernel's
 * boot id. It is never refreshed: a holder is alive exactly while that process runs in this boot, which
 * the next pilot checks directly. A lock whose process is gone (or a zombie, or its pid reused by
 * another process) or whose boot id differs (the node rebooted) is stale and taken over.
 *
 * `src/activities/file-lock.ts` does not fit: it judges staleness by refresh time, for activities that
 * may run on another host than their lock; the pilot runs on the node and can ask the kernel instead.
 * Local files only (node:fs): the pilot is a process on the node, not an activity.
 */
import { randomBytes } from 'node:crypto';
import { linkSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

/** Where a node's pilot lock lives: `<node dir>/pilot/pilot.lock` (beside the QEMU nodes' reservation file). */
export function pilotLockFile(nodeDir: string): string {
  return join(nodeDir, 'pilot', 'pilot.lock');
}

/**
 * Where vws marks that it is resetting a node after a pilot's job (`restoreAfterPilot`): beside the lock.
 *
 * vws's node worker may reach the node over SSH, so it cannot hold the lock (a lock is a live process on
 * the node). It writes this file instead, then reads the lock: a live holder means it leaves the node
 * alone. A pilot takes the lock, then reads this file: a fresh one means it gives the lock back and waits
 * until vws is done. Each writes before it reads, so at least one of them sees the other, and a pilot
 * never reserves memory that vws's reset is about to put back.
 */
export function resetIntentFile(lockFile: string): string {
  return join(dirname(lockFile), 'reset.intent');
}

/**
 * How long a reset intent counts, ms: longer than one attempt of vws's reset activity (2 min); an intent
 * older than this was left by a worker that died mid-reset, and a pilot goes on.
 */
export const RESET_INTENT_STALE_MS = 180_000;

/** The age (ms, by this node's clock) of a fresh reset intent at `path`, or null if there is none or it is stale. */
export function freshResetIntentAge(path: string, now = Date.now(), staleMs = RESET_INTENT_STALE_MS): number | null {
  let mtimeMs: number;
  try {
    mtimeMs = statSync(path).mtimeMs;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  const age = Math.max(0, now - mtimeMs);
  return age < staleMs ? age : null;
}

/** Who holds a lock. */
export interface PilotLockHolder {
  pid: number;
  /** `/proc/<pid>/stat` start time (clock ticks since boot): tells the holder from a later process with the same pid. */
  startTicks: string | null;
  /** `/proc/sys/kernel/random/boot_id` when the lock was taken. */
  bootId: string;
  /** The slot the holder works for: for people reading the file, and for vws, which stops a pilot that outlived its slot's job. */
  slotId?: string;
  /** When it was taken (ISO). */
  at: string;
  /** Unique per acquisition: how a holder recognises its own file. */
  token: string;
}

/** The lock is held by a live pilot: names it. */
export class PilotLockHeld extends Error {
  override name = 'PilotLockHeld';
  constructor(
    readonly path: string,
    readonly holder: PilotLockHolder,
  ) {
    super(`${path} is held by pid ${holder.pid}${holder.slotId ? ` (slot ${holder.slotId})` : ''} since ${holder.at}`);
  }
}

/** A held lock. */
export interface PilotLock {
  readonly path: string;
  readonly holder: PilotLockHolder;
  /** True while the file still names this holder. */
  stillHeld(): boolean;
  /** Removes the file if it still names this holder; idempotent. */
  release(): void;
}

/** How the lock reads the machine; injectable for tests. */
export interface PilotLockOptions {
  slotId?: string;
  /** Wait after taking the lock before trusting it (default 100 ms); see {@link acquirePilotLock}. */
  settleMs?: number;
  /** The current boot id (default: read from /proc). */
  bootId?: string;
}

/** The kernel's boot id: changes at every boot. */
export function readBootId(): string {
  return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
}

/** A process's state letter and start time from `/proc/<pid>/stat`; null if there is no such process. */
export function processStat(pid: number): { state: string; startTicks: string } | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  return parseProcStat(text);
}

/** The state letter and start time in the text of a `/proc/<pid>/stat` (read locally or over SSH). */
export function parseProcStat(text: string): { state: string; startTicks: string } {
  // Field 2 (comm) is in parentheses and may hold spaces or ')': split after the last ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); field 22 (starttime) is rest[19].
  return { state: rest[0], startTicks: rest[19] };
}

/** True if `stat` (null: no such process) shows `holder`'s own process alive in the boot `bootId`. */
export function holderAliveFromStat(holder: PilotLockHolder, bootId: string, stat: { state: string; startTicks: string } | null): boolean {
  if (holder.bootId !== bootId || !stat) return false;
  if (stat.state === 'Z' || stat.state === 'X') return false;
  return holder.startTicks === null || stat.startTicks === holder.startTicks;
}

/**
 * True if `holder` is a process that runs now in this boot. A zombie (dead, not yet reaped) is dead; a
 * live pid with another start time is a later process that reused the pid.
 */
export function holderAlive(holder: PilotLockHolder, bootId: string): boolean {
  if (holder.bootId !== bootId) return false;
  const stat = processStat(holder.pid);
  if (stat) {
    if (stat.state === 'Z' || stat.state === 'X') return false;
    return holder.startTicks === null || stat.startTicks === holder.startTicks;
  }
  // No /proc entry (another pid namespace view): fall back to asking the kernel.
  try {
    process.kill(holder.pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A lock file's holder, or null when the text is not one. */
export function parseHolder(text: string): PilotLockHolder | null {
  try {
    const v = JSON.parse(text) as Partial<PilotLockHolder>;
    if (typeof v.pid === 'number' && typeof v.bootId === 'string' && typeof v.token === 'string' && typeof v.at === 'string') {
      return { pid: v.pid, bootId: v.bootId, token: v.token, at: v.at, startTicks: typeof v.startTicks === 'string' ? v.startTicks : null, ...(v.slotId ? { slotId: v.slotId } : {}) };
    }
  } catch {
    // Not a lock we wrote: stale.
  }
  return null;
}

function readText(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

function tryUnlink(path: string): void {
  try {
    unlinkSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Takes the lock at `path` (its directory must exist) or refuses at once if a live pilot holds it.
 *
 * The file appears complete or not at all: the identity is written to a private file and hard-linked
 * to `path` (link fails if `path` exists, like O_EXCL), so nobody reads a half-written lock. A stale
 * lock is moved aside by rename to a private name, then checked: if what was moved is the very stale
 * lock that was read, it is deleted and the link is tried again; if it is a newer one (another pilot
 * took over in between), it is linked back. Linking back can lose to a third pilot's link in the same
 * microseconds, so every new holder waits `settleMs` and checks that the file still names it before it
 * trusts the lock; a holder that lost it is refused as if the winner had held it all along.
 * @throws PilotLockHeld naming the live holder.
 */
export async function acquirePilotLock(path: string, options: PilotLockOptions = {}): Promise<PilotLock> {
  const bootId = options.bootId ?? readBootId();
  const settleMs = options.settleMs ?? 100;
  const token = randomBytes(12).toString('hex');
  const self = processStat(process.pid);
  const holder: PilotLockHolder = {
    pid: process.pid,
    startTicks: self?.startTicks ?? null,
    bootId,
    ...(options.slotId ? { slotId: options.slotId } : {}),
    at: new Date().toISOString(),
    token,
  };
  const mine = `${path}.${token}`;
  const aside = `${path}.stale.${token}`;
  writeFileSync(mine, `${JSON.stringify(holder)}\n`, { mode: 0o644, flag: 'wx' });
  try {
    for (let attempt = 0; attempt < 20; attempt++) {
      try {
        linkSync(mine, path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        const seen = readText(path);
        if (seen === null) continue; // released between our two calls
        const other = parseHolder(seen);
        if (other && holderAlive(other, bootId)) throw new PilotLockHeld(path, other);
        try {
          renameSync(path, aside);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
          throw err;
        }
        if (readText(aside) !== seen) {
          // A newer lock was moved, not the stale one: put it back unless someone linked meanwhile.
          try {
            linkSync(aside, path);
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
          }
        }
        tryUnlink(aside);
        continue;
      }
      await sleep(settleMs);
      const now = readText(path);
      const current = now === null ? null : parseHolder(now);
      if (current?.token === token) return heldLock(path, holder);
      if (current) throw new PilotLockHeld(path, current);
      // The file vanished under us (a rename in flight): try again.
    }
    throw new Error(`could not take ${path}: it kept changing (20 attempts)`);
  } finally {
    tryUnlink(mine);
  }
}

function heldLock(path: string, holder: PilotLockHolder): PilotLock {
  const stillHeld = () => {
    const text = readText(path);
    return text !== null && parseHolder(text)?.token === holder.token;
  };
  return {
    path,
    holder,
    stillHeld,
    release() {
      if (stillHeld()) tryUnlink(path);
    },
  };
}

/** Reads who holds the lock at `path`, if anyone (alive or not). */
export function readPilotLock(path: string): PilotLockHolder | null {
  const text = readText(path);
  return text === null ? null : parseHolder(text);
}
