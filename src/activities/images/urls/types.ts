/**
 * The shapes every scheme shares: what the transfers need ({@link UrlDeps}, with its defaults), what
 * opening a source yields, and what writing a target is given and returns.
 */
import type { Readable } from 'node:stream';
import type { VwsConfig } from '../../../config/schema';
import type { Progress } from '../progress';

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

/** Options of `openSource`. */
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

/** What `writeTarget` did. */
export interface TargetResult {
  /** The target, redacted (fit for logs and workflow history). */
  url: string;
  /** False when the target already held exactly these bytes (nothing was written). */
  written: boolean;
}

/** The stall bound when {@link UrlDeps.stallTimeoutMs} is not given. */
export const DEFAULT_STALL_MS = 60_000;

/** The bound on connecting and on waiting for headers: {@link UrlDeps.connectTimeoutMs}, else the site's SSH connect timeout. */
export function connectTimeout(deps: UrlDeps): number {
  return deps.connectTimeoutMs ?? deps.config.ssh.connectTimeoutMs;
}
