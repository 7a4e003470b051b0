/**
 * How a command or a file operation reaches a node. Activities depend on this interface only, so the
 * same node activities run inside a node worker (local) or from the head over SSH (issue 3).
 * Commands are argv arrays: nothing is ever joined into a shell string.
 */

/** Options for one command. */
export interface RunOptions {
  /** Kill the command after this many milliseconds (default 60 s). */
  timeoutMs?: number;
  /** Exit codes that count as success (default `[0]`). */
  okCodes?: number[];
  /** Bytes written to the command's stdin. */
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
