/**
 * The SSH fallback's pure parts: its settings (config and `--ssh-fallback`, errors naming the field),
 * when the notifier falls back, how the receiver's answer is read, the answers both receivers give, and
 * the receiver's on-disk nonce record (src/pilot/nonce-store.ts). The transport itself is tested for real
 * in test/integration/pilot-ssh-fallback.test.ts.
 */
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, parseConfig } from '../../src/config/load';
import { pilotAnswer, PilotSlotNotRunning } from '../../src/pilot/accept';
import { PilotMessageError, verifyPilotMessage, newSignedPilotMessage } from '../../src/pilot/message';
import { FileNonceStore } from '../../src/pilot/nonce-store';
import { wantsFallback } from '../../src/pilot/notifier';
import { PilotUsageError, sshFallbackOption } from '../../src/pilot/options';
import { parseReceiverOutput } from '../../src/pilot/ssh-notify';

const good = { host: '10.213.0.1', keyFile: '/etc/vws/pilot_key', knownHostsFile: '/etc/vws/known_hosts', command: ['/usr/bin/node', '/opt/vws/dist/pilot/main.js', 'receive'] };

describe('SSH fallback settings', () => {
  it('fills defaults in the site configuration and names a bad field', () => {
    const c = parseConfig({ pilot: { secretFile: '/s/pilot.secret', sshFallback: good } });
    expect(c.pilot?.sshFallback).toEqual({ ...good, port: 22, user: 'root', afterHttpAttempts: 2, connectTimeoutMs: 5000 });
    expect(() => parseConfig({ pilot: { secretFile: '/s/p', sshFallback: { ...good, keyFile: 'key' } } })).toThrow(ConfigError);
    expect(() => parseConfig({ pilot: { secretFile: '/s/p', sshFallback: { ...good, keyFile: 'key' } } })).toThrow(/pilot\.sshFallback\.keyFile: must be an absolute path/);
    expect(() => parseConfig({ pilot: { secretFile: '/s/p', sshFallback: { ...good, command: [] } } })).toThrow(/pilot\.sshFallback\.command/);
  });

  it('--ssh-fallback takes the same JSON and names the field at fault', () => {
    expect(sshFallbackOption(undefined)).toBeUndefined();
    expect(sshFallbackOption(JSON.stringify({ ...good, afterHttpAttempts: 3 }))).toMatchObject({ host: '10.213.0.1', afterHttpAttempts: 3, port: 22 });
    const refusal = (v: string) => {
      try {
        sshFallbackOption(v);
      } catch (e) {
        expect(e).toBeInstanceOf(PilotUsageError);
        return (e as PilotUsageError).message;
      }
      throw new Error('accepted');
    };
    expect(refusal('{')).toMatch(/^--ssh-fallback: must be JSON/);
    expect(refusal(JSON.stringify({ ...good, knownHostsFile: undefined }))).toMatch(/^--ssh-fallback\.knownHostsFile: /);
    expect(refusal(JSON.stringify({ ...good, port: 70000 }))).toMatch(/^--ssh-fallback\.port: /);
    expect(refusal(JSON.stringify({ ...good, host: 'a b' }))).toMatch(/^--ssh-fallback\.host: must be a host name or address/);
    expect(refusal(JSON.stringify({ ...good, password: 'x' }))).toMatch(/^--ssh-fallback: unknown fields: password/);
  });
});

describe('when the notifier falls back to SSH', () => {
  it('on no answer (refused, timeout) and on 5xx; never on an answer vws gave', () => {
    expect(wantsFallback({ last: 'fetch failed: ECONNREFUSED' })).toBe(true);
    expect(wantsFallback({ status: 503, last: 'HTTP 503' })).toBe(true);
    expect(wantsFallback({ status: 500, last: 'HTTP 500' })).toBe(true);
    for (const status of [202, 400, 401, 404, 409]) expect(wantsFallback({ status, last: `HTTP ${status}` })).toBe(false);
  });
});

describe("the receiver's answer", () => {
  it('is the last JSON line with an integer status', () => {
    expect(parseReceiverOutput('{"status":202,"title":"Accepted","detail":"x"}\n')).toEqual({ status: 202 });
    expect(parseReceiverOutput('motd line\n{"status":409,"type":"urn:vws:problem:PilotMessageReplayed"}\n')).toEqual({ status: 409, type: 'urn:vws:problem:PilotMessageReplayed' });
    expect(parseReceiverOutput('')).toBeUndefined();
    expect(parseReceiverOutput('{"status":"202"}\nnot json')).toBeUndefined();
  });

  it('maps each refusal to the status and type the HTTP route answers', () => {
    expect(pilotAnswer(new PilotMessageError('forged', 'signature', 'm'))).toMatchObject({ status: 401, type: 'urn:vws:problem:PilotMessageForged' });
    expect(pilotAnswer(new PilotMessageError('stale', 'at', 'm'))).toMatchObject({ status: 409, type: 'urn:vws:problem:PilotMessageStale' });
    expect(pilotAnswer(new PilotMessageError('replayed', 'nonce', 'm'))).toMatchObject({ status: 409, type: 'urn:vws:problem:PilotMessageReplayed' });
    expect(pilotAnswer(new PilotMessageError('malformed', 'slotId', 'm'))).toMatchObject({ status: 400 });
    expect(pilotAnswer(new PilotMessageError('busy', 'nonce', 'm'))).toMatchObject({ status: 503 });
    expect(pilotAnswer(new PilotSlotNotRunning('slot-1'))).toMatchObject({ status: 404, detail: 'no running slot slot-1' });
    expect(pilotAnswer(new Error('connection refused'))).toMatchObject({ status: 503 });
  });
});

describe('FileNonceStore', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'vws-nonces-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('refuses a live nonce across instances (processes), takes an expired one afresh, forgets, and sweeps', () => {
    const a = new FileNonceStore(dir);
    const b = new FileNonceStore(dir);
    const n = 'AAAAAAAAAAAAAAAAAAAAAA';
    expect(a.remember(n, 2_000, 1_000)).toBe(true);
    expect(b.remember(n, 2_500, 1_500)).toBe(false);
    expect(b.remember(n, 4_000, 3_000)).toBe(true); // expired at 2 000: taken afresh
    b.forget(n);
    expect(a.remember(n, 5_000, 3_100)).toBe(true);
    expect(a.remember('BBBBBBBBBBBBBBBBBBBBBB', 3_500, 3_200)).toBe(true);
    new FileNonceStore(dir).sweep(4_000);
    expect(readdirSync(dir)).toEqual([n]);
    expect(() => a.remember('../../etc/passwd-xxxxxxx', 9_000, 1)).toThrow(/not a nonce/);
  });

  it('makes verifyPilotMessage refuse a replay seen by another receiver process', () => {
    const secret = 'a-secret-of-at-least-16-bytes';
    const m = newSignedPilotMessage({ slotId: 'slot-1', node: 'vmm1', event: 'reserved' }, secret);
    expect(verifyPilotMessage(m, secret, { replay: new FileNonceStore(dir) })).toMatchObject({ slotId: 'slot-1' });
    expect(() => verifyPilotMessage(m, secret, { replay: new FileNonceStore(dir) })).toThrow(expect.objectContaining({ reason: 'replayed', field: 'nonce' }));
  });

  it('counts a nonce file still being written (empty) as live', () => {
    const n = 'CCCCCCCCCCCCCCCCCCCCCC';
    writeFileSync(join(dir, n), '');
    expect(new FileNonceStore(dir).remember(n, 9_000, 1_000)).toBe(false);
  });
});
