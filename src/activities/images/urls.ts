/**
 * Image sources and targets by URL (`file://`, `http(s)://`, `sftp://`): opening a source at a byte
 * offset, probing it, and writing a target atomically. The pure URL rules (parsing, prefixes,
 * redaction) are in `domain/image-url.ts`; this module does the I/O.
 *
 * Failures tell final trouble from passing trouble:
 *  - `ApplicationFailure` of type `SourceUnavailable` (non-retryable): a bad URL, a missing file, HTTP
 *    4xx, a host key that is not pinned, a refused key, an untrusted TLS certificate, a redirect;
 *  - a plain `Error` (Temporal retries it): timeouts, refused or reset connections, HTTP 5xx, a stall.
 * Every message goes through {@link redactUrl}: no password or signed query ever reaches a log.
 *
 * sftp:// uses the site's SSH key and pinned known_hosts, exactly as SSH-mode nodes do (an unknown
 * host key is refused, never accepted), over a small pool of connections keyed by user@host:port.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { link, mkdir, open as openFile, realpath, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, posix } from 'node:path';
import { finished, pipeline as pipelineCallback, Readable, Transform, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ApplicationFailure } from '@temporalio/common';
import type { VwsConfig } from '../../config/schema';
import { FailureType } from '../../domain/errors';
import { ImageUrlError, isUnderPrefix, parseImageUrl, redactUrl, type FileImageUrl, type HttpImageUrl, type ParsedImageUrl, type SftpImageUrl } from '../../domain/image-url';
import { KnownHosts, SshExecutor } from '../../exec/ssh';
import { progressCounter, type Progress } from './progress';

export { checkImageUrl, isUnderPrefix, parseImageUrl, redactUrl } from '../../domain/image-url';

/** What the transfers need: the site's SSH settings for sftp://, and bounds on waiting. */
export interface UrlDeps {
  /** The site configuration; its `ssh` section (key, pinned known_hosts, timeouts) serves sftp://. */
  config: Pick<VwsConfig, 'ssh'>;
  /** Bound on connecting and on waiting for an answer's headers (default `config.ssh.connectTimeoutMs`). */
  connectTimeoutMs?: number;
  /** A transfer that moves no byte for this long fails, retryably (default 60 s). */
  stallTimeoutMs?: number;
}

/** An opened source. */
export interface OpenedSource {
  /** Size of the whole file, or `null` when the server does not say (HTTP without Content-Length). */
  sizeBytes: number | null;
  /** The bytes from `start` to the end. */
  stream: Readable;
  /**
   * Where `stream` begins: the requested start, or 0 when the source cannot resume there (an HTTP server
   * that ignores Range, a file now shorter than the start). The caller then starts over.
   */
  start: number;
  /**
   * Something that changes when the file does (HTTP strong ETag or Last-Modified; file size and mtime),
   * so a resumed copy can tell it still reads the same file. Absent for sftp (size only).
   */
  validator?: string;
}

/** Options of {@link openSource}. */
export interface OpenOptions {
  /** The validator of an earlier partial copy: an HTTP server sends the whole file if it changed (If-Range). */
  ifRange?: string;
}

/** Expected content of a target, and where to report progress. */
export interface TargetContent {
  sizeBytes: number;
  sha256: string;
  report?: (p: Progress) => void;
  /** Aborts the copy (the activity's cancellation). */
  signal?: AbortSignal;
}

/** What {@link writeTarget} did. */
export interface TargetResult {
  /** The target, redacted (fit for logs and workflow history). */
  url: string;
  /** False when the target already held exactly these bytes (nothing was written). */
  written: boolean;
}

const DEFAULT_STALL_MS = 60_000;
/** An idle pooled sftp connection is closed after this long. */
const SFTP_IDLE_MS = 15_000;

// ---------------------------------------------------------------------------------------------------
// Failures

