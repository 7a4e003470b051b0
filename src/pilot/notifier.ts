/**
 * The pilot's side of `POST /pilot/notifications`: signs a message and sends it, retrying with
 * exponential backoff until a deadline. The pilot never waits on vws beyond that deadline: an
 * unreachable vws costs it a bounded time, never the node's hand-back (seed 003: "the workspace service
 * being down or malfunctioning").
 *
 * Retries resend the same signed message (same nonce), so a retry after a lost 202 is refused as a
 * replay instead of being delivered twice; a message that would leave vws's time window is signed afresh.
 *
 * SSH fallback (`fallback`): once `afterHttpAttempts` HTTP attempts failed for want of an answer
 * (connection refused, timeout, 5xx), the next attempts carry the same signed message over SSH to the
 * head's `receive` command ({@link SshNotificationChannel}), which answers with the same status numbers;
 * when SSH itself gets no answer, the attempt after it tries HTTP again, and so on until the deadline.
 * HTTP and SSH receivers keep separate nonce records, so a message whose HTTP 202 was lost may arrive
 * twice; the slot workflow handles a repeated notification idempotently.
 */
import type { PilotEvent, SignedPilotMessage } from '../domain/pilot-message';
import { newSignedPilotMessage } from './message';
import type { SshNotificationChannel, TransportAnswer } from './ssh-notify';

/** How one notification ended. */
export interface NotifyOutcome {
  event: PilotEvent;
  /** `delivered`: 202 (or 409 replayed: an earlier attempt was delivered); `refused`: 400/401, resending cannot help; `gave-up`: deadline reached. */
  result: 'delivered' | 'refused' | 'gave-up';
  attempts: number;
  /** From the first attempt to the outcome, ms. */
  elapsedMs: number;
  /** The last HTTP status, or the network error. */
  last?: string;
  /** The signed message's `at` (the time vws's freshness rule reads). */
  at: string;
  /** How the last attempt went: `http`, or `ssh` (the fallback). */
  via: 'http' | 'ssh';
}

/** What a notifier needs. */
export interface NotifierOptions {
  /** The API's base URL, e.g. `http://10.213.0.1:8080`. */
  api: string;
  /** The shared secret (never logged). */
  secret: string;
  slotId: string;
  node: string;
  /** First backoff (default 250 ms), doubled per attempt up to `maxBackoffMs` (default 4 s). */
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** Limit of one HTTP attempt (default 5 s, never past the deadline). */
  attemptTimeoutMs?: number;
  /** Limit of one SSH fallback attempt (default 15 s, never past the deadline). */
  sshAttemptTimeoutMs?: number;
  /** Messages older than this are signed afresh before a retry (default 30 s: half of vws's default window). */
  resignAfterMs?: number;
  /** Called after each attempt that did not deliver, for the logs. */
  onRetry?: (info: { event: PilotEvent; attempt: number; last: string; backoffMs: number; via: 'http' | 'ssh' }) => void;
  /** The SSH fallback: the channel, and how many HTTP attempts without an answer come before it. */
  fallback?: { channel: SshNotificationChannel; afterHttpAttempts: number };
}

/** True when an HTTP attempt got no usable answer from vws (refused, timeout, 5xx): a reason to try SSH. */
export function wantsFallback(a: TransportAnswer): boolean {
  return a.status === undefined || a.status >= 500;
}

/** Sleeps `ms`, or less if `stop` is aborted meanwhile. */
function sleepOrStop(ms: number, stop?: AbortSignal): Promise<void> {
  return new Promise((r) => {
    const done = () => {
      clearTimeout(timer);
      stop?.removeEventListener('abort', done);
      r();
    };
    const timer = setTimeout(done, ms);
    stop?.addEventListener('abort', done, { once: true });
  });
}

/** Sends signed pilot notifications to one vws. */
export class PilotNotifier {
  private readonly url: string;

