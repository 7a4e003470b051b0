/**
 * The SSH executor: the head runs a node's activities over one pooled ssh2 connection per node
 * ("SSH mode"). Same semantics as {@link LocalExecutor}, method by method; the differences are only in
 * how the bytes travel:
 *  - commands: an `exec` channel running `timeout -s KILL <secs> 'argv0' 'argv1' …`. The remote side
 *    (OpenSSH) always hands the command to the user's shell, so every argv element is single-quoted
 *    here, in {@link shellQuote}, and nowhere else. `timeout` on the node kills the program even if the
 *    channel or the whole connection is lost; `-s KILL N` works with GNU coreutils and busybox (Xen dom0).
 *  - files: one SFTP session per connection, opened lazily and reused.
 *  - unix sockets (QMP): OpenSSH's `direct-streamlocal@openssh.com` channels.
 *
 * Never an interactive prompt: publickey authentication from one key file (no passphrase, no password,
 * no keyboard-interactive, no agent), host keys pinned from an OpenSSH known_hosts file (an unknown or
 * changed key is refused, never accepted), and every wait bounded.
 */
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { posix } from 'node:path';
import type { Duplex, Readable, Writable } from 'node:stream';
import { Client, utils, type AnyAuthMethod, type ClientChannel, type ConnectConfig, type ParsedKey, type ServerHostKeyAlgorithm, type SFTPWrapper } from 'ssh2';
import type { NodeConfig, VwsConfig } from '../config/schema';
import { CommandError, type CommandResult, type Executor, type RunOptions } from './executor';
import type { LocalExecutor } from './local';

// ---------------------------------------------------------------------------------------------------
// Quoting

/**
 * Quotes one argument for a POSIX shell (sh, bash, dash, busybox ash): wrapped in single quotes, each
 * embedded `'` written as `'\''`. Inside single quotes nothing is special (`$`, `` ` ``, `\`, `*`, `;`,
 * newlines are literal), so the remote program receives exactly this string. NUL cannot be passed in an
 * argv at all, so it is refused rather than silently truncating the argument.
 */
