/**
 * The CLI's pieces that need no server: its settings file (YAML or JSON; errors name the file and the
 * field), how its transport words TLS failures and refuses unusable TLS settings, and its reader of
 * server-sent events (fields, comments, line endings, events split across chunks as the network
 * delivers them).
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readCliConfig } from '../../src/cli/config';
import { serverEvents, type ServerEvent } from '../../src/cli/sse';
import { createTransport, explain, TlsSettingsError } from '../../src/cli/transport';

describe('the CLI settings file', () => {
  const dir = mkdtempSync('/tmp/vws-cli-config-');
  const file = (name: string, text: string) => {
    const p = join(dir, name);
    writeFileSync(p, text);
    return p;
  };

  it('reads YAML and JSON, and resolves a relative tokenFile from the file directory', () => {
    expect(readCliConfig(file('a.yaml', 'api: http://10.0.0.1:8080\ntokenFile: tok\n'), true)).toEqual({ api: 'http://10.0.0.1:8080', tokenFile: join(dir, 'tok') });
    expect(readCliConfig(file('b.json', '{"api": "https://vws.example.org", "token": "abc"}'), true)).toEqual({ api: 'https://vws.example.org', token: 'abc' });
    expect(readCliConfig(file('c.yaml', 'tokenFile: /etc/vws/token\n'), true)).toEqual({ tokenFile: '/etc/vws/token' });
    expect(readCliConfig(file('empty.yaml', ''), true)).toEqual({});
  });

  it('reads the TLS settings (cert, key, ca), resolving relative paths from the file directory', () => {
    expect(readCliConfig(file('tls.yaml', 'api: https://vws.example.org\ncert: alice.crt\nkey: keys/alice.key\nca: /etc/vws/ca.crt\n'), true)).toEqual({
      api: 'https://vws.example.org',
      cert: join(dir, 'alice.crt'),
      key: join(dir, 'keys/alice.key'),
      ca: '/etc/vws/ca.crt',
    });
    expect(() => readCliConfig(file('tls-empty.yaml', 'cert: ""\n'), true)).toThrow(/tls-empty\.yaml: cert: give the path of your client certificate/);
  });

  it('skips a default file that does not exist, and refuses a named one', () => {
    expect(readCliConfig(join(dir, 'absent.yaml'), false)).toEqual({});
    expect(() => readCliConfig(join(dir, 'absent.yaml'), true)).toThrow(`cannot read the configuration file ${join(dir, 'absent.yaml')} (ENOENT)`);
  });

  it('names the file and each field at fault', () => {
    const bad = file('bad.yaml', 'api: ftp://x\ncolour: red\n');
    expect(() => readCliConfig(bad, true)).toThrow(new RegExp(`^${bad}: api: .*; colour: `));
    expect(() => readCliConfig(file('both.yaml', 'token: a\ntokenFile: b\n'), true)).toThrow('token, tokenFile: give one of them, not both');
    expect(() => readCliConfig(file('list.yaml', '- a\n'), true)).toThrow(/list\.yaml: \(file\): /);
    expect(() => readCliConfig(file('broken.yaml', 'api: [\n'), true)).toThrow(/broken\.yaml is not valid YAML or JSON/);
  });
});

describe('the server-sent events reader', () => {
  /** A stream that delivers `chunks` one by one. */
  const streamOf = (chunks: string[]) =>
    new ReadableStream<Uint8Array>({
      start(c) {
        for (const chunk of chunks) c.enqueue(new TextEncoder().encode(chunk));
        c.close();
      },
    });
  const all = async (chunks: string[]) => {
    const out: ServerEvent[] = [];
    for await (const e of serverEvents(streamOf(chunks))) out.push(e);
    return out;
  };

  it('reads named events with ids, skipping comments and retry, whatever the chunking', async () => {
    const text = 'retry: 2000\n\nid: 1\nevent: workspace\ndata: {"state":"Running"}\n\n: keep-alive\n\nid: 2\nevent: end\ndata: {"state":"Cancelled"}\n\n';
    const expected = [
      { event: 'workspace', data: '{"state":"Running"}', id: '1' },
      { event: 'end', data: '{"state":"Cancelled"}', id: '2' },
    ];
    expect(await all([text])).toEqual(expected);
    // One byte at a time, as a slow network might deliver it.
    expect(await all(text.split(''))).toEqual(expected);
  });

  it('joins data lines, accepts CRLF and CR line endings, and defaults the event name to message', async () => {
    const crlf = 'data: a\r\ndata:b\r\n\r\n';
    // A CRLF split between two chunks is one line ending, not two.
    expect(await all(crlf.split(''))).toEqual([{ event: 'message', data: 'a\nb' }]);
    expect(await all([crlf, 'data: c\rdata: d\r\r', '\n'])).toEqual([
      { event: 'message', data: 'a\nb' },
      { event: 'message', data: 'c\nd' },
    ]);
    // An event without data is not dispatched; an unfinished one at the end is dropped.
    expect(await all(['event: x\n\n', 'data: never finished'])).toEqual([]);
  });
});

describe('the CLI transport', () => {
  const failure = (code: string, message: string) => Object.assign(new Error(message), { code });

  it('explains TLS failures as trust problems that say what to set, other failures as unreachable', () => {
    const untrusted = explain('https://vws.example.org', failure('SELF_SIGNED_CERT_IN_CHAIN', 'self-signed certificate in certificate chain'));
    expect({ kind: untrusted.kind, message: untrusted.message }).toEqual({
      kind: 'trust',
      message: 'the API at https://vws.example.org presented a certificate this CLI does not trust (SELF_SIGNED_CERT_IN_CHAIN: self-signed certificate in certificate chain); give the site CA with --ca, VWS_CA or ca in the configuration file',
    });
    const refused = explain('https://vws.example.org', failure('ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED', 'tlsv13 alert certificate required'));
    expect({ kind: refused.kind, message: refused.message }).toEqual({ kind: 'trust', message: expect.stringContaining('give one with --cert and --key') });
    expect(explain('https://10.0.0.1', failure('ERR_TLS_CERT_ALTNAME_INVALID', "IP: 10.0.0.1 is not in the cert's list")).kind).toBe('trust');
    const down = explain('http://127.0.0.1:9', failure('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:9'));
    expect({ kind: down.kind, message: down.message }).toEqual({ kind: 'unreachable', message: 'cannot reach the vws API at http://127.0.0.1:9: connect ECONNREFUSED 127.0.0.1:9' });
  });

  it('refuses TLS settings that cannot work, before any request', () => {
    expect(() => createTransport('http://127.0.0.1:8080', { ca: { path: '/etc/ca.crt', setting: 'VWS_CA' } })).toThrow(new TlsSettingsError('VWS_CA given, but the API URL http://127.0.0.1:8080 is not https: TLS settings need an https:// URL'));
    expect(() => createTransport('https://vws.example.org', { key: { path: '/k', setting: '--key' } })).toThrow(/^--key is set but the certificate \(--cert, VWS_CERT or cert in the configuration file\) is not/);
    expect(() => createTransport('https://vws.example.org', { ca: { path: '/nonexistent/ca.crt', setting: '--ca' } })).toThrow('--ca: cannot read /nonexistent/ca.crt (ENOENT)');
    expect(createTransport('https://vws.example.org', {}).clientCertificate).toBe(false);
  });
});
