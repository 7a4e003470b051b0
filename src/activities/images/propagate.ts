/**
 * Propagation (seed 002: Unpropagated → Propagated): each image of the workspace goes from the head's
 * repository into the node cache keyed by sha256 (see `cache.ts`), verified while it streams, and the
 * workspace gets its own disks from the cached bases, which are never written: qcow2 overlays for
 * QEMU, raw copies for Xen (dom0 has no qdisk backend, so no copy-on-write there). Blank partitions
 * are made on the node.
 *
 * Every file operation goes through the injected {@link Executor}, so the same code runs in a node
 * worker (local files, HTTP pull from the head) and from the head in SSH mode (the head reads its own
 * repository over HTTP and pushes the bytes over SFTP).
 *
 * A copy cut short (worker killed, connection lost) keeps its `.part` file; the next attempt hashes
 * what is there and asks the repository for the rest (HTTP Range), so it resumes rather than restarts.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { activityInfo } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { FailureType } from '../../domain/errors';
import { imageNameSchema } from '../../domain/requests';
import type { PartitionSpec, ResolvedImage } from '../../domain/workspace';
import type { Executor } from '../../exec/executor';
import type { ExtraDisk } from '../hypervisor';
import { workspaceDir, type NodePaths } from '../node-paths';
import { createBlankPartition } from './blank';
import { cachePaths, createNodeCache } from './cache';
import { heartbeatProgress, progressCounter, type Progress } from './progress';
import { countInActivity } from '../metrics';

/** Dependencies of the image activities. */
export interface ImageDeps {
  exec: Executor;
  paths: NodePaths;
  /** Bearer token the node presents to the head's repository. */
  repositoryToken: () => string;
  /** Root disk format of the node's hypervisor driver. */
  diskFormat: 'qcow2' | 'raw';
  /** Size limit of the node cache in bytes. */
  cacheMaxBytes: number;
  /** Reports progress; the Temporal heartbeat inside an activity. */
  progress?: (p: Progress & { image?: string }) => void;
  /**
   * Opens an image from byte `start` without HTTP when it is in this process's own repository (SSH mode
   * runs on the head); `null` for anything else.
   */
  openLocal?: (image: ResolvedImage, start: number) => Promise<Readable | null>;
  /** Who copies (lock owner); defaults to the activity's workflow and activity id, stable across retries. */
  owner?: () => string;
}

/** A partition besides the root, as propagation receives it (image partitions resolved by then). */
export type PropagatePartition = Pick<PartitionSpec, 'image' | 'blank'>;

/** Input of `propagateImage`. */
export interface PropagateInput {
  workspaceId: string;
  image: ResolvedImage;
  partitions?: PropagatePartition[];
}

/** What propagation did. */
export interface PropagateResult {
  /** Bytes copied over the network by this attempt: 0 when the node cache already had every image. */
  bytesCopied: number;
  /** Bytes an earlier, interrupted attempt had copied that this one kept (0 if none). */
  resumedFromBytes: number;
  rootDisk: string;
  /** Disks after the root, in order. */
  disks: ExtraDisk[];
}

/** How a verified download went. */
export interface DownloadResult {
  bytesCopied: number;
  resumedFromBytes: number;
}

/** Hashes the first bytes of a partial file (the prefix a resumed copy keeps). */
async function hashPrefix(exec: Executor, path: string, hash: Hash): Promise<void> {
  await pipeline(await exec.readStream(path), async function* (source: AsyncIterable<Buffer>) {
    for await (const chunk of source) hash.update(chunk);
  });
}

/**
 * Streams `source.url` into `dest` on the node through `dest.part`, verifying sha256 and size, then
 * renames it into place. A `.part` left by an interrupted attempt is resumed (its bytes hashed, the
 * rest fetched with a Range request); a digest mismatch removes it (typed, non-retryable).
 */
