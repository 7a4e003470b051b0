/**
 * The event streams (`GET /workspaces/:id/events`, groups, ensembles) over real HTTP against the dev
 * server with a real head worker in this process, as the API routes test runs: the same token and
 * ownership rules as `GET` (401, 404 for another client's object or an unknown id, problem+json before
 * any stream), events as a real workflow changes, the `end` event when its workflow closes, keep-alive
 * comments, and no polling left once the client has gone. No node worker runs: workspaces wait at
 * propagation, so the changes here are the destroy's (`destroying`) and the workflow's end; the CLI's
 * end-to-end test follows a real VM to Running and Cancelled.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import pino from 'pino';
import type { Worker } from '@temporalio/worker';
import { createApp } from '../../src/api/app';
import type { TokenEntry } from '../../src/api/auth';
import { closeEventStreams, openEventStreams } from '../../src/api/events';
import { serverEvents, type ServerEvent } from '../../src/cli/sse';
import { workspaceWorkflowId } from '../../src/config/names';
import type { VwsConfig } from '../../src/config/schema';
import { tokenDigest } from '../../src/config/secrets';
import { stageLocalFile } from '../../src/repository';
import { createHeadWorker } from '../../src/workers/head';
import { connect, endWorkflowTest, testConfig, workflowBundle, type TestConnections } from '../helpers/temporal';

jest.setTimeout(120_000);

const WHO = {
  alice: { identity: '/O=Grid/OU=test/CN=alice', admin: false },
  bob: { identity: '/O=Grid/OU=test/CN=bob', admin: false },
  root: { identity: '/O=Grid/OU=test/CN=root', admin: true },
} as const;
type Who = keyof typeof WHO;
const tokens = Object.fromEntries(Object.keys(WHO).map((w) => [w, `tok-${w}-${randomBytes(16).toString('hex')}`])) as Record<Who, string>;

let conn: TestConnections;
let config: VwsConfig;
let worker: Worker;
let running: Promise<void>;
let server: Server;
let base: string;

beforeAll(async () => {
  conn = await connect();
  const dir = mkdtempSync('/tmp/vws-events-');
  config = testConfig({
    stateDir: dir,
    repository: { dir: join(dir, 'repository'), url: 'http://127.0.0.1:9/repository', nodeTokenFile: join(dir, 'node.token') },
    clients: (Object.keys(WHO) as Who[]).map((w) => ({ name: w, identity: WHO[w].identity, tokenFile: join(dir, `${w}.token`), admin: WHO[w].admin })),
    networks: [{ name: 'public', subnet: '10.213.0.0/24', gateway: '10.213.0.1', ranges: [{ first: '10.213.0.100', last: '10.213.0.199' }] }],
    nodes: [{ name: 'vmm1', memoryMiB: 2048, cpus: 64, bridges: { public: 'br0' } }],
    policies: { maxNodesPerRequest: 3 },
    reconciler: { enabled: false },
  });
  const raw = join(dir, 'sample.raw');
  writeFileSync(raw, randomBytes(64 * 1024));
  await stageLocalFile(config, 'sample', raw);
  worker = await createHeadWorker({ config, connection: conn.native, client: conn.client, workflowBundle: await workflowBundle() });
  running = worker.run();
  const clientTokens: TokenEntry[] = (Object.keys(WHO) as Who[]).map((w) => ({ digest: tokenDigest(tokens[w]), principal: { name: w, ...WHO[w] } }));
  // Quick polls and keep-alives, so that the test sees several of each in a few seconds.
  const app = createApp({ config, client: conn.client, clientTokens: () => clientTokens, nodeTokens: () => [], logger: pino({ level: 'silent' }), events: { pollMs: 100, heartbeatMs: 300, closedCheckEvery: 3 } });
  server = app.listen(0, '127.0.0.1');
  await new Promise((ok) => server.once('listening', ok));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server?.close();
  await endWorkflowTest({ conn, config, worker, running, reason: 'events test done' });
});

/** A request as `who` (or with no token, or a raw token). */
function get(who: Who | null | string, path: string, signal?: AbortSignal): Promise<Response> {
  const token = who === null ? null : who in tokens ? tokens[who as Who] : who;
  return fetch(`${base}${path}`, { headers: token ? { authorization: `Bearer ${token}`, accept: 'text/event-stream' } : {}, signal });
}

