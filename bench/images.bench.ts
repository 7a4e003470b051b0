/**
 * Benchmark (issue 4): image propagation through the whole stack.
 *
 * 1. Cold propagation throughput of a 1 GiB image (random bytes) to an empty node cache, against `scp`
 *    of the same file from the head to the same node over the same network path, as a ratio (goal ≥
 *    0.9). The propagation's time is the `propagateImage` activity's, from its start to its completion
 *    in the workflow history (the download with its sha256 check, the rename, the overlay).
 *    vmm1 pulls over HTTP from the head (node worker); vmm2 is pushed to over SFTP (SSH mode).
 * 2. Warm start of a new workspace (POST → Running with its DHCP address) with the base already in the
 *    node cache, for a 100 MiB and a 4 GiB base (goal: the same, independent of size). Both bases are
 *    the guest's disk padded with zeros, so both boot.
 *
 *   VWS_BENCH=1 VWS_BENCH_RUNS=5 ./run.sh test --selectProjects bench bench/images.bench.ts
 */
import { copyFileSync, rmSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { workspaceWorkflowId } from '../src/config/names';
import { stageLocalFile } from '../src/repository';
import { exec, GUEST_DISK, startStack, TESTBED_DIR, type Stack, type TestNode } from '../test/helpers/stack';
import { deploy, settled, destroyAndCheck } from '../test/helpers/workspace';

const RUNS = Number(process.env.VWS_BENCH_RUNS ?? 5);
const NODES = (process.env.VWS_BENCH_NODES ?? 'vmm1,vmm2').split(',').filter((n) => n !== 'xen1') as TestNode[];
const RANGE: Record<string, [string, string]> = { vmm1: ['10.213.0.150', '10.213.0.154'], vmm2: ['10.213.0.160', '10.213.0.164'] };
const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const NODE_IP: Record<string, string> = { vmm1: '10.213.0.11', vmm2: '10.213.0.12' };

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const ms = (t: { seconds?: unknown; nanos?: number | null } | null | undefined) => Number(t?.seconds ?? 0) * 1000 + (t?.nanos ?? 0) / 1e6;

/** Milliseconds from the start to the completion of the workspace's propagateImage activity. */
async function propagationMs(stack: Stack, id: string): Promise<number> {
  const history = await stack.conn.client.workflow.getHandle(workspaceWorkflowId(stack.config, id)).fetchHistory();
  const scheduled = new Set<string>();
  const started = new Map<string, number>();
  for (const e of history.events ?? []) {
    if (e.activityTaskScheduledEventAttributes?.activityType?.name === 'propagateImage') scheduled.add(String(e.eventId));
    const s = e.activityTaskStartedEventAttributes;
    if (s && scheduled.has(String(s.scheduledEventId))) started.set(String(s.scheduledEventId), ms(e.eventTime));
    const c = e.activityTaskCompletedEventAttributes;
    if (c && started.has(String(c.scheduledEventId))) return ms(e.eventTime) - started.get(String(c.scheduledEventId))!;
  }
  throw new Error(`no completed propagateImage in ${id}'s history`);
}

/** A repository image of `size` bytes (random, or the guest disk padded with zeros so it boots). */
async function makeImage(stack: Stack, name: string, size: number, bootable: boolean): Promise<{ file: string; sha256: string }> {
  const file = join(stack.config.stateDir, `${name}.raw`);
  if (bootable) {
    copyFileSync(GUEST_DISK, file);
    truncateSync(file, size);
  } else {
    await exec.run(['dd', 'if=/dev/urandom', `of=${file}`, 'bs=4M', `count=${size / (4 * MiB)}`, 'status=none'], { timeoutMs: 300_000 });
  }
  const image = await stageLocalFile(stack.config, name, file);
  return { file, sha256: image.sha256 };
}

const cacheFile = (stack: Stack, sha256: string) => join(stack.nodeDir, 'cache', `${sha256}.raw`);
const dropCached = async (stack: Stack, sha256: string) => {
  await exec.remove(cacheFile(stack, sha256));
  await exec.remove(`${cacheFile(stack, sha256)}.part`);
  await exec.remove(join(stack.nodeDir, 'cache', `${sha256}.used`));
};

describe.each(NODES)('image propagation on %s', (node) => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ label: `bench-images-${node}`, first: RANGE[node][0], last: RANGE[node][1], node });
  });
  afterAll(() => stack?.stop());

  test(`cold propagation of 1 GiB vs scp (${RUNS} runs)`, async () => {
    const { file, sha256 } = await makeImage(stack, 'cold-1g', GiB, false);
    const vws: number[] = [];
    const scp: number[] = [];
    const key = join(TESTBED_DIR, 'ssh/id_ed25519');
    const known = join(TESTBED_DIR, 'ssh/known_hosts');
    for (let i = 0; i < RUNS; i++) {
      await dropCached(stack, sha256);
      const id = await deploy(stack, { image: 'cold-1g', targetState: 'Propagated' });
      await settled(stack, id, 'Propagated', 600);
      vws.push(await propagationMs(stack, id));
      await destroyAndCheck(stack, id);
      // The same bytes, the same path (head → node over the testbed bridge), with OpenSSH's scp.
      const t0 = performance.now();
      await exec.run(['scp', '-q', '-i', key, '-o', `UserKnownHostsFile=${known}`, '-o', 'StrictHostKeyChecking=yes', file, `root@${NODE_IP[node]}:/var/lib/vws/node/scp-bench.raw`], {
        timeoutMs: 600_000,
      });
      scp.push(performance.now() - t0);
      await exec.remove(join(stack.nodeDir, 'scp-bench.raw'));
    }
    await dropCached(stack, sha256);
    rmSync(file, { force: true });
    const mbps = (t: number) => (GiB / MiB / (t / 1000)).toFixed(0);
    const [v, s] = [median(vws), median(scp)];
    console.log(
      [
        `cold propagation of 1 GiB to ${node} (${stack.config.nodes[0].agent === 'ssh' ? 'SFTP push from the head' : 'HTTP pull by the node worker'}), median of ${RUNS}:`,
        `  vws propagateImage ${v.toFixed(0)} ms (${mbps(v)} MiB/s; runs ${vws.map((x) => x.toFixed(0)).join(', ')})`,
        `  scp                ${s.toFixed(0)} ms (${mbps(s)} MiB/s; runs ${scp.map((x) => x.toFixed(0)).join(', ')})`,
        `  throughput ratio vws/scp = ${(s / v).toFixed(2)} (goal >= 0.9)`,
      ].join('\n'),
    );
    expect(vws).toHaveLength(RUNS);
  });

  test(`warm start with a 100 MiB and a 4 GiB base in the cache (${RUNS} runs each)`, async () => {
    const lines: string[] = [];
    for (const [name, size] of [
      ['warm-100m', 100 * MiB],
      ['warm-4g', 4 * GiB],
    ] as const) {
      const { file, sha256 } = await makeImage(stack, name, size, true);
      // One cold deploy fills the cache; the measured ones find it there.
      const first = await deploy(stack, { image: name, targetState: 'Propagated' });
      await settled(stack, first, 'Propagated', 900);
      await destroyAndCheck(stack, first);
      const times: number[] = [];
      for (let i = 0; i < RUNS; i++) {
        const t0 = performance.now();
        const id = await deploy(stack, { image: name });
        const ws = await settled(stack, id, 'Running', 300);
        times.push(performance.now() - t0);
        expect(ws.propagation).toEqual({ bytesCopied: 0, resumedFromBytes: 0 });
        await destroyAndCheck(stack, id);
      }
      lines.push(`  ${name.padEnd(10)} POST → Running median ${median(times).toFixed(0)} ms (runs ${times.map((x) => x.toFixed(0)).join(', ')})`);
      await dropCached(stack, sha256);
      rmSync(file, { force: true });
      await exec.remove(join(stack.config.repository.dir, name));
    }
    console.log([`warm start on ${node} (base already cached; 0 bytes copied):`, ...lines].join('\n'));
  });
});
