/**
 * The `vws` CLI against a real API serving mutual TLS: certificates made at test time by `openssl`, the
 * real express app behind the real HTTPS server (`createApiServer`), the real head worker (workflows and
 * allocator) on the shared dev server, and the CLI as a user runs it: a child process (argv arrays) with
 * only the environment given. No node worker runs, so a workspace stays in propagation; that is enough
 * for ownership and the event stream.
 *
 * The CLI takes its client certificate, key and CA from options (`--cert/--key/--ca`), environment
 * variables (`VWS_CERT/VWS_KEY/VWS_CA`) or its settings file (`cert/key/ca`), and sends them with every
 * request, the event stream included; its certificate's subject is its identity, so it lists only its
 * own workspaces. Refusals (no certificate where one is required, a certificate from another CA, an API
 * whose CA the CLI does not trust) exit 9 with a sentence, never a stack trace; bad TLS settings exit 2.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { Worker } from '@temporalio/worker';
import pino from 'pino';
import { stringify } from 'yaml';
import { createApp } from '../../src/api/app';
import { createApiServer } from '../../src/api/listen';
import { loadTokens } from '../../src/api/tokens';
import type { VwsConfig } from '../../src/config/schema';
import { stageLocalFile } from '../../src/repository';
import { createHeadWorker } from '../../src/workers/head';
import { CertificateMaker } from '../helpers/certificates';
import { connect, endWorkflowTest, testConfig, workflowBundle, type TestConnections } from '../helpers/temporal';

jest.setTimeout(120_000);

const ROOT = join(__dirname, '../..');
/** The built CLI (`./run.sh test` builds dist/ first): loading the TypeScript compiler in every CLI process cost ~1 s each. */
const CLI = join(ROOT, 'dist/cli/vws.js');

const dir = mkdtempSync('/tmp/vws-cli-mtls-');
/** A home without a CLI settings file, where the test writes its own. */
const home = mkdtempSync('/tmp/vws-cli-mtls-home-');
const certs = new CertificateMaker(dir);
const crt = (name: string) => certs.file(name, 'crt');
const key = (name: string) => certs.file(name, 'key');

const IDENTITY = { alice: '/O=Grid/OU=test/CN=alice', bob: '/O=Grid/OU=test/CN=bob' };
const tokens = { alice: `tok-alice-${randomBytes(16).toString('hex')}`, bob: `tok-bob-${randomBytes(16).toString('hex')}` };

let conn: TestConnections;
let config: VwsConfig;
let worker: Worker;
let running: Promise<void>;
const servers: Server[] = [];
const logLines: string[] = [];
/** The API with optional client certificates, and one that requires them. */
let api: string;
let strictApi: string;

