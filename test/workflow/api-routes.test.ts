/**
 * Every route of the HTTP API (supertest on `createApp`) against the real dev server with a real head
 * worker in this process: each route's success and each class of error (400 naming the field, 401, 403,
 * 404 for another client's objects on every route, 409, 422), the request log (one line per request,
 * never a token), `/metrics`, and property-based fuzzing of request bodies: no 5xx ever, and nothing
 * created or changed by a 4xx. No node worker runs, so workspaces wait at propagation: no VM boots.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import fc from 'fast-check';
import pino from 'pino';
import request from 'supertest';
import type { Worker } from '@temporalio/worker';
import { createApp } from '../../src/api/app';
import type { TokenEntry } from '../../src/api/auth';
import { ApiMetrics } from '../../src/api/metrics';
import { API_ROUTES } from '../../src/api/openapi';
import { AllocatorClient } from '../../src/clients/allocator';
import { workspaceWorkflowId } from '../../src/config/names';
import type { VwsConfig } from '../../src/config/schema';
import { tokenDigest } from '../../src/config/secrets';
import { describeQuery } from '../../src/domain/messages';
import { log } from '../../src/log';
import { stageLocalFile } from '../../src/repository';
import { createHeadWorker } from '../../src/workers/head';
import { connect, endWorkflowTest, testConfig, workflowBundle, type TestConnections } from '../helpers/temporal';

jest.setTimeout(120_000);

const WHO = {
  alice: { identity: '/O=Grid/OU=test/CN=alice', admin: false },
  bob: { identity: '/O=Grid/OU=test/CN=bob', admin: false },
  carol: { identity: '/O=Grid/OU=test/CN=carol', admin: false },
  root: { identity: '/O=Grid/OU=test/CN=root', admin: true },
} as const;
type Who = keyof typeof WHO;
const tokens = Object.fromEntries(Object.keys(WHO).map((w) => [w, `tok-${w}-${randomBytes(16).toString('hex')}`])) as Record<Who, string>;
const nodeToken = `tok-node-${randomBytes(16).toString('hex')}`;
const ALL_TOKENS = [...Object.values(tokens), nodeToken];

let conn: TestConnections;
let config: VwsConfig;
let worker: Worker;
let running: Promise<void>;
let server: Server;
let metrics: ApiMetrics;
/** Every request line the app logged, as written. */
const logLines: string[] = [];
/** Everything the handlers logged through the process logger while this file ran. */
const processLogged: string[] = [];

beforeAll(async () => {
  conn = await connect();
  const dir = mkdtempSync('/tmp/vws-api-routes-');
  config = testConfig({
    stateDir: dir,
    repository: { dir: join(dir, 'repository'), url: 'http://127.0.0.1:9/repository', nodeTokenFile: join(dir, 'node.token') },
    clients: [
      { name: 'alice', identity: WHO.alice.identity, tokenFile: join(dir, 'alice.token'), stageOutTargets: ['file:///tmp/vws-api-exports/'] },
      { name: 'bob', identity: WHO.bob.identity, tokenFile: join(dir, 'bob.token') },
      { name: 'carol', identity: WHO.carol.identity, tokenFile: join(dir, 'carol.token'), quota: { maxWorkspaces: 0 } },
      { name: 'root', identity: WHO.root.identity, tokenFile: join(dir, 'root.token'), admin: true },
    ],
    networks: [{ name: 'public', subnet: '10.213.0.0/24', gateway: '10.213.0.1', ranges: [{ first: '10.213.0.100', last: '10.213.0.199' }] }],
    nodes: [{ name: 'vmm1', memoryMiB: 2048, cpus: 64, bridges: { public: 'br0' } }],
    policies: { maxNodesPerRequest: 3, ensembleDeadlineSeconds: 60 },
    reconciler: { enabled: false },
  });
  const raw = join(dir, 'sample.raw');
  writeFileSync(raw, randomBytes(64 * 1024));
  await stageLocalFile(config, 'sample', raw);
  worker = await createHeadWorker({ config, connection: conn.native, client: conn.client, workflowBundle: await workflowBundle() });
  running = worker.run();
  const clientTokens: TokenEntry[] = (Object.keys(WHO) as Who[]).map((w) => ({ digest: tokenDigest(tokens[w]), principal: { name: w, ...WHO[w] } }));
  const logger = pino({ level: 'info' }, new Writable({ write: (chunk, _enc, done) => (logLines.push(String(chunk)), done()) }));
  for (const level of ['info', 'warn', 'error', 'debug'] as const) {
    const original = log[level].bind(log) as (...a: unknown[]) => void;
    jest.spyOn(log, level).mockImplementation(((...args: unknown[]) => {
      processLogged.push(JSON.stringify(args, (_k, v: unknown) => (v instanceof Error ? { message: v.message, stack: v.stack } : v)));
      original(...args);
    }) as never);
  }
  metrics = new ApiMetrics({ config, client: conn.client, allocator: new AllocatorClient(conn.client, config), cacheMs: 60_000 });
  const app = createApp({ config, client: conn.client, clientTokens: () => clientTokens, nodeTokens: () => [{ digest: tokenDigest(nodeToken), principal: { name: 'node', identity: 'node', admin: false } }], logger, metrics });
  server = app.listen(0, '127.0.0.1');
});

