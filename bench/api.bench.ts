/**
 * Benchmark of the API's front door and the head's footprint (issue 8), on the dev server:
 *  - read latency of `GET /workspaces/:id` through the real express app on a real HTTP port, open loop
 *    at a steady rate (each request sent on its instant, never waiting for the one before), over live
 *    Running workspaces: p50 / p90 / p99 / max, measured from each request's planned instant (goal p99 ≤ 20 ms);
 *  - the resident memory of the head process (the head worker, as `./run.sh start` runs it) and of the
 *    API process with N live workspaces (goal ≤ 300 MB at 1,000), and the time to create and destroy
 *    them all, with the allocator's ledger empty afterwards.
 *
 *   VWS_BENCH=1 TEMPORAL_ADDRESS=127.0.0.1:7233 VWS_LOG_LEVEL=warn npx jest --runInBand --selectProjects bench --testPathPattern bench/api
 *
 * VWS_BENCH_WORKSPACES (1000), VWS_BENCH_RPS (100), VWS_BENCH_READ_SECONDS (20), VWS_BENCH_LANES (24
 * concurrent creators and destroyers), VWS_BENCH_API_NODES (10); VWS_BENCH_HEAD_CACHE (the head's
 * `workers.head.maxCachedWorkflows`, default: the configuration's), VWS_BENCH_HEAD_ARGS (node options
 * of the head process, e.g. `--max-semi-space-size=1`; the environment, e.g. MALLOC_ARENA_MAX, is inherited),
 * VWS_BENCH_HEAD_WORKER (JSON worker settings of the head, e.g. `{"maxConcurrentWorkflowTaskExecutions":10}`)
 * and VWS_BENCH_HEAD_DIST (a compiled `dist/` to run the head from, as production does; see head-process.ts);
 * VWS_BENCH_API_ARGS (node options of the API process); VWS_BENCH_API_IN_HEAD=1 runs the API inside the
 * head process instead (one process, as earlier runs of this benchmark did).
 *
 * Four processes: the head (`head-process.ts worker`: the head worker; its memory is the figure), the
 * API (`head-process.ts api`: the express app on a real HTTP port), the nodes (`node-workers.ts`: `driver: bench` node workers, no hypervisor and
 * no guest, DHCP stand-in as in `ensemble.bench.ts`), and this one (jest: the clients that create,
 * read and destroy). Workspaces are created by starting `workspaceWorkflow` directly, each reserving its
 * slot from the allocator workflow through the `reserve` activity (the API's Factory reserves before it
 * starts the workflow instead, one activity fewer: the head's figure here is on the conservative side),
 * and propagating a qcow2 overlay on its node.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { Agent, request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { AllocatorClient } from '../src/clients/allocator';
import { describeWorkspace } from '../src/clients/workspace-view';
import { headTaskQueue, workspaceRouting, workspaceWorkflowId } from '../src/config/names';
import type { VwsConfig } from '../src/config/schema';
import { tokenDigest } from '../src/config/secrets';
import { describeQuery, destroyUpdate, VwsOwner, VwsState } from '../src/domain/messages';
import type { ResolvedImage, WorkspaceInput } from '../src/domain/workspace';
import { stageLocalFile } from '../src/repository';
import type { workspaceWorkflow } from '../src/workflows/workspace';
import { memberSpec } from '../test/helpers/member-spec';
import { connect, testConfig, workflowBundle, type TestConnections } from '../test/helpers/temporal';
import { startBenchSite, stopBenchSite, type BenchProcess } from './helpers';

const OWNER = '/O=Grid/OU=bench/CN=bench';
const WORKSPACES = Number(process.env.VWS_BENCH_WORKSPACES ?? 1000);
const RPS = Number(process.env.VWS_BENCH_RPS ?? 100);
const READ_SECONDS = Number(process.env.VWS_BENCH_READ_SECONDS ?? 20);
const LANES = Number(process.env.VWS_BENCH_LANES ?? 24);
const NODES = Number(process.env.VWS_BENCH_API_NODES ?? 10);
/** The head worker's workflow cache, when set (`workers.head.maxCachedWorkflows`; the configuration's default otherwise). */
const HEAD_CACHE = process.env.VWS_BENCH_HEAD_CACHE ? Number(process.env.VWS_BENCH_HEAD_CACHE) : undefined;
/** Extra node options of the head process (e.g. `--max-semi-space-size=1`), to measure what a site's settings save. */
const HEAD_ARGS = (process.env.VWS_BENCH_HEAD_ARGS ?? '').split(/\s+/).filter(Boolean);
/** Node options of the API process. */
const API_ARGS = (process.env.VWS_BENCH_API_ARGS ?? '').split(/\s+/).filter(Boolean);
/** The API inside the head process (one process) rather than in its own, as production runs it. */
const API_IN_HEAD = process.env.VWS_BENCH_API_IN_HEAD === '1';
const MiB = 1024 * 1024;

