import { execFileSync } from 'node:child_process';
import { createHmac, generateKeyPairSync } from 'node:crypto';
import { KnownHosts, fingerprint, remoteCommand, shellQuote } from '../../src/exec/ssh';

/** An SSH wire-format ed25519 public key blob, as in a known_hosts line. */
function ed25519Blob(): Buffer {
  const jwk = generateKeyPairSync('ed25519').publicKey.export({ format: 'jwk' });
  const raw = Buffer.from(jwk.x as string, 'base64url');
  const str = (b: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(b.length);
    return Buffer.concat([len, b]);
  };
  return Buffer.concat([str(Buffer.from('ssh-ed25519')), str(raw)]);
}

const nasty = ['a b', "it's", '"dq"', '$(id)', '`id`', '$HOME', 'a;b', 'x\ny', '*', '?', '[a]', '\\', '', ' ', "'", "''", '-n', '~', '!', '#', '&|<>', 'é ünï'];

describe('shell quoting for SSH commands', () => {
  it('single-quotes and escapes embedded quotes', () => {
    expect(shellQuote('abc')).toBe(`'abc'`);
    expect(shellQuote("it's")).toBe(`'it'\\''s'`);
    expect(shellQuote('')).toBe(`''`);
  });

  it('refuses NUL bytes', () => {
    expect(() => shellQuote('a\0b')).toThrow(/NUL/);
    expect(() => remoteCommand(['echo', 'a\0b'], 1000)).toThrow(/NUL/);
  });

  it('round-trips every argument literally through a real POSIX shell (sh and busybox ash)', () => {
    const line = nasty.map(shellQuote).join(' ');
    for (const sh of [['sh', '-c'], ['busybox', 'sh', '-c']]) {
      const out = execFileSync(sh[0], [...sh.slice(1), `printf '%s\\0' ${line}`]);
      expect(out.toString('utf8').split('\0').slice(0, -1)).toEqual(nasty);
    }
  });

  it('prefixes timeout -s KILL with whole seconds, rounded up', () => {
    expect(remoteCommand(['sleep', '30'], 1000)).toBe(`'timeout' '-s' 'KILL' '1' 'sleep' '30'`);
    expect(remoteCommand(['true'], 1001)).toBe(`'timeout' '-s' 'KILL' '2' 'true'`);
    expect(remoteCommand(['true'], 10)).toBe(`'timeout' '-s' 'KILL' '1' 'true'`);
    expect(remoteCommand(['true'], 60_000, ['busybox', 'timeout'])).toBe(`'busybox' 'timeout' '-s' 'KILL' '60' 'true'`);
    expect(() => remoteCommand([], 1000)).toThrow(/empty argv/);
  });
});

describe('known_hosts parsing', () => {
  const k1 = ed25519Blob();
  const k2 = ed25519Blob();
  const k3 = ed25519Blob();

  it('matches hosts by any name on the line, with ports, wildcards and negations', () => {
    const kh = KnownHosts.parse(
      [
        '# comment',
        '',
        `vmm2,10.213.0.12 ssh-ed25519 ${k1.toString('base64')} root@vmm2`,
        `[10.213.0.12]:2222 ssh-ed25519 ${k2.toString('base64')}`,
        `10.9.*,!10.9.0.5 ssh-ed25519 ${k3.toString('base64')}`,
      ].join('\n'),
    );
    expect(kh.size).toBe(3);
    expect(kh.keysFor(['10.213.0.12']).map((k) => k.key)).toEqual([k1]);
    expect(kh.keysFor(['vmm2'])[0].source).toBe('known_hosts:3');
    expect(kh.keysFor(['[10.213.0.12]:2222']).map((k) => k.key)).toEqual([k2]);
    expect(kh.keysFor(['10.9.1.1']).map((k) => k.key)).toEqual([k3]);
    expect(kh.keysFor(['10.9.0.5'])).toEqual([]);
    expect(kh.keysFor(['10.213.0.1'])).toEqual([]); // no prefix matching
    expect(kh.keysFor(['vmm'])).toEqual([]);
  });

  it('understands hashed host names', () => {
    const salt = Buffer.from('0123456789abcdef0123');
    const hash = createHmac('sha1', salt).update('10.213.0.13').digest();
    const kh = KnownHosts.parse(`|1|${salt.toString('base64')}|${hash.toString('base64')} ssh-ed25519 ${k1.toString('base64')}`);
    expect(kh.keysFor(['10.213.0.13'])).toHaveLength(1);
    expect(kh.keysFor(['10.213.0.12'])).toHaveLength(0);
  });

  it('refuses markers and malformed lines, naming the line', () => {
    expect(() => KnownHosts.parse(`@cert-authority * ssh-ed25519 ${k1.toString('base64')}`, 'kh')).toThrow(/^kh:1: marker lines \(@cert-authority\)/);
    expect(() => KnownHosts.parse(`\nvmm2 ssh-ed25519`, 'kh')).toThrow(/^kh:2: expected/);
    expect(() => KnownHosts.parse(`vmm2 ssh-rsa ${k1.toString('base64')}`, 'kh')).toThrow(/^kh:1: the key is not valid base64 of a ssh-rsa public key/);
    expect(() => KnownHosts.parse(`vmm2 ssh-ed25519 AAAA`, 'kh')).toThrow(/not valid/);
  });

  it('parses the testbed file and fingerprints like ssh-keygen', () => {
    const kh = KnownHosts.parse(`vmm2,10.213.0.12 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINLGoALfUMd+CfWrbdX5vHwoeUDggS2y5QQ0LXtLLdqr`);
    const [key] = kh.keysFor(['vmm2']);
    expect(fingerprint(key.key)).toBe('SHA256:9NYl+Ryim7x/JFbT7L1WmS/FvPcdF1o4OGX+7Q1KLOo'); // ssh-keygen -lf
  });
});
