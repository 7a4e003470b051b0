/**
 * Propagation (seed 002: Unpropagated → Propagated): the image goes from the head's repository into a
 * node cache keyed by sha256, verified while it streams, and the workspace gets its own root disk from
 * the cached base, which is never written: a qcow2 overlay for QEMU, a raw copy for Xen (dom0 has no
 * qdisk backend, so no copy-on-write there).
 *
 * Every file operation goes through the injected {@link Executor}, so the same code runs in a node
 * worker (local files, HTTP pull from the head) and from the head in SSH mode (the head reads its own
 * repository over HTTP and pushes the bytes over SFTP).
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { heartbeat } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { FailureType } from '../../domain/errors';
import type { ResolvedImage } from '../../domain/workspace';
import type { Executor } from '../../exec/executor';
import { workspaceDir, type NodePaths } from '../node-paths';
import { progressCounter, type Progress } from './progress';


/** Dependencies of the image activities. */
export interface ImageDeps {
  exec: Executor;
  paths: NodePaths;
  /** Bearer token the node presents to the head's repository. */
  repositoryToken: () => string;
  /** Root disk format of the node's hypervisor driver. */
  diskFormat: 'qcow2' | 'raw';
  /** Reports progress; the Temporal heartbeat inside an activity. */
  progress?: (p: Progress) => void;
}

/** Input of `propagateImage`. */
export interface PropagateInput {
  workspaceId: string;
  image: ResolvedImage;
}

/** What propagation did. */
export interface PropagateResult {
  /** Bytes copied over the network: 0 when the node cache already had the image. */
  bytesCopied: number;
  rootDisk: string;
}

/** Streams `url` into `dest` on the node via a temporary name, verifying sha256 and size; returns bytes copied. */
export async function downloadVerified(
  deps: Pick<ImageDeps, 'exec' | 'repositoryToken'>,
  source: ResolvedImage,
  dest: string,
  report: (p: Progress) => void,
): Promise<number> {
  const tmp = `${dest}.part`;
  try {
    const res = await fetch(source.url, { headers: { authorization: `Bearer ${deps.repositoryToken()}` } });
    if (res.status === 404) {
      throw ApplicationFailure.nonRetryable(`image ${source.name} is not in the repository`, FailureType.ImageNotFound);
    }
    if (!res.ok || !res.body) throw new Error(`repository answered HTTP ${res.status} for image ${source.name}`);
    const hash = createHash('sha256');
    const count = progressCounter(source.sizeBytes, report, (chunk) => hash.update(chunk));
    const body = Readable.fromWeb(res.body as import('node:stream/web').ReadableStream);
    await pipeline(body, count, await deps.exec.writeStream(tmp));
    const digest = hash.digest('hex');
    if (digest !== source.sha256) {
      throw ApplicationFailure.nonRetryable(
        `image ${source.name}: sha256 ${digest} does not match the expected ${source.sha256}`,
        FailureType.DigestMismatch,
      );
    }
    report({ bytes: count.bytes(), total: source.sizeBytes });
    await deps.exec.rename(tmp, dest);
    return count.bytes();
  } finally {
    await deps.exec.remove(tmp);
  }
}

/** Creates the propagation activities over injected dependencies. */
export function createImageActivities(deps: ImageDeps) {
  const report = deps.progress ?? ((p: Progress) => heartbeat(p));

  /** Downloads into the cache unless the base is there already; returns its path and the bytes copied. */
  async function ensureCached(image: ResolvedImage): Promise<{ path: string; bytes: number }> {
    const path = join(deps.paths.cache, `${image.sha256}.raw`);
    // Files appear in the cache only by rename after their digest matched, so presence means verified.
    if ((await deps.exec.fileSize(path)) === image.sizeBytes) return { path, bytes: 0 };
    await deps.exec.mkdir(deps.paths.cache);
    return { path, bytes: await downloadVerified(deps, image, path, report) };
  }

  return {
    /** Puts the image in the node cache and creates the workspace's root disk from it. Idempotent. */
    async propagateImage(input: PropagateInput): Promise<PropagateResult> {
      const { path: base, bytes } = await ensureCached(input.image);
      const dir = workspaceDir(deps.paths, input.workspaceId);
      const rootDisk = join(dir, deps.diskFormat === 'qcow2' ? 'root.qcow2' : 'root.raw');
      if (!(await deps.exec.exists(rootDisk))) {
        await deps.exec.mkdir(dir);
        const tmp = `${rootDisk}.tmp`;
        if (deps.diskFormat === 'qcow2') {
          await deps.exec.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', tmp]);
        } else {
          await deps.exec.run(['cp', base, tmp], { timeoutMs: 30 * 60_000 });
        }
        await deps.exec.rename(tmp, rootDisk);
      }
      return { bytesCopied: bytes, rootDisk };
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

    /** Removes every per-workspace file on the node (disk, saved state, sockets, logs); never the shared cache. */
    async removeWorkspaceFiles(input: { workspaceId: string }): Promise<void> {
      await deps.exec.remove(workspaceDir(deps.paths, input.workspaceId));
    },
  };
}