afterAll(async () => {
  server?.close();
  await endWorkflowTest({ conn, config, worker, running, reason: 'api-routes test done' });
  jest.restoreAllMocks();
});

type Method = 'get' | 'post' | 'put' | 'delete';
/** A request as `who` (or with no token). */
function call(who: Who | null | string, method: Method, path: string, body?: unknown, headers: Record<string, string> = {}) {
  let r = request(server)[method](path);
  const token = who === null ? null : who in tokens ? tokens[who as Who] : who;
  if (token) r = r.set('authorization', `Bearer ${token}`);
  for (const [k, v] of Object.entries(headers)) r = r.set(k, v);
  return body === undefined ? r : r.send(body as object);
}

/** Expects a problem+json answer of `status`; returns its body. */
function problem(res: request.Response, status: number): Record<string, any> {
  expect({ status: res.status, type: res.headers['content-type'] }).toEqual({ status, type: expect.stringMatching(/^application\/problem\+json/) });
  expect(res.body).toMatchObject({ status, title: expect.any(String), detail: expect.any(String) });
  return res.body as Record<string, any>;
}

const fields = (body: Record<string, any>) => (body.errors as Array<{ field: string }>).map((e) => e.field);
const created: Record<'ws' | 'grp' | 'ens', string> = { ws: '', grp: '', ens: '' };
/** The documented path with alice's objects for its ids. */
const concrete = (path: string) =>
  path
    .replace(/^\/workspaces\/\{id\}/, `/workspaces/${created.ws}`)
    .replace(/^\/groups\/\{id\}/, `/groups/${created.grp}`)
    .replace(/^\/ensembles\/\{id\}/, `/ensembles/${created.ens}`)
    .replace('{name}', path.startsWith('/repository') ? 'sample' : 'vmm1');

const SMALL = { image: 'sample', memoryMiB: 64, durationSeconds: 600, targetState: 'Propagated' };

