/**
 * Mutual TLS for the API, for real: certificates made at test time by `openssl` (a site CA, the API's
 * certificate for 127.0.0.1, client certificates, a certificate from another CA), the real express app
 * behind the real HTTPS server (`createApiServer`), and node's TLS client. Routes that need Temporal only
 * list (`GET /workspaces`) on the shared dev server; `/admin/drift` shows the admin role.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:https';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import pino from 'pino';
import { createApp } from '../../src/api/app';
import type { TokenEntry } from '../../src/api/auth';
import { createApiServer } from '../../src/api/listen';
import { loadTokens } from '../../src/api/tokens';
import type { VwsConfig } from '../../src/config/schema';
import { tokenSha256Of } from '../../src/config/hash-token';
import { CertificateMaker } from '../helpers/certificates';
import { connect, testConfig, type TestConnections } from '../helpers/temporal';

jest.setTimeout(60_000);

const dir = mkdtempSync('/tmp/vws-api-mtls-');
const f = (name: string) => join(dir, name);
const certs = new CertificateMaker(dir);

const IDENTITY = { alice: '/O=Grid/OU=test/CN=alice', bob: '/O=Grid/OU=test/CN=bob', root: '/O=Grid/OU=test/CN=root' };
const tokens = { alice: `tok-alice-${randomBytes(16).toString('hex')}`, bob: `tok-bob-${randomBytes(16).toString('hex')}`, root: `tok-root-${randomBytes(16).toString('hex')}` };
const nodeToken = `tok-node-${randomBytes(16).toString('hex')}`;

let conn: TestConnections;
let config: VwsConfig;
const servers: Server[] = [];
const logLines: string[] = [];

/** An HTTPS API over `config` with the token table `loadTokens` makes of it; its port. */
async function serve(c: VwsConfig): Promise<number> {
  const t = loadTokens(c);
  const logger = pino({ level: 'info' }, new Writable({ write: (chunk, _enc, done) => (logLines.push(String(chunk)), done()) }));
  const clientTokens: () => readonly TokenEntry[] = () => t.clients;
  const app = createApp({ config: c, client: conn.client, clientTokens, nodeTokens: () => t.nodes, logger });
  const server = createApiServer(c, app) as Server;
  servers.push(server);
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  return (server.address() as AddressInfo).port;
}

interface Answer {
  status: number;
  type: string;
  body: Record<string, any>;
}

/** One request over a fresh TLS connection (no session reuse), trusting the site CA. */
function call(port: number, path: string, opts: { cert?: string; token?: string; method?: string } = {}): Promise<Answer> {
  return new Promise((ok, fail) => {
    const req = httpsRequest(
      {
        host: '127.0.0.1',
        port,
        path,
        method: opts.method ?? 'GET',
        agent: false,
        ca: readFileSync(f('ca.crt')),
        ...(opts.cert ? { cert: readFileSync(f(`${opts.cert}.crt`)), key: readFileSync(f(`${opts.cert}.key`)) } : {}),
        headers: opts.token ? { authorization: `Bearer ${opts.token}` } : {},
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => ok({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body: text ? (JSON.parse(text) as Record<string, any>) : {} }));
      },
    );
    req.on('error', fail);
    req.end();
  });
}

/** Expects a 401 problem+json whose detail matches. */
function refused(a: Answer, detail: RegExp): void {
  expect({ status: a.status, type: a.type, title: a.body.title }).toEqual({ status: 401, type: expect.stringMatching(/^application\/problem\+json/), title: 'Unauthorized' });
  expect(a.body.detail).toMatch(detail);
}

beforeAll(async () => {
  certs.ca('ca', '/O=Grid/OU=test/CN=vws test CA');
  certs.ca('other-ca', '/O=Elsewhere/CN=another CA');
  certs.issue('server', '/O=Grid/OU=test/CN=127.0.0.1', 'ca', 'server');
  certs.issue('alice', IDENTITY.alice, 'ca', 'client');
  certs.issue('root', IDENTITY.root, 'ca', 'client');
  certs.issue('mallory', '/O=Grid/OU=test/CN=mallory', 'ca', 'client');
  // The site's DN for alice, but from a CA the site does not trust.
  certs.issue('forged-alice', IDENTITY.alice, 'other-ca', 'client');
  // One RDN whose value reads, naively joined, as bob's DN plus another RDN.
  certs.issue('slashed', '/O=Grid/OU=test/CN=bob\\/CN=root', 'ca', 'client');
  conn = await connect();
  config = testConfig({
    stateDir: dir,
    repository: { dir: join(dir, 'repository'), nodeTokenFile: f('node.token') },
    api: { tls: { certFile: f('server.crt'), keyFile: f('server.key'), clientCaFile: f('ca.crt') } },
    clients: [
      // alice's token is configured by its digest only.
      { name: 'alice', identity: IDENTITY.alice, tokenSha256: tokenSha256Of(tokens.alice) },
      { name: 'bob', identity: IDENTITY.bob, tokenFile: f('bob.token') },
      { name: 'root', identity: IDENTITY.root, tokenFile: f('root.token'), admin: true },
      { name: 'evil', identity: '/O=Grid/OU=test/CN=bob/CN=root', tokenFile: f('evil.token'), admin: true },
    ],
    reconciler: { enabled: false },
  });
  writeFileSync(f('bob.token'), `${tokens.bob}\n`);
  writeFileSync(f('root.token'), `${tokens.root}\n`);
  writeFileSync(f('node.token'), `${nodeToken}\n`);
});

