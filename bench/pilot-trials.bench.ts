/**
 * The seed's Tests A, B and C of the workspace pilot at full size (seed 004): per node, VWS_TRIALS (100)
 * deploy/destroy trials of each kind in VWS_TRIAL_KINDS (A,B,C), on the testbed's real Slurm, with the
 * memory monitor's CSV and the figure (PNG) of memory against time per node, like the seed's figures.
 *   VWS_BENCH=1 TEMPORAL_ADDRESS=127.0.0.1:7233 VWS_LOG_LEVEL=warn VWS_TRIALS=100 VWS_TRIAL_KINDS=A,B,C \
 *   VWS_TRIAL_NODE=vmm3 npx jest --runInBand --selectProjects bench --testPathPattern bench/pilot-trials
 * VWS_TRIAL_NODE=xen1 runs them on the Xen node (dom0 ballooning under the pilot; its slurmd runs in
 * dom0, testbed/README.md "xen1 as a Slurm node"). Output: VWS_TRIAL_OUT (default bench/out/pilot-trials-
 * <node>-<time>/): memory.csv, memory.png, trials.json. Each trial is timed; nothing here fails on time.
 */
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { SlurmBatchSystem } from '../src/activities/lrm/slurm';
import type { SshExecutor } from '../src/exec/ssh';
import { dom0Probe, startMemoryMonitor, type MemoryMonitor } from '../test/helpers/memory-monitor';
import { plotMemoryPng } from '../test/helpers/memory-plot';
import { runPilotTrials, summarizeTrials, type TrialKind, type TrialResult } from '../test/helpers/pilot-trials';
import { cancelStackJobs, startPilotStack, startXen1PilotStack, testbedReservationProbe, testbedSlurm } from '../test/helpers/pilot-stack';
import { type Stack, type TestNode } from '../test/helpers/stack';
import { xen1Executor } from '../test/helpers/xen1';

jest.setTimeout(24 * 3600_000);

const TRIALS = Number(process.env.VWS_TRIALS ?? 100);
const KINDS = (process.env.VWS_TRIAL_KINDS ?? 'A,B,C').split(',') as TrialKind[];
const NODE = (process.env.VWS_TRIAL_NODE ?? 'vmm3') as TestNode;
const OUT = process.env.VWS_TRIAL_OUT ?? resolve(__dirname, 'out', `pilot-trials-${NODE}-${new Date().toISOString().replace(/[:.]/g, '-')}`);
/**
 * How long a deploy may take (VWS_TRIAL_DEPLOY_SECONDS). xen1's dom0 runs under TCG: there the pilot's Node.js
 * alone was seen to need 100 s to start and the balloon 36 s at load 3, so its trials get 15 minutes.
 */
const DEPLOY_WINDOW_MS = Number(process.env.VWS_TRIAL_DEPLOY_SECONDS ?? (NODE === 'xen1' ? 900 : 240)) * 1000;

let stack: Stack;
let slurm: SlurmBatchSystem;
let monitor: MemoryMonitor;
/** The memory probe's executor on xen1 (see beforeAll). */
let dom0Reads: SshExecutor | undefined;
const results: TrialResult[] = [];

beforeAll(async () => {
  mkdirSync(OUT, { recursive: true });
  slurm = testbedSlurm();
  const xen = NODE === 'xen1';
  const options = {
    label: `pilot-trials-${NODE}`,
    headProcess: true,
    pilot: { reserveTimeoutSeconds: 300 },
  } as const;
  // A range per node, so a run on vmm3 and one on xen1 (each under its node's lock) can go at once.
  stack = xen
    ? await startXen1PilotStack({ ...options, first: '10.213.0.90', last: '10.213.0.91' })
    : await startPilotStack({ ...options, first: '10.213.0.85', last: '10.213.0.86', node: NODE });
  // Its own connection to dom0, sending a command again once if the connection was lost (xen1's emulated
  // dom0 drops one now and then): a lost sample is the monitor's trouble, not the trial's.
  if (xen) dom0Reads = xen1Executor();
  const probe = dom0Reads ? dom0Probe(NODE, dom0Reads) : testbedReservationProbe(NODE);
  monitor = startMemoryMonitor([probe], join(OUT, 'memory.csv'));
});

afterAll(async () => {
  const series = await monitor?.stop();
  if (series) plotMemoryPng(join(OUT, 'memory.png'), series);
  writeFileSync(join(OUT, 'trials.json'), `${JSON.stringify(results, null, 2)}\n`);
  await cancelStackJobs(stack, slurm);
  await stack?.stop();
  await dom0Reads?.close();
  console.log(`pilot trials on ${NODE}: ${OUT}/memory.csv, memory.png, trials.json`);
});

describe.each(KINDS)(`Test %s on ${NODE}`, (kind) => {
  it(`${TRIALS} trials`, async () => {
    const t0 = Date.now();
    const r = await runPilotTrials({
      stack,
      slurm,
      monitor,
      node: NODE,
      kind,
      trials: TRIALS,
      deployWindowMs: DEPLOY_WINDOW_MS,
      ...(NODE === 'xen1' ? { handBackWindowMs: 600_000 } : {}),
      // The full run goes on past a failed trial when vws still left the node clean: it reports how many
      // of the hundred deployed, and that none of the failures leaked anything.
      continueAfterCleanFailure: true,
      // One line per trial as it ends (jest prints console output only at the end): a long run's progress.
      onTrial: (t) => {
        appendFileSync(join(OUT, 'progress.jsonl'), `${JSON.stringify(t)}\n`);
        if (t.trial % 10 === 0) console.log(`${kind}${t.trial}: ${t.ok ? 'ok' : t.failure} deploy ${t.deployMs} ms, hand-back ${t.handBackMs} ms`);
      },
    });
    results.push(...r);
    console.log(`Test ${kind} on ${NODE}: ${JSON.stringify({ ...summarizeTrials(r), seconds: Math.round((Date.now() - t0) / 1000) })}`);
    expect(r.filter((t) => !t.ok).map((t) => t.failure)).toEqual([]);
  });
});
