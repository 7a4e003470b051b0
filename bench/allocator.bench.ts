/**
 * Benchmark: allocator grants per second on the real dev server, through AllocatorClient (the path the
 * head activities and the API's factory take: one Update-with-Start per call). Each round trip is a
 * reserve and its release; run sequentially (latency bound) and by concurrent callers (the allocator is
 * one workflow, so they queue on it), sequentially as plain Updates (no start operation, for comparison),
 * and gangs of ten members. No hypervisor is involved: the figures are the allocator's alone. Prints
 * numbers; asserts only that nothing is left held. (The path goes before `--selectProjects`, which
 * takes every name after it as a project.)
 *
 *   VWS_BENCH=1 TEMPORAL_ADDRESS=127.0.0.1:7233 npx jest bench/allocator.bench.ts --selectProjects bench
 *   (VWS_BENCH_GRANTS=N sets the reserve+release pairs per run, default 300; VWS_BENCH_CALLERS=C, default 10)
 */
import { AllocatorClient } from '../src/clients/allocator';
import type { VwsConfig } from '../src/config/schema';
import type { ReleaseInfo, SlotRequest } from '../src/domain/allocation';
import { releaseUpdate, reserveUpdate } from '../src/domain/messages';
import { createHeadWorker } from '../src/workers/head';
import { connect, testConfig, workflowBundle, type TestConnections } from '../test/helpers/temporal';

const GRANTS = Number(process.env.VWS_BENCH_GRANTS ?? 300);
const CALLERS = Number(process.env.VWS_BENCH_CALLERS ?? 10);
const GANG = 10;

let conn: TestConnections;
beforeAll(async () => {
  conn = await connect();
});
afterAll(() => conn.close());

/** Four nodes and a /22 pool: room for every concurrent grant, so nothing is refused and all time is granting. */
function site(): VwsConfig {
  return testConfig({
    nodes: ['b1', 'b2', 'b3', 'b4'].map((name) => ({ name, memoryMiB: 65_536, cpus: 256 })),
    networks: [{ name: 'public', subnet: '10.220.0.0/22', gateway: '10.220.0.1', ranges: [{ first: '10.220.0.10', last: '10.220.3.250' }] }],
    allocator: { placement: 'round-robin' },
    clients: [{ name: 'bench', identity: '/CN=bench', tokenFile: '/tmp/vws-bench.token', quota: { maxWorkspaces: 10_000 } }],
  });
}

/** Runs `pairs` reserve+release round trips spread over `callers` concurrent callers; answers the seconds taken and each pair's latency. */
async function run(allocator: Pick<AllocatorClient, 'reserve' | 'release'>, tag: string, pairs: number, callers: number): Promise<{ seconds: number; latencies: number[] }> {
  const latencies: number[] = [];
  const started = performance.now();
  await Promise.all(
    Array.from({ length: callers }, async (_, c) => {
      for (let i = c; i < pairs; i += callers) {
        const t = performance.now();
        const holder = `${tag}-${i}`;
        await allocator.reserve({ holder, memoryMiB: 64, vcpus: 1, owner: '/CN=bench', reservedSeconds: 600 });
        await allocator.release(holder, { usedSeconds: 1 });
        latencies.push(performance.now() - t);
      }
    }),
  );
  return { seconds: (performance.now() - started) / 1000, latencies };
}

const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))];

describe('allocator throughput', () => {
  it(`reserves and releases ${GRANTS} grants sequentially, by ${CALLERS} callers, and in gangs of ${GANG}`, async () => {
    const config = site();
    const allocator = new AllocatorClient(conn.client, config);
    const worker = await createHeadWorker({ config, connection: conn.native, client: conn.client, workflowBundle: await workflowBundle() });
    await worker.runUntil(async () => {
      await allocator.configure(); // brings the allocator into being, outside the timings
      const lines: string[] = [];
      const report = (label: string, pairs: number, r: { seconds: number; latencies: number[] }) =>
        lines.push(
          `${label}: ${pairs} reserve+release pairs in ${r.seconds.toFixed(2)} s = ${(pairs / r.seconds).toFixed(1)} grants/s ` +
            `(${((2 * pairs) / r.seconds).toFixed(1)} Updates/s); pair latency median ${pct(r.latencies, 50).toFixed(1)} ms, p95 ${pct(r.latencies, 95).toFixed(1)} ms`,
        );
      report('sequential', GRANTS, await run(allocator, 'seq', GRANTS, 1));
      report(`${CALLERS} concurrent callers`, GRANTS, await run(allocator, 'con', GRANTS, CALLERS));
      // The same sequential pairs as plain Updates on the handle, without Update-with-Start's start operation.
      const handle = conn.client.workflow.getHandle(allocator.workflowId);
      const plain = { reserve: (r: SlotRequest) => handle.executeUpdate(reserveUpdate, { args: [r] }), release: (h: string, i: ReleaseInfo) => handle.executeUpdate(releaseUpdate, { args: [h, i] }) };
      report('sequential, plain Updates', GRANTS, await run(plain, 'plain', GRANTS, 1));

      const gangs = Math.max(1, Math.floor(GRANTS / GANG / 3));
      const started = performance.now();
      for (let g = 0; g < gangs; g++) {
        const members = Array.from({ length: GANG }, (_, i) => ({ holder: `gang${g}-m${i}`, memoryMiB: 64, vcpus: 1, owner: '/CN=bench', reservedSeconds: 600 }));
        await allocator.reserveGang({ gang: `gang${g}`, members });
        await allocator.releaseGang(`gang${g}`);
      }
      const gs = (performance.now() - started) / 1000;
      lines.push(`gangs of ${GANG}: ${gangs} reserveGang+releaseGang pairs in ${gs.toFixed(2)} s = ${((gangs * GANG) / gs).toFixed(1)} member grants/s`);

      const [usage] = await allocator.usage('/CN=bench');
      lines.push(`accounting: ${usage.liveGrants} live, ${usage.reservedMinutes} reserved minutes charged over ${3 * GRANTS + gangs * GANG} released grants`);
      console.log(`allocator benchmark (dev server at ${config.temporal.address}):\n  ${lines.join('\n  ')}`);
      expect(await allocator.grants()).toEqual([]);
      expect(usage.liveGrants).toBe(0);
    });
  });
});