describe('creates', () => {
  it('create a workspace (202, Location, the exact values) and refuse bad input naming each field', async () => {
    const ok = await call('alice', 'post', '/workspaces', { ...SMALL, memoryMiB: { min: 64, max: 128 } });
    expect(ok.status).toBe(202);
    expect(ok.body).toMatchObject({ id: expect.stringMatching(/^ws-[0-9a-f]{12}$/), kind: 'workspace', memoryMiB: 128, node: 'vmm1' });
    expect(ok.headers.location).toBe(`/workspaces/${ok.body.id}`);
    created.ws = ok.body.id;

    expect(fields(problem(await call('alice', 'post', '/workspaces', { memoryMiB: 64 }), 400))).toEqual(['image']);
    expect(fields(problem(await call('alice', 'post', '/workspaces', { ...SMALL, colour: 'red' }), 400))).toEqual(['colour']);
    expect(fields(problem(await call('alice', 'post', '/workspaces', { ...SMALL, vcpus: { min: 3, max: 2 } }), 400))).toEqual(['vcpus.max']);
    expect(fields(problem(await call('alice', 'post', '/workspaces', { ...SMALL, image: 'no-such-image' }), 400))).toEqual(['image']);
    expect(fields(problem(await call('alice', 'post', '/workspaces', '{"image": ', { 'content-type': 'application/json' }), 400))).toEqual(['(body)']);
    const policy = problem(await call('alice', 'post', '/workspaces', { ...SMALL, count: 4 }), 400);
    expect(policy).toMatchObject({ type: 'urn:vws:problem:PolicyViolation', errors: [{ field: 'count' }] });
    expect(fields(problem(await call('alice', 'post', '/workspaces', SMALL, { 'idempotency-key': 'k'.repeat(201) }), 400))).toEqual(['Idempotency-Key']);
  });

  it('answer a repeated key with the first answer, and the key with another body with 422', async () => {
    const key = `key-${Date.now()}`;
    const first = await call('alice', 'post', '/workspaces', SMALL, { 'idempotency-key': key });
    expect(first.status).toBe(202);
    const again = await call('alice', 'post', '/workspaces', SMALL, { 'idempotency-key': key });
    expect({ status: again.status, body: again.body }).toEqual({ status: 202, body: first.body });
    const other = problem(await call('alice', 'post', '/workspaces', { ...SMALL, memoryMiB: 96 }, { 'idempotency-key': key }), 422);
    expect(other).toMatchObject({ type: 'urn:vws:problem:IdempotencyKeyReused', errors: [{ field: 'Idempotency-Key' }] });
    // Another client's same key is its own create, never alice's answer.
    const bobs = await call('bob', 'post', '/workspaces', SMALL, { 'idempotency-key': key });
    expect(bobs.status).toBe(202);
    expect(bobs.body.id).not.toBe(first.body.id);
  });

  it('refuse over capacity (409 NoCapacity) and over quota (403 QuotaExceeded), holding nothing', async () => {
    const before = (await call('root', 'get', '/admin/leases')).body.count as number;
    expect(problem(await call('alice', 'post', '/workspaces', { ...SMALL, memoryMiB: 2048 }), 409)).toMatchObject({ type: 'urn:vws:problem:NoCapacity' });
    expect(problem(await call('carol', 'post', '/workspaces', SMALL), 403)).toMatchObject({ type: 'urn:vws:problem:QuotaExceeded' });
    expect((await call('root', 'get', '/admin/leases')).body.count).toBe(before);
  });

  it('create a group (count > 1) and an ensemble with a member', async () => {
    const grp = await call('alice', 'post', '/workspaces', { ...SMALL, count: 2 });
    expect(grp.status).toBe(202);
    expect(grp.body).toMatchObject({ kind: 'group', count: 2, members: [{ id: expect.any(String) }, { id: expect.any(String) }] });
    expect(grp.headers.location).toBe(`/groups/${grp.body.id}`);
    created.grp = grp.body.id;

    expect(fields(problem(await call('alice', 'post', '/ensembles', { deadline: 5 }), 400))).toEqual(['deadline']);
    const ens = await call('alice', 'post', '/ensembles', {});
    expect(ens.status).toBe(202);
    expect(ens.body).toMatchObject({ kind: 'ensemble', state: 'Registering' });
    created.ens = ens.body.id;
    expect(fields(problem(await call('alice', 'post', `/ensembles/${created.ens}/members`, { ...SMALL, done: 'yes' }), 400))).toEqual(['done']);
    const member = await call('alice', 'post', `/ensembles/${created.ens}/members`, { image: 'sample', memoryMiB: 64, durationSeconds: 600 });
    expect(member.status).toBe(202);
    expect(member.body).toMatchObject({ ensemble: created.ens, memberId: expect.stringMatching(/^ws-/), workspaceIds: [expect.any(String)] });
  });
});