let conn: TestConnections;
let config: VwsConfig;
let image: ResolvedImage;
/** What the head process reports of its settings (see head-process.ts). */
type HeadReady = { ready: true; port: number; maxCachedWorkflows: number; settings: Record<string, unknown> };
let head: BenchProcess<HeadReady>;
let nodes: BenchProcess<{ ready: true }>;
/** The API's process, unless it runs inside the head's. */
let api: BenchProcess<HeadReady> | undefined;
let port: number;
const token = `tok-bench-${randomBytes(16).toString('hex')}`;
/** Ids of the live workspaces this file created. */
const ids: string[] = [];
/** Memory of the head process (and of the node process) at each step, for the tables. */
const memory: Array<{ step: string; rss: number; heapUsed: number; nodesRss: number; apiRss?: number }> = [];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Records the head process's memory (and the node process's) as `step`. */
async function recordMemory(step: string): Promise<void> {
  const [h, n, a] = await Promise.all([head.memory(), nodes.memory(), api?.memory()]);
  memory.push({ step, rss: h.rss, heapUsed: h.heapUsed, nodesRss: n.rss, ...(a ? { apiRss: a.rss } : {}) });
}

beforeAll(async () => {
  conn = await connect();
  const dir = mkdtempSync('/tmp/vws-bench-api-');
  const nodeNames = Array.from({ length: NODES }, (_, i) => `b${i + 1}`);
  config = testConfig({
    stateDir: dir,
    repository: { dir: join(dir, 'repository'), url: 'http://127.0.0.1:9/repository', nodeTokenFile: join(dir, 'node.token') },
    clients: [{ name: 'bench', identity: OWNER, tokenFile: join(dir, 'bench.token') }],
    // Room for 2,000 addresses: every live workspace holds one.
    networks: [{ name: 'public', subnet: '10.98.0.0/21', gateway: '10.98.0.1', ranges: [{ first: '10.98.0.10', last: '10.98.7.250' }] }],
    nodes: nodeNames.map((name) => ({ name, memoryMiB: 256 * 1024, cpus: 1024, driver: 'bench', bridges: { public: 'br0' }, antiSpoofing: false })),
    reconciler: { enabled: false },
    ...(HEAD_CACHE ? { workers: { head: { maxCachedWorkflows: HEAD_CACHE } } } : {}),
  });
  const raw = join(dir, 'tiny.raw');
  writeFileSync(raw, randomBytes(1024 * 1024));
  image = await stageLocalFile(config, 'tiny', raw);

  // The nodes and the head in processes of their own (see the file comment); they read the resolved configuration.
  ({ head, nodes, api } = await startBenchSite<HeadReady>({
    config,
    dir,
    nodes: nodeNames,
    bundleCode: (await workflowBundle()).code,
    tokenDigest: tokenDigest(token),
    identity: OWNER,
    headExecArgv: ['--expose-gc', ...HEAD_ARGS],
    separateApi: !API_IN_HEAD,
    apiExecArgv: ['--expose-gc', ...API_ARGS],
  }));
  port = (api ?? head).ready.port;
}, 300_000);

afterAll(async () => {
  // Whatever a failed step left running: end it, so nothing outlives the file.
  await stopBenchSite({ head, nodes, api }, conn?.client, config.temporal.prefix, 'api bench done');
  await conn?.close();
}, 300_000);

/** Runs `task` over `items` with at most `lanes` at a time; answers each item's milliseconds. */
async function inLanes<T>(items: readonly T[], lanes: number, task: (item: T) => Promise<void>): Promise<number[]> {
  const times: number[] = [];
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const item = items[next++];
      const t = Date.now();
      await task(item);
      times.push(Date.now() - t);
    }
  };
  await Promise.all(Array.from({ length: lanes }, lane));
  return times;
}

