/**
 * The pilot's SSH fallback transport (see `src/config/pilot-fallback-schema.ts`): one ssh2 connection to
 * the head host per attempt (the site's key, the head's host key pinned from known_hosts: an unknown or
 * changed key is refused), running the site's fixed `receive` command with the signed message on stdin.
 * The receiver prints one JSON line with the same status number the HTTP endpoint would answer
 * ({@link PilotAnswer}), which is all the notifier reads. Nothing of the message reaches the command
 * line; the key and the secret are never logged.
 */
import type { PilotSshFallback } from '../config/pilot-fallback-schema';
import type { SignedPilotMessage } from '../domain/pilot-message';
import { KnownHosts, SshExecutor } from '../exec/ssh';
import type { PilotAnswer } from './accept';

/** What one attempt over a transport saw: the answer's status and type, or (status absent) why there was none. */
export interface TransportAnswer {
  status?: number;
  type?: string;
  /** For the logs: `HTTP 202`, `SSH 401 urn:…`, or the transport's error. */
  last: string;
}

/** The receiver's answer in its output: the last line that parses as a {@link PilotAnswer}. */
export function parseReceiverOutput(stdout: string): Pick<PilotAnswer, 'status' | 'type'> | undefined {
  for (const line of stdout.trim().split('\n').reverse()) {
    try {
      const v = JSON.parse(line) as Partial<PilotAnswer>;
      if (typeof v.status === 'number' && Number.isInteger(v.status)) return { status: v.status, ...(typeof v.type === 'string' ? { type: v.type } : {}) };
    } catch {
      // not the answer line
    }
  }
  return undefined;
}

/** Sends signed messages over SSH to the head's `receive` command. */
export class SshNotificationChannel {
  constructor(private readonly o: PilotSshFallback) {}

  /** Where messages go, for the logs (`ssh root@10.213.0.1:22`). */
  get where(): string {
    return `ssh ${this.o.user}@${this.o.host}:${this.o.port}`;
  }

  /** One attempt within `budgetMs` (or until `stop`); never rejects. */
  async send(message: SignedPilotMessage, budgetMs: number, stop?: AbortSignal): Promise<TransportAnswer> {
    let exec: SshExecutor | undefined;
    const fail = (e: unknown): TransportAnswer => ({ last: `${this.where}: ${(e as Error).message}` });
    try {
      exec = new SshExecutor({
        host: this.o.host,
        port: this.o.port,
        user: this.o.user,
        privateKey: this.o.keyFile,
        knownHosts: KnownHosts.fromFile(this.o.knownHostsFile),
        ...(this.o.hostAlias ? { hostAlias: this.o.hostAlias } : {}),
        connectTimeoutMs: Math.max(100, Math.min(this.o.connectTimeoutMs, budgetMs)),
        maxChannels: 1,
      });
      const ran = exec.run(this.o.command, { input: `${JSON.stringify(message)}\n`, timeoutMs: Math.max(1000, budgetMs), okCodes: Array.from({ length: 256 }, (_, i) => i) });
      const stopped = new Promise<'stopped'>((r) => (stop?.aborted ? r('stopped') : stop?.addEventListener('abort', () => r('stopped'), { once: true })));
      const r = await Promise.race([ran, stopped]);
      if (r === 'stopped') {
        ran.catch(() => undefined);
        return { last: `${this.where}: stopped` };
      }
      const answer = parseReceiverOutput(r.stdout);
      if (!answer) return { last: `${this.where}: the receiver exited ${r.code} without an answer${r.stderr ? `: ${r.stderr.trim().slice(-300)}` : ''}` };
      return { ...answer, last: `SSH ${answer.status}${answer.type ? ` ${answer.type}` : ''}` };
    } catch (e) {
      return fail(e);
    } finally {
      await exec?.close().catch(() => undefined);
    }
  }
}