describe('reads and operations', () => {
  it('show a workspace to its owner and an admin only', async () => {
    const mine = await call('alice', 'get', `/workspaces/${created.ws}`);
    expect(mine.status).toBe(200);
    expect(mine.body).toMatchObject({ id: created.ws, owner: WHO.alice.identity, memoryMiB: 128, links: { self: `/workspaces/${created.ws}`, temporalUi: expect.stringContaining(encodeURIComponent(workspaceWorkflowId(config, created.ws))) } });
    expect((await call('root', 'get', `/workspaces/${created.ws}`)).status).toBe(200);
    expect(problem(await call('bob', 'get', `/workspaces/${created.ws}`), 404).detail).toBe(`no workspace ${created.ws}`);
    problem(await call('alice', 'get', '/workspaces/ws-000000000000'), 404);
    problem(await call('alice', 'get', '/workspaces/not-an-id'), 404);
  });

  it('list the caller own workspaces, with filters checked', async () => {
    const mine = await call('alice', 'get', '/workspaces');
    expect(mine.status).toBe(200);
    // Visibility lags: the workspace appears within a few seconds.
    for (let i = 0; i < 40 && !(await call('alice', 'get', '/workspaces')).body.workspaces.some((w: { id: string }) => w.id === created.ws); i++) await new Promise((r) => setTimeout(r, 250));
    const listed = (await call('alice', 'get', '/workspaces')).body.workspaces as Array<{ id: string; owner: string }>;
    expect(listed.map((w) => w.id)).toContain(created.ws);
    expect(new Set(listed.map((w) => w.owner))).toEqual(new Set([WHO.alice.identity]));
    expect((await call('bob', 'get', '/workspaces')).body.workspaces.map((w: { id: string }) => w.id)).not.toContain(created.ws);
    expect((await call('root', 'get', '/workspaces')).body.workspaces.map((w: { id: string }) => w.id)).toContain(created.ws);
    expect(fields(problem(await call('alice', 'get', '/workspaces?state=Flying'), 400))).toEqual(['state']);
    expect(fields(problem(await call('alice', 'get', '/workspaces?colour=red'), 400))).toEqual(['colour']);
    expect((await call('alice', 'get', `/workspaces?group=${created.grp}`)).status).toBe(200);
  });

  it('refuse an operation the state does not allow with 409 naming the state, and bad bodies with 400', async () => {
    const refused = problem(await call('alice', 'post', `/workspaces/${created.ws}/pause`, {}), 409);
    expect(refused.state).toMatch(/^(Unpropagated|Propagated)$/);
    expect(refused.detail).toContain(refused.state);
    expect(fields(problem(await call('alice', 'post', `/workspaces/${created.ws}/start`, { durationSeconds: -5 }), 400))).toEqual(['durationSeconds']);
    expect(fields(problem(await call('alice', 'post', `/workspaces/${created.ws}/pause`, { now: true }), 400))).toEqual(['now']);
    expect(fields(problem(await call('alice', 'post', `/workspaces/${created.ws}/shutdown-save`, { target: 'file:///etc/' }), 400))).toEqual(['target']);
    expect(problem(await call('alice', 'post', `/workspaces/${created.ws}/explode`, {}), 404).detail).toContain('no operation explode');
  });

  it('operate on and show groups and ensembles', async () => {
    const g = await call('alice', 'get', `/groups/${created.grp}`);
    expect(g.status).toBe(200);
    expect(g.body).toMatchObject({ id: created.grp, count: 2, owner: WHO.alice.identity });
    // Members wait at propagation (no node worker): the group is not Ready, and says so.
    expect(problem(await call('alice', 'post', `/groups/${created.grp}/pause`, {}), 409).detail).toMatch(/^cannot pause a group in state Deploying/);
    expect(fields(problem(await call('alice', 'post', `/groups/${created.grp}/start`, { durationSeconds: 'long' }), 400))).toEqual(['durationSeconds']);
    problem(await call('alice', 'post', `/groups/${created.grp}/explode`, {}), 404);
    const e = await call('alice', 'get', `/ensembles/${created.ens}`);
    expect(e.status).toBe(200);
    expect(e.body).toMatchObject({ id: created.ens, state: 'Registering', members: [{ count: 1 }] });
  });

  it('report the caller status', async () => {
    const s = await call('alice', 'get', '/status');
    expect(s.status).toBe(200);
    expect(s.body).toMatchObject({ owner: WHO.alice.identity, liveGrants: expect.any(Number) });
    expect(s.body.liveGrants).toBeGreaterThanOrEqual(4);
    expect((await call('bob', 'get', '/status')).body.workspaces.map((w: { id: string }) => w.id)).not.toContain(created.ws);
    expect(fields(problem(await call('alice', 'get', '/status?all=1'), 400))).toEqual(['all']);
  });
});