/** The value at quantile `q` of ascending `sorted` (nearest rank). */
const quantile = (sorted: readonly number[], q: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
const mb = (bytes: number) => (bytes / MiB).toFixed(1);

/** GET `path` on the API with the bench token; answers the status. */
function get(agent: Agent, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, agent, headers: { authorization: `Bearer ${token}` } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** What {@link openLoop} measured. */
interface OpenLoop {
  /** Milliseconds from each request's planned instant to its answer, ascending. */
  latencies: number[];
  /** Answers by status (-1: the request failed). */
  statuses: Map<number, number>;
  /** How far behind its planned instant the latest request was sent. */
  lateMax: number;
  seconds: number;
}

/**
 * Sends `RPS` requests a second for `READ_SECONDS` seconds, each at its planned instant whether or not
 * earlier ones have answered (open loop), and times each from its planned instant, so a request the
 * client sent late counts its lateness (no coordinated omission).
 */
async function openLoop(send: (i: number) => Promise<number>): Promise<OpenLoop> {
  const total = Math.round(RPS * READ_SECONDS);
  const interval = 1000 / RPS;
  const latencies: number[] = [];
  const statuses = new Map<number, number>();
  const count = (status: number) => statuses.set(status, (statuses.get(status) ?? 0) + 1);
  let lateMax = 0;
  const inFlight: Promise<void>[] = [];
  const t0 = performance.now();
  for (let i = 0; i < total; i++) {
    const planned = t0 + i * interval;
    const wait = planned - performance.now();
    if (wait > 0) await sleep(wait);
    lateMax = Math.max(lateMax, performance.now() - planned);
    inFlight.push(
      send(i).then(
        (status) => {
          latencies.push(performance.now() - planned);
          count(status);
        },
        () => void count(-1),
      ),
    );
  }
  await Promise.all(inFlight);
  return { latencies: latencies.sort((a, b) => a - b), statuses, lateMax, seconds: (performance.now() - t0) / 1000 };
}

describe(`the API and the head with ${WORKSPACES} live workspaces (bench driver)`, () => {
  it(`creates ${WORKSPACES} Running workspaces (${LANES} at a time) and prints the head's memory`, async () => {
    await recordMemory('idle (no workspace)');
    const failures: string[] = [];
    const wanted = Array.from({ length: WORKSPACES }, () => `ws-${randomBytes(6).toString('hex')}`);
    const t0 = Date.now();
    const times = await inLanes(wanted, LANES, async (id) => {
      const input: WorkspaceInput = { id, owner: OWNER, spec: memberSpec(image, { memoryMiB: 64 }), routing: workspaceRouting(config), createdAt: new Date().toISOString() };
      const handle = await conn.client.workflow.start<typeof workspaceWorkflow>('workspaceWorkflow', {
        workflowId: workspaceWorkflowId(config, id),
        taskQueue: headTaskQueue(config),
        args: [input],
        typedSearchAttributes: [
          { key: VwsOwner, value: OWNER },
          { key: VwsState, value: 'Unpropagated' },
        ],
      });
      // Followed as clients follow it (GET, the event stream): the view in the memo, not a query.
      for (;;) {
        const ws = await describeWorkspace(conn.client, handle.workflowId);
        if (ws.state === 'Running' && ws.task === null) break;
        if (ws.state === 'Corrupted' || ws.state === 'Cancelled') return void failures.push(`${id}: ${ws.state} ${ws.reason}`);
        await sleep(200);
      }
      ids.push(id);
    });
    const createSeconds = (Date.now() - t0) / 1000;
    expect(failures).toEqual([]);
    expect(ids).toHaveLength(WORKSPACES);
    const grants = await new AllocatorClient(conn.client, config).grants();
    expect(grants).toHaveLength(WORKSPACES);
    await recordMemory(`${WORKSPACES} live workspaces`);
    // What one Running workspace costs the server: its history so far (events), from a sample.
    const sample = await Promise.all(ids.slice(0, 20).map((id) => conn.client.workflow.getHandle(workspaceWorkflowId(config, id)).describe()));
    const events = sample.reduce((n, d) => n + d.historyLength, 0) / sample.length;
    const sorted = [...times].sort((a, b) => a - b);
    const [idle, live] = memory;
    console.log(
      [
        `create ${WORKSPACES} workspaces (start → Running), ${LANES} at a time on ${NODES} bench nodes:`,
        `| workspaces | total | per second | per workspace: median / p99 |`,
        `| ${WORKSPACES} | ${createSeconds.toFixed(1)} s | ${(WORKSPACES / createSeconds).toFixed(1)} | ${quantile(sorted, 0.5)} / ${quantile(sorted, 0.99)} ms |`,
        ``,
        `memory of the head process (${api ? 'the head worker; the API in a process of its own' : 'head worker + API on its HTTP port'}; after a full GC; nodes and clients in other processes), head settings ${JSON.stringify(head.ready.settings)}${api ? `, API settings ${JSON.stringify(api.ready.settings)}` : ''}:`,
        `| | head rss | head heapUsed | API process rss | node process rss |`,
        ...[idle, live].map((m) => `| ${m.step} | ${mb(m.rss)} MiB | ${mb(m.heapUsed)} MiB | ${m.apiRss === undefined ? '(in the head)' : `${mb(m.apiRss)} MiB`} | ${mb(m.nodesRss)} MiB |`),
        `| per workspace (difference / ${WORKSPACES}) | ${((live.rss - idle.rss) / WORKSPACES / 1024).toFixed(1)} KiB | ${((live.heapUsed - idle.heapUsed) / WORKSPACES / 1024).toFixed(1)} KiB | | ${((live.nodesRss - idle.nodesRss) / WORKSPACES / 1024).toFixed(1)} KiB |`,
        `goal (issue 8): head rss ≤ 300 MB with 1,000 live workspaces; measured ${(live.rss / 1e6).toFixed(0)} MB with ${WORKSPACES}`,
        `history of a Running workspace: ${events.toFixed(1)} events (mean of ${sample.length})`,
      ].join('\n'),
    );
  }, 3_600_000);

  it(`reads GET /workspaces/:id at ${RPS} requests/s for ${READ_SECONDS} s (open loop) and prints the latency`, async () => {
    expect(ids.length).toBeGreaterThan(0);
    const agent = new Agent({ keepAlive: true });
    const reads = await openLoop((i) => get(agent, `/workspaces/${ids[i % ids.length]}`));
    agent.destroy();
    await recordMemory(`after ${reads.latencies.length} reads`);
    // The same reads from this process without the API: the server's DescribeWorkflowExecution (what GET
    // reads: the view in the memo) and the workflow query (what GET read before, through the head worker).
    const handle = (i: number) => conn.client.workflow.getHandle(workspaceWorkflowId(config, ids[i % ids.length]));
    const described = await openLoop((i) => handle(i).describe().then(() => 200));
    const query = await openLoop((i) => handle(i).query(describeQuery).then(() => 200));
    const total = Math.round(RPS * READ_SECONDS);
    expect(Object.fromEntries(reads.statuses)).toEqual({ 200: total });
    expect(Object.fromEntries(described.statuses)).toEqual({ 200: total });
    const ms = (x: number) => x.toFixed(1);
    const answered = (r: OpenLoop) => (r.statuses.get(200) === total ? 'all 200' : `${r.statuses.get(200) ?? 0} answered, ${total - (r.statuses.get(200) ?? 0)} failed`);
    const row = (what: string, r: OpenLoop) =>
      `| ${what} | ${r.latencies.length} (${answered(r)}) | ${(r.latencies.length / r.seconds).toFixed(1)}/s | ${ms(quantile(r.latencies, 0.5))} ms | ${ms(quantile(r.latencies, 0.9))} ms | ${ms(quantile(r.latencies, 0.99))} ms | ${ms(r.latencies[r.latencies.length - 1])} ms | ${ms(r.lateMax)} ms |`;
    const p99 = quantile(reads.latencies, 0.99);
    console.log(
      [
        `reads, open loop at ${RPS}/s for ${READ_SECONDS} s over ${ids.length} Running workspaces (round robin); latency from each request's planned instant:`,
        `| read | requests | achieved rate | p50 | p90 | p99 | max | latest send behind plan |`,
        row('GET /workspaces/:id (express app on a real HTTP port, keep-alive)', reads),
        row('for comparison: DescribeWorkflowExecution from the benchmark process (no API)', described),
        row('for comparison: describe query from the benchmark process (no API; a cache miss replays)', query),
        `goal (issue 8): GET p99 ≤ 20 ms; measured p99 ${ms(p99)} ms (${p99 <= 20 ? 'met' : 'not met'})`,
        `head memory after the GETs: rss ${mb(memory[memory.length - 1].rss)} MiB, heapUsed ${mb(memory[memory.length - 1].heapUsed)} MiB${api ? `; API process rss ${mb(memory[memory.length - 1].apiRss ?? 0)} MiB` : ''}`,
      ].join('\n'),
    );
  }, 600_000);

  it(`destroys the ${WORKSPACES} workspaces and leaves the allocator's ledger empty`, async () => {
    expect(ids.length).toBeGreaterThan(0);
    const ended: string[] = [];
    const t0 = Date.now();
    await inLanes(ids, LANES, async (id) => {
      const handle = conn.client.workflow.getHandle<typeof workspaceWorkflow>(workspaceWorkflowId(config, id));
      await handle.executeUpdate(destroyUpdate);
      ended.push((await handle.result()).state);
    });
    const destroySeconds = (Date.now() - t0) / 1000;
    expect(ended.filter((s) => s !== 'Cancelled')).toEqual([]);
    expect(ended).toHaveLength(ids.length);
    const grants = await new AllocatorClient(conn.client, config).grants();
    expect(grants).toEqual([]);
    await recordMemory('after destroying them all');
    const last = memory[memory.length - 1];
    console.log(
      [
        `destroy ${ids.length} workspaces (destroy → Cancelled), ${LANES} at a time:`,
        `| workspaces | total | per second | grants left in the allocator | rss after | heapUsed after |`,
        `| ${ids.length} | ${destroySeconds.toFixed(1)} s | ${(ids.length / destroySeconds).toFixed(1)} | ${grants.length} | ${mb(last.rss)} MiB | ${mb(last.heapUsed)} MiB |`,
      ].join('\n'),
    );
  }, 3_600_000);
});