/** An HTTPS API over `c`; its base URL. */
async function serve(c: VwsConfig): Promise<string> {
  const t = loadTokens(c);
  const logger = pino({ level: 'info' }, new Writable({ write: (chunk, _enc, done) => (logLines.push(String(chunk)), done()) }));
  const server = createApiServer(c, createApp({ config: c, client: conn.client, clientTokens: () => t.clients, nodeTokens: () => t.nodes, logger })) as Server;
  servers.push(server);
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  return `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI with `args` and only the environment given (plus PATH and the clean HOME). */
function vws(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: dir, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Alice's TLS options: her certificate and the site CA. */
const asAlice = () => ['--api', api, '--ca', crt('ca'), '--cert', crt('alice'), '--key', key('alice')];

/** A refusal as the CLI must report it: the exit code, a sentence matching `message`, no stack trace. */
function refusedWith(r: Run, code: number, message: RegExp): void {
  expect({ code: r.code, stdout: r.stdout }).toEqual({ code, stdout: '' });
  expect(r.stderr).toMatch(message);
  expect(r.stderr).not.toMatch(/^\s+at /m);
}

/** Runs `list --json` until `ok` holds of its ids (the listing reads visibility, which lags a moment). */
async function listUntil(args: string[], env: Record<string, string>, ok: (ids: string[]) => boolean): Promise<string[]> {
  let ids: string[] = [];
  for (let i = 0; i < 30; i++) {
    const r = await vws([...args, 'list', '--json'], env);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    ids = (JSON.parse(r.stdout) as { workspaces: Array<{ id: string }> }).workspaces.map((w) => w.id).sort();
    if (ok(ids)) return ids;
    await new Promise((r) => setTimeout(r, 500));
  }
  return ids;
}

beforeAll(async () => {
  certs.ca('ca', '/O=Grid/OU=test/CN=vws test CA');
  certs.ca('other-ca', '/O=Elsewhere/CN=another CA');
  certs.issue('server', '/O=Grid/OU=test/CN=127.0.0.1', 'ca', 'server');
  certs.issue('alice', IDENTITY.alice, 'ca', 'client');
  certs.issue('bob', IDENTITY.bob, 'ca', 'client');
  certs.issue('forged-alice', IDENTITY.alice, 'other-ca', 'client');
  writeFileSync(join(dir, 'alice.token'), `${tokens.alice}\n`);
  writeFileSync(join(dir, 'bob.token'), `${tokens.bob}\n`);
  conn = await connect();
  config = testConfig({
    stateDir: dir,
    repository: { dir: join(dir, 'repository'), nodeTokenFile: join(dir, 'node.token') },
    api: { tls: { certFile: crt('server'), keyFile: key('server'), clientCaFile: crt('ca') } },
    clients: [
      { name: 'alice', identity: IDENTITY.alice, tokenFile: join(dir, 'alice.token') },
      { name: 'bob', identity: IDENTITY.bob, tokenFile: join(dir, 'bob.token') },
    ],
    reconciler: { enabled: false },
  });
  writeFileSync(join(dir, 'node.token'), `tok-node-${randomBytes(16).toString('hex')}\n`);
  const raw = join(dir, 'tiny.raw');
  writeFileSync(raw, randomBytes(1024 * 1024));
  await stageLocalFile(config, 'tiny', raw);
  worker = await createHeadWorker({ config, connection: conn.native, client: conn.client, workflowBundle: await workflowBundle() });
  running = worker.run();
  api = await serve(config);
  strictApi = await serve({ ...config, api: { ...config.api, tls: { ...config.api.tls!, requireClientCert: true } } });
}, 120_000);

afterAll(async () => {
  for (const s of servers) s.close();
  if (worker) await endWorkflowTest({ conn, config, worker, running, reason: 'cli-mtls test done' });
  else await conn?.close();
  // The private keys made here go with the test.
  rmSync(dir, { recursive: true, force: true });
  rmSync(home, { recursive: true, force: true });
});

describe('the CLI with a client certificate', () => {
  /** What each client deployed. */
  const deployed: { alice: string[]; bob: string[] } = { alice: [], bob: [] };

  it('deploys with the certificate alone (options), and another client deploys with its token (environment)', async () => {
    const a = await vws([...asAlice(), '--json', 'deploy', '--image', 'tiny', '--memory', '64', '--target-state', 'Propagated']);
    expect({ code: a.code, stderr: a.stderr }).toEqual({ code: 0, stderr: '' });
    deployed.alice.push(String((JSON.parse(a.stdout) as { id: string }).id));
    // Bob: the site CA from VWS_CA, his token from VWS_TOKEN, no certificate.
    const b = await vws(['--json', 'deploy', '--image', 'tiny', '--memory', '64', '--target-state', 'Propagated'], { VWS_API: api, VWS_CA: crt('ca'), VWS_TOKEN: tokens.bob });
    expect({ code: b.code, stderr: b.stderr }).toEqual({ code: 0, stderr: '' });
    deployed.bob.push(String((JSON.parse(b.stdout) as { id: string }).id));
    const created = logLines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.route === '/workspaces' && l.method === 'POST' && l.status === 202);
    expect(created.map((l) => l.client).sort()).toEqual(['alice', 'bob']);
  });

  it('lists only its own workspaces, with the settings from a file (relative paths) or from the environment', async () => {
    expect(deployed.alice).toHaveLength(1);
    const settings = join(home, 'alice.yaml');
    // Relative cert and key are read from the settings file's directory.
    writeFileSync(settings, stringify({ api, ca: crt('ca'), cert: 'alice.crt', key: 'alice.key' }));
    copyFileSync(crt('alice'), join(home, 'alice.crt'));
    copyFileSync(key('alice'), join(home, 'alice.key'));
    const want = (ids: string[]) => ids.length === deployed.alice.length;
    expect(await listUntil([], { VWS_CLI_CONFIG: settings }, want)).toEqual(deployed.alice);
    expect(await listUntil([], { VWS_API: api, VWS_CA: crt('ca'), VWS_CERT: crt('alice'), VWS_KEY: key('alice') }, want)).toEqual(deployed.alice);
    // Bob's certificate (no token) sees only bob's.
    expect(await listUntil(['--api', api, '--ca', crt('ca'), '--cert', crt('bob'), '--key', key('bob')], {}, (ids) => ids.length === 1)).toEqual(deployed.bob);
    // Alice cannot see bob's workspace by its id either.
    refusedWith(await vws([...asAlice(), 'show', deployed.bob[0]]), 4, new RegExp(`404 Not Found\\n  no workspace ${deployed.bob[0]}`));
  });

  it('follows the event stream with the certificate (--wait)', async () => {
    // No node worker runs: the destroy waits on the node for good, and --wait gives up (exit 7), having
    // followed the stream, not polled.
    const id = deployed.alice[0];
    const r = await vws([...asAlice(), 'destroy', id, '--wait', '--timeout', '8']);
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 7, stdout: '' });
    expect(r.stderr).toMatch(/^ {2}\+ +\d+\.\ds {2}Unpropagated \(destroying\)\nvws: gave up waiting after 8 s; state Unpropagated \(destroying\)\n$/);
    expect(r.stderr).not.toMatch(/live events unavailable/);
    const stream = logLines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.route === '/workspaces/{id}/events');
    expect(stream.map((l) => ({ client: l.client, status: l.status, workspace: l.workspace }))).toEqual([{ client: 'alice', status: 200, workspace: id }]);
  });
});

describe('refusals', () => {
  it('exits 9 when the API requires a certificate and the CLI has only a token', async () => {
    const r = await vws(['--api', strictApi, '--ca', crt('ca'), 'list'], { VWS_TOKEN: tokens.alice });
    refusedWith(r, 9, /^vws: 401 Unauthorized\n {2}a client certificate issued by the site's client CA is required\n$/);
    // The same CLI with the certificate is let in.
    expect((await vws(['--api', strictApi, '--ca', crt('ca'), '--cert', crt('alice'), '--key', key('alice'), 'list'])).code).toBe(0);
  });

  it('exits 9 on a certificate from another CA', async () => {
    const r = await vws(['--api', api, '--ca', crt('ca'), '--cert', crt('forged-alice'), '--key', key('forged-alice'), 'list']);
    refusedWith(r, 9, /401 Unauthorized\n {2}the client certificate was not accepted .*: it must be issued by the site's client CA/);
  });

  it('exits 9 with a sentence when it does not trust the API certificate (no --ca, or the wrong CA)', async () => {
    refusedWith(await vws(['--api', api, '--cert', crt('alice'), '--key', key('alice'), 'list']), 9, /^vws: the API at https:\/\/127\.0\.0\.1:\d+ presented a certificate this CLI does not trust \(\w+: .*\); give the site CA with --ca, VWS_CA or ca in the configuration file\n$/);
    refusedWith(await vws(['--api', api, '--ca', crt('other-ca'), '--cert', crt('alice'), '--key', key('alice'), 'list']), 9, /does not trust/);
  });

  it('exits 2 on TLS settings it cannot use, naming the setting', async () => {
    refusedWith(await vws(['--api', api, '--ca', crt('ca'), '--cert', crt('alice'), 'list']), 2, /--cert is set but the key \(--key, VWS_KEY or key in the configuration file\) is not/);
    refusedWith(await vws(['--api', api, '--ca', crt('ca'), 'list'], { VWS_CERT: crt('alice'), VWS_KEY: key('bob') }), 2, /cannot use VWS_CERT .*alice\.crt, VWS_KEY .*bob\.key, --ca .*: .*key values mismatch/);
    refusedWith(await vws(['--api', api, '--ca', join(dir, 'absent.crt'), 'list'], { VWS_TOKEN: tokens.alice }), 2, /--ca: cannot read .*absent\.crt \(ENOENT\)/);
    refusedWith(await vws(['--api', 'http://127.0.0.1:9', '--cert', crt('alice'), '--key', key('alice'), 'list']), 2, /--cert, --key given, but the API URL http:\/\/127\.0\.0\.1:9 is not https/);
  });
});