  constructor(private readonly o: NotifierOptions) {
    const base = o.api.replace(/\/+$/, '');
    let parsed: URL;
    try {
      parsed = new URL(`${base}/pilot/notifications`);
    } catch {
      throw new Error(`--api must be a URL like http://10.213.0.1:8080, got ${JSON.stringify(o.api)}`);
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new Error(`--api must be http or https, got ${parsed.protocol}`);
    this.url = parsed.toString();
  }

  /**
   * Sends `event` until delivered, refused, `deadline` (ms since the epoch) is reached, or `stop` is
   * aborted (then it answers `gave-up` at once: a later message must not be overtaken by this one).
   */
  async notify(event: PilotEvent, deadline: number, fields: { memoryMiB?: number; detail?: string } = {}, stop?: AbortSignal): Promise<NotifyOutcome> {
    const { initialBackoffMs = 250, maxBackoffMs = 4_000, attemptTimeoutMs = 5_000, sshAttemptTimeoutMs = 15_000, resignAfterMs = 30_000 } = this.o;
    const started = Date.now();
    const sign = () => newSignedPilotMessage({ slotId: this.o.slotId, node: this.o.node, event, ...fields }, this.o.secret);
    let message = sign();
    let backoff = initialBackoffMs;
    let last = '';
    let via: 'http' | 'ssh' = 'http';
    let httpMisses = 0;
    for (let attempt = 1; ; attempt++) {
      if (Date.now() - Date.parse(message.at) > resignAfterMs) message = sign();
      // An SSH attempt starts a process on the head that connects to Temporal: it gets longer than HTTP.
      const budget = Math.min(via === 'ssh' ? sshAttemptTimeoutMs : attemptTimeoutMs, deadline - Date.now());
      if (budget <= 0 || stop?.aborted) return { event, result: 'gave-up', attempts: attempt - 1, elapsedMs: Date.now() - started, last, at: message.at, via };
      const answer = via === 'ssh' && this.o.fallback ? await this.o.fallback.channel.send(message, budget, stop) : await this.http(message, budget, stop);
      const { status, type } = answer;
      last = answer.last;
      const sentVia = via;
      if (via === 'http' && this.o.fallback && wantsFallback(answer) && ++httpMisses >= this.o.fallback.afterHttpAttempts) via = 'ssh';
      else if (via === 'ssh' && status === undefined) via = 'http';
      const outcome = (result: NotifyOutcome['result']): NotifyOutcome => ({ event, result, attempts: attempt, elapsedMs: Date.now() - started, last, at: message.at, via: sentVia });
      if (stop?.aborted) return outcome('gave-up');
      if (status === 202) return outcome('delivered');
      if (status === 409 && type === 'urn:vws:problem:PilotMessageReplayed') return outcome('delivered');
      if (status === 400 || status === 401) return outcome('refused');
      // Stale: our clock and vws's disagree or the message waited too long; a fresh one may pass.
      if (status === 409) message = sign();
      // 404 (the slot's workflow not there yet), 5xx, network errors: try again until the deadline.
      const wait = Math.min(backoff, deadline - Date.now());
      if (wait <= 0) return outcome('gave-up');
      this.o.onRetry?.({ event, attempt, last, backoffMs: wait, via: sentVia });
      await sleepOrStop(wait, stop);
      backoff = Math.min(backoff * 2, maxBackoffMs);
    }
  }

  /** One HTTP attempt; never rejects. */
  private async http(message: SignedPilotMessage, budget: number, stop?: AbortSignal): Promise<TransportAnswer> {
    try {
      const res = await fetch(this.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(message),
        signal: stop ? AbortSignal.any([stop, AbortSignal.timeout(budget)]) : AbortSignal.timeout(budget),
      });
      const body = (await res.json().catch(() => ({}))) as { type?: string };
      return { status: res.status, ...(body.type ? { type: body.type } : {}), last: `HTTP ${res.status}${body.type ? ` ${body.type}` : ''}` };
    } catch (e) {
      const cause = (e as Error).cause as Error | undefined;
      return { last: cause ? `${(e as Error).message}: ${String(cause.message ?? cause)}` : (e as Error).message };
    }
  }
}