describe('authentication and ownership', () => {
  it('refuses every route but the open ones without a valid token (401)', async () => {
    // Pilot notifications take no token (their signature is in the body): test/workflow/pilot-notify.test.ts.
    for (const r of API_ROUTES.filter((x) => x.auth !== 'none' && x.auth !== 'pilot')) {
      for (const who of [null, 'not-a-token']) {
        const res = await call(who, r.method, concrete(r.path), r.body?.example);
        const body = problem(res, 401);
        expect({ route: r.path, challenge: res.headers['www-authenticate'] }).toEqual({ route: r.path, challenge: 'Bearer realm="vws"' });
        expect(body.title).toBe('Unauthorized');
      }
    }
    // A client token is no node token, and a node token no client token.
    problem(await call('alice', 'get', '/repository/sample'), 401);
    problem(await call(nodeToken, 'get', '/workspaces'), 401);
    expect((await call(nodeToken, 'get', '/repository/sample')).status).toBe(200);
    problem(await call(nodeToken, 'get', '/repository/nothing-here'), 404);
  });

  it("answers 404 to another client on every route that names one of alice's objects", async () => {
    // Admin routes with an id (a kill-all's) name no client's object.
    const named = API_ROUTES.filter((r) => r.path.includes('{id}') && !r.path.startsWith('/admin/'));
    expect(named.length).toBeGreaterThanOrEqual(20);
    for (const r of named) {
      const body = problem(await call('bob', r.method, concrete(r.path), r.body?.example), 404);
      expect({ route: `${r.method} ${r.path}`, detail: body.detail }).toEqual({ route: `${r.method} ${r.path}`, detail: expect.stringMatching(/^no (workspace|group|ensemble) /) });
    }
    // Nothing bob tried changed alice's objects.
    expect((await call('alice', 'get', `/ensembles/${created.ens}`)).body.state).toBe('Registering');
    expect((await call('alice', 'get', `/workspaces/${created.ws}`)).body.task).not.toBe('destroying');
  });

  it("answers 404 to another client on alice's group members too, lists none of hers by filter, and shows all to an admin", async () => {
    const members = ((await call('alice', 'get', `/groups/${created.grp}`)).body.members as Array<{ id: string }>).map((m) => m.id);
    expect(members).toHaveLength(2);
    // Every workspace route (GET, each operation, DELETE) on each member; the event stream is tested with its route.
    const wsRoutes = API_ROUTES.filter((r) => r.path.startsWith('/workspaces/{id}') && !r.path.endsWith('/events'));
    expect(wsRoutes.length).toBeGreaterThanOrEqual(8);
    for (const id of members) {
      for (const r of wsRoutes) {
        const body = problem(await call('bob', r.method, r.path.replace('{id}', id), r.body?.example), 404);
        expect({ route: `${r.method} ${r.path}`, detail: body.detail }).toEqual({ route: `${r.method} ${r.path}`, detail: `no workspace ${id}` });
      }
    }
    // A filter naming alice's group or ensemble finds nothing for bob, while it finds her members for her.
    for (let i = 0; i < 40 && (await call('alice', 'get', `/workspaces?group=${created.grp}`)).body.workspaces.length < 2; i++) await new Promise((r) => setTimeout(r, 250));
    expect(((await call('alice', 'get', `/workspaces?group=${created.grp}`)).body.workspaces as Array<{ id: string }>).map((w) => w.id).sort()).toEqual([...members].sort());
    for (const q of [`group=${created.grp}`, `ensemble=${created.ens}`]) {
      const res = await call('bob', 'get', `/workspaces?${q}`);
      expect({ q, status: res.status, workspaces: res.body.workspaces }).toEqual({ q, status: 200, workspaces: [] });
    }
    // An admin reads every one of alice's objects.
    for (const path of [`/workspaces/${created.ws}`, `/groups/${created.grp}`, `/ensembles/${created.ens}`, ...members.map((id) => `/workspaces/${id}`)]) {
      expect({ path, status: (await call('root', 'get', path)).status }).toEqual({ path, status: 200 });
    }
    // Nothing bob tried touched the members.
    for (const id of members) expect((await call('alice', 'get', `/workspaces/${id}`)).body.task).not.toBe('destroying');
  });

  it('keeps admin routes and metrics for admins (403)', async () => {
    for (const r of API_ROUTES.filter((x) => x.auth === 'admin' || x.auth === 'metrics')) {
      expect(problem(await call('alice', r.method, concrete(r.path), r.body?.example), 403)).toMatchObject({ type: 'urn:vws:problem:Forbidden' });
    }
  });
});

