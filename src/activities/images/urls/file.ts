/**
 * file:// sources and targets, local to the head. A source is read from an offset (size and mtime
 * serve as its validator); a target is written under a hidden temporary name, synced, verified and
 * linked into place, so it never replaces a file that appeared meanwhile. Also: the real path of a
 * file:// URL, symbolic links resolved, for the prefix check.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { link, mkdir, open as openFile, realpath, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { FileImageUrl } from '../../../domain/image-url';
import { copyMismatch, fileFailure, sourceUnavailable, targetDiffers } from './failures';
import { digestOf, hashingCounter, partName, stallGuard } from './stream';
import { DEFAULT_STALL_MS, type OpenedSource, type TargetContent, type TargetResult, type UrlDeps } from './types';

/** The real path of `path`, or of its nearest existing ancestor with the rest appended (targets may not exist yet). */
export async function realPathOrAncestor(path: string): Promise<string> {
  const rest: string[] = [];
  let p = path;
  for (;;) {
    try {
      const real = await realpath(p);
      return rest.length ? join(real, ...rest.reverse()) : real;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || p === dirname(p)) throw e;
      rest.push(basename(p));
      p = dirname(p);
    }
  }
}

/** Opens a local file from byte `start`, or from 0 when the file is now shorter than that. */
export async function openFileSource(p: FileImageUrl, start: number): Promise<OpenedSource> {
  const shown = p.normalized;
  let st;
  try {
    st = await stat(p.path);
  } catch (e) {
    throw fileFailure(e, 'read', shown);
  }
  if (!st.isFile()) throw sourceUnavailable(`cannot read ${shown}: not a regular file`);
  const from = start <= st.size ? start : 0;
  const stream = createReadStream(p.path, { start: from });
  await new Promise<void>((resolve, reject) => {
    stream.once('open', () => resolve()).once('error', (e) => reject(fileFailure(e, 'read', shown)));
  });
  return { sizeBytes: st.size, stream, start: from, validator: `${st.size}:${st.mtimeMs}` };
}

/**
 * Writes a local target: an existing file with the same bytes is success without writing, with other
 * bytes a refusal; otherwise the bytes go to a temporary name, are synced and verified, then linked in.
 */
export async function writeFileTarget(p: FileImageUrl, deps: UrlDeps, open: () => Promise<Readable>, want: TargetContent): Promise<TargetResult> {
  const shown = p.normalized;
  const existing = await stat(p.path).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw fileFailure(e, 'write', shown);
  });
  if (existing) return { url: shown, written: await sameLocalFile(p.path, existing.size, want, shown) };
  await mkdir(dirname(p.path), { recursive: true }).catch((e) => {
    throw fileFailure(e, 'write', shown);
  });
  const tmp = partName(p.path);
  try {
    const hash = createHash('sha256');
    await pipeline(
      await open(),
      stallGuard(deps.stallTimeoutMs ?? DEFAULT_STALL_MS, `writing ${shown}`),
      hashingCounter(want.sizeBytes, hash, want.report),
      createWriteStream(tmp, { flags: 'wx', mode: 0o644 }),
      ...(want.signal ? [{ signal: want.signal }] : []),
    );
    await fsync(tmp);
    const got = hash.digest('hex');
    if (got !== want.sha256) throw copyMismatch(shown, got, want.sha256);
    // link() refuses an existing target, so a file that appeared meanwhile is never replaced.
    try {
      await link(tmp, p.path);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') {
        const st = await stat(p.path);
        return { url: shown, written: await sameLocalFile(p.path, st.size, want, shown) };
      }
      // A filesystem without hard links: rename (the window since the check above is small).
      if (code === 'EPERM' || code === 'ENOTSUP' || code === 'EOPNOTSUPP') await rename(tmp, p.path);
      else throw e;
    }
    return { url: shown, written: true };
  } catch (e) {
    throw fileFailure(e, 'write', shown);
  } finally {
    await rm(tmp, { force: true });
  }
}

/** For an existing local target: false (nothing to write) if it holds exactly the bytes; refuses otherwise. */
async function sameLocalFile(path: string, size: number, want: TargetContent, shown: string): Promise<false> {
  if (size !== want.sizeBytes) throw targetDiffers(shown, `${size} bytes, not ${want.sizeBytes}`);
  const digest = await digestOf(createReadStream(path));
  if (digest !== want.sha256) throw targetDiffers(shown, `sha256 ${digest}, not ${want.sha256}`);
  return false;
}

/** Flushes a file to disk, so a rename after a crash never exposes a file with missing bytes. */
async function fsync(path: string): Promise<void> {
  const fh = await openFile(path, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
