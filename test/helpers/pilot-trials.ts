/**
 * The seed's Tests A, B and C of the workspace pilot (seed 004), as one scenario the test suite runs with
 * a few trials and `bench/pilot-trials.bench.ts` with a hundred:
 *   A  deploy in pilot mode, destroy through vws
 *   B  deploy in pilot mode, cancel the pilot job with scancel (the batch system takes the node back)
 *   C  as B, and vws's head and node workers are killed (-9) and restarted between trials
 * Each trial must deploy within its window; after each, the node's memory must be back at its exact
 * starting value (0 MiB drift) and nothing may be left: no slot workflow, lease, grant, batch job, VM,
 * DHCP entry or file.
 */
import { SlurmBatchSystem } from '../../src/activities/lrm/slurm';
import { AllocatorClient } from '../../src/clients/allocator';
import { pilotSlotWorkflowId } from '../../src/config/names';
import { pilotSlotQuery } from '../../src/domain/pilot-slot';
import type { MemoryMonitor } from './memory-monitor';
import { TEST_NODES, type Stack } from './stack';
import { show } from './workspace';

/** Which of the seed's tests. */
export type TrialKind = 'A' | 'B' | 'C';

/** One trial's outcome. */
export interface TrialResult {
  kind: TrialKind;
  trial: number;
  node: string;
  ok: boolean;
  /** POST → Running with its address, ms. */
  deployMs?: number;
  /** Destroy or scancel → slot ended, lease gone, job gone, ms. */
  handBackMs?: number;
  memoryBeforeMiB: number;
  /** While the VM ran (what the pilot reserved shows here). */
  memoryDuringMiB?: number;
  memoryAfterMiB?: number;
  /** Why the trial failed (first thing wrong). */
  failure?: string;
  /**
   * For a failed trial: whether vws still left the node clean afterwards (slot ended, nothing held,
   * memory exactly where it started), or what it left.
   */
  afterFailure?: 'clean' | string;
}

/** What a run of trials needs. */
export interface TrialOptions {
  stack: Stack;
  slurm: SlurmBatchSystem;
  monitor: MemoryMonitor;
  /** The pilot node the stack's only pilot node is. */
  node: string;
  kind: TrialKind;
  trials: number;
  /** How long a deploy may take before the trial fails, ms. */
  deployWindowMs?: number;
  /** How long each step of the hand-back (workspace Cancelled, slot ended) may take, ms (default 120 s). */
  handBackWindowMs?: number;
  /** Called after each trial (progress). */
  onTrial?: (r: TrialResult) => void;
  /**
   * Go on after a failed trial whose node vws left clean (the full runs: how often trials fail, and that
   * every failure still ends with nothing held). Default: stop at the first failure.
   */
  continueAfterCleanFailure?: boolean;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Thrown by a poll of {@link until} when waiting on is pointless (the workspace ended): ends the wait at once. */
class WaitPointless extends Error {
  /** The workspace, when it ended Corrupted (it then holds its resources until destroyed). */
  corrupted?: string;
}

/**
 * Polls `f` every 250 ms until truthy; throws `what` after `ms`. A failed poll counts as "not yet" (the
 * API or a query may be briefly unavailable), except {@link WaitPointless}, which is thrown as it came.
 */
async function until<T>(what: string, ms: number, f: () => Promise<T | undefined | null | false>): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f().catch((e: unknown) => {
      if (e instanceof WaitPointless) throw e;
      return undefined;
    });
    if (v) return v;
    if (Date.now() > end) throw new Error(`${what} not within ${ms / 1000} s`);
    await sleep(250);
  }
}