/** A non-retryable `SourceUnavailable` failure; the message is redacted here. */
export function sourceUnavailable(message: string, details?: Record<string, unknown>): ApplicationFailure {
  return details
    ? ApplicationFailure.nonRetryable(redactUrl(message), FailureType.SourceUnavailable, details)
    : ApplicationFailure.nonRetryable(redactUrl(message), FailureType.SourceUnavailable);
}

/** A retryable failure with a redacted message. */
function transient(message: string): Error {
  return new Error(redactUrl(message));
}

/** Parses `url`, turning a bad URL into a non-retryable `SourceUnavailable`. */
function parse(url: string): ParsedImageUrl {
  try {
    return parseImageUrl(url);
  } catch (e) {
    if (e instanceof ImageUrlError) throw sourceUnavailable(e.message);
    throw e;
  }
}

/** Re-throws `e` with its message redacted (ApplicationFailures are built redacted and pass as they are). */
export function redactError(e: unknown): Error {
  if (e instanceof ApplicationFailure) return e;
  const err = e as Error;
  if (err?.name === 'AbortError') return err;
  const out = new Error(redactUrl(err?.message ?? String(e)));
  out.name = err?.name ?? 'Error';
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Streams

/**
 * A pass-through that fails the copy when no byte has gone through for `ms` (a server that stopped
 * sending, or a target that stopped taking: backpressure stops the flow here too). Retryable.
 */
export function stallGuard(ms: number, what: string): Transform {
  let timer: NodeJS.Timeout | undefined;
  const guard: Transform = new Transform({
    transform(chunk: Buffer, _enc, done) {
      arm();
      done(null, chunk);
    },
    flush(done) {
      clearTimeout(timer);
      done();
    },
  });
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => guard.destroy(transient(`${what}: no data moved for ${ms / 1000} s`)), ms);
  };
  arm();
  guard.once('close', () => clearTimeout(timer));
  return guard;
}

/** A pass-through that feeds a hash and counts bytes, reporting progress through `report`. */
function hashingCounter(total: number, hash: ReturnType<typeof createHash>, report?: (p: Progress) => void) {
  return progressCounter(total, report ?? (() => undefined), (chunk) => hash.update(chunk));
}

/** sha256 of a stream, hex. */
async function digestOf(stream: Readable): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(stream, hash);
  return hash.digest('hex');
}

// ---------------------------------------------------------------------------------------------------
// Allowed prefixes, with symbolic links resolved for file://

/** The real path of `path`, or of its nearest existing ancestor with the rest appended (targets may not exist yet). */
async function realPathOrAncestor(path: string): Promise<string> {
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

// ---------------------------------------------------------------------------------------------------
// sftp connections

interface PoolEntry {
  exec: SshExecutor;
  users: number;
  idle?: NodeJS.Timeout;
}

const pool = new Map<string, PoolEntry>();

/**
 * A pooled executor for the sftp URL's user@host:port (with the site key and pinned known_hosts), and
 * a `release` to call when done. Connections idle for a while are closed.
 */
function acquireSftp(p: SftpImageUrl, deps: UrlDeps): { exec: SshExecutor; release: () => void } {
  const key = `${p.user}@${p.host}:${p.port}|${deps.config.ssh.keyFile}|${deps.config.ssh.knownHostsFile}`;
  let entry = pool.get(key);
  if (!entry) {
    let knownHosts: KnownHosts;
    try {
      knownHosts = KnownHosts.fromFile(deps.config.ssh.knownHostsFile);
    } catch (e) {
      throw sourceUnavailable(`cannot read the pinned host keys (${(e as Error).message})`);
    }
    let exec: SshExecutor;
    try {
      exec = new SshExecutor({
        host: p.host,
        port: p.port,
        user: p.user,
        privateKey: deps.config.ssh.keyFile,
        knownHosts,
        connectTimeoutMs: deps.connectTimeoutMs ?? deps.config.ssh.connectTimeoutMs,
        keepaliveIntervalMs: deps.config.ssh.keepaliveIntervalMs,
        maxChannels: deps.config.ssh.maxChannels,
      });
    } catch (e) {
      // A bad or unreadable site key: no retry fixes the configuration.
      throw sourceUnavailable((e as Error).message);
    }
    entry = { exec, users: 0 };
    pool.set(key, entry);
  }
  const e = entry;
  clearTimeout(e.idle);
  e.users++;
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    e.users--;
    if (e.users > 0) return;
    e.idle = setTimeout(() => {
      if (e.users === 0 && pool.get(key) === e) {
        pool.delete(key);
        void e.exec.close();
      }
    }, SFTP_IDLE_MS);
    e.idle.unref();
  };
  return { exec: e.exec, release };
}

