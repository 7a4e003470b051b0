/**
 * Signed pilot messages: a signed message verifies; any change of any field, a wrong secret, a time
 * outside the window and a second delivery of one nonce are refused with the reason and the field;
 * malformed bodies name every bad field. Property-based over arbitrary messages and mutations.
 */
import fc from 'fast-check';
import { canonicalPilotMessage, PILOT_EVENTS, type PilotMessage, type SignedPilotMessage } from '../../src/domain/pilot-message';
import { newNonce, newSignedPilotMessage, PilotMessageError, ReplayCache, signPilotMessage, verifyPilotMessage } from '../../src/pilot/message';

const SECRET = 'a-shared-secret-of-enough-bytes-0123456789';
const T0 = Date.parse('2026-12-01T17:00:00.000Z');
const at = (ms: number) => new Date(ms).toISOString();

/** The refusal `fn` throws (fails the test if it does not throw one). */
function refusal(fn: () => unknown): PilotMessageError {
  try {
    fn();
  } catch (e) {
    if (e instanceof PilotMessageError) return e;
    throw e;
  }
  throw new Error('expected a PilotMessageError, got none');
}

const base: PilotMessage = { slotId: 'slot-0123456789ab', node: 'vmm1', event: 'reserved', at: at(T0), nonce: 'abcdefghijklmnop0123', memoryMiB: 1024 };

const messageArb: fc.Arbitrary<PilotMessage> = fc.record(
  {
    slotId: fc.stringMatching(/^[a-z0-9][a-z0-9-]{0,20}$/),
    node: fc.stringMatching(/^[a-z][a-z0-9-]{0,10}$/),
    event: fc.constantFrom(...PILOT_EVENTS),
    at: fc.integer({ min: T0 - 50_000, max: T0 + 50_000 }).map(at),
    nonce: fc.stringMatching(/^[A-Za-z0-9_-]{16,40}$/),
    memoryMiB: fc.integer({ min: 0, max: 1 << 20 }),
    detail: fc.string({ maxLength: 50 }),
  },
  { requiredKeys: ['slotId', 'node', 'event', 'at', 'nonce'] },
);

/** A different, still well-formed value for one field (or adding/removing an optional field). */
function mutate(m: SignedPilotMessage, field: keyof PilotMessage, pick: number): SignedPilotMessage {
  const out: Record<string, unknown> = { ...m };
  switch (field) {
    case 'slotId':
      out.slotId = m.slotId === 'x0' ? 'x1' : 'x0';
      break;
    case 'node':
      out.node = m.node === 'n0' ? 'n1' : 'n0';
      break;
    case 'event':
      out.event = PILOT_EVENTS[(PILOT_EVENTS.indexOf(m.event) + 1 + (pick % (PILOT_EVENTS.length - 1))) % PILOT_EVENTS.length];
      break;
    case 'at':
      out.at = at(Date.parse(m.at) + 1 + (pick % 1000));
      break;
    case 'nonce':
      out.nonce = m.nonce.endsWith('A') ? `${m.nonce.slice(0, -1)}B` : `${m.nonce.slice(0, -1)}A`;
      break;
    case 'memoryMiB':
      if (m.memoryMiB === undefined) out.memoryMiB = pick % 4096;
      else if (pick % 2 === 0) delete out.memoryMiB;
      else out.memoryMiB = m.memoryMiB + 1;
      break;
    case 'detail':
      if (m.detail === undefined) out.detail = '';
      else if (pick % 2 === 0) delete out.detail;
      else out.detail = `${m.detail}.`;
      break;
  }
  return out as unknown as SignedPilotMessage;
}

