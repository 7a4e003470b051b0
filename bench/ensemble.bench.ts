/**
 * Benchmark of vws's orchestration alone (no hypervisor, no guest), on the dev server:
 *  - a 100-member ensemble (4 groups of 25): time from `done` to every member Running, the spread of
 *    the members' start times (goal ≤ 1 s), and destroy-all to Ended;
 *  - sustained full lifecycles (create → Running → destroy → Cancelled) per second (goal ≥ 10 on 2 cores).
 *
 *   VWS_BENCH=1 TEMPORAL_ADDRESS=127.0.0.1:7233 VWS_LOG_LEVEL=warn npx jest --runInBand --selectProjects bench bench/ensemble.bench.ts
 *
 * Three processes, as on a site: the head worker (with the API; `head-process.ts`), the ten bench nodes
 * (`node-workers.ts`: node workers with `driver: bench`, VM states in memory), and this one, the client
 * (Temporal client calls, as the API makes them: each lifecycle is created through the API's own
 * `Factory`, which reserves synchronously and starts the workflow with its grant, is followed by its
 * memo view as API readers do, and is destroyed with the destroy Update). Everything else is real: Temporal, the allocator, the workspace, group and ensemble workflows, the head's
 * activities, and propagation (each member's qcow2 overlay made with qemu-img over a base copied into
 * the node's cache from the repository). The one stand-in beside the driver is DHCP: a bench VM has no
 * guest to ask for a lease, so on these nodes the entry activities record entries and `waitForLease`
 * answers the entry's address at once, as a guest's DHCP would; no DHCP server runs. Never a default.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { headTaskQueue, workspaceRouting } from '../src/config/names';
import type { VwsConfig } from '../src/config/schema';
import type { EnsembleInput } from '../src/domain/groups';
import { destroyUpdate, ensembleDescribeQuery, ensembleDestroyUpdate, ensembleDoneUpdate, ensembleRegisterUpdate, VwsOwner } from '../src/domain/messages';
import type { ResolvedImage, WorkspaceSpec } from '../src/domain/workspace';
import { memberSpec } from '../test/helpers/member-spec';
import { tokenDigest } from '../src/config/secrets';
import { stageLocalFile } from '../src/repository';
import type { ensembleWorkflow } from '../src/workflows/ensemble';
import { connect, testConfig, workflowBundle, type TestConnections } from '../test/helpers/temporal';
import { Factory } from '../src/api/factory';
import { AllocatorClient } from '../src/clients/allocator';
import { describeWorkspace } from '../src/clients/workspace-view';
import { createWorkspaceSchema } from '../src/domain/requests';
import { startBenchSite, stopBenchSite, type BenchSite } from './helpers';

const OWNER = '/O=Grid/OU=bench/CN=bench';
const NODES = Number(process.env.VWS_BENCH_ENSEMBLE_NODES ?? 10);
const MEMBERS = 100;
const LIFECYCLE_SECONDS = Number(process.env.VWS_BENCH_LIFECYCLE_SECONDS ?? 30);
const LANES = Number(process.env.VWS_BENCH_LANES ?? 16);
/** The head worker's workflow cache, when set (`workers.head.maxCachedWorkflows`; the configuration's default otherwise). */
const HEAD_CACHE = process.env.VWS_BENCH_HEAD_CACHE ? Number(process.env.VWS_BENCH_HEAD_CACHE) : undefined;

let conn: TestConnections;
let config: VwsConfig;
let image: ResolvedImage;
/** The head worker and the bench nodes run in processes of their own, as on a site (see the file comment). */
let site: BenchSite;

beforeAll(async () => {
  conn = await connect();
  const dir = mkdtempSync('/tmp/vws-bench-ensemble-');
  const nodeNames = Array.from({ length: NODES }, (_, i) => `b${i + 1}`);
  config = testConfig({
    stateDir: dir,
    repository: { dir: join(dir, 'repository'), url: 'http://127.0.0.1:9/repository', nodeTokenFile: join(dir, 'node.token') },
    clients: [{ name: 'bench', identity: OWNER, tokenFile: join(dir, 'bench.token') }],
    networks: [{ name: 'public', subnet: '10.99.0.0/24', gateway: '10.99.0.1', ranges: [{ first: '10.99.0.10', last: '10.99.0.250' }] }],
    nodes: nodeNames.map((name) => ({ name, memoryMiB: 64 * 1024, cpus: 64, driver: 'bench', bridges: { public: 'br0' }, antiSpoofing: false })),
    // Bench nodes are large enough that greedy placement would put all 100 members on the first one;
    // round-robin spreads them over the ten, as memory limits would on real nodes.
    allocator: { placement: 'round-robin' },
    ...(HEAD_CACHE ? { workers: { head: { maxCachedWorkflows: HEAD_CACHE } } } : {}),
  });
  const raw = join(dir, 'tiny.raw');
  writeFileSync(raw, randomBytes(1024 * 1024));
  image = await stageLocalFile(config, 'tiny', raw);
  // VWS_BENCH_HEAD_ARGS: node options for the head process (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`).
  const headExecArgv = (process.env.VWS_BENCH_HEAD_ARGS ?? '').split(/\s+/).filter(Boolean);
  site = await startBenchSite({ config, dir, nodes: nodeNames, bundleCode: (await workflowBundle()).code, tokenDigest: tokenDigest(randomBytes(16).toString('hex')), identity: OWNER, headExecArgv });
}, 300_000);