/** Runs `fn` with a pooled sftp executor, releasing it afterwards. */
async function withSftp<T>(p: SftpImageUrl, deps: UrlDeps, fn: (exec: SshExecutor) => Promise<T>): Promise<T> {
  const { exec, release } = acquireSftp(p, deps);
  try {
    return await fn(exec);
  } finally {
    release();
  }
}

/** Closes every pooled sftp connection (worker shutdown, tests). */
export async function closeSftpConnections(): Promise<void> {
  const entries = [...pool.values()];
  pool.clear();
  await Promise.all(
    entries.map((e) => {
      clearTimeout(e.idle);
      return e.exec.close();
    }),
  );
}

/** Maps an SshExecutor error to a failure: host key and authentication problems and "the server said no" are final. */
function sftpFailure(e: unknown, verb: string, url: string): Error {
  if (e instanceof ApplicationFailure) return e;
  const err = e as NodeJS.ErrnoException & { sftpStatus?: boolean };
  const msg = err.message ?? String(e);
  const at = `cannot ${verb} ${url}`;
  if (/no host key pinned|not pinned|host key changed/.test(msg)) return sourceUnavailable(`${at}: host key not pinned (${msg})`);
  if (/refused key|authentication failed/.test(msg)) return sourceUnavailable(`${at}: the server refused the site's SSH key (${msg})`);
  if (err.code === 'ENOENT') return sourceUnavailable(`${at}: missing file (${msg})`);
  if (err.code === 'EACCES') return sourceUnavailable(`${at}: permission denied (${msg})`);
  if (err.sftpStatus) return sourceUnavailable(`${at}: the server refused (${msg})`);
  if (/ECONNREFUSED/.test(msg)) return transient(`${at}: connection refused (${msg})`);
  if (/within \d+ ms|ETIMEDOUT|timed out/.test(msg)) return transient(`${at}: connection timed out (${msg})`);
  if (/ENOTFOUND|EAI_AGAIN/.test(msg)) return transient(`${at}: unknown host (${msg})`);
  return transient(`${at}: ${msg}`);
}

// ---------------------------------------------------------------------------------------------------
// HTTP

/** Headers for a request to `p`: Basic auth from the URL's credentials, if any. */
function httpHeaders(p: HttpImageUrl): Record<string, string> {
  const headers: Record<string, string> = {};
  if (p.auth) headers.authorization = `Basic ${Buffer.from(`${p.auth.username}:${p.auth.password}`).toString('base64')}`;
  return headers;
}

/** A fetch whose connection and headers must come within `timeoutMs`; the body may take longer. */
async function fetchWithin(url: string, init: RequestInit, timeoutMs: number, verb: string, shown: string): Promise<Response> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  try {
    return await fetch(url, { ...init, redirect: 'manual', signal: abort.signal });
  } catch (e) {
    if (abort.signal.aborted) throw transient(`cannot ${verb} ${shown}: timed out after ${timeoutMs} ms`);
    throw networkFailure(e, verb, shown);
  } finally {
    clearTimeout(timer);
  }
}

