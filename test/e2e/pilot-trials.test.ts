/**
 * The seed's Tests A, B and C of the workspace pilot, CI-sized (two trials of A, one of B, one of C) on the
 * testbed's real Slurm and the QEMU node vmm3, with the memory monitor writing its CSV and the PNG figure
 * (the full hundred-trial run is `bench/pilot-trials.bench.ts`). Every trial must deploy, leave the node's
 * memory at exactly its starting value, and leave no slot, lease, grant, batch job, VM or file.
 * The head and the node worker run as processes of their own, so Test C can kill -9 and restart them.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import type { SlurmBatchSystem } from '../../src/activities/lrm/slurm';
import { startMemoryMonitor, type MemoryMonitor } from '../helpers/memory-monitor';
import { plotMemoryPng } from '../helpers/memory-plot';
import { runPilotTrials, summarizeTrials, type TrialKind, type TrialResult } from '../helpers/pilot-trials';
import { cancelStackJobs, startPilotStack, testbedReservationProbe, testbedSlurm } from '../helpers/pilot-stack';
import { TEST_NODES, type Stack } from '../helpers/stack';

jest.setTimeout(900_000);

const NODE = 'vmm3';

let stack: Stack;
let slurm: SlurmBatchSystem;
let monitor: MemoryMonitor;
const results: TrialResult[] = [];

beforeAll(async () => {
  slurm = testbedSlurm();
  stack = await startPilotStack({ label: 'pilot-trials', first: '10.213.0.83', last: '10.213.0.84', node: NODE, headProcess: true });
  monitor = startMemoryMonitor([testbedReservationProbe(NODE)], join(stack.config.stateDir, 'memory.csv'));
});
afterAll(async () => {
  await monitor?.stop();
  await cancelStackJobs(stack, slurm);
  await stack?.stop();
});

describe.each<[TrialKind, number]>([
  ['A', 2],
  ['B', 1],
  ['C', 1],
])('Test %s on vmm3 (QEMU, host memory reservation)', (kind, trials) => {
  it(`${trials} trials: each deploys, memory returns exactly, nothing is left`, async () => {
    const r = await runPilotTrials({ stack, slurm, monitor, node: NODE, kind, trials });
    results.push(...r);
    console.log(`Test ${kind}: ${JSON.stringify(summarizeTrials(r))}`);
    expect(r.map((t) => t.failure ?? 'ok')).toEqual(Array(trials).fill('ok'));
    for (const t of r) {
      expect(t.memoryAfterMiB).toBe(t.memoryBeforeMiB);
      // While the VM ran, the pilot held exactly the VM's memory and the site's overhead (128 + 64 MiB).
      expect(t.memoryBeforeMiB - t.memoryDuringMiB!).toBe(192);
    }
  });
});

describe('the memory figure', () => {
  it('the CSV has every node sample, and the PNG shows the dips of every trial', async () => {
    const series = await monitor.stop();
    const csv = readFileSync(join(stack.config.stateDir, 'memory.csv'), 'utf8').trim().split('\n');
    expect(csv[0]).toBe('seconds,node,memoryMiB');
    expect(csv.length - 1).toBe(series[0].points.length);
    const values = new Set(series[0].points.map(([, v]) => v));
    expect([...values].sort()).toEqual([TEST_NODES[NODE].memoryMiB - 192, TEST_NODES[NODE].memoryMiB].sort());
    const file = join(stack.config.stateDir, 'memory.png');
    plotMemoryPng(file, series);
    expect(existsSync(file)).toBe(true);
    const png = PNG.sync.read(readFileSync(file));
    expect([png.width, png.height]).toEqual([960, 420]);
    // The line's colour is there (the first series is drawn in blue).
    let blue = 0;
    for (let i = 0; i < png.data.length; i += 4) if (png.data[i] === 31 && png.data[i + 1] === 119 && png.data[i + 2] === 180) blue++;
    expect(blue).toBeGreaterThan(500);
    console.log(`memory figure: ${file} (${series[0].points.length} samples over ${results.length} trials)`);
  });
});
