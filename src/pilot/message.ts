/**
 * Signing and checking pilot messages (seed 000: the pilot notifies vws; issue 7: HMAC with a shared
 * secret and a timestamp, replays and forgeries refused). The pilot signs; the API verifies before it
 * delivers anything. Order of the checks: shape (malformed), signature (forged), time (stale), nonce
 * (replayed): nothing about time or nonces is revealed to a sender that cannot sign.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { canonicalPilotMessage, signedPilotMessageSchema, unsignedPart, type PilotMessage, type SignedPilotMessage } from '../domain/pilot-message';

/** Why a message was refused. */
export type PilotMessageRefusal = 'malformed' | 'forged' | 'stale' | 'replayed' | 'busy';

/** A refused message: `reason` says which check failed, `field` which field it was about. */
export class PilotMessageError extends Error {
  override name = 'PilotMessageError';
  constructor(
    readonly reason: PilotMessageRefusal,
    /** The field at fault (`signature`, `at`, `nonce`, or the malformed field's path). */
    readonly field: string,
    message: string,
    /** Every bad field, for a malformed message. */
    readonly errors: Array<{ field: string; message: string }> = [{ field, message }],
  ) {
    super(message);
  }
}

/** Default window: a message is accepted within 60 s of its `at`, either way (clock skew included). */
export const DEFAULT_PILOT_WINDOW_MS = 60_000;

const MIN_SECRET_BYTES = 16;

function checkSecret(secret: string): void {
  if (Buffer.byteLength(secret) < MIN_SECRET_BYTES) throw new Error(`the pilot secret must be at least ${MIN_SECRET_BYTES} bytes`);
}

function hmacHex(message: PilotMessage, secret: string): string {
  return createHmac('sha256', secret).update(canonicalPilotMessage(message), 'utf8').digest('hex');
}

/** A fresh nonce: 128 random bits, base64url. */
export function newNonce(): string {
  return randomBytes(16).toString('base64url');
}

/** Signs `message` with the shared secret. */
export function signPilotMessage(message: PilotMessage, secret: string): SignedPilotMessage {
  checkSecret(secret);
  // Only the known fields, so nothing unsigned travels along.
  const m: PilotMessage = {
    slotId: message.slotId,
    node: message.node,
    event: message.event,
    at: message.at,
    nonce: message.nonce,
    ...(message.memoryMiB !== undefined ? { memoryMiB: message.memoryMiB } : {}),
    ...(message.detail !== undefined ? { detail: message.detail } : {}),
  };
  return { ...m, signature: hmacHex(m, secret) };
}

/** Builds and signs a message stamped now with a fresh nonce. */
export function newSignedPilotMessage(
  fields: Omit<PilotMessage, 'at' | 'nonce'> & { at?: string; nonce?: string },
  secret: string,
  now: () => number = Date.now,
): SignedPilotMessage {
  return signPilotMessage({ ...fields, at: fields.at ?? new Date(now()).toISOString(), nonce: fields.nonce ?? newNonce() }, secret);
}

/**
 * Where a receiver records the nonces it has seen: {@link ReplayCache} in one process's memory (the
 * API), or `FileNonceStore` (`nonce-store.ts`) on disk for receivers that live one message long (the
 * SSH fallback's `vws-pilot receive`).
 */
export interface NonceStore {
  /** Records `nonce` until `expiresAt` (ms); false if it is already held and live (a replay). May throw `busy`. */
  remember(nonce: string, expiresAt: number, now: number): boolean;
  /** Forgets `nonce`: the message was not delivered, so the sender may send it again. */
  forget(nonce: string): void;
}

/**
 * Nonces seen within the window, each kept until its message would be stale anyway (then a replay is
 * refused as stale), so memory is bounded by the message rate times the window. In memory: one API
 * process's view. A second API process or a restart does not know these nonces; the slot workflow's
 * stale-message rule (`src/domain/pilot-states.ts`) and its idempotent handling cover that case.
 */