/** Maps a fetch error (undici: `TypeError: fetch failed` with a `cause`) to a failure. */
function networkFailure(e: unknown, verb: string, shown: string): Error {
  const cause = (e as { cause?: { code?: string; message?: string; errors?: Array<{ code?: string }> } }).cause;
  const code = cause?.code ?? cause?.errors?.[0]?.code ?? '';
  const at = `cannot ${verb} ${shown}`;
  if (/CERT|SELF_SIGNED|TLS|SSL/.test(code)) return sourceUnavailable(`${at}: TLS certificate not trusted (${code})`);
  const why: Record<string, string> = {
    ECONNREFUSED: 'connection refused',
    ETIMEDOUT: 'connection timed out',
    UND_ERR_CONNECT_TIMEOUT: 'connection timed out',
    UND_ERR_HEADERS_TIMEOUT: 'timed out waiting for an answer',
    ENOTFOUND: 'unknown host',
    EAI_AGAIN: 'unknown host (DNS lookup failed)',
    ECONNRESET: 'connection reset',
    UND_ERR_SOCKET: 'connection reset',
    EHOSTUNREACH: 'host unreachable',
    ENETUNREACH: 'network unreachable',
  };
  return transient(`${at}: ${why[code] ?? (cause?.message || (e as Error).message)}`);
}

/** Throws the failure an HTTP status means; returns for 2xx. Consumes nothing. */
function checkHttpStatus(res: Response, verb: string, shown: string, requestUrl: string): void {
  if (res.ok) return;
  const at = `cannot ${verb} ${shown}: HTTP ${res.status}`;
  if (res.status >= 300 && res.status < 400) {
    const location = res.headers.get('location');
    const to = location ? new URL(location, requestUrl).href : 'somewhere';
    // Following it could lead outside the allowed prefixes; the client names the final URL instead.
    throw sourceUnavailable(`${at} redirects to ${to}; name the final URL`);
  }
  if (res.status === 404 || res.status === 410) throw sourceUnavailable(`${at}: no such file`);
  if (res.status === 401 || res.status === 403) throw sourceUnavailable(`${at}: access refused`);
  if (res.status === 408 || res.status === 429 || res.status >= 500) throw transient(`${at} (the server may recover)`);
  throw sourceUnavailable(`${at} ${res.statusText}`.trim());
}

/** The body of a response as a Node stream. */
function bodyStream(res: Response): Readable {
  return res.body ? Readable.fromWeb(res.body as import('node:stream/web').ReadableStream) : Readable.from([]);
}

/** A strong validator for If-Range: a strong ETag, else Last-Modified. */
function httpValidator(res: Response): string | undefined {
  const etag = res.headers.get('etag');
  if (etag && !etag.startsWith('W/')) return etag;
  return res.headers.get('last-modified') ?? undefined;
}

async function openHttp(p: HttpImageUrl, deps: UrlDeps, start: number, options: OpenOptions & { end?: number }): Promise<OpenedSource> {
  const shown = redactUrl(p.requestUrl);
  const headers = httpHeaders(p);
  if (start > 0 || options.end !== undefined) headers.range = `bytes=${start}-${options.end ?? ''}`;
  if (start > 0 && options.ifRange) headers['if-range'] = options.ifRange;
  const res = await fetchWithin(p.requestUrl, { headers }, connectTimeout(deps), 'read', shown);
  if (res.status === 416) {
    // Nothing at or after `start`: the earlier copy is complete if the file is exactly that long.
    void res.body?.cancel();
    const total = /^bytes \*\/(\d+)$/.exec(res.headers.get('content-range') ?? '');
    if (total && Number(total[1]) === start) return { sizeBytes: start, stream: Readable.from([]), start, validator: httpValidator(res) };
    return openHttp(p, deps, 0, { end: options.end });
  }
  checkHttpStatus(res, 'read', shown, p.requestUrl);
  const validator = httpValidator(res);
  if (res.status === 206) {
    const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers.get('content-range') ?? '');
    if (!range || Number(range[1]) !== start) {
      void res.body?.cancel();
      if (start === 0) throw transient(`cannot read ${shown}: the server answered a range it was not asked for`);
      return openHttp(p, deps, 0, { end: options.end });
    }
    const sizeBytes = range[3] === '*' ? null : Number(range[3]);
    return { sizeBytes, stream: bodyStream(res), start, validator };
  }
  // 200: the whole file (the server ignored Range, or If-Range said the file changed).
  const length = res.headers.get('content-length');
  const sizeBytes = length !== null && /^\d+$/.test(length) ? Number(length) : null;
  return { sizeBytes, stream: bodyStream(res), start: 0, validator };
}