describe('signing and verifying', () => {
  it('verifies what it signed and answers the message without the signature', () => {
    const signed = signPilotMessage(base, SECRET);
    expect(signed.signature).toMatch(/^[0-9a-f]{64}$/);
    expect(verifyPilotMessage(signed, SECRET, { now: () => T0 })).toEqual(base);
  });

  it('signs a canonical text independent of key order, so a reordered body still verifies', () => {
    const signed = signPilotMessage(base, SECRET);
    const reordered = Object.fromEntries(Object.entries(signed).reverse());
    expect(verifyPilotMessage(reordered, SECRET, { now: () => T0 })).toEqual(base);
    expect(canonicalPilotMessage(base)).toBe('["vws-pilot-message-v1","slot-0123456789ab","vmm1","reserved","2026-12-01T17:00:00.000Z","abcdefghijklmnop0123",1024,null]');
    // An absent optional field and an empty one are different texts (no ambiguity between them).
    expect(canonicalPilotMessage({ ...base, detail: '' })).not.toBe(canonicalPilotMessage(base));
  });

  it('refuses a message signed with another secret (forged, field signature)', () => {
    const e = refusal(() => verifyPilotMessage(signPilotMessage(base, `${SECRET}-other`), SECRET, { now: () => T0 }));
    expect({ reason: e.reason, field: e.field }).toEqual({ reason: 'forged', field: 'signature' });
  });

  it('refuses a secret shorter than 16 bytes on both sides', () => {
    expect(() => signPilotMessage(base, 'short')).toThrow(/at least 16 bytes/);
    expect(() => verifyPilotMessage(signPilotMessage(base, SECRET), 'short')).toThrow(/at least 16 bytes/);
  });

  it('property: any change of any field makes verification fail as forged', () => {
    const fields: Array<keyof PilotMessage> = ['slotId', 'node', 'event', 'at', 'nonce', 'memoryMiB', 'detail'];
    fc.assert(
      fc.property(messageArb, fc.constantFrom(...fields), fc.nat(), (m, field, pick) => {
        const signed = signPilotMessage(m, SECRET);
        expect(verifyPilotMessage(signed, SECRET, { now: () => T0 })).toEqual(m);
        const changed = mutate(signed, field, pick);
        expect(changed).not.toEqual(signed);
        const e = refusal(() => verifyPilotMessage(changed, SECRET, { now: () => T0 }));
        expect({ reason: e.reason, field: e.field }).toEqual({ reason: 'forged', field: 'signature' });
      }),
      { numRuns: 500 },
    );
  });

  it('property: any change of the signature itself fails as forged', () => {
    fc.assert(
      fc.property(messageArb, fc.nat({ max: 63 }), fc.integer({ min: 1, max: 15 }), (m, pos, delta) => {
        const signed = signPilotMessage(m, SECRET);
        const digit = ((parseInt(signed.signature[pos], 16) + delta) % 16).toString(16);
        const changed = { ...signed, signature: signed.signature.slice(0, pos) + digit + signed.signature.slice(pos + 1) };
        expect(refusal(() => verifyPilotMessage(changed, SECRET, { now: () => T0 })).reason).toBe('forged');
      }),
      { numRuns: 300 },
    );
  });
});

describe('time window', () => {
  it('accepts a message up to the window either way, and refuses it beyond (stale, field at)', () => {
    const signed = signPilotMessage(base, SECRET);
    for (const skew of [-60_000, -1, 0, 1, 60_000]) expect(() => verifyPilotMessage(signed, SECRET, { now: () => T0 + skew })).not.toThrow();
    for (const skew of [-60_001, 60_001, 3_600_000]) {
      const e = refusal(() => verifyPilotMessage(signed, SECRET, { now: () => T0 + skew }));
      expect({ reason: e.reason, field: e.field }).toEqual({ reason: 'stale', field: 'at' });
      expect(e.message).toMatch(skew > 0 ? /behind vws's clock/ : /ahead of vws's clock/);
    }
    expect(refusal(() => verifyPilotMessage(signed, SECRET, { now: () => T0 + 10_001, windowMs: 10_000 })).reason).toBe('stale');
  });

  it('checks the signature before the time: a forged stale message is forged', () => {
    const e = refusal(() => verifyPilotMessage(signPilotMessage(base, `${SECRET}x`), SECRET, { now: () => T0 + 3_600_000 }));
    expect(e.reason).toBe('forged');
  });
});