export async function downloadVerified(
  deps: Pick<ImageDeps, 'exec' | 'repositoryToken' | 'openLocal'>,
  source: ResolvedImage,
  dest: string,
  report: (p: Progress) => void,
): Promise<DownloadResult> {
  const part = `${dest}.part`;
  let hash = createHash('sha256');
  let offset = (await deps.exec.fileSize(part)) ?? 0;
  if (offset > source.sizeBytes) offset = 0;
  if (offset > 0) await hashPrefix(deps.exec, part, hash);
  const body = offset < source.sizeBytes ? await openImage(deps, source, offset) : null;
  if (body && body.start !== offset) {
    // The server ignored the range: start over rather than append the whole file to the prefix.
    offset = 0;
    hash = createHash('sha256');
  }
  const count = progressCounter(source.sizeBytes, report, (chunk) => hash.update(chunk), offset);
  if (body) await pipeline(body.stream, count, await deps.exec.writeStream(part, { append: offset > 0 }));
  await finish(deps.exec, source, part, dest, hash.digest('hex'));
  report({ bytes: source.sizeBytes, total: source.sizeBytes });
  return { bytesCopied: count.bytes(), resumedFromBytes: offset };
}

/**
 * The image's bytes from `offset`: read from this process's own repository when it has one (SSH mode),
 * else over HTTP with a Range request. `start` says where the bytes begin (0 if the range was ignored).
 */
async function openImage(
  deps: Pick<ImageDeps, 'repositoryToken' | 'openLocal'>,
  source: ResolvedImage,
  offset: number,
): Promise<{ stream: Readable; start: number }> {
  const local = await deps.openLocal?.(source, offset);
  if (local) return { stream: local, start: offset };
  const headers: Record<string, string> = { authorization: `Bearer ${deps.repositoryToken()}` };
  if (offset > 0) headers.range = `bytes=${offset}-`;
  const res = await fetch(source.url, { headers });
  if (res.status === 404) {
    throw ApplicationFailure.nonRetryable(`image ${source.name} is not in the repository`, FailureType.ImageNotFound);
  }
  if (!res.ok || !res.body) throw new Error(`repository answered HTTP ${res.status} for image ${source.name}`);
  const stream = Readable.fromWeb(res.body as import('node:stream/web').ReadableStream);
  return { stream, start: res.status === 206 ? offset : 0 };
}

/**
 * Reads images of the repository at `url` straight from its directory `dir` (the head, in SSH mode):
 * the same bytes the HTTP endpoint would serve, without a loopback HTTP hop through this process.
 */
export function localRepositoryReader(url: string, dir: string): (image: ResolvedImage, start: number) => Promise<Readable | null> {
  const prefix = `${url}/`;
  return async (image, start) => {
    if (!image.url.startsWith(prefix)) return null;
    const name = decodeURIComponent(image.url.slice(prefix.length));
    if (!imageNameSchema.safeParse(name).success) return null;
    const path = join(dir, name);
    if ((await stat(path).catch(() => null))?.size !== image.sizeBytes) return null;
    return createReadStream(path, { start });
  };
}

/** Verifies a finished `.part` and renames it into place; a mismatch removes it. */
async function finish(exec: Executor, source: ResolvedImage, part: string, dest: string, digest: string): Promise<void> {
  const size = await exec.fileSize(part);
  if (digest !== source.sha256 || size !== source.sizeBytes) {
    await exec.remove(part);
    throw ApplicationFailure.nonRetryable(
      `image ${source.name}: sha256 ${digest} (${size} bytes) does not match the expected ${source.sha256} (${source.sizeBytes} bytes)`,
      FailureType.DigestMismatch,
    );
  }
  await exec.rename(part, dest);
}

/** The lock owner of the running activity: the same across its retries, different for every other copy. */
function activityOwner(): string {
  try {
    const info = activityInfo();
    return `${info.workflowExecution?.workflowId ?? info.activityType}/${info.activityId}`;
  } catch {
    return `pid-${process.pid}-${Date.now()}`;
  }
}