function connectTimeout(deps: UrlDeps): number {
  return deps.connectTimeoutMs ?? deps.config.ssh.connectTimeoutMs;
}

// ---------------------------------------------------------------------------------------------------
// Files

/** Maps a local fs error to a failure: a missing or unreadable file is final, anything else may pass. */
function fileFailure(e: unknown, verb: string, shown: string): Error {
  if (e instanceof ApplicationFailure) return e;
  const code = (e as NodeJS.ErrnoException).code;
  const at = `cannot ${verb} ${shown}`;
  if (code === 'ENOENT') return sourceUnavailable(`${at}: missing file`);
  if (code === 'EACCES' || code === 'EPERM') return sourceUnavailable(`${at}: permission denied`);
  if (code === 'EISDIR' || code === 'ENOTDIR') return sourceUnavailable(`${at}: not a regular file`);
  return transient(`${at}: ${(e as Error).message}`);
}

async function openFileSource(p: FileImageUrl, start: number): Promise<OpenedSource> {
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

// ---------------------------------------------------------------------------------------------------
// sftp sources

/**
 * True when the host says `path` is not a regular file. SFTP's stat is not exposed by the executor, and
 * reading a directory over SFTP stalls rather than fails, so this asks `test -f`; a host without a shell
 * (or without `timeout`) gives no answer, and the read finds out.
 */
async function notARegularFile(exec: SshExecutor, path: string): Promise<boolean> {
  try {
    const r = await exec.run(['test', '-f', path], { timeoutMs: 10_000, okCodes: [0, 1] });
    return r.code === 1;
  } catch {
    return false;
  }
}

async function openSftp(p: SftpImageUrl, deps: UrlDeps, start: number): Promise<OpenedSource> {
  const shown = redactUrl(p.normalized);
  const { exec, release } = acquireSftp(p, deps);
  try {
    const size = await exec.fileSize(p.path);
    if (size === null) throw sourceUnavailable(`cannot read ${shown}: missing file`);
    if (await notARegularFile(exec, p.path)) throw sourceUnavailable(`cannot read ${shown}: not a regular file`);
    const from = start <= size ? start : 0;
    const stream = await exec.readStream(p.path, from);
    // The connection stays in use until the stream is done with.
    finished(stream, () => release());
    return { sizeBytes: size, stream, start: from };
  } catch (e) {
    release();
    throw sftpFailure(e, 'read', shown);
  }
}

// ---------------------------------------------------------------------------------------------------
// Sources

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

// ---------------------------------------------------------------------------------------------------
// Targets

/** The non-retryable failure for a target that holds other bytes than the ones to write. */
function targetDiffers(shown: string, why: string): ApplicationFailure {
  return sourceUnavailable(`refusing to overwrite ${shown}: it already exists with ${why}`);
}

/** A copy whose bytes do not hash to the expected digest: the repository file is not what its sidecar says. */
function copyMismatch(shown: string, got: string, expected: string): ApplicationFailure {
  return ApplicationFailure.nonRetryable(`the copy written to ${redactUrl(shown)} has sha256 ${got}, not the expected ${expected}`, FailureType.DigestMismatch);
}

/** A temporary name next to `path`: hidden, unique per attempt (two attempts never share one). */
function partName(path: string): string {
  return posix.join(posix.dirname(path), `.${posix.basename(path)}.part-${randomBytes(6).toString('hex')}`);
}

async function writeFileTarget(p: FileImageUrl, deps: UrlDeps, open: () => Promise<Readable>, want: TargetContent): Promise<TargetResult> {
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

/** Waits until an sftp write stream has closed its remote handle (only then are the bytes all there). */
function closed(stream: Writable): Promise<void> {
  if ((stream as Writable & { closed?: boolean }).closed) return Promise.resolve();
  return new Promise((resolve, reject) => {
    stream.once('close', () => resolve()).once('error', reject);
  });
}

async function writeSftpTarget(p: SftpImageUrl, deps: UrlDeps, open: () => Promise<Readable>, want: TargetContent): Promise<TargetResult> {
  const shown = redactUrl(p.normalized);
  return withSftp(p, deps, async (exec) => {
    try {
      const size = await exec.fileSize(p.path);
      if (size !== null) return { url: shown, written: await sameRemoteFile(exec, p.path, size, want, shown) };
      const dir = posix.dirname(p.path);
      if (!(await exec.exists(dir))) await exec.mkdir(dir);
      const tmp = partName(p.path);
      let renamed = false;
      try {
        const hash = createHash('sha256');
        const out = await exec.writeStream(tmp);
        await pipeline(
          await open(),
          stallGuard(deps.stallTimeoutMs ?? DEFAULT_STALL_MS, `writing ${shown}`),
          hashingCounter(want.sizeBytes, hash, want.report),
          out,
          ...(want.signal ? [{ signal: want.signal }] : []),
        );
        await closed(out);
        const got = hash.digest('hex');
        if (got !== want.sha256) throw copyMismatch(shown, got, want.sha256);
        // Another writer may have finished meanwhile; its file is kept if identical, and refused otherwise.
        const now = await exec.fileSize(p.path);
        if (now !== null) return { url: shown, written: await sameRemoteFile(exec, p.path, now, want, shown) };
        await exec.rename(tmp, p.path);
        renamed = true;
        return { url: shown, written: true };
      } finally {
        if (!renamed) await exec.remove(tmp).catch(() => undefined);
      }
    } catch (e) {
      throw sftpFailure(e, 'write', shown);
    }
  });
}

/** For an existing remote target: false if it holds exactly the bytes (hashed here, over SFTP); refuses otherwise. */
async function sameRemoteFile(exec: SshExecutor, path: string, size: number, want: TargetContent, shown: string): Promise<false> {
  if (size !== want.sizeBytes) throw targetDiffers(shown, `${size} bytes, not ${want.sizeBytes}`);
  const digest = await digestOf(await exec.readStream(path));
  if (digest !== want.sha256) throw targetDiffers(shown, `sha256 ${digest}, not ${want.sha256}`);
  return false;
}

async function writeHttpTarget(p: HttpImageUrl, deps: UrlDeps, open: () => Promise<Readable>, want: TargetContent): Promise<TargetResult> {
  const shown = redactUrl(p.requestUrl);
  const hash = createHash('sha256');
  // The callback form returns the last stream and destroys every stage on an error, so a failing
  // source fails the request body too (rather than leaving the PUT waiting).
  const body = pipelineCallback(
    await open(),
    stallGuard(deps.stallTimeoutMs ?? DEFAULT_STALL_MS, `writing ${shown}`),
    hashingCounter(want.sizeBytes, hash, want.report),
    () => undefined,
  );
  const headers = {
    ...httpHeaders(p),
    'content-type': 'application/octet-stream',
    'content-length': String(want.sizeBytes),
    'x-vws-sha256': want.sha256,
  };
  let res: Response;
  try {
    res = await fetch(p.requestUrl, { method: 'PUT', headers, body: body as unknown as ReadableStream, duplex: 'half', redirect: 'manual', signal: want.signal } as RequestInit);
  } catch (e) {
    body.destroy();
    throw networkFailure(e, 'write', shown);
  }
  void res.body?.cancel();
  if (res.status === 409 || res.status === 412) throw targetDiffers(shown, `other content (HTTP ${res.status})`);
  checkHttpStatus(res, 'write', shown, p.requestUrl);
  const got = hash.digest('hex');
  if (got !== want.sha256) throw copyMismatch(shown, got, want.sha256);
  return { url: shown, written: true };
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