/** Runs `trials` trials of one kind on one node, one after the other; answers every trial's result. */
export async function runPilotTrials(o: TrialOptions): Promise<TrialResult[]> {
  const { stack, slurm, monitor, node, kind } = o;
  const allocator = new AllocatorClient(stack.conn.client, stack.config);
  const jobPrefix = `${stack.config.temporal.prefix}-pilot`;
  const handBackMs = o.handBackWindowMs ?? 120_000;
  /** The slot ended and nothing is held anywhere; the memory is what it was before the trial (answered). */
  const expectClean = async (slotId: string, before: number): Promise<number> => {
    await until('slot ended', handBackMs, async () => (await stack.conn.client.workflow.getHandle(slotId).describe()).status.name !== 'RUNNING');
    const { jobId } = await stack.conn.client.workflow.getHandle(slotId).query(pilotSlotQuery);
    if (jobId) {
      const job = await slurm.status(jobId);
      if (job.state !== 'ended' && job.state !== 'unknown') throw new Error(`job ${jobId} is still ${job.state}`);
    }
    const jobs = await slurm.listByPrefix(jobPrefix);
    if (jobs.length) throw new Error(`batch jobs left: ${jobs.map((j) => j.jobId).join(', ')}`);
    const leases = await allocator.leases();
    if (leases.length) throw new Error(`leases left: ${JSON.stringify(leases)}`);
    const grants = await stack.grants();
    if (grants.length) throw new Error(`grants left: ${JSON.stringify(grants)}`);
    const left = await stack.leftovers();
    if (left.length) throw new Error(`left on the node: ${left.join(', ')}`);
    const after = await monitor.sample(node);
    if (after !== before) throw new Error(`memory ${after} MiB after the trial, ${before} MiB before`);
    return after;
  };
  const results: TrialResult[] = [];
  for (let trial = 1; trial <= o.trials; trial++) {
    const before = await monitor.sample(node);
    const r: TrialResult = { kind, trial, node, ok: false, memoryBeforeMiB: before };
    let slotId: string | undefined;
    try {
      const t0 = Date.now();
      const created = await stack.call('alice', 'POST', '/workspaces', { image: 'sample', memoryMiB: 128, durationSeconds: 600, pilot: true });
      if (created.status !== 202) throw new Error(`create answered ${created.status}: ${JSON.stringify(created.body)}`);
      const id = String(created.body.id);
      slotId = pilotSlotWorkflowId(stack.config, id);
      await until('Running with an address', o.deployWindowMs ?? 240_000, async () => {
        const ws = await show(stack, id);
        if (ws.state === 'Cancelled' || ws.state === 'Corrupted') {
          const pointless = new WaitPointless(`${id} ended ${ws.state} before it ran: ${ws.reason}`);
          if (ws.state === 'Corrupted') pointless.corrupted = id;
          throw pointless;
        }
        return ws.state === 'Running' && ws.task === null && !!ws.obtainedIp;
      });
      r.deployMs = Date.now() - t0;
      r.memoryDuringMiB = await monitor.sample(node);
      const { jobId } = await stack.conn.client.workflow.getHandle(slotId).query(pilotSlotQuery);
      const t1 = Date.now();
      if (kind === 'A') {
        const d = await stack.call('alice', 'DELETE', `/workspaces/${id}`);
        if (d.status !== 202) throw new Error(`destroy answered ${d.status}`);
      } else {
        await slurm.cancel(jobId!);
      }
      await until('workspace Cancelled', handBackMs, async () => (await show(stack, id)).state === 'Cancelled');
      await until('slot ended', handBackMs, async () => (await stack.conn.client.workflow.getHandle(slotId!).describe()).status.name !== 'RUNNING');
      r.handBackMs = Date.now() - t1;
      // Nothing held anywhere, and the memory exactly where it started.
      r.memoryAfterMiB = await expectClean(slotId, before);
      if (kind === 'C') {
        // vws itself goes down hard and comes back between trials; the next trial must not notice.
        // An SSH-mode node (xen1) has no node worker process: the head's process serves its task queue.
        const nodeWorker = TEST_NODES[stack.node].agent === 'worker';
        stack.killHead();
        if (nodeWorker) stack.killNodeWorker();
        await stack.startHead();
        if (nodeWorker) await stack.startNodeWorker();
      }
      r.ok = true;
    } catch (e) {
      r.failure = (e as Error).message;
      // The workspace ended before it ran (the pilot job failed, say): vws must still leave nothing. A
      // Corrupted one keeps its resources until its owner destroys it, as a client would here.
      if (e instanceof WaitPointless && slotId) {
        try {
          if (e.corrupted) {
            const d = await stack.call('alice', 'DELETE', `/workspaces/${e.corrupted}`);
            if (d.status !== 202) throw new Error(`destroying the Corrupted ${e.corrupted} answered ${d.status}`);
          }
          r.memoryAfterMiB = await expectClean(slotId, before);
          r.afterFailure = 'clean';
        } catch (left) {
          r.afterFailure = (left as Error).message;
        }
      }
    }
    results.push(r);
    o.onTrial?.(r);
    // A failed trial that left state behind would trip the next one: stop and report.
    if (!r.ok && !(o.continueAfterCleanFailure && r.afterFailure === 'clean')) break;
  }
  return results;
}

/** A line of figures over trials: count, failures, deploy and hand-back times (median / max), memory drift. */
export function summarizeTrials(results: TrialResult[]): Record<string, unknown> {
  const ms = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length ? { median: s[Math.floor(s.length / 2)], max: s[s.length - 1] } : {};
  };
  return {
    trials: results.length,
    passed: results.filter((r) => r.ok).length,
    failures: results.filter((r) => !r.ok).map((r) => `${r.kind}${r.trial}: ${r.failure}${r.afterFailure ? ` (afterwards: ${r.afterFailure})` : ''}`),
    deployMs: ms(results.flatMap((r) => (r.deployMs === undefined ? [] : [r.deployMs]))),
    handBackMs: ms(results.flatMap((r) => (r.handBackMs === undefined ? [] : [r.handBackMs]))),
    maxDriftMiB: Math.max(0, ...results.flatMap((r) => (r.memoryAfterMiB === undefined ? [] : [Math.abs(r.memoryAfterMiB - r.memoryBeforeMiB)]))),
  };
}
