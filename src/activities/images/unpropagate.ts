/**
 * Unpropagation (seed 002: Propagated → TransportReady → StagedOut) of a shut-down or serialized
 * workspace: its root disk is flattened into a standalone raw image and its digest taken
 * (TransportReady); then the files are staged out to the site repository (StagedOut), by an HTTP PUT
 * that the head verifies against the digest before it makes the file visible.
 *
 * The target is an image name in the site repository (seed 002 PostShutdown
 * rootPartitionUnpropagationTarget; `--shutdown-save` may name another). URL targets (sftp, http,
 * file) belong to the image issue.
 */
import { join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { FailureType } from '../../domain/errors';
import type { ResolvedImage } from '../../domain/workspace';
import type { Executor } from '../../exec/executor';
import { withHeartbeat } from '../heartbeat';
import { workspaceDir, type NodePaths } from '../node-paths';
import { heartbeatProgress, progressCounter, type Progress } from './progress';

/** A file ready for transport: where it is on the node and its digest. */
export interface TransportFile {
  path: string;
  sha256: string;
  sizeBytes: number;
}

/** The files of an unpropagated workspace: its disk and, if serialized, its VM state. */
export interface TransportFiles {
  disk: TransportFile;
  state?: TransportFile;
}

/** Dependencies of the unpropagation activities. */
export interface UnpropagateDeps {
  exec: Executor;
  paths: NodePaths;
  diskFormat: 'qcow2' | 'raw';
  /** Base URL of the head's repository (`.../repository`). */
  repositoryUrl: string;
  repositoryToken: () => string;
  progress?: (p: Progress) => void;
}

/** sha256 of a file on the node, computed there (`sha256sum` exists in coreutils and busybox). */
async function digestOnNode(exec: Executor, path: string): Promise<TransportFile> {
  const r = await exec.run(['sha256sum', path], { timeoutMs: 30 * 60_000 });
  const sha256 = r.stdout.trim().split(/\s+/)[0];
  const sizeBytes = await exec.fileSize(path);
  if (!/^[0-9a-f]{64}$/.test(sha256 ?? '') || sizeBytes === null) throw new Error(`cannot digest ${path} on ${exec.where}`);
  return { path, sha256, sizeBytes };
}

/** Creates the unpropagation activities. */
export function createUnpropagateActivities(deps: UnpropagateDeps) {
  const report = deps.progress ?? heartbeatProgress;

  /** Flattens the disk and takes the digests (see packageForTransport). */
  async function packageFiles(input: { workspaceId: string; rootDisk: string; includeState: boolean }): Promise<TransportFiles> {
    const dir = workspaceDir(deps.paths, input.workspaceId);
    const out = join(dir, 'out');
    const flat = join(out, 'disk.raw');
    if (!(await deps.exec.exists(flat))) {
      await deps.exec.mkdir(out);
      const tmp = `${flat}.part`;
      const argv =
        deps.diskFormat === 'qcow2' ? ['qemu-img', 'convert', '-O', 'raw', input.rootDisk, tmp] : ['cp', input.rootDisk, tmp];
      await deps.exec.run(argv, { timeoutMs: 30 * 60_000 });
      await deps.exec.rename(tmp, flat);
    }
    const files: TransportFiles = { disk: await digestOnNode(deps.exec, flat) };
    if (input.includeState) files.state = await digestOnNode(deps.exec, join(dir, 'vmstate'));
    return files;
  }

  return {
    /**
     * Flattens the workspace's root disk into `out/disk.raw` and takes the digests (of the saved VM state
     * too, when `includeState`). Idempotent: a finished flat disk is reused.
     */
    async packageForTransport(input: { workspaceId: string; rootDisk: string; includeState: boolean }): Promise<TransportFiles> {
      return withHeartbeat(() => report({ bytes: 0, total: 0 }), 'package', () => packageFiles(input));
    },
    /**
     * Uploads the files to the repository under `name` (and `name.vmstate`); the head checks each digest.
     * Idempotent: the head accepts a re-upload of identical bytes.
     */
    async stageOut(input: { name: string; files: TransportFiles }): Promise<{ disk: ResolvedImage; state?: ResolvedImage }> {
      const upload = async (name: string, f: TransportFile): Promise<ResolvedImage> => {
        const url = `${deps.repositoryUrl}/${encodeURIComponent(name)}`;
        const count = progressCounter(f.sizeBytes, report);
        const body = (await deps.exec.readStream(f.path)).pipe(count);
        const res = await fetch(url, {
          method: 'PUT',
          headers: {
            authorization: `Bearer ${deps.repositoryToken()}`,
            'content-type': 'application/octet-stream',
            'content-length': String(f.sizeBytes),
            'x-vws-sha256': f.sha256,
          },
          body: body as unknown as ReadableStream,
          duplex: 'half',
        } as RequestInit);
        const answer = (await res.json().catch(() => ({}))) as { detail?: string };
        if (res.status === 409 || res.status === 400) {
          throw ApplicationFailure.nonRetryable(`repository refused ${name}: ${answer.detail ?? res.statusText}`, FailureType.InvalidSpec);
        }
        if (!res.ok) throw new Error(`repository answered HTTP ${res.status} for PUT ${name}: ${answer.detail ?? ''}`);
        report({ bytes: f.sizeBytes, total: f.sizeBytes });
        return { name, url, sha256: f.sha256, sizeBytes: f.sizeBytes };
      };
      const disk = await upload(input.name, input.files.disk);
      const state = input.files.state ? await upload(`${input.name}.vmstate`, input.files.state) : undefined;
      return state ? { disk, state } : { disk };
    },
  };
}
