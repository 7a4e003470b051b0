/**
 * A minimal QMP client (QEMU Machine Protocol: newline-delimited JSON over a socket). It works over any
 * duplex stream, so the same code drives a local unix socket or one forwarded through SSH (ssh2 can
 * forward unix sockets) in SSH mode.
 */
import { connect } from 'node:net';
import type { Duplex } from 'node:stream';

/** A QMP `error` answer. */
export class QmpError extends Error {
  override name = 'QmpError';
  constructor(
    readonly command: string,
    readonly qmpClass: string,
    desc: string,
  ) {
    super(`QMP ${command} failed: ${qmpClass}: ${desc}`);
  }
}

type Pending = { resolve: (v: unknown) => void; reject: (e: Error) => void; command: string };

/** One QMP session: capabilities negotiated, then commands answered in order by id. */
export class QmpSession {
  private buffer = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private greeted!: Promise<void>;
  private closedError: Error | null = null;

  private constructor(private readonly stream: Duplex) {}

  /** Opens a session on a stream and negotiates capabilities. */
  static async open(stream: Duplex, timeoutMs = 5000): Promise<QmpSession> {
    const session = new QmpSession(stream);
    session.greeted = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('QMP greeting timed out')), timeoutMs);
      session.onGreeting = () => {
        clearTimeout(timer);
        resolve();
      };
      session.onFail = (e) => {
        clearTimeout(timer);
        reject(e);
      };
    });
    stream.setEncoding?.('utf8');
    stream.on('data', (chunk: string) => session.onData(chunk));
    stream.on('error', (e: Error) => session.fail(e));
    stream.on('close', () => session.fail(new Error('QMP connection closed')));
    await session.greeted;
    await session.execute('qmp_capabilities');
    return session;
  }

  /** Connects to a local unix socket. */
  static async connectUnix(path: string, timeoutMs = 5000): Promise<QmpSession> {
    const socket = connect(path);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return QmpSession.open(socket, timeoutMs);
  }

  private onGreeting: () => void = () => undefined;
  private onFail: (e: Error) => void = () => undefined;

  private onData(chunk: string): void {
    this.buffer += chunk;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      if ('QMP' in msg) this.onGreeting();
      else if ('id' in msg && typeof msg.id === 'string') {
        const p = this.pending.get(msg.id);
        if (!p) continue;
        this.pending.delete(msg.id);
        if ('error' in msg) {
          const err = msg.error as { class?: string; desc?: string };
          p.reject(new QmpError(p.command, err.class ?? 'Error', err.desc ?? ''));
        } else p.resolve(msg.return);
      }
      // Asynchronous events (STOP, RESUME, SHUTDOWN...) are not needed by callers that poll state.
    }
  }

  private fail(e: Error): void {
    if (this.closedError) return;
    this.closedError = e;
    this.onFail(e);
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  /** Sends one command and waits for its answer. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 5000): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = String(this.nextId++);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`QMP ${command} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        command,
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.stream.write(`${JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id })}\n`);
    });
  }

  /** Closes the session. */
  close(): void {
    this.stream.destroy();
  }
}