/** Creates the propagation activities over injected dependencies. */
export function createImageActivities(deps: ImageDeps) {
  const report = deps.progress ?? heartbeatProgress;
  const owner = deps.owner ?? activityOwner;
  const cache = createNodeCache({
    exec: deps.exec,
    paths: deps.paths,
    maxBytes: deps.cacheMaxBytes,
    waiting: () => report({ bytes: 0, total: 0 }),
  });

  /** Puts a base into the cache unless it is there; one copier per base and node at a time. */
  async function ensureCached(image: ResolvedImage): Promise<{ path: string } & DownloadResult> {
    const { base } = cachePaths(deps.paths, image.sha256);
    const lock = await cache.lock(image.sha256, owner());
    try {
      if (await cache.has(image.sha256, image.sizeBytes)) {
        await cache.touch(image.sha256);
        return { path: base, bytesCopied: 0, resumedFromBytes: 0 };
      }
      await cache.evictFor(image.sizeBytes);
      const tagged = (p: Progress) => report({ ...p, image: image.name } as Progress);
      const copied = await downloadVerified(deps, image, base, tagged);
      // Only a verified base gets a place in the LRU order.
      await cache.touch(image.sha256);
      return { path: base, ...copied };
    } finally {
      await lock.release();
    }
  }

  /** The workspace's own disk from a cached base: an overlay (qcow2) or a full copy (raw). Idempotent. */
  async function diskFrom(base: string, disk: string): Promise<void> {
    if (await deps.exec.exists(disk)) return;
    const tmp = `${disk}.tmp`;
    if (deps.diskFormat === 'qcow2') {
      await deps.exec.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', tmp]);
    } else {
      await deps.exec.run(['cp', base, tmp], { timeoutMs: 30 * 60_000 });
    }
    await deps.exec.rename(tmp, disk);
  }

  return {
    /**
     * Puts the workspace's images in the node cache and creates its disks: the root and each partition
     * (an overlay or copy of an image, or a blank partition). Idempotent; resumes an interrupted copy.
     */
    async propagateImage(input: PropagateInput): Promise<PropagateResult> {
      const dir = workspaceDir(deps.paths, input.workspaceId);
      const partitions = input.partitions ?? [];
      const images = [input.image, ...partitions.flatMap((p) => (p.image ? [p.image] : []))];
      await deps.exec.mkdir(dir);
      await cache.markInUse(input.workspaceId, images.map((i) => i.sha256));
      const ext = deps.diskFormat === 'qcow2' ? 'qcow2' : 'raw';
      let bytesCopied = 0;
      let resumedFromBytes = 0;
      const fromImage = async (image: ResolvedImage, disk: string) => {
        const cached = await ensureCached(image);
        bytesCopied += cached.bytesCopied;
        resumedFromBytes += cached.resumedFromBytes;
        await diskFrom(cached.path, disk);
      };
      const rootDisk = join(dir, `root.${ext}`);
      await fromImage(input.image, rootDisk);
      const disks: ExtraDisk[] = [];
      for (const [i, p] of partitions.entries()) {
        if (p.image) {
          const path = join(dir, `part${i + 1}.${ext}`);
          await fromImage(p.image, path);
          disks.push({ path, format: deps.diskFormat });
        } else if (p.blank) {
          const path = join(dir, `part${i + 1}.raw`);
          await createBlankPartition(deps.exec, path, p.blank.sizeMiB, p.blank.filesystem, `part${i + 1}`);
          disks.push({ path, format: 'raw' });
        }
      }
      countInActivity('vws_propagation_bytes', 'bytes', 'Bytes copied from the repository into node image caches', bytesCopied);
      return { bytesCopied, resumedFromBytes, rootDisk, disks };
    },

    /** Fetches a saved VM state (a serialized workspace being started again) into the workspace dir. Idempotent. */
    async fetchSavedState(input: { workspaceId: string; state: ResolvedImage }): Promise<string> {
      const dir = workspaceDir(deps.paths, input.workspaceId);
      const path = join(dir, 'vmstate');
      if ((await deps.exec.fileSize(path)) === input.state.sizeBytes) return path;
      await deps.exec.mkdir(dir);
      await downloadVerified(deps, input.state, path, report);
      return path;
    },

    /** Removes every per-workspace file on the node (disks, saved state, sockets, logs); never the shared cache. */
    async removeWorkspaceFiles(input: { workspaceId: string }): Promise<void> {
      await deps.exec.remove(workspaceDir(deps.paths, input.workspaceId));
    },
  };
}
