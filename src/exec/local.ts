/** The local executor: child_process without a shell, and node:fs. Used by node workers on their node. */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { dirname } from 'node:path';
import type { Duplex, Readable, Writable } from 'node:stream';
import { CommandError, type CommandResult, type Executor, type RunOptions } from './executor';

/** Runs commands on this machine. */
export class LocalExecutor implements Executor {
  readonly where = 'local';

  run(argv: readonly string[], options: RunOptions = {}): Promise<CommandResult> {
    const { timeoutMs = 60_000, okCodes = [0], input } = options;
    if (argv.length === 0) return Promise.reject(new Error('empty argv'));
    return new Promise((resolve, reject) => {
      const child = execFile(
        argv[0],
        argv.slice(1),
        { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' },
        (error, stdout, stderr) => {
          const err = error as (NodeJS.ErrnoException & { code?: number | string; killed?: boolean }) | null;
          if (err && typeof err.code !== 'number') {
            // Spawn failure (ENOENT...) or timeout kill: no exit code.
            const reason = err.killed ? `timed out after ${timeoutMs} ms` : `could not run (${err.code ?? err.message})`;
            reject(new CommandError(argv, null, stderr, reason));
            return;
          }
          const code = err ? Number(err.code) : 0;
          if (!okCodes.includes(code)) reject(new CommandError(argv, code, stderr));
          else resolve({ code, stdout, stderr });
        },
      );
      if (input !== undefined) child.stdin?.end(input);
    });
  }

  async readFile(path: string): Promise<string | null> {
    try {
      return await readFile(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async writeFileAtomic(path: string, content: string): Promise<void> {
    await mkdir(dirname(path), { recursive: true });
    const tmp = `${path}.tmp-${randomBytes(4).toString('hex')}`;
    await writeFile(tmp, content, { mode: 0o644 });
    await rename(tmp, path);
  }

  async remove(path: string): Promise<void> {
    await rm(path, { recursive: true, force: true });
  }

  async exists(path: string): Promise<boolean> {
    try {
      await stat(path);
      return true;
    } catch {
      return false;
    }
  }

  async fileSize(path: string): Promise<number | null> {
    try {
      return (await stat(path)).size;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async list(dir: string): Promise<string[]> {
    try {
      return await readdir(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
  }

  async createExclusive(path: string, content: string): Promise<boolean> {
    try {
      await writeFile(path, content, { flag: 'wx', mode: 0o644 });
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw e;
    }
  }

  async mkdir(path: string): Promise<void> {
    await mkdir(path, { recursive: true });
  }

  async rename(from: string, to: string): Promise<void> {
    await rename(from, to);
  }

  async readStream(path: string, start = 0): Promise<Readable> {
    const stream = createReadStream(path, { start });
    await new Promise<void>((resolve, reject) => stream.once('open', () => resolve()).once('error', reject));
    return stream;
  }

  async writeStream(path: string, options: { append?: boolean } = {}): Promise<Writable> {
    const stream = createWriteStream(path, { flags: options.append ? 'a' : 'w', mode: 0o644 });
    await new Promise<void>((resolve, reject) => stream.once('open', () => resolve()).once('error', reject));
    return stream;
  }

  async connectUnix(path: string): Promise<Duplex> {
    const socket = connect(path);
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    return socket;
  }
}