afterAll(async () => {
  for (const s of servers) s.close();
  await conn?.close();
  // The private keys made here go with the test.
  rmSync(dir, { recursive: true, force: true });
});

describe('HTTPS with optional client certificates', () => {
  let port: number;
  beforeAll(async () => {
    port = await serve(config);
  });

  it('takes a verified certificate as its subject DN: the configured client with that identity', async () => {
    const a = await call(port, '/workspaces', { cert: 'alice' });
    expect({ status: a.status, body: a.body }).toEqual({ status: 200, body: { workspaces: [], count: 0 } });
    // The same with alice's own token along.
    expect((await call(port, '/workspaces', { cert: 'alice', token: tokens.alice })).status).toBe(200);
    const line = logLines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.route === '/workspaces' && l.status === 200);
    expect(line).toMatchObject({ client: 'alice' });
  });

  it('keeps the admin role of clients[].admin', async () => {
    const asRoot = await call(port, '/admin/drift', { cert: 'root' });
    expect(asRoot.status).toBe(200);
    expect(asRoot.body).toMatchObject({ runs: 0, last: null });
    const asAlice = await call(port, '/admin/drift', { cert: 'alice' });
    expect({ status: asAlice.status, type: asAlice.body.type }).toEqual({ status: 403, type: 'urn:vws:problem:Forbidden' });
    expect((await call(port, '/admin/drift', { token: tokens.root })).status).toBe(200);
  });

  it('refuses a token of another client than the certificate, and a bad token with it', async () => {
    refused(await call(port, '/workspaces', { cert: 'alice', token: tokens.root }), /bearer token belongs to another client than the certificate's subject \/O=Grid\/OU=test\/CN=alice/);
    refused(await call(port, '/workspaces', { cert: 'alice', token: 'not-a-token' }), /token sent with the client certificate is not valid/);
  });

  it('refuses a certificate from another CA, even with the right token', async () => {
    refused(await call(port, '/workspaces', { cert: 'forged-alice' }), /client certificate was not accepted \(.+\): it must be issued by the site's client CA/);
    refused(await call(port, '/workspaces', { cert: 'forged-alice', token: tokens.alice }), /not accepted/);
  });

  it('refuses a verified certificate whose DN is no client (401), and one whose value holds a /', async () => {
    refused(await call(port, '/workspaces', { cert: 'mallory' }), /subject \/O=Grid\/OU=test\/CN=mallory is not a client of this site/);
    refused(await call(port, '/admin/drift', { cert: 'slashed' }), /"\/" in CN/);
  });

  it('still takes a token alone (hashed in the config or in a file), and refuses nothing at all', async () => {
    expect((await call(port, '/workspaces', { token: tokens.alice })).status).toBe(200);
    expect((await call(port, '/workspaces', { token: tokens.bob })).status).toBe(200);
    refused(await call(port, '/workspaces'), /a valid bearer token is required/);
    expect((await call(port, '/healthz')).body).toEqual({ ok: true });
  });
});

describe('with requireClientCert', () => {
  let port: number;
  beforeAll(async () => {
    port = await serve({ ...config, api: { ...config.api, tls: { ...config.api.tls!, requireClientCert: true } } });
  });

  it('refuses a token alone with 401, and takes the certificate', async () => {
    refused(await call(port, '/workspaces', { token: tokens.alice }), /a client certificate issued by the site's client CA is required/);
    refused(await call(port, '/metrics', { token: tokens.root }), /client certificate .* is required/);
    expect((await call(port, '/workspaces', { cert: 'alice' })).status).toBe(200);
    refused(await call(port, '/workspaces', { cert: 'forged-alice' }), /not accepted/);
  });

  it('leaves the open routes open and the repository to node tokens', async () => {
    expect((await call(port, '/healthz')).status).toBe(200);
    const repo = await call(port, '/repository/no-such-image', { token: nodeToken });
    expect({ status: repo.status, detail: repo.body.detail }).toEqual({ status: 404, detail: 'no image no-such-image in the repository' });
  });
});

describe('secrets', () => {
  it('never logs a token, and no answer echoes one', () => {
    const everything = logLines.join('\n');
    expect(logLines.length).toBeGreaterThan(15);
    for (const t of [...Object.values(tokens), nodeToken, 'not-a-token']) expect(everything.includes(t)).toBe(false);
    expect(everything).not.toMatch(/authorization|bearer/i);
  });
});
