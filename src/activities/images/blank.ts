/**
 * Blank partitions (seed 002 blankspace): sparse files made on the node, formatted there, attached to the
 * VM as raw disks after its root. Runs through the {@link Executor}, so the same code works in a node
 * worker and from the head over SSH (xen1's dom0: busybox `truncate`/`mkswap`, e2fsprogs' `mkfs.ext4`).
 */
import { ApplicationFailure } from '@temporalio/common';
import { randomBytes } from 'node:crypto';
import { posix } from 'node:path';
import { FailureType } from '../../domain/errors';
import type { Executor } from '../../exec/executor';

/** What a blank partition is formatted with: ext4, swap, or nothing (the guest gets zeros). */
export type BlankPartitionFilesystem = 'ext4' | 'swap' | 'none';

/** Labels both ext4 (16 bytes) and swap (16 bytes) accept, and nothing an argv reader could mistake for an option. */
const LABEL = /^[A-Za-z0-9][A-Za-z0-9._-]{0,15}$/;

/** mkfs of a large partition on a slow (emulated) node: minutes, not the executor's default minute. */
const FORMAT_TIMEOUT_MS = 10 * 60_000;

function invalid(message: string): ApplicationFailure {
  return ApplicationFailure.create({ type: FailureType.InvalidSpec, nonRetryable: true, message });
}

/** The argv that formats `file` with `filesystem`, or null for `none`. Pure, for the unit tests. */
export function formatArgv(filesystem: BlankPartitionFilesystem, file: string, label?: string): string[] | null {
  const l = label === undefined ? [] : ['-L', label];
  switch (filesystem) {
    case 'ext4':
      // nodiscard: the file is already all holes, a discard would only punch them again (slowly, on a big file).
      // assume_storage_prezeroed (e2fsprogs ≥ 1.47): the file is fresh from truncate, so it reads as zeros;
      // mke2fs then writes neither the journal nor the inode tables (a 64 GiB partition stays ~5 MB on the
      // node instead of ~0.5 GiB) and marks the tables zeroed, so the guest's kernel does not zero them either.
      return ['mkfs.ext4', '-q', '-F', '-E', 'nodiscard,assume_storage_prezeroed=1', ...l, file];
    case 'swap':
      // util-linux mkswap warns about holes and 0644 on stderr: harmless, the guest sees a block device.
      return ['mkswap', ...l, file];
    case 'none':
      return null;
  }
}

/**
 * Makes a blank partition at `path` on the node: a sparse file of exactly `sizeMiB` MiB, formatted with
 * `filesystem` (`mkfs.ext4` with `label`, `mkswap` with `label`, or left as zeros).
 *
 * The file is made under a temporary name unique to this call (`<path>.tmp-<hex>`), synced and only then
 * renamed to `path`, so a crash never leaves a half-made partition under the final name, and two attempts
 * running at once (a retried activity whose first attempt still runs) never rename each other's half-made
 * file into place. Idempotent: if `path` exists with the requested size it is complete and kept as is. A
 * file of another size is refused (`InvalidSpec`), not replaced: it may hold a guest's data. Temporary files
 * of a crashed attempt stay in the workspace directory until it is removed.
 */
export async function createBlankPartition(
  exec: Executor,
  path: string,
  sizeMiB: number,
  filesystem: BlankPartitionFilesystem,
  label?: string,
): Promise<void> {
  // Absolute and normalized: the path goes into argv, where a leading '-' would be read as an option.
  if (!posix.isAbsolute(path) || posix.normalize(path) !== path || path.endsWith('/')) {
    throw invalid(`blank partition path ${JSON.stringify(path)} must be an absolute, normalized file path`);
  }
  if (!Number.isSafeInteger(sizeMiB) || sizeMiB <= 0 || !Number.isSafeInteger(sizeMiB * 1024 * 1024)) {
    throw invalid(`blank partition ${path}: size must be a positive whole number of MiB, got ${sizeMiB}`);
  }
  if (filesystem !== 'ext4' && filesystem !== 'swap' && filesystem !== 'none') {
    throw invalid(`blank partition ${path}: unknown filesystem ${JSON.stringify(filesystem)}`);
  }
  if (label !== undefined && !LABEL.test(label)) {
    throw invalid(`blank partition ${path}: label ${JSON.stringify(label)} does not match ${LABEL}`);
  }
  const bytes = sizeMiB * 1024 * 1024;
  const existing = await exec.fileSize(path);
  if (existing === bytes) return;
  if (existing !== null) {
    throw invalid(`blank partition ${path} exists with ${existing} bytes, not ${bytes} (${sizeMiB} MiB): refusing to replace it`);
  }

  const tmp = `${path}.tmp-${randomBytes(4).toString('hex')}`;
  try {
    // A byte count, not "64M": busybox's truncate (xen1's dom0) and coreutils' read suffixes differently.
    await exec.run(['truncate', '-s', String(bytes), tmp]);
    const format = formatArgv(filesystem, tmp, label);
    if (format) await exec.run(format, { timeoutMs: FORMAT_TIMEOUT_MS });
    // mkfs flushes its own writes, but the rename must not reach the disk before the data: fsync the file.
    await exec.run(['sync', tmp], { timeoutMs: FORMAT_TIMEOUT_MS });
    await exec.rename(tmp, path);
  } catch (e) {
    await exec.remove(tmp).catch(() => undefined);
    throw e;
  }
}