describe('admin', () => {
  it('shows nodes and leases, drains and undrains (a drained site refuses creates with 409)', async () => {
    const nodes = await call('root', 'get', '/admin/nodes');
    expect(nodes.status).toBe(200);
    expect(nodes.body.nodes).toEqual([expect.objectContaining({ name: 'vmm1', memoryMiB: 2048, drained: false })]);
    const leases = await call('root', 'get', '/admin/leases');
    expect(leases.body.count).toBe(leases.body.leases.length);
    expect(nodes.body.nodes[0].grants).toBe(leases.body.count);
    // Pilot leases come beside the grants (no pilot node here: none); the reconciler's test shows live ones.
    expect(leases.body).toMatchObject({ pilotLeases: [], pilotCount: 0 });
    problem(await call('root', 'post', '/admin/nodes/vmm9/drain', {}), 404);
    expect(fields(problem(await call('root', 'post', '/admin/nodes/vmm1/drain', { now: 1 }), 400))).toEqual(['now']);
    expect((await call('root', 'post', '/admin/nodes/vmm1/drain', {})).body).toMatchObject({ node: 'vmm1', drained: true });
    expect(problem(await call('alice', 'post', '/workspaces', SMALL), 409)).toMatchObject({ type: 'urn:vws:problem:NoCapacity' });
    expect((await call('root', 'post', '/admin/nodes/vmm1/undrain', {})).body).toMatchObject({ node: 'vmm1', drained: false });
    const drift = await call('root', 'get', '/admin/drift');
    expect(drift.status).toBe(200);
    expect(drift.body).toMatchObject({ runs: 0, last: null });
  });

  it('answers the open routes without a token', async () => {
    expect((await call(null, 'get', '/healthz')).body).toEqual({ ok: true });
    const doc = await call(null, 'get', '/openapi.json');
    expect(doc.status).toBe(200);
    expect(doc.body).toMatchObject({ openapi: '3.1.0', paths: { '/workspaces': { post: expect.any(Object) } } });
    // An unknown route is 404 to a client, and tells nothing to a caller without a token.
    problem(await call('alice', 'get', '/no/such/route'), 404);
    problem(await call(null, 'get', '/no/such/route'), 401);
  });
});

describe('metrics', () => {
  const value = (text: string, series: string) => {
    const line = text.split('\n').find((l) => l.startsWith(`${series} `));
    return line === undefined ? undefined : Number(line.slice(series.length + 1));
  };

  it('count requests by route and status, workspaces by state and node use, reading Temporal at most once per cache period', async () => {
    const first = await call('root', 'get', '/metrics');
    expect(first.status).toBe(200);
    expect(first.headers['content-type']).toMatch(/^text\/plain/);
    const text = first.text;
    expect(value(text, 'vws_http_requests_total{method="POST",route="/workspaces",status="202"}')).toBeGreaterThanOrEqual(4);
    expect(value(text, 'vws_http_requests_total{method="GET",route="/workspaces/{id}",status="404"}')).toBeGreaterThanOrEqual(3);
    expect(value(text, 'vws_http_requests_total{method="POST",route="/workspaces/{id}/pause",status="409"}')).toBeGreaterThanOrEqual(1);
    expect(text).toContain('vws_http_request_duration_seconds_bucket{le="0.05",method="GET",route="/workspaces/{id}"}');
    const leases = (await call('root', 'get', '/admin/leases')).body.leases as Array<{ memoryMiB: number }>;
    expect(value(text, 'vws_node_memory_used_mib{node="vmm1"}')).toBe(leases.reduce((s, l) => s + l.memoryMiB, 0));
    expect(value(text, 'vws_node_memory_capacity_mib{node="vmm1"}')).toBe(2048);
    expect(value(text, 'vws_node_drained{node="vmm1"}')).toBe(0);
    expect(value(text, 'vws_metrics_source_up{source="visibility"}')).toBe(1);
    expect(value(text, 'vws_metrics_source_up{source="allocator"}')).toBe(1);
    const open = text.split('\n').filter((l) => l.startsWith('vws_workspaces{')).reduce((s, l) => s + Number(l.split(' ')[1]), 0);
    expect(open).toBeGreaterThanOrEqual(1);
    expect(text).toContain('process_resident_memory_bytes');
    // A second scrape within the cache period reads nothing more from Temporal.
    const reads = metrics.temporalReads;
    expect((await call('root', 'get', '/metrics')).status).toBe(200);
    expect(metrics.temporalReads).toBe(reads);
  });

  it('are public when the site says so', async () => {
    const open = createApp({ config: { ...config, api: { ...config.api, metricsPublic: true } }, client: conn.client, clientTokens: () => [], nodeTokens: () => [], logger: pino({ level: 'silent' }) });
    const res = await request(open).get('/metrics');
    expect(res.status).toBe(200);
    expect(res.text).toContain('vws_http_requests_total');
  });
});