export class ReplayCache implements NonceStore {
  private readonly expiries = new Map<string, number>();

  constructor(
    /** Most nonces held at once; past this, new messages are refused (`busy`) rather than forgetting live nonces. */
    private readonly capacity = 100_000,
  ) {}

  /** Number of nonces held (expired ones included until the next sweep). */
  get size(): number {
    return this.expiries.size;
  }

  /** True if `nonce` was seen and has not expired at `now`. */
  has(nonce: string, now: number): boolean {
    const until = this.expiries.get(nonce);
    return until !== undefined && until >= now;
  }

  /**
   * Records `nonce` until `expiresAt` (ms). False if it is already held and live (a replay).
   * @throws PilotMessageError `busy` when full of live nonces.
   */
  remember(nonce: string, expiresAt: number, now: number): boolean {
    if (this.has(nonce, now)) return false;
    if (this.expiries.size >= this.capacity) this.sweep(now);
    if (this.expiries.size >= this.capacity) {
      throw new PilotMessageError('busy', 'nonce', `the replay cache holds ${this.capacity} live nonces; try again later`);
    }
    this.expiries.set(nonce, expiresAt);
    return true;
  }

  /** Forgets `nonce`: the message was not delivered, so the sender may send it again. */
  forget(nonce: string): void {
    this.expiries.delete(nonce);
  }

  /** Drops expired nonces. */
  sweep(now: number): void {
    for (const [nonce, until] of this.expiries) if (until < now) this.expiries.delete(nonce);
  }
}

/** How a message is checked. */
export interface VerifyOptions {
  /** Accepted distance between the message's `at` and `now`, either way (default 60 s). */
  windowMs?: number;
  /** Clock (ms since the epoch). */
  now?: () => number;
  /** Where seen nonces are recorded; without one, replays are not checked (tests of the signature alone). */
  replay?: NonceStore;
}

/**
 * Checks a received message and answers it without its signature; records its nonce in `replay`.
 * @throws PilotMessageError `malformed` (each bad field named), `forged` (bad signature), `stale` (outside the window), `replayed`, `busy`.
 */
export function verifyPilotMessage(body: unknown, secret: string, options: VerifyOptions = {}): PilotMessage {
  checkSecret(secret);
  const { windowMs = DEFAULT_PILOT_WINDOW_MS, now = Date.now, replay } = options;
  const parsed = signedPilotMessageSchema.safeParse(body);
  if (!parsed.success) {
    const errors = parsed.error.issues.map((i) => ({
      field: i.path.length ? i.path.join('.') : '(body)',
      message: i.code === 'unrecognized_keys' ? `unknown fields: ${i.keys.join(', ')}` : i.message,
    }));
    throw new PilotMessageError('malformed', errors[0].field, errors.map((e) => `${e.field}: ${e.message}`).join('; '), errors);
  }
  const signed: SignedPilotMessage = parsed.data;
  const message = unsignedPart(signed);
  const expected = Buffer.from(hmacHex(message, secret), 'hex');
  const given = Buffer.from(signed.signature, 'hex');
  // Equal lengths by the schema (64 hex digits); compared in constant time all the same.
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    throw new PilotMessageError('forged', 'signature', 'the signature does not match the message: wrong secret, or the message was changed');
  }
  const t = now();
  const at = Date.parse(message.at);
  if (Math.abs(t - at) > windowMs) {
    const side = at > t ? 'ahead of' : 'behind';
    throw new PilotMessageError('stale', 'at', `the message's time ${message.at} is ${Math.round(Math.abs(t - at) / 1000)} s ${side} vws's clock (window ±${windowMs / 1000} s)`);
  }
  // Kept until the message leaves the window; after that, a copy is refused as stale.
  if (replay && !replay.remember(message.nonce, at + windowMs, t)) {
    throw new PilotMessageError('replayed', 'nonce', `nonce ${message.nonce} was already received within the window`);
  }
  return message;
}