afterAll(async () => {
  await stopBenchSite(site, conn?.client, config.temporal.prefix, 'ensemble bench done');
  await conn?.close();
}, 300_000);

const specOf = (memoryMiB = 64): WorkspaceSpec => memberSpec(image, { memoryMiB });

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

describe('ensemble and lifecycle orchestration (bench driver)', () => {
  it(`co-schedules a ${MEMBERS}-member ensemble and prints the start skew`, async () => {
    const id = `ens-${randomBytes(6).toString('hex')}`;
    const input: EnsembleInput = { id, owner: OWNER, routing: workspaceRouting(config), createdAt: new Date().toISOString(), deadlineSeconds: 600 };
    const handle = await conn.client.workflow.start<typeof ensembleWorkflow>('ensembleWorkflow', {
      workflowId: `${config.temporal.prefix}-${id}`,
      taskQueue: headTaskQueue(config),
      args: [input],
      typedSearchAttributes: [{ key: VwsOwner, value: OWNER }],
    });
    for (let g = 0; g < 4; g++) await handle.executeUpdate(ensembleRegisterUpdate, { args: [{ spec: specOf(), count: MEMBERS / 4 }] });
    const t0 = Date.now();
    await handle.executeUpdate(ensembleDoneUpdate);
    let d = await handle.query(ensembleDescribeQuery);
    const phases: Record<string, number> = {};
    while (d.state !== 'Ready' && d.state !== 'Ended') {
      await sleep(100);
      d = await handle.query(ensembleDescribeQuery);
      phases[d.state] ??= Date.now() - t0;
    }
    const doneToRunning = Date.now() - t0;
    expect(d.state).toBe('Ready');
    expect(d.members.flatMap((m) => m.workspaces)).toHaveLength(MEMBERS);
    const t1 = Date.now();
    await handle.executeUpdate(ensembleDestroyUpdate);
    const final = await handle.result();
    const destroyMs = Date.now() - t1;
    expect(final.members.flatMap((m) => m.workspaces).every((w) => w.state === 'Cancelled')).toBe(true);
    // Each member's start against the ensemble's planned common start time (how late the fan-out reached it).
    const planned = Date.parse(d.started?.planned ?? '');
    const late = d.members
      .flatMap((m) => m.workspaces)
      .map((w) => Date.parse(w.firstStartedAt ?? '') - planned)
      .sort((a, b) => a - b);
    console.log(
      [
        `${MEMBERS}-member ensemble on ${NODES} bench nodes (4 groups of ${MEMBERS / 4}):`,
        `| done → all Running | start skew (first → last firstStartedAt) | destroy-all → Ended | entered Deploying after done | start − planned: min / median / max | members > 100 ms late |`,
        `| ${(doneToRunning / 1000).toFixed(1)} s | ${d.started?.skewMs} ms | ${(destroyMs / 1000).toFixed(1)} s | ${phases.Deploying ?? 0} ms | ${late[0]} / ${median(late)} / ${late[late.length - 1]} ms | ${late.filter((x) => x > 100).length} |`,
      ].join('\n'),
    );
  }, 900_000);

  it(`sustains full lifecycles for ${LIFECYCLE_SECONDS} s and prints lifecycles per second`, async () => {
    const prefix = config.temporal.prefix;
    const latencies: number[] = [];
    const failures: string[] = [];
    const stopAt = Date.now() + LIFECYCLE_SECONDS * 1000;
    const t0 = Date.now();
    // Each lane creates as the API does (the factory: policy, a synchronous reserve, then the workflow
    // started with its grant), follows the workspace by its memo view as API clients do, then destroys it.
    const factory = new Factory(config, conn.client, new AllocatorClient(conn.client, config));
    const principal = { name: 'bench', identity: OWNER, admin: false };
    const lane = async () => {
      while (Date.now() < stopAt) {
        const start = Date.now();
        const created = await factory.createWorkspaces(principal, createWorkspaceSchema.parse({ image: image.name, memoryMiB: 64 }));
        const id = String(created.answer.id);
        const handle = conn.client.workflow.getHandle(`${prefix}-${id}`);
        for (;;) {
          const ws = await describeWorkspace(conn.client, handle.workflowId);
          if (ws.state === 'Running' && ws.task === null) break;
          if (ws.state === 'Corrupted' || ws.state === 'Cancelled') {
            failures.push(`${id}: ${ws.state} ${ws.reason}`);
            break;
          }
          await sleep(200);
        }
        await handle.executeUpdate(destroyUpdate);
        const end = await handle.result();
        if (end.state !== 'Cancelled') failures.push(`${id} ended ${end.state}`);
        latencies.push(Date.now() - start);
      }
    };
    await Promise.all(Array.from({ length: LANES }, lane));
    const seconds = (Date.now() - t0) / 1000;
    expect(failures).toEqual([]);
    console.log(
      [
        `full lifecycles (create → Running → destroy → Cancelled), ${LANES} concurrent clients for ${LIFECYCLE_SECONDS} s on ${NODES} bench nodes:`,
        `| lifecycles | per second | median lifecycle |`,
        `| ${latencies.length} | ${(latencies.length / seconds).toFixed(1)} | ${median(latencies)} ms |`,
      ].join('\n'),
    );
  }, 600_000);
});