describe('fuzzing request bodies', () => {
  /** Workflows under this file's prefix (visibility; waits for it to settle at `expected` when given). */
  async function workflowCount(expected?: number): Promise<number> {
    const q = `WorkflowId STARTS_WITH "${config.temporal.prefix}-"`;
    for (let i = 0; ; i++) {
      const n = (await conn.client.workflow.count(q)).count;
      if (expected === undefined || n === expected || i >= 60) return n;
      await new Promise((r) => setTimeout(r, 250));
    }
  }

    /** An amount as the schema takes it: exact, or a range with min ≤ max. */
  const amount = (lo: number, hi: number) =>
    fc.oneof(fc.integer({ min: lo, max: hi }), fc.tuple(fc.integer({ min: lo, max: hi }), fc.integer({ min: lo, max: hi })).map(([a, b]) => ({ min: Math.min(a, b), max: Math.max(a, b) })));
  /** Valid creates within the site's policy: created while there is room, refused by the allocator (409) after. */
  const validCreate = fc.record(
    {
      image: fc.constant('sample'),
      memoryMiB: amount(64, 1024),
      vcpus: amount(1, 64),
      durationSeconds: amount(1, 7 * 24 * 3600),
      count: fc.constant(1),
      targetState: fc.constantFrom('Propagated', 'Running'),
      shutdownMechanism: fc.constantFrom('Normal', 'Trash'),
      trashAtShutdown: fc.boolean(),
      nics: fc.constant([{ network: 'public' }]),
      unpropagationTarget: fc.constantFrom('my-image', 'file:///tmp/vws-api-exports/x.img'),
    },
    { requiredKeys: ['image'] },
  );
  const FIELDS = ['image', 'imageSha256', 'partitions', 'nics', 'memoryMiB', 'vcpus', 'durationSeconds', 'count', 'nodeProperties', 'targetState', 'shutdownMechanism', 'trashAtShutdown', 'unpropagationTarget', 'extra'];
  const nearMiss = fc.oneof(
    fc.anything(),
    fc.constantFrom('nope', '', '../etc/passwd', 'file:///etc/passwd', 'http://127.0.0.1:9/x.img', -1, 0, 63, 1 << 30, 1.5, { min: 5, max: 1 }, [{ blankMiB: 10, image: 'sample' }], [{ network: 'private' }], ['gpu'], 'Serialize', null),
  );
  /** Bodies that look like creates: a valid one now and then, mostly one with a field replaced by a near miss or anything. */
  const createBody = fc.oneof(
    { arbitrary: fc.anything(), weight: 2 },
    { arbitrary: fc.string(), weight: 1 },
    { arbitrary: validCreate, weight: 1 },
    { arbitrary: fc.tuple(validCreate, fc.constantFrom(...FIELDS), nearMiss).map(([b, k, v]) => ({ ...b, [k]: v })), weight: 6 },
  );

  it('never answers 5xx to a create, and creates nothing on a 4xx', async () => {
    // Groups would add child workflows later than their answer: this app refuses count > 1 (the policy is the factory's).
    const single = createApp({ config: { ...config, policies: { ...config.policies, maxNodesPerRequest: 1 } }, client: conn.client, clientTokens: () => [{ digest: tokenDigest(tokens.alice), principal: { name: 'alice', ...WHO.alice } }], nodeTokens: () => [], logger: pino({ level: 'silent' }) });
    const fuzzServer = single.listen(0, '127.0.0.1');
    try {
      const before = await workflowCount();
      const grantsBefore = (await call('root', 'get', '/admin/leases')).body.count as number;
      let accepted = 0;
      const statuses = new Map<number, number>();
      await fc.assert(
        fc.asyncProperty(createBody, fc.option(fc.string({ maxLength: 20 }), { nil: undefined }), async (body, key) => {
          let r = request(fuzzServer).post('/workspaces').set('authorization', `Bearer ${tokens.alice}`).set('content-type', 'application/json');
          if (key !== undefined && /^[\x20-\x7e]+$/.test(key)) r = r.set('idempotency-key', `fuzz-${key}`);
          const res = await r.send(typeof body === 'string' ? body : JSON.stringify(body === undefined ? null : body));
          statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
          expect(res.status).toBeLessThan(500);
          if (res.status === 202) accepted++;
          if (res.status >= 400) expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
        }),
        { numRuns: 2000 },
      );
      // A repeated key answers 202 without creating: count the distinct ids instead of the 202s.
      const grantsAfter = (await call('root', 'get', '/admin/leases')).body.count as number;
      const after = await workflowCount(before + (grantsAfter - grantsBefore));
      expect(after - before).toBe(grantsAfter - grantsBefore);
      expect(grantsAfter - grantsBefore).toBeLessThanOrEqual(accepted);
      expect([...statuses.keys()].every((s) => s < 500)).toBe(true);
      expect(statuses.get(400)).toBeGreaterThan(500);
      // Some bodies were valid and went as far as the allocator: created (202) or refused there (409).
      expect(accepted).toBeGreaterThan(0);
      expect(statuses.get(409) ?? 0).toBeGreaterThan(0);
    } finally {
      fuzzServer.close();
    }
  });

  it('never answers 5xx to an operation, and changes nothing on a 4xx', async () => {
    const id = created.ws;
    const handle = conn.client.workflow.getHandle(workspaceWorkflowId(config, id));
    const before = await handle.query(describeQuery);
    const historyBefore = (await handle.describe()).historyLength;
    const workflowsBefore = await workflowCount();
    const op = fc.oneof(fc.constantFrom('start', 'pause', 'unpause', 'reboot', 'shutdown', 'shutdown-save'), fc.string({ maxLength: 12 }));
    const target = fc.oneof(fc.constant(id), fc.constant('ws-000000000000'), fc.string({ maxLength: 16 }));
    const body = fc.oneof(
      fc.anything(),
      fc.record({ durationSeconds: fc.oneof(fc.integer({ min: -5, max: 1 << 26 }), fc.string(), fc.double()), target: fc.oneof(fc.string(), fc.constantFrom('img', 'file:///tmp/vws-api-exports/x', 'http://x/y')), x: fc.anything() }, { requiredKeys: [] }),
    );
    await fc.assert(
      fc.asyncProperty(op, target, body, fc.constantFrom('alice', 'bob', 'root'), async (o, t, b, who) => {
        const res = await call(who, 'post', `/workspaces/${encodeURIComponent(t)}/${encodeURIComponent(o)}`).set('content-type', 'application/json').send(JSON.stringify(b === undefined ? null : b));
        expect(res.status).toBeLessThan(500);
        expect(res.status).toBeGreaterThanOrEqual(400);
      }),
      { numRuns: 1500 },
    );
    const after = await handle.query(describeQuery);
    expect({ state: after.state, task: after.task, notices: after.notices }).toEqual({ state: before.state, task: before.task, notices: before.notices });
    expect((await handle.describe()).historyLength).toBe(historyBefore);
    expect(await workflowCount()).toBe(workflowsBefore);
  });
});

