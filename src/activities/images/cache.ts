/**
 * A node's image cache (seed 001: image caching and sharing; Nimbus's md5-keyed node cache, here keyed
 * by sha256). Layout under `<node dir>/cache/`:
 *
 * - `<sha256>.raw`      a verified base image; it appears only by rename after its digest matched,
 *                       so its presence means verified. Workspaces' overlays are backed by it.
 * - `<sha256>.raw.part` a copy in progress; kept across a worker crash so the next attempt resumes.
 * - `<sha256>.lock`     who is copying it (`{owner, at}`), so concurrent propagations copy once.
 * - `<sha256>.used`     when a workspace last used it (ms since the epoch): the LRU order.
 *
 * Which bases live workspaces use is read from each workspace directory's `bases` file (one digest per
 * line, written before the base is fetched), so eviction never removes a base under a live overlay.
 * Everything goes through the {@link Executor}: the same code runs in a node worker and over SSH.
 */
import { join } from 'node:path';
import type { Executor } from '../../exec/executor';
import { acquireFileLock, type FileLock } from '../file-lock';
import { workspaceDir, type NodePaths } from '../node-paths';

/** A lock not refreshed for this long belongs to a dead copier and may be taken over. */
export const LOCK_STALE_MS = 30_000;
/** How often a lock holder refreshes its lock. */
const LOCK_REFRESH_MS = 5_000;
/** How often a waiter looks at a lock held by someone else. */
const LOCK_POLL_MS = 500;

const DIGEST = /^[0-9a-f]{64}$/;

/** Dependencies of the cache. */
export interface CacheDeps {
  exec: Executor;
  paths: NodePaths;
  /** Size limit of the cache in bytes. */
  maxBytes: number;
  /** Clock (ms); injectable for tests. */
  now?: () => number;
  /** Called while waiting for another copier (the activity's heartbeat). */
  waiting?: () => void;
}

/** A held lock; `release` is idempotent. */
export type CacheLock = FileLock;

/** One cached base as eviction sees it. */
interface Entry {
  sha256: string;
  sizeBytes: number;
}

/** Paths of one cached base. */
export function cachePaths(paths: NodePaths, sha256: string) {
  if (!DIGEST.test(sha256)) throw new Error(`refusing a cache path for digest ${JSON.stringify(sha256)}`);
  const base = join(paths.cache, `${sha256}.raw`);
  return { base, part: `${base}.part`, lock: join(paths.cache, `${sha256}.lock`), used: join(paths.cache, `${sha256}.used`) };
}

/** Creates the cache operations over an executor. */
export function createNodeCache(deps: CacheDeps) {
  const now = deps.now ?? Date.now;
  const { exec, paths } = deps;

  const cache = {
    /**
     * Takes the copy lock of `sha256` for `owner`, waiting while another live copier holds it. The same
     * owner (a retried activity) takes its own lock over at once; a lock left by a dead copier is taken
     * over once stale. The lock is refreshed until released.
     */
    async lock(sha256: string, owner: string): Promise<CacheLock> {
      await exec.mkdir(paths.cache);
      return acquireFileLock(exec, cachePaths(paths, sha256).lock, owner, {
        staleMs: LOCK_STALE_MS,
        refreshMs: LOCK_REFRESH_MS,
        pollMs: LOCK_POLL_MS,
        now,
        ...(deps.waiting ? { waiting: deps.waiting } : {}),
      });
    },

    /** True when the verified base is in the cache with the expected size. */
    async has(sha256: string, sizeBytes: number): Promise<boolean> {
      return (await exec.fileSize(cachePaths(paths, sha256).base)) === sizeBytes;
    },

    /** Records a use of `sha256` now (the LRU order). */
    async touch(sha256: string): Promise<void> {
      await exec.writeFileAtomic(cachePaths(paths, sha256).used, String(now()));
    },

    /** Records that a workspace uses these bases, before any of them is fetched (eviction reads it). */
    async markInUse(workspaceId: string, digests: string[]): Promise<void> {
      await exec.writeFileAtomic(join(workspaceDir(paths, workspaceId), 'bases'), [...new Set(digests)].join('\n') + '\n');
    },

    /** Digests that live workspaces use (their `bases` files). */
    async inUse(): Promise<Set<string>> {
      const used = new Set<string>();
      for (const ws of await exec.list(paths.workspaces)) {
        if (!/^ws-[0-9a-f]{12}$/.test(ws)) continue;
        const text = await exec.readFile(join(paths.workspaces, ws, 'bases'));
        for (const line of (text ?? '').split('\n')) if (DIGEST.test(line)) used.add(line);
      }
      return used;
    },

    /** The cached bases with their sizes. */
    async entries(): Promise<Entry[]> {
      const out: Entry[] = [];
      for (const name of await exec.list(paths.cache)) {
        const m = /^([0-9a-f]{64})\.raw$/.exec(name);
        if (!m) continue;
        const p = cachePaths(paths, m[1]);
        const sizeBytes = await exec.fileSize(p.base);
        if (sizeBytes === null) continue;
        out.push({ sha256: m[1], sizeBytes });
      }
      return out;
    },

    /**
     * Makes room for `incomingBytes`: evicts least recently used bases until the cache fits its limit,
     * never one a live workspace uses or one being copied (locked). Returns the evicted digests; if what
     * is left in use is still too big, it stops there (the filesystem is the hard limit, not this).
     */
    async evictFor(incomingBytes: number): Promise<string[]> {
      const entries = await cache.entries();
      let total = entries.reduce((n, e) => n + e.sizeBytes, 0) + incomingBytes;
      if (total <= deps.maxBytes) return [];
      // Only over the limit is the LRU order worth its reads (one file per base, over SSH a round trip each).
      const lastUsed = new Map<string, number>();
      for (const e of entries) lastUsed.set(e.sha256, Number((await exec.readFile(cachePaths(paths, e.sha256).used)) ?? 0) || 0);
      const keep = await cache.inUse();
      const evicted: string[] = [];
      for (const e of entries.sort((a, b) => lastUsed.get(a.sha256)! - lastUsed.get(b.sha256)!)) {
        if (total <= deps.maxBytes) break;
        if (keep.has(e.sha256)) continue;
        const p = cachePaths(paths, e.sha256);
        // Under the base's own lock: a propagation marks its use before it takes that lock, so either
        // the re-read below sees the mark, or the propagation waits and then finds the base gone.
        if (!(await exec.createExclusive(p.lock, JSON.stringify({ owner: 'evict', at: now() })))) continue;
        try {
          if ((await cache.inUse()).has(e.sha256)) continue;
          await exec.remove(p.base);
          await exec.remove(p.used);
        } finally {
          await exec.remove(p.lock);
        }
        total -= e.sizeBytes;
        evicted.push(e.sha256);
      }
      return evicted;
    },
  };
  return cache;
}

/** The cache's type. */
export type NodeCache = ReturnType<typeof createNodeCache>;