async function post(who: Who, method: string, path: string, body?: unknown): Promise<{ status: number; body: Record<string, any> }> {
  const res = await fetch(`${base}${path}`, { method, headers: { authorization: `Bearer ${tokens[who]}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

/** Expects a problem+json answer (no stream) of `status`. */
async function problem(res: Response, status: number): Promise<Record<string, any>> {
  expect({ status: res.status, type: res.headers.get('content-type') }).toEqual({ status, type: expect.stringMatching(/^application\/problem\+json/) });
  const body = (await res.json()) as Record<string, any>;
  expect(body).toMatchObject({ status, title: expect.any(String), detail: expect.any(String) });
  return body;
}

/** An open stream's events, read on demand (one reader for the stream's whole life). */
function eventsOf(res: Response) {
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
  expect(res.headers.get('cache-control')).toContain('no-cache');
  const it = serverEvents(res.body!);
  const seen: ServerEvent[] = [];
  return {
    /** Reads until `until` accepts an event, or fails after `seconds` naming what came. */
    async until(until: (e: ServerEvent) => boolean, seconds = 30): Promise<ServerEvent[]> {
      const from = seen.length;
      const deadline = Date.now() + seconds * 1000;
      for (;;) {
        const left = deadline - Date.now();
        let timer: NodeJS.Timeout | undefined;
        const next = await Promise.race([it.next(), new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), Math.max(0, left))))]);
        clearTimeout(timer);
        if (next === 'timeout' || next.done) throw new Error(`no awaited event (${next === 'timeout' ? 'timed out' : 'stream ended'}); got: ${JSON.stringify(seen.map((e) => [e.event, e.data.slice(0, 160)]))}`);
        seen.push(next.value);
        if (until(next.value)) return seen.slice(from);
      }
    },
    /** True once the server has ended the stream. */
    async ended(): Promise<boolean> {
      return (await it.next()).done === true;
    },
  };
}

const data = (e: ServerEvent) => JSON.parse(e.data) as Record<string, any>;
const PROPAGATED = { image: 'sample', memoryMiB: 64, durationSeconds: 600, targetState: 'Propagated' };
const created: Record<'ws' | 'grp' | 'ens', string> = { ws: '', grp: '', ens: '' };

beforeAll(async () => {
  const ws = await post('alice', 'POST', '/workspaces', PROPAGATED);
  expect(ws.status).toBe(202);
  created.ws = ws.body.id;
  const grp = await post('alice', 'POST', '/workspaces', { ...PROPAGATED, count: 2 });
  expect(grp.status).toBe(202);
  created.grp = grp.body.id;
  const ens = await post('alice', 'POST', '/ensembles', {});
  expect(ens.status).toBe(202);
  created.ens = ens.body.id;
});

describe('event streams', () => {
  const routes = () => [`/workspaces/${created.ws}/events`, `/groups/${created.grp}/events`, `/ensembles/${created.ens}/events`];

  it('refuse a request without a valid token (401), before any stream', async () => {
    for (const path of routes()) {
      for (const who of [null, 'not-a-token']) {
        const res = await get(who, path);
        expect(res.headers.get('www-authenticate')).toBe('Bearer realm="vws"');
        await problem(res, 401);
      }
    }
  });

  it("answer 404 for another client's object and for unknown or malformed ids, before any stream", async () => {
    for (const path of routes()) {
      const body = await problem(await get('bob', path), 404);
      expect(body.detail).toMatch(/^no (workspace|group|ensemble) (ws|grp|ens)-[0-9a-f]{12}$/);
    }
    await problem(await get('alice', '/workspaces/ws-000000000000/events'), 404);
    await problem(await get('alice', '/groups/grp-000000000000/events'), 404);
    await problem(await get('alice', '/ensembles/ens-000000000000/events'), 404);
    expect((await problem(await get('alice', '/workspaces/not-an-id/events'), 404)).detail).toBe('no workspace not-an-id');
    expect(openEventStreams()).toBe(0);
  });

  it('stream a workspace: its state first, each change as it happens, then the end when its workflow closes', async () => {
    const id = created.ws;
    const events = eventsOf(await get('alice', `/workspaces/${id}/events`));
    const first = await events.until(() => true);
    expect(first[0]).toMatchObject({ event: 'workspace', id: '1' });
    expect(data(first[0])).toMatchObject({
      id,
      owner: WHO.alice.identity,
      state: 'Unpropagated',
      links: { self: `/workspaces/${id}`, temporalUi: expect.stringContaining(encodeURIComponent(workspaceWorkflowId(config, id))) },
    });
    expect(openEventStreams()).toBe(1);

    // The destroy is a change: the workspace starts cleaning up (and waits there: no node worker).
    expect((await post('alice', 'DELETE', `/workspaces/${id}`)).status).toBe(202);
    const destroying = await events.until((e) => e.event === 'workspace' && data(e).task === 'destroying');
    // Only changes are sent: no two events in a row describe the same thing.
    const states = [...first, ...destroying].map((e) => `${data(e).state}/${data(e).task}`);
    for (let i = 1; i < states.length; i++) expect(states[i]).not.toBe(states[i - 1]);

    // The workflow closes (terminated here): the stream says so with a last description, and ends.
    await conn.client.workflow.getHandle(workspaceWorkflowId(config, id)).terminate('the events test ends it');
    const end = await events.until((e) => e.event === 'end');
    expect(data(end[end.length - 1])).toMatchObject({ id, task: 'destroying', workflowStatus: 'TERMINATED' });
    expect(await events.ended()).toBe(true);
    for (let i = 0; i < 20 && openEventStreams() > 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect(openEventStreams()).toBe(0);
  });

  it('show the stream to an admin too, with keep-alive comments while nothing changes', async () => {
    const res = await get('root', `/groups/${created.grp}/events`);
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    let text = '';
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && (text.match(/^: keep-alive$/gm) ?? []).length < 2) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    await reader.cancel();
    for (let i = 0; i < 20 && openEventStreams() > 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect(openEventStreams()).toBe(0);
    expect((text.match(/^: keep-alive$/gm) ?? []).length).toBeGreaterThanOrEqual(2);
    // The group's first event: its state and both members.
    const group = /^event: group\ndata: (.*)$/m.exec(text);
    expect(group).not.toBeNull();
    expect(JSON.parse(group![1])).toMatchObject({ id: created.grp, count: 2, members: [expect.objectContaining({ state: expect.any(String) }), expect.objectContaining({ state: expect.any(String) })], links: { self: `/groups/${created.grp}` } });
  });

  it('stream an ensemble, and stop following the moment the client goes away', async () => {
    const gone = new AbortController();
    const events = eventsOf(await get('alice', `/ensembles/${created.ens}/events`, gone.signal));
    const first = await events.until(() => true);
    expect(first[0].event).toBe('ensemble');
    expect(data(first[0])).toMatchObject({ id: created.ens, state: 'Registering', members: [] });
    expect(openEventStreams()).toBe(1);
    gone.abort();
    // The server notices the closed connection and clears its poll and keep-alive timers.
    for (let i = 0; i < 20 && openEventStreams() > 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect(openEventStreams()).toBe(0);
  });

  it('end every open stream with an error event when the API stops', async () => {
    const events = eventsOf(await get('alice', `/groups/${created.grp}/events`));
    await events.until((e) => e.event === 'group');
    expect(openEventStreams()).toBe(1);
    closeEventStreams();
    const [stopping] = await events.until((e) => e.event === 'error');
    expect(data(stopping)).toMatchObject({ status: 503, detail: expect.stringContaining('stopping') });
    expect(await events.ended()).toBe(true);
    expect(openEventStreams()).toBe(0);
  });
});