export function shellQuote(arg: string): string {
  if (arg.includes('\0')) throw new Error('an argument contains a NUL byte, which no command line can carry');
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/**
 * The remote command line for `argv`: `timeout -s KILL <secs> <quoted argv…>`. `timeoutCommand` is the
 * program (and leading arguments) that provides `timeout`, e.g. `['timeout']` or `['busybox', 'timeout']`.
 * Seconds are rounded up (both implementations take whole seconds), and at least 1.
 */
export function remoteCommand(argv: readonly string[], timeoutMs: number, timeoutCommand: readonly string[] = ['timeout']): string {
  if (argv.length === 0) throw new Error('empty argv');
  const secs = Math.max(1, Math.ceil(timeoutMs / 1000));
  return [...timeoutCommand, '-s', 'KILL', String(secs), ...argv].map(shellQuote).join(' ');
}

// ---------------------------------------------------------------------------------------------------
// known_hosts

/** One pinned host key from a known_hosts line. */
export interface PinnedKey {
  /** Key type as written in the file, e.g. `ssh-ed25519`. */
  type: string;
  /** The raw public key blob (the base64 field decoded): what ssh2's hostVerifier is given. */
  key: Buffer;
  /** Where it came from, `file:line`, for error messages. */
  source: string;
}

interface KnownHostsEntry extends PinnedKey {
  /** Host patterns of the line (plain names, `[host]:port`, wildcards `*` `?`, negations `!`). */
  patterns: string[];
  /** A hashed name (`|1|salt|hash`) instead of patterns. */
  hashed?: { salt: Buffer; hash: Buffer };
}

/** SHA256 fingerprint as OpenSSH prints it (`SHA256:…`, unpadded base64). Public keys only. */
export function fingerprint(key: Buffer): string {
  return `SHA256:${createHash('sha256').update(key).digest('base64').replace(/=+$/, '')}`;
}

/** Converts a glob pattern with `*` and `?` (OpenSSH's host pattern syntax) to a RegExp. */
function patternRegExp(pattern: string): RegExp {
  const body = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${body}$`, 'i');
}

/**
 * A parsed, pinned set of host keys from an OpenSSH known_hosts file. Plain and hashed (`|1|…`) host
 * names are understood, as are `*`/`?` wildcards and `!` negations. Marker lines (`@cert-authority`,
 * `@revoked`) are refused: vws does not use host certificates, and silently ignoring a revocation would be
 * worse than refusing the file.
 */
export class KnownHosts {
  private constructor(private readonly entries: readonly KnownHostsEntry[]) {}

  /** Parses the text of a known_hosts file; `source` (the file name) appears in errors. */
  static parse(text: string, source = 'known_hosts'): KnownHosts {
    const entries: KnownHostsEntry[] = [];
    text.split('\n').forEach((raw, i) => {
      const where = `${source}:${i + 1}`;
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) return;
      if (line.startsWith('@')) {
        throw new Error(`${where}: marker lines (${line.split(/\s+/)[0]}) are not supported; pin plain host keys only`);
      }
      const fields = line.split(/\s+/);
      if (fields.length < 3) throw new Error(`${where}: expected "host[,host…] keytype base64-key"`);
      const [hosts, type, b64] = fields;
      const key = Buffer.from(b64, 'base64');
      // The blob starts with its own type as an SSH string; checking it catches truncated or mangled lines.
      const innerLen = key.length >= 4 ? key.readUInt32BE(0) : -1;
      if (innerLen < 0 || 4 + innerLen > key.length || key.subarray(4, 4 + innerLen).toString('latin1') !== type) {
        throw new Error(`${where}: the key is not valid base64 of a ${type} public key`);
      }
      if (hosts.startsWith('|1|')) {
        const [, , salt, hash] = hosts.split('|');
        if (!salt || !hash) throw new Error(`${where}: malformed hashed host name`);
        entries.push({ type, key, source: where, patterns: [], hashed: { salt: Buffer.from(salt, 'base64'), hash: Buffer.from(hash, 'base64') } });
      } else {
        entries.push({ type, key, source: where, patterns: hosts.split(',').filter((p) => p !== '') });
      }
    });
    return new KnownHosts(entries);
  }

  /** Reads and parses a known_hosts file. */
  static fromFile(path: string): KnownHosts {
    return KnownHosts.parse(readFileSync(path, 'utf8'), path);
  }

  /** Number of key lines. */
  get size(): number {
    return this.entries.length;
  }

  /** The keys pinned for any of `names` (each exactly as OpenSSH would look it up: `host` or `[host]:port`). */
  keysFor(names: readonly string[]): PinnedKey[] {
    return this.entries.filter((e) => names.some((n) => matches(e, n))).map(({ type, key, source }) => ({ type, key, source }));
  }
}

function matches(e: KnownHostsEntry, name: string): boolean {
  if (e.hashed) {
    return createHmac('sha1', e.hashed.salt).update(name).digest().equals(e.hashed.hash);
  }
  let hit = false;
  for (const p of e.patterns) {
    if (p.startsWith('!')) {
      if (patternRegExp(p.slice(1)).test(name)) return false; // a negated match vetoes the line
    } else if (patternRegExp(p).test(name)) {
      hit = true;
    }
  }
  return hit;
}

/** Host key algorithms to offer for a pinned key type, so the server presents the pinned key. */
function hostKeyAlgorithms(type: string): string[] {
  return type === 'ssh-rsa' ? ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'] : [type];
}

// ---------------------------------------------------------------------------------------------------
// The executor

/** How to reach one host. */
export interface SshExecutorOptions {
  /** Address to connect to (normally the node's IP). */
  host: string;
  /** Default 22. */
  port?: number;
  /** Default `root`. */
  user?: string;
  /** The private key (OpenSSH or PEM, without passphrase), or the path of its file. */
  privateKey: Buffer | string;
  /** Pinned host keys; the connection is refused unless the host presents one of the keys pinned for it. */
  knownHosts: KnownHosts;
  /** Another name to look the host up by in known_hosts (like OpenSSH's HostKeyAlias), e.g. the node name. */
  hostAlias?: string;
  /** Bound on TCP connect + handshake + authentication (default 10 s). */
  connectTimeoutMs?: number;
  /** Keepalive ping interval (default 5 s); the connection is dropped after `keepaliveCountMax` unanswered. */
  keepaliveIntervalMs?: number;
  /** Default 3. */
  keepaliveCountMax?: number;
  /**
   * Command channels open at once on the connection (default 8); further calls queue. The SFTP session
   * is one more session, so keep `maxChannels + 1` within the server's `MaxSessions` (OpenSSH: 10).
   * Unix-socket forwards are not sessions and are not counted.
   */
  maxChannels?: number;
  /** Program providing `timeout` on the host (default `['timeout']`; e.g. `['busybox', 'timeout']`). */
  timeoutCommand?: readonly string[];
  /**
   * Bound on one SFTP call, on opening the SFTP session or a stream, and on opening a unix-socket channel
   * (default 30 s). Keepalives only notice a dead connection; an SFTP server that stopped answering on a
   * live one (its process stopped or stuck) would otherwise hold the caller for ever.
   */
  sftpTimeoutMs?: number;
}

/** Counters for tests and diagnostics. */
export interface SshExecutorStats {
  /** Connections that reached 'ready'. */
  connects: number;
  /** Command channels open now. */
  activeChannels: number;
  /** Most command channels ever open at once. */
  peakChannels: number;
}

/** One live (or connecting) connection and its lazily opened SFTP session. */
interface Connection {
  client: Client;
  /** Set once the connection has closed: anything still using it fails, the next call reconnects. */
  closed: boolean;
  /** Why it closed, if known (keepalive timeout, socket error…). */
  closeReason?: string;
  sftp?: Promise<SFTPWrapper>;
}

/** The SFTP status code for "no such file". */
const SFTP_NO_SUCH_FILE = 2;
/** Extra time the local timer gives the remote `timeout` before giving up on the channel. */
const CLIENT_TIMER_GRACE_MS = 1500;
/** Same cap as LocalExecutor's maxBuffer. */
const MAX_OUTPUT_BYTES = 16 * 1024 * 1024;

/** An error carrying a Node-style `code` (ENOENT…), so callers can treat remote and local errors alike. */
function fsError(message: string, code: string | undefined): Error {
  const err = new Error(message) as NodeJS.ErrnoException;
  if (code) err.code = code;
  return err;
}

/**
 * `promise`, or the error `onTimeout` returns if it has not settled within `ms`. The timer never keeps
 * the process alive and is cleared as soon as the promise settles.
 */
function bounded<T>(promise: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(onTimeout()), ms);
    timer.unref();
    promise.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

/** Maps an SFTP status error to a Node-style code. */
function sftpCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown }).code;
  if (code === SFTP_NO_SUCH_FILE) return 'ENOENT';
  if (code === 3) return 'EACCES';
  if (code === 4) return 'EIO'; // SSH_FX_FAILURE: e.g. a directory where a file was expected
  return undefined;
}

/** True for an SFTP status response (the server answered), as opposed to a transport failure. */
function isSftpStatus(err: unknown): boolean {
  return typeof (err as { code?: unknown }).code === 'number';
}

/** Runs commands and touches files on one host over a pooled SSH connection. See the module comment. */
export class SshExecutor implements Executor {
  /** `ssh user@host:port`, for logs and errors. */
  readonly where: string;
  /** Counters (connections made, channels in use); read-only for callers. */
  readonly stats: SshExecutorStats = { connects: 0, activeChannels: 0, peakChannels: 0 };

  private readonly host: string;
  private readonly port: number;
  private readonly user: string;
  private readonly key: ParsedKey;
  private readonly keyName: string;
  private readonly pinned: PinnedKey[];
  private readonly pinnedNames: string[];
  private readonly connectTimeoutMs: number;
  private readonly keepaliveIntervalMs: number;
  private readonly keepaliveCountMax: number;
  private readonly maxChannels: number;
  private readonly timeoutCommand: readonly string[];
  private readonly sftpTimeoutMs: number;

  private conn: Connection | null = null;
  private connecting: Promise<Connection> | null = null;
  private readonly waiting: Array<() => void> = [];
  private closedByUser = false;

  constructor(options: SshExecutorOptions) {
    this.host = options.host;
    this.port = options.port ?? 22;
    this.user = options.user ?? 'root';
    this.where = `ssh ${this.user}@${this.host}:${this.port}`;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this.keepaliveIntervalMs = options.keepaliveIntervalMs ?? 5_000;
    // 6 x 5 s: a busy node (an emulated Xen dom0 on a loaded 2-core host) can stall longer than 15 s.
    this.keepaliveCountMax = options.keepaliveCountMax ?? 6;
    this.maxChannels = options.maxChannels ?? 8;
    if (!Number.isInteger(this.maxChannels) || this.maxChannels < 1) throw new Error(`${this.where}: maxChannels must be a positive integer`);
    this.timeoutCommand = options.timeoutCommand ?? ['timeout'];
    this.sftpTimeoutMs = options.sftpTimeoutMs ?? 30_000;

    // The key is parsed here, once, so a bad key is a configuration error at start-up, not a failure of
    // some later activity. Its bytes never appear in a message.
    this.keyName = typeof options.privateKey === 'string' ? options.privateKey : '(given in memory)';
    let keyData: Buffer;
    try {
      keyData = typeof options.privateKey === 'string' ? readFileSync(options.privateKey) : options.privateKey;
    } catch (e) {
      throw new Error(`${this.where}: cannot read private key ${this.keyName}: ${(e as Error).message}`);
    }
    const parsed = utils.parseKey(keyData);
    if (parsed instanceof Error) {
      if (/passphrase|encrypted/i.test(parsed.message)) {
        throw new Error(`${this.where}: private key ${this.keyName} is protected by a passphrase; vws needs a key without one (nothing may prompt)`);
      }
      throw new Error(`${this.where}: cannot parse private key ${this.keyName}: ${parsed.message}`);
    }
    this.key = Array.isArray(parsed) ? (parsed[0] as ParsedKey) : parsed;

    // Names to look up in known_hosts, as OpenSSH does: `host` on port 22, `[host]:port` otherwise; the
    // alias as given (HostKeyAlias semantics: no port decoration).
    this.pinnedNames = [this.port === 22 ? this.host : `[${this.host}]:${this.port}`];
    if (options.hostAlias) this.pinnedNames.push(options.hostAlias);
    this.pinned = options.knownHosts.keysFor(this.pinnedNames);
  }

  // ------------------------------------------------------------------------------------ connection

  /** The live connection, connecting (once, shared by concurrent callers) if there is none. */
  private connection(): Promise<Connection> {
    if (this.closedByUser) return Promise.reject(new Error(`${this.where}: executor is closed`));
    if (this.conn && !this.conn.closed) return Promise.resolve(this.conn);
    if (!this.connecting) {
      this.connecting = this.connect().finally(() => {
        this.connecting = null;
      });
    }
    return this.connecting;
  }

  private connect(): Promise<Connection> {
    if (this.pinned.length === 0) {
      return Promise.reject(
        new Error(`${this.where}: no host key pinned for ${this.pinnedNames.join(' or ')} in known_hosts; refusing to connect (add the host's key to the pinned known_hosts file)`),
      );
    }
    return new Promise<Connection>((resolve, reject) => {
      const client = new Client();
      const conn: Connection = { client, closed: false };
      let ready = false;
      let hostKeyProblem: string | undefined;
      let settled = false;
      const fail = (message: string) => {
        if (settled) return;
        settled = true;
        clearTimeout(guard);
        conn.closed = true;
        client.destroy();
        reject(new Error(message));
      };
      // ssh2's readyTimeout covers the handshake; this guard also bounds a TCP connect that hangs.
      const guard = setTimeout(() => fail(`${this.where}: could not connect within ${this.connectTimeoutMs} ms`), this.connectTimeoutMs + 500);

      client.on('ready', () => {
        ready = true;
        settled = true;
        clearTimeout(guard);
        this.stats.connects++;
        this.conn = conn;
        resolve(conn);
      });
      // An 'error' listener must always be present, or ssh2 errors would crash the process.
      client.on('error', (err: Error & { level?: string }) => {
        if (!ready) {
          if (hostKeyProblem) fail(hostKeyProblem);
          else if (err.level === 'client-authentication') {
            fail(`${this.where}: the server refused key ${this.keyName} (publickey authentication failed)`);
          } else if (err.level === 'client-timeout') {
            fail(`${this.where}: could not connect within ${this.connectTimeoutMs} ms (${err.message})`);
          } else {
            fail(`${this.where}: could not connect: ${err.message}`);
          }
          return;
        }
        conn.closeReason ??= err.message;
      });
      client.on('close', () => {
        conn.closed = true;
        if (this.conn === conn) this.conn = null;
        if (!ready) fail(hostKeyProblem ?? `${this.where}: connection closed during the handshake`);
      });

      const config: ConnectConfig = {
        host: this.host,
        port: this.port,
        username: this.user,
        readyTimeout: this.connectTimeoutMs,
        keepaliveInterval: this.keepaliveIntervalMs,
        keepaliveCountMax: this.keepaliveCountMax,
        // Publickey only, from our key: never a password, keyboard-interactive or agent (no prompts).
        authHandler: (() => {
          let offered = false;
          return (): AnyAuthMethod | false => {
            if (offered) return false;
            offered = true;
            return { type: 'publickey', username: this.user, key: this.key };
          };
        })(),
        tryKeyboard: false,
        agent: undefined,
        // Offer only the pinned key types, so the server presents the key we can check.
        algorithms: { serverHostKey: [...new Set(this.pinned.flatMap((p) => hostKeyAlgorithms(p.type)))] as ServerHostKeyAlgorithm[] },
        hostVerifier: (key: Buffer): boolean => {
          if (this.pinned.some((p) => p.key.equals(key))) return true;
          const type = key.length >= 4 ? key.subarray(4, 4 + key.readUInt32BE(0)).toString('latin1') : '?';
          hostKeyProblem =
            `${this.where}: host key changed or not pinned: ${this.pinnedNames.join('/')} presented ${type} ${fingerprint(key)}, ` +
            `but known_hosts pins ${this.pinned.map((p) => `${p.type} ${fingerprint(p.key)} (${p.source})`).join(', ')}; refusing to connect`;
          return false;
        },
      };
      try {
        client.connect(config);
        // Commands are small request/response exchanges: without TCP_NODELAY, Nagle plus delayed ACKs
        // add ~40 ms to many round trips.
        client.setNoDelay(true);
      } catch (e) {
        fail(`${this.where}: could not connect: ${(e as Error).message}`);
      }
    });
  }

  /** Ends the pooled connection. In-flight calls fail; later calls are refused. */
  async close(): Promise<void> {
    this.closedByUser = true;
    const conn = this.conn ?? (this.connecting ? await this.connecting.catch(() => null) : null);
    this.conn = null;
    if (!conn || conn.closed) return;
    await new Promise<void>((resolve) => {
      conn.client.once('close', () => resolve());
      conn.client.end();
      // end() waits for the server; a dead peer must not hold close() up.
      setTimeout(() => {
        conn.client.destroy();
        resolve();
      }, 2000).unref();
    });
  }

  /**
   * Drops the TCP connection without a goodbye, as a network failure would.
   * @internal For tests of reconnection.
   */
  dropConnectionForTests(): void {
    const sock = (this.conn?.client as unknown as { _sock?: { destroy(): void } } | undefined)?._sock;
    sock?.destroy();
  }

  /** Waits for a free command channel slot (at most `maxChannels` at once). */
  private async acquire(): Promise<void> {
    if (this.stats.activeChannels < this.maxChannels) {
      this.stats.activeChannels++;
      this.stats.peakChannels = Math.max(this.stats.peakChannels, this.stats.activeChannels);
      return;
    }
    // The releasing call hands its slot over directly (the count stays), so no newcomer can slip in
    // between its release and our wake-up and push the count past the limit.
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  private release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.stats.activeChannels--;
  }

  private lostMessage(conn: Connection): string {
    return `connection to ${this.where} was lost${conn.closeReason ? ` (${conn.closeReason})` : ''}`;
  }

  // ------------------------------------------------------------------------------------ commands

  /**
   * Runs `argv` on the host as `timeout -s KILL <secs> <quoted argv>`, on a channel of the pooled
   * connection (queued while `maxChannels` are busy). Results and errors as {@link LocalExecutor.run};
   * exit 126/127 (the program could not be run) → "could not run". `input` goes to stdin and is never logged.
   */
  async run(argv: readonly string[], options: RunOptions = {}): Promise<CommandResult> {
    const { timeoutMs = 60_000, okCodes = [0], input } = options;
    // Quote first: a NUL or an empty argv fails before anything is sent.
    const command = remoteCommand(argv, timeoutMs, this.timeoutCommand);
    await this.acquire();
    try {
      const conn = await this.connection();
      return await this.exec(conn, argv, command, timeoutMs, okCodes, input);
    } finally {
      this.release();
    }
  }

  private exec(
    conn: Connection,
    argv: readonly string[],
    command: string,
    timeoutMs: number,
    okCodes: number[],
    input: string | undefined,
  ): Promise<CommandResult> {
    return new Promise((resolve, reject) => {
      const started = Date.now();
      const remoteSecs = Math.max(1, Math.ceil(timeoutMs / 1000));
      let channel: ClientChannel | undefined;
      let done = false;
      // The remote `timeout` does the killing; this timer only stops waiting for a channel that went silent.
      const timer = setTimeout(() => {
        finish(() => reject(new CommandError(argv, null, stderrText(), `timed out after ${timeoutMs} ms`)));
      }, remoteSecs * 1000 + CLIENT_TIMER_GRACE_MS);
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let outBytes = 0;
      const stderrText = () => Buffer.concat(err).toString('utf8');
      const finish = (settle: () => void) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        channel?.close();
        settle();
      };

      const onChannel = (openErr: Error | undefined, ch: ClientChannel) => {
        if (openErr) {
          const why = conn.closed ? this.lostMessage(conn) : `${this.where}: could not open a channel: ${openErr.message}`;
          finish(() => reject(new CommandError(argv, null, '', `could not run (${why})`)));
          return;
        }
        channel = ch;
        if (done) {
          ch.close();
          return;
        }
        let code: number | null = null;
        let signal: string | undefined;
        const collect = (into: Buffer[]) => (chunk: Buffer) => {
          outBytes += chunk.length;
          if (outBytes > MAX_OUTPUT_BYTES) {
            finish(() => reject(new CommandError(argv, null, stderrText(), `printed more than ${MAX_OUTPUT_BYTES} bytes`)));
            return;
          }
          into.push(chunk);
        };
        ch.on('data', collect(out));
        ch.stderr.on('data', collect(err));
        ch.on('exit', (c: number | null, sig?: string) => {
          code = typeof c === 'number' ? c : null;
          // ssh2 reports signals as `SIGKILL`; the protocol's name is `KILL`.
          signal = sig ? sig.replace(/^SIG/, '') : undefined;
        });
        ch.on('error', () => undefined); // the 'close' below reports; an unhandled 'error' would crash
        ch.on('close', () => {
          const stdout = Buffer.concat(out).toString('utf8');
          const stderr = stderrText();
          const elapsed = Date.now() - started;
          // Killed by the remote `timeout`: GNU exits 137 (it kills its process group, itself included, so
          // usually the shell reports signal KILL), busybox's PROG dies of KILL; 124 is GNU's TERM case.
          // Only after the deadline, so a program that exits 137 early for its own reasons is reported as such.
          const byTimeout = (code === 124 || code === 137 || signal === 'KILL') && elapsed >= remoteSecs * 1000 - 250;
          finish(() => {
            if (byTimeout) reject(new CommandError(argv, null, stderr, `timed out after ${timeoutMs} ms`));
            else if (code === null && signal) reject(new CommandError(argv, null, stderr, `was killed by signal ${signal}`));
            else if (code === null) reject(new CommandError(argv, null, stderr, `did not finish: ${this.lostMessage(conn)}`));
            else if (okCodes.includes(code)) resolve({ code, stdout, stderr });
            // 126/127 come from `timeout` failing to exec the program (LocalExecutor: spawn failure).
            else if (code === 126 || code === 127) reject(new CommandError(argv, code, stderr, `could not run (exit ${code} on ${this.where})`));
            else reject(new CommandError(argv, code, stderr));
          });
        });
        // Always end stdin, so a program that reads it sees EOF. The input is never logged.
        if (input !== undefined) ch.end(input);
        else ch.end();
      };
      try {
        conn.client.exec(command, onChannel);
      } catch (e) {
        // ssh2 throws synchronously when the socket died between connection() and here.
        finish(() => reject(new CommandError(argv, null, '', `could not run (${conn.closed ? this.lostMessage(conn) : (e as Error).message})`)));
      }
    });
  }

  // ------------------------------------------------------------------------------------ SFTP

  /** The connection's SFTP session, opened on first use and reused until the connection drops. */
  private async sftp(): Promise<SFTPWrapper> {
    const conn = await this.connection();
    if (!conn.sftp) {
      let late = false;
      const opening = bounded(
        new Promise<SFTPWrapper>((resolve, reject) => {
          try {
            conn.client.sftp((err, sftp) => {
              if (err) reject(new Error(`${this.where}: could not start SFTP: ${err.message}`));
              else if (late) sftp.end(); // opened after the caller gave up: nobody will use it
              else {
                sftp.on('close', () => {
                  if (conn.sftp === opening) conn.sftp = undefined;
                });
                sftp.on('error', () => undefined);
                resolve(sftp);
              }
            });
          } catch (e) {
            reject(new Error(`${this.where}: could not start SFTP: ${conn.closed ? this.lostMessage(conn) : (e as Error).message}`));
          }
        }),
        this.sftpTimeoutMs,
        () => {
          late = true;
          return fsError(`${this.where}: could not start SFTP: no answer within ${this.sftpTimeoutMs} ms`, 'ETIMEDOUT');
        },
      );
      conn.sftp = opening;
      opening.catch(() => {
        if (conn.sftp === opening) conn.sftp = undefined;
      });
    }
    return conn.sftp;
  }

  /**
   * Stops using an SFTP session that did not answer in time: the next call opens a fresh one. Its channel
   * is closed, and a late answer on it goes nowhere.
   */
  private abandonSftp(sftp: SFTPWrapper): void {
    const conn = this.conn;
    if (conn?.sftp) {
      const session = conn.sftp;
      void session.then(
        (s) => {
          if (s === sftp && conn.sftp === session) conn.sftp = undefined;
        },
        () => undefined,
      );
    }
    try {
      sftp.end();
    } catch {
      // Already closed with its connection.
    }
  }

  /**
   * One SFTP call as a promise; errors name the operation, path and host, and carry ENOENT etc. A call
   * with no answer within `sftpTimeoutMs` fails with ETIMEDOUT and abandons the session.
   */
  private async sftpCall<T>(op: string, path: string, call: (sftp: SFTPWrapper, cb: (err: Error | null | undefined, value?: T) => void) => void): Promise<T> {
    const sftp = await this.sftp();
    const pending = new Promise<T>((resolve, reject) => {
      call(sftp, (err, value) => {
        if (err) reject(this.wrapSftpError(err, op, path));
        else resolve(value as T);
      });
    });
    return bounded(pending, this.sftpTimeoutMs, () => {
      this.abandonSftp(sftp);
      return this.sftpNoAnswer(op, path);
    });
  }

  /** The error of an SFTP request the server did not answer within `sftpTimeoutMs`. */
  private sftpNoAnswer(op: string, path: string): Error {
    return fsError(`${this.where}: ${op} ${path}: no answer from the SFTP server within ${this.sftpTimeoutMs} ms`, 'ETIMEDOUT');
  }

  private wrapSftpError(err: unknown, op: string, path: string): Error {
    const e = fsError(`${this.where}: ${op} ${path}: ${(err as Error).message}`, sftpCode(err));
    (e as { sftpStatus?: boolean }).sftpStatus = isSftpStatus(err);
    return e;
  }

  async readFile(path: string): Promise<string | null> {
    try {
      const buf = await this.sftpCall<Buffer>('read', path, (s, cb) => s.readFile(path, (e, b) => cb(e, b)));
      return buf.toString('utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async writeFileAtomic(path: string, content: string): Promise<void> {
    const tmp = `${path}.tmp-${randomBytes(4).toString('hex')}`;
    const write = () => this.sftpCall<void>('write', tmp, (s, cb) => s.writeFile(tmp, content, { mode: 0o644 }, (e) => cb(e)));
    try {
      await write();
    } catch (e) {
      // The parent directory is missing: create it (one extra round trip only in that case) and retry.
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      await this.mkdir(posix.dirname(path));
      await write();
    }
    try {
      await this.rename(tmp, path);
    } catch (e) {
      await this.remove(tmp).catch(() => undefined);
      throw e;
    }
  }

  async remove(path: string): Promise<void> {
    // SFTP has no recursive remove; `rm -rf` is one round trip and already idempotent.
    await this.run(['rm', '-rf', '--', path]);
  }

  async exists(path: string): Promise<boolean> {
    try {
      await this.sftpCall('stat', path, (s, cb) => s.stat(path, cb));
      return true;
    } catch (e) {
      // The server answered "no" (missing, not accessible): false, like LocalExecutor. A lost connection
      // is not an answer, so it throws.
      if ((e as { sftpStatus?: boolean }).sftpStatus) return false;
      throw e;
    }
  }

  async fileSize(path: string): Promise<number | null> {
    try {
      const st = await this.sftpCall<{ size: number }>('stat', path, (s, cb) => s.stat(path, cb));
      return st.size;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async list(dir: string): Promise<string[]> {
    try {
      const entries = await this.sftpCall<Array<{ filename: string }>>('readdir', dir, (s, cb) => s.readdir(dir, cb));
      return entries.map((e) => e.filename).filter((n) => n !== '.' && n !== '..');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
  }

  async createExclusive(path: string, content: string): Promise<boolean> {
    try {
      // 'wx' maps to SSH_FXF_CREAT|SSH_FXF_EXCL: the server refuses if the file exists.
      await this.sftpCall<void>('create', path, (s, cb) => s.writeFile(path, content, { flag: 'wx', mode: 0o644 }, (e) => cb(e)));
      return true;
    } catch (e) {
      // OpenSSH answers a failed exclusive create with the generic SSH_FX_FAILURE, not "exists".
      if ((e as { sftpStatus?: boolean }).sftpStatus && (await this.exists(path))) return false;
      throw e;
    }
  }

  async mkdir(path: string): Promise<void> {
    await this.run(['mkdir', '-p', '--', path]);
  }

  async rename(from: string, to: string): Promise<void> {
    const sftp = await this.sftp();
    // Plain SFTP rename fails if the target exists; OpenSSH's posix-rename replaces it atomically.
    const posixRename = (sftp as unknown as { _extensions?: Record<string, string> })._extensions?.['posix-rename@openssh.com'] === '1';
    if (posixRename) {
      await this.sftpCall<void>('rename', `${from} -> ${to}`, (s, cb) => s.ext_openssh_rename(from, to, (e) => cb(e)));
    } else {
      await this.run(['mv', '-f', '--', from, to]);
    }
  }

  async readStream(path: string, start = 0): Promise<Readable> {
    const sftp = await this.sftp();
    const stream = sftp.createReadStream(path, { start });
    await this.streamOpened(sftp, stream, 'read', path);
    return stream;
  }

  async writeStream(path: string, options: { append?: boolean } = {}): Promise<Writable> {
    const sftp = await this.sftp();
    const stream = sftp.createWriteStream(path, { flags: options.append ? 'a' : 'w', mode: 0o644 });
    await this.streamOpened(sftp, stream, 'write', path);
    return stream;
  }

  /** Waits, within `sftpTimeoutMs`, for an SFTP stream to open. */
  private async streamOpened(sftp: SFTPWrapper, stream: Readable | Writable, op: string, path: string): Promise<void> {
    const opened = new Promise<void>((resolve, reject) => {
      stream.once('open', () => resolve()).once('error', (e: Error) => reject(this.wrapSftpError(e, op, path)));
    });
    await bounded(opened, this.sftpTimeoutMs, () => {
      stream.destroy();
      this.abandonSftp(sftp);
      return this.sftpNoAnswer(op, path);
    });
  }

  async connectUnix(path: string): Promise<Duplex> {
    const conn = await this.connection();
    const failure = (err: Error) =>
      new Error(`${this.where}: cannot connect to unix socket ${path}: ${conn.closed ? this.lostMessage(conn) : err.message}`);
    let late = false;
    const opening = new Promise<Duplex>((resolve, reject) => {
      try {
        conn.client.openssh_forwardOutStreamLocal(path, (err, ch) => {
          if (late && !err) ch.destroy(); // opened after the caller gave up: nobody will use it
          else if (err) reject(failure(err));
          else resolve(ch);
        });
      } catch (e) {
        reject(failure(e as Error));
      }
    });
    return bounded(opening, this.sftpTimeoutMs, () => {
      late = true;
      return fsError(`${this.where}: cannot connect to unix socket ${path}: no answer within ${this.sftpTimeoutMs} ms`, 'ETIMEDOUT');
    });
  }
}

/**
 * The executor for an SSH-mode node, from the site configuration: `config.ssh` (key, known_hosts,
 * timeouts, channel limit) and the node's `ssh` address. The node's name is the host alias in known_hosts.
 * `knownHosts` may be passed in to parse the file once for many nodes.
 */
export function sshExecutorFor(config: VwsConfig, node: NodeConfig, knownHosts?: KnownHosts): SshExecutor {
  if (!node.ssh) throw new Error(`node ${node.name} has no ssh address (nodes[].ssh.host)`);
  return new SshExecutor({
    host: node.ssh.host,
    port: node.ssh.port,
    user: node.ssh.user,
    privateKey: config.ssh.keyFile,
    knownHosts: knownHosts ?? KnownHosts.fromFile(config.ssh.knownHostsFile),
    hostAlias: node.name,
    connectTimeoutMs: config.ssh.connectTimeoutMs,
    keepaliveIntervalMs: config.ssh.keepaliveIntervalMs,
    maxChannels: config.ssh.maxChannels,
    sftpTimeoutMs: config.ssh.sftpTimeoutMs,
  });
}
