/**
 * sftp:// sources and targets. They use the site's SSH key and pinned known_hosts, exactly as SSH-mode
 * nodes do (an unknown host key is refused, never accepted), over a small pool of connections keyed by
 * user@host:port (and the key and known_hosts files); a connection idle for a while is closed.
 */
import { createHash } from 'node:crypto';
import { posix } from 'node:path';
import { finished, type Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { redactUrl, type SftpImageUrl } from '../../../domain/image-url';
import { KnownHosts, SshExecutor } from '../../../exec/ssh';
import { copyMismatch, sftpFailure, sourceUnavailable, targetDiffers } from './failures';
import { digestOf, hashingCounter, partName, stallGuard } from './stream';
import { connectTimeout, DEFAULT_STALL_MS, type OpenedSource, type TargetContent, type TargetResult, type UrlDeps } from './types';

// ---------------------------------------------------------------------------------------------------
// Connections

/** An idle pooled sftp connection is closed after this long. */
const SFTP_IDLE_MS = 15_000;

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
        connectTimeoutMs: connectTimeout(deps),
        keepaliveIntervalMs: deps.config.ssh.keepaliveIntervalMs,
        maxChannels: deps.config.ssh.maxChannels,
        sftpTimeoutMs: deps.config.ssh.sftpTimeoutMs,
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

// ---------------------------------------------------------------------------------------------------
// Sources

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

/** Opens an sftp source from byte `start`, or from 0 when the file is now shorter than that. */
export async function openSftp(p: SftpImageUrl, deps: UrlDeps, start: number): Promise<OpenedSource> {
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
// Targets

/** Waits until an sftp write stream has closed its remote handle (only then are the bytes all there). */
function closed(stream: Writable): Promise<void> {
  if ((stream as Writable & { closed?: boolean }).closed) return Promise.resolve();
  return new Promise((resolve, reject) => {
    stream.once('close', () => resolve()).once('error', reject);
  });
}

/**
 * Writes an sftp target: an existing file with the same bytes is success without writing, with other
 * bytes a refusal; otherwise the bytes go to a temporary name, are verified, then renamed into place.
 */
export async function writeSftpTarget(p: SftpImageUrl, deps: UrlDeps, open: () => Promise<Readable>, want: TargetContent): Promise<TargetResult> {
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
