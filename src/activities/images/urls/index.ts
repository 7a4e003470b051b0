/**
 * Image sources and targets by URL (`file://`, `http(s)://`, `sftp://`): opening a source at a byte
 * offset, probing it, and writing a target atomically. The pure URL rules (parsing, prefixes,
 * redaction) are in `domain/image-url.ts`; this folder does the I/O:
 *  - `index.ts` (here): the public API, which picks the scheme's implementation;
 *  - `types.ts`: the shapes shared by every scheme ({@link UrlDeps}, {@link OpenedSource}, …);
 *  - `failures.ts`: final (`SourceUnavailable`) versus retryable failures, every message redacted;
 *  - `stream.ts`: the stall guard, hashing and temporary names every copy uses;
 *  - `file.ts`, `http.ts`, `sftp.ts`: one scheme each (sftp with its connection pool).
 */
import type { Readable } from 'node:stream';
import { ApplicationFailure } from '@temporalio/common';
import { ImageUrlError, isUnderPrefix, parseImageUrl, redactUrl, type ParsedImageUrl } from '../../../domain/image-url';
import { sourceUnavailable, transient } from './failures';
import { openFileSource, realPathOrAncestor, writeFileTarget } from './file';
import { openHttp, writeHttpTarget } from './http';
import { openSftp, writeSftpTarget } from './sftp';
import { connectTimeout, type OpenedSource, type OpenOptions, type TargetContent, type TargetResult, type UrlDeps } from './types';

export { checkImageUrl, isUnderPrefix, parseImageUrl, redactUrl } from '../../../domain/image-url';
export { redactError, sourceUnavailable } from './failures';
export { closeSftpConnections } from './sftp';
export { stallGuard } from './stream';
export type { OpenedSource, OpenOptions, TargetContent, TargetResult, UrlDeps } from './types';

/** Parses `url`, turning a bad URL into a non-retryable `SourceUnavailable`. */
function parse(url: string): ParsedImageUrl {
  try {
    return parseImageUrl(url);
  } catch (e) {
    if (e instanceof ImageUrlError) throw sourceUnavailable(e.message);
    throw e;
  }
}

/**
 * True iff `url` is under one of `prefixes` ({@link isUnderPrefix}) and, for a file:// URL, still is
 * once symbolic links are resolved on both sides: a link in an allowed directory must not lead the
 * head to read (or write) a file outside it. The textual check comes first, so a URL outside every
 * prefix is refused before any I/O.
 */
export async function isAllowed(url: string, prefixes: readonly string[]): Promise<boolean> {
  if (!isUnderPrefix(url, prefixes)) return false;
  const parsed = parseImageUrl(url);
  if (parsed.scheme !== 'file') return true;
  const real = await realPathOrAncestor(parsed.path);
  for (const prefix of prefixes) {
    if (!isUnderPrefix(url, [prefix])) continue;
    let u: URL;
    try {
      u = new URL(prefix);
    } catch {
      continue;
    }
    if (u.protocol !== 'file:') continue;
    const prefixPath = decodeURIComponent(u.pathname);
    const realPrefix = await realPathOrAncestor(prefixPath.replace(/\/+$/, '') || '/');
    const withSlash = realPrefix.endsWith('/') ? realPrefix : `${realPrefix}/`;
    if (real.startsWith(withSlash)) return true;
  }
  return false;
}

/**
 * Opens the image at `url` for reading from byte `start` (default 0). The returned `start` says where
 * the stream really begins: 0 when the source cannot resume at the requested offset (an HTTP server
 * that ignores Range or sends the whole file because it changed; a file shorter than `start`).
 * Prefixes are not checked here: see {@link isAllowed}.
 */
export async function openSource(url: string, deps: UrlDeps, start = 0, options: OpenOptions = {}): Promise<OpenedSource> {
  const p = parse(url);
  switch (p.scheme) {
    case 'file':
      return openFileSource(p, start);
    case 'sftp':
      return openSftp(p, deps, start);
    default:
      return openHttp(p, deps, start, options);
  }
}

/**
 * Checks that the image at `url` can be read, within `timeoutMs`, and returns its size (`null` when an
 * HTTP server does not say). For the API, before it accepts a request: every failure is a
 * `SourceUnavailable` ApplicationFailure whose message is one sentence ("missing file", "HTTP 404",
 * "connection refused", "timed out", "host key not pinned"), with details `[{ transient }]`: true when
 * the source might answer later (timeouts, refused connections, HTTP 5xx).
 */
export async function probeSource(url: string, deps: UrlDeps, timeoutMs: number): Promise<{ sizeBytes: number | null }> {
  const shown = redactUrl(url);
  const bounded = { ...deps, connectTimeoutMs: Math.min(timeoutMs, connectTimeout(deps)) };
  let timer: NodeJS.Timeout | undefined;
  const attempt = (async () => {
    const p = parse(url);
    if (p.scheme === 'file' || p.scheme === 'sftp') {
      const opened = await openSource(url, bounded);
      opened.stream.destroy();
      return { sizeBytes: opened.sizeBytes };
    }
    // One byte is enough to learn the size from Content-Range and that reading works.
    const opened = await openHttp(p, bounded, 0, { end: 0 });
    opened.stream.destroy();
    return { sizeBytes: opened.sizeBytes };
  })();
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(transient(`cannot read ${shown}: timed out after ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([attempt, deadline]);
  } catch (e) {
    if (e instanceof ApplicationFailure) throw sourceUnavailable(e.message, { transient: false });
    throw sourceUnavailable((e as Error).message, { transient: true });
  } finally {
    clearTimeout(timer);
    // A late failure of the abandoned attempt must not become an unhandled rejection.
    attempt.catch(() => undefined);
  }
}

/**
 * Writes the bytes `open()` yields (exactly `sizeBytes` of them, hashing to `sha256`) to the target
 * `url`. Nothing partial ever appears under the target's name: file and sftp targets are written under
 * a hidden temporary name in the same directory and renamed into place when complete and verified;
 * http(s) targets get one PUT with `content-length` and `x-vws-sha256` (2xx = done, 409/412 = refused).
 * An existing file and sftp target with the same bytes is success without writing (idempotent); with
 * other bytes it is refused (non-retryable), never overwritten. Prefixes are not checked here: see
 * {@link isAllowed}.
 */
export async function writeTarget(url: string, deps: UrlDeps, open: () => Promise<Readable>, want: TargetContent): Promise<TargetResult> {
  const p = parse(url);
  switch (p.scheme) {
    case 'file':
      return writeFileTarget(p, deps, open, want);
    case 'sftp':
      return writeSftpTarget(p, deps, open, want);
    default:
      return writeHttpTarget(p, deps, open, want);
  }
}