describe('the request log', () => {
  it('has one line per request with method, route, status, duration and the ids, and never a token', async () => {
    const lines = logLines.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.length).toBeGreaterThan(100);
    for (const l of lines) expect(l).toMatchObject({ method: expect.any(String), route: expect.any(String), status: expect.any(Number), durationMs: expect.any(Number) });
    expect(lines).toContainEqual(expect.objectContaining({ method: 'GET', route: '/workspaces/{id}', status: 200, workspace: created.ws, client: 'alice' }));
    expect(lines).toContainEqual(expect.objectContaining({ method: 'POST', route: '/workspaces', status: 202, group: created.grp }));
    expect(lines).toContainEqual(expect.objectContaining({ method: 'GET', route: '/ensembles/{id}', ensemble: created.ens }));
    expect(lines).toContainEqual(expect.objectContaining({ route: '/workspaces', status: 401 }));
    const everything = [...logLines, ...processLogged].join('\n');
    for (const t of ALL_TOKENS) expect(everything.includes(t)).toBe(false);
    expect(everything).not.toMatch(/authorization|bearer tok-/i);
  });

  it('cleans up: destroys what alice made (202), and a second destroy is refused (409)', async () => {
    expect((await call('alice', 'delete', `/workspaces/${created.ws}`)).status).toBe(202);
    expect(problem(await call('alice', 'delete', `/workspaces/${created.ws}`), 409).state).toEqual(expect.any(String));
    const destroyed = await call('alice', 'delete', `/groups/${created.grp}`);
    expect(destroyed.status).toBe(202);
    expect(destroyed.body).toMatchObject({ id: created.grp, op: 'destroy' });
    expect((await call('alice', 'post', `/ensembles/${created.ens}/done`, {})).status).toBe(202);
    expect((await call('alice', 'delete', `/ensembles/${created.ens}`)).status).toBe(202);
  });
});
