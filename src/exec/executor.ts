/**
 * How a command or a file operation reaches a node. Activities depend on this interface only, so the
 * same node activities run inside a node worker (local) or from the head over SSH (ssh2).
 * Commands are argv arrays: nothing is ever joined into a shell string by the caller.
 */
import type { Duplex, Readable, Writable } from 'node:stream';

/** Options for one command. */
export interface RunOptions {
  /** Kill the command after this many milliseconds (default 60 s). */
  timeoutMs?: number;
  /** Exit codes that count as success (default `[0]`). */
  okCodes?: number[];
  /** Bytes written to the command's stdin (use it for secrets: never put them in argv). */
  input?: string;
}

/** What a finished command printed. */
export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs commands and touches files on one host. */
export interface Executor {
  /** Runs `argv` (no shell); rejects with {@link CommandError} on a code outside `okCodes`. */
  run(argv: readonly string[], options?: RunOptions): Promise<CommandResult>;
  /** Reads a text file; `null` if it does not exist. */
  readFile(path: string): Promise<string | null>;
  /** Writes a file atomically (temporary name, then rename), so readers never see half of it. */
  writeFileAtomic(path: string, content: string): Promise<void>;
  /** Removes a file or directory tree; succeeds if it is already gone. */
  remove(path: string): Promise<void>;
  /** True if the path exists. */
  exists(path: string): Promise<boolean>;
  /** Size in bytes of a file; `null` if it does not exist. */
  fileSize(path: string): Promise<number | null>;
  /** Names in a directory (not recursive); `[]` if it does not exist. */
  list(dir: string): Promise<string[]>;
  /**
   * Creates a file with `content` only if nothing exists at `path` (O_EXCL): true if this call created
   * it, false if it was there. The building block of node-side locks.
   */
  createExclusive(path: string, content: string): Promise<boolean>;
  /** Creates a directory and its parents; succeeds if it exists. */
  mkdir(path: string): Promise<void>;
  /** Renames a file, replacing the target (atomic on one filesystem). */
  rename(from: string, to: string): Promise<void>;
  /** A stream of a file's bytes from `start` (default 0). */
  readStream(path: string, start?: number): Promise<Readable>;
  /** A stream into a file (mode 0644), truncated, or appended to with `append`. Resolves the write on 'finish'/'close'. */
  writeStream(path: string, options?: { append?: boolean }): Promise<Writable>;
  /** A duplex connection to a unix socket on the host (QMP sockets). */
  connectUnix(path: string): Promise<Duplex>;
  /** Human-readable name of where commands run (`local`, `ssh root@10.213.0.12`), for logs and errors. */
  readonly where: string;
}

/** A command that failed: names the program and exit code, and keeps the tail of stderr. */
export class CommandError extends Error {
  override name = 'CommandError';
  constructor(
    readonly argv: readonly string[],
    readonly code: number | null,
    readonly stderr: string,
    reason?: string,
  ) {
    super(`${argv[0]} ${reason ?? `exited with code ${code}`}${stderr ? `: ${stderr.trim().slice(-500)}` : ''}`);
  }
}
