/**
 * Propagation (seed 002: Unpropagated → Propagated) in node-worker mode: the node pulls the image from
 * the head's repository over HTTP into a cache keyed by sha256, verifying the digest while it streams,
 * then gives the workspace a qcow2 overlay backed by the cached base, which is never written.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { heartbeat } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { FailureType } from '../../domain/errors';
import type { ResolvedImage } from '../../domain/workspace';
import type { Executor } from '../../exec/executor';
import { workspaceDir, type NodePaths } from '../node-paths';

/** Dependencies of the propagation activities. */
export interface ImageDeps {
  exec: Executor;
  paths: NodePaths;
  /** Bearer token the node presents to the head's repository. */
  repositoryToken: () => string;
  /** Reports progress; the Temporal heartbeat inside an activity. */
  progress?: (done: { bytes: number; total: number }) => void;
}

/** Input of {@link createImageActivities}' `propagateImage`. */
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

async function fileSize(path: string): Promise<number | null> {
  try {
    return (await stat(path)).size;
  } catch {
    return null;
  }
}

/** Creates the image activities over injected dependencies. */
export function createImageActivities(deps: ImageDeps) {
  const report = deps.progress ?? ((p: { bytes: number; total: number }) => heartbeat(p));

  /** Downloads into the cache unless the base is there already; returns bytes copied. */
  async function ensureCached(image: ResolvedImage): Promise<{ path: string; bytes: number }> {
    const path = join(deps.paths.cache, `${image.sha256}.raw`);
    // Files appear in the cache only by rename after their digest matched, so presence means verified.
    if ((await fileSize(path)) === image.sizeBytes) return { path, bytes: 0 };
    await mkdir(deps.paths.cache, { recursive: true });
    const tmp = `${path}.part-${process.pid}-${Date.now()}`;
    try {
      const res = await fetch(image.url, { headers: { authorization: `Bearer ${deps.repositoryToken()}` } });
      if (res.status === 404) {
        throw ApplicationFailure.nonRetryable(`image ${image.name} is not in the repository`, FailureType.ImageNotFound);
      }
      if (!res.ok || !res.body) throw new Error(`repository answered HTTP ${res.status} for image ${image.name}`);
      const hash = createHash('sha256');
      let bytes = 0;
      let lastReport = 0;
      const body = Readable.fromWeb(res.body as import('node:stream/web').ReadableStream);
      body.on('data', (chunk: Buffer) => {
        hash.update(chunk);
        bytes += chunk.length;
        if (bytes - lastReport >= 8 * 1024 * 1024) {
          lastReport = bytes;
          report({ bytes, total: image.sizeBytes });
        }
      });
      await pipeline(body, createWriteStream(tmp, { mode: 0o644 }));
      const digest = hash.digest('hex');
      if (digest !== image.sha256) {
        throw ApplicationFailure.nonRetryable(
          `image ${image.name}: sha256 ${digest} does not match the expected ${image.sha256}`,
          FailureType.DigestMismatch,
        );
      }
      report({ bytes, total: image.sizeBytes });
      await rename(tmp, path);
      return { path, bytes };
    } finally {
      await rm(tmp, { force: true });
    }
  }

  return {
    /** Puts the image in the node cache and creates the workspace's copy-on-write overlay. Idempotent. */
    async propagateImage(input: PropagateInput): Promise<PropagateResult> {
      const { path: base, bytes } = await ensureCached(input.image);
      const dir = workspaceDir(deps.paths, input.workspaceId);
      const rootDisk = join(dir, 'root.qcow2');
      if (!(await deps.exec.exists(rootDisk))) {
        await mkdir(dir, { recursive: true });
        const tmp = `${rootDisk}.tmp`;
        await deps.exec.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', tmp]);
        await rename(tmp, rootDisk);
      }
      return { bytesCopied: bytes, rootDisk };
    },

    /** Removes every per-workspace file on the node (overlay, sockets, logs); never the shared cache. */
    async removeWorkspaceFiles(input: { workspaceId: string }): Promise<void> {
      await deps.exec.remove(workspaceDir(deps.paths, input.workspaceId));
    },
  };
}