describe('replays', () => {
  it('refuses a nonce seen within the window (replayed, field nonce), and accepts a fresh one', () => {
    const replay = new ReplayCache();
    const signed = signPilotMessage(base, SECRET);
    verifyPilotMessage(signed, SECRET, { now: () => T0, replay });
    const e = refusal(() => verifyPilotMessage(signed, SECRET, { now: () => T0 + 30_000, replay }));
    expect({ reason: e.reason, field: e.field }).toEqual({ reason: 'replayed', field: 'nonce' });
    // Past the window the copy is stale, whether or not the cache still holds it.
    expect(refusal(() => verifyPilotMessage(signed, SECRET, { now: () => T0 + 60_001, replay })).reason).toBe('stale');
    const fresh = newSignedPilotMessage({ slotId: base.slotId, node: 'vmm1', event: 'unreserving' }, SECRET, () => T0 + 1000);
    expect(verifyPilotMessage(fresh, SECRET, { now: () => T0 + 1000, replay }).event).toBe('unreserving');
  });

  it('forgets a nonce on request (message not delivered), so the same message may be sent again', () => {
    const replay = new ReplayCache();
    const signed = signPilotMessage(base, SECRET);
    verifyPilotMessage(signed, SECRET, { now: () => T0, replay });
    replay.forget(signed.nonce);
    expect(() => verifyPilotMessage(signed, SECRET, { now: () => T0, replay })).not.toThrow();
  });

  it('does not record a forged or stale message (it cannot block the genuine one)', () => {
    const replay = new ReplayCache();
    const genuine = signPilotMessage(base, SECRET);
    refusal(() => verifyPilotMessage({ ...genuine, signature: '0'.repeat(64) }, SECRET, { now: () => T0, replay }));
    refusal(() => verifyPilotMessage(genuine, SECRET, { now: () => T0 + 120_000, replay }));
    expect(replay.size).toBe(0);
    expect(() => verifyPilotMessage(genuine, SECRET, { now: () => T0, replay })).not.toThrow();
  });

  it('keeps nonces only until their message leaves the window, and refuses (busy) rather than forget live ones', () => {
    const replay = new ReplayCache(3);
    for (let i = 0; i < 3; i++) verifyPilotMessage(signPilotMessage({ ...base, nonce: newNonce() }, SECRET), SECRET, { now: () => T0, replay });
    expect(replay.size).toBe(3);
    const e = refusal(() => verifyPilotMessage(signPilotMessage({ ...base, nonce: newNonce() }, SECRET), SECRET, { now: () => T0, replay }));
    expect(e.reason).toBe('busy');
    // Once the first three have left the window they are swept to make room.
    const later = T0 + 61_000;
    verifyPilotMessage(signPilotMessage({ ...base, at: at(later), nonce: newNonce() }, SECRET), SECRET, { now: () => later, replay });
    expect(replay.size).toBe(1);
  });
});

describe('malformed bodies', () => {
  it('names every bad field', () => {
    const e = refusal(() => verifyPilotMessage({ slotId: 'Bad Slot', node: 'vmm1', event: 'exploded', at: 'yesterday', nonce: 'short', signature: 'xyz' }, SECRET));
    expect(e.reason).toBe('malformed');
    expect(e.errors.map((x) => x.field).sort()).toEqual(['at', 'event', 'nonce', 'signature', 'slotId']);
  });

  it('refuses unknown fields (nothing unsigned rides along) and a missing signature', () => {
    const signed = signPilotMessage(base, SECRET);
    expect(refusal(() => verifyPilotMessage({ ...signed, admin: true }, SECRET)).errors).toEqual([{ field: '(body)', message: 'unknown fields: admin' }]);
    const { signature: _s, ...unsigned } = signed;
    expect(refusal(() => verifyPilotMessage(unsigned, SECRET)).field).toBe('signature');
    expect(refusal(() => verifyPilotMessage(null, SECRET)).field).toBe('(body)');
    expect(refusal(() => verifyPilotMessage({ ...signed, at: '2026-02-30T00:00:00.000Z' }, SECRET)).field).toBe('at');
  });
});
