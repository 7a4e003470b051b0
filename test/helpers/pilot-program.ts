/**
 * What the tests of the real pilot program (`dist/pilot/main.js run` as a Slurm job) share: a recorder
 * worker standing in for the slot workflows (test/fixtures/pilot-recorder-workflows.ts), the real API's
 * `POST /pilot/notifications` route on the testbed's bridge, vws's Slurm adapter, and the pilot's command
 * line. Used by test/workflow/pilot-program.test.ts (vmm1) and test/integration/pilot-xen-slurm.test.ts
 * (xen1's dom0).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { Worker } from '@temporalio/worker';
import { SlurmBatchSystem } from '../../src/activities/lrm/slurm';
import type { BatchJobStatus } from '../../src/activities/lrm/types';
import { createApp } from '../../src/api/app';
import { ApiMetrics } from '../../src/api/metrics';
import { AllocatorClient } from '../../src/clients/allocator';
import { pilotSlotWorkflowId } from '../../src/config/names';
import type { VwsConfig } from '../../src/config/schema';
import type { PilotNotification } from '../../src/domain/messages';
import { LocalExecutor } from '../../src/exec/local';
import { receivedQuery, stopSignal } from '../fixtures/pilot-recorder-workflows';
import { connect, testConfig, type TestConnections } from './temporal';

const TB = process.env.VWS_TESTBED_DIR ?? '/var/lib/vws/testbed';
/** The testbed's slurm.conf. */
export const SLURM_CONF = join(TB, 'slurm', 'slurm.conf');
/** The built pilot program (`npx tsc -p tsconfig.build.json` first); the same path inside vmm1 and xen1's dom0. */
export const PILOT_MAIN = resolve(__dirname, '../../dist/pilot/main.js');

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `f` every `pollMs` until it answers something truthy, or fails after `ms` naming `what`. */
export async function waitFor<T>(what: string, ms: number, f: () => Promise<T | undefined | null | false>, pollMs = 200): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(pollMs);
  }
}

/** A submitted pilot job. */
export interface PilotJob {
  slotId: string;
  jobId: string;
  submittedAt: number;
  /** The job's output file (the pilot's JSON log), as the test reads it. */
  output: string;
}

/** The flags of `main.js run` that the tests vary; the rest is fixed (grace ratio 0.5, notify budget 10 s). */
export interface PilotRunFlags {
  slotId: string;
  node: string;
  api: string;
  secretFile: string;
  reserveMiB: number;
  memory: 'host' | 'xen';
  /** Omitted: the pilot finds it itself (xen: Xen's boot line). */
  configuredMiB?: number;
  /** The slot ends this many seconds from now (`--end`)… */
  endInS?: number;
  /** …or this many seconds after the pilot started (`--hold-seconds`: however long it took to start). */
  holdS?: number;
  marginS: number;
  /** KillWait of the testbed's Slurm. */
  graceS: number;
  pilotNeedsS: number;
  nodeDir: string;
  extra?: string[];
}

/** The pilot's `run` arguments (after the node binary and main.js). */
export function pilotRunArgs(f: PilotRunFlags): string[] {
  if ((f.endInS === undefined) === (f.holdS === undefined)) throw new Error('pilotRunArgs: give endInS or holdS, exactly one');
  return [
    'run',
    '--slot', f.slotId,
    '--node', f.node,
    '--api', f.api,
    '--secret-file', f.secretFile,
    '--reserve-mib', String(f.reserveMiB),
    '--memory', f.memory,
    ...(f.configuredMiB === undefined ? [] : ['--configured-mib', String(f.configuredMiB)]),
    ...(f.holdS === undefined ? ['--end', new Date(Date.now() + f.endInS! * 1000).toISOString()] : ['--hold-seconds', String(f.holdS)]),
    '--margin-seconds', String(f.marginS),
    '--grace-seconds', String(f.graceS),
    '--grace-ratio', '0.5',
    '--pilot-needs-seconds', String(f.pilotNeedsS),
    '--notify-seconds', '10',
    '--node-dir', f.nodeDir,
    ...(f.extra ?? []),
  ];
}

/**
 * The shared set-up: a Temporal connection and test config (its own prefix, a pilot secret in a fresh
 * state directory), the recorder worker, the real API on 10.213.0.1 (where the testbed's hosts reach it),
 * and the Slurm adapter. {@link close} undoes all of it.
 */
export class PilotHarness {
  readonly slurm = new SlurmBatchSystem(new LocalExecutor(), { slurmConf: SLURM_CONF });
  /** Slots whose recorder was started (stopped in {@link close}). */
  private readonly slots: string[] = [];

  private constructor(
    readonly conn: TestConnections,
    readonly config: VwsConfig,
    readonly stateDir: string,
    private readonly worker: Worker,
    private readonly running: Promise<void>,
    private readonly server: Server,
    /** The API as the pilots reach it. */
    readonly apiUrl: string,
  ) {}

  /** Starts everything; `name` names the state directory (`/tmp/vws-<name>-…`, seen by vmm1 too). */
  static async start(name: string): Promise<PilotHarness> {
    const conn = await connect();
    const stateDir = mkdtempSync(join(tmpdir(), `vws-${name}-`));
    const config = testConfig({ stateDir, pilot: { secretFile: join(stateDir, 'secrets', 'pilot.secret') }, reconciler: { enabled: false } });
    const worker = await Worker.create({
      connection: conn.native,
      namespace: config.temporal.namespace,
      taskQueue: `${config.temporal.prefix}-pilot-recorder`,
      workflowsPath: require.resolve('../fixtures/pilot-recorder-workflows'),
    });
    const running = worker.run();
    // createApp makes the site's pilot secret (config.pilot.secretFile) if it is missing.
    const metrics = new ApiMetrics({ config, client: conn.client, allocator: new AllocatorClient(conn.client, config), cacheMs: 60_000 });
    const app = createApp({ config, client: conn.client, clientTokens: () => [], nodeTokens: () => [], metrics });
    const server = createServer(app);
    await new Promise<void>((r) => server.listen(0, '10.213.0.1', r));
    const apiUrl = `http://10.213.0.1:${(server.address() as AddressInfo).port}`;
    return new PilotHarness(conn, config, stateDir, worker, running, server, apiUrl);
  }

  /** The pilots' job-name prefix (`<test prefix>-pilot`); also the name of their node directory. */
  get jobPrefix(): string {
    return `${this.config.temporal.prefix}-pilot`;
  }

  /** The pilot secret file on the head. */
  get secretFile(): string {
    return this.config.pilot!.secretFile;
  }

  /** Starts the recorder workflow under the slot's workflow id, so the API has somewhere to deliver. */
  async startRecorder(slotId: string): Promise<void> {
    this.slots.push(slotId);
    await this.conn.client.workflow.start('pilotRecorderWorkflow', {
      taskQueue: `${this.config.temporal.prefix}-pilot-recorder`,
      workflowId: pilotSlotWorkflowId(this.config, slotId),
    });
  }

  /** What the slot's recorder got so far, in order. */
  async received(slotId: string): Promise<PilotNotification[]> {
    return this.conn.client.workflow.getHandle(pilotSlotWorkflowId(this.config, slotId)).query(receivedQuery);
  }

  /** Waits until the slot's recorder got a notification with `event`, and returns it. */
  async notification(slotId: string, event: PilotNotification['event'], ms: number): Promise<PilotNotification> {
    return waitFor(`${event} notification`, ms, async () => (await this.received(slotId)).find((n) => n.event === event));
  }

  /** Submits the pilot as a Slurm job named `<jobPrefix>-<slotId>`. */
  async submit(o: {
    slotId: string;
    argv: string[];
    node: string;
    partition?: string;
    constraints?: string[];
    walltimeSeconds: number;
    /** The output file as the job's node sees it. */
    outputFile: string;
    /** The same file as the test reads it (default: outputFile). */
    outputOnHead?: string;
  }): Promise<PilotJob> {
    const submittedAt = Date.now();
    const { jobId } = await this.slurm.submit({
      name: `${this.jobPrefix}-${o.slotId}`,
      command: { kind: 'argv', argv: o.argv },
      node: o.node,
      ...(o.partition ? { partition: o.partition } : {}),
      ...(o.constraints ? { constraints: o.constraints } : {}),
      walltimeSeconds: o.walltimeSeconds,
      // Slurm's own "your time is nearly up" (it may come up to a minute early): the pilot treats it as SIGTERM.
      signalBeforeEnd: { signal: 'USR1', seconds: 60 },
      outputFile: o.outputFile,
      workDir: '/tmp',
    });
    return { slotId: o.slotId, jobId, submittedAt, output: o.outputOnHead ?? o.outputFile };
  }

  /** Waits until Slurm calls the job ended, and returns its end. */
  async ended(job: PilotJob, ms: number): Promise<Extract<BatchJobStatus, { state: 'ended' }>> {
    return waitFor(`job ${job.jobId} to end`, ms, async () => {
      const s = await this.slurm.status(job.jobId);
      return s.state === 'ended' ? s : undefined;
    });
  }

  /** Cancels every live job of ours and waits until Slurm lists none. */
  async cancelAll(ms: number): Promise<void> {
    for (const j of await this.slurm.listByPrefix(this.jobPrefix)) await this.slurm.cancel(j.jobId);
    await waitFor('no live pilot job', ms, async () => (await this.slurm.listByPrefix(this.jobPrefix)).length === 0);
  }

  /** Stops the recorders, the API and the worker; closes the connection; removes the state directory. */
  async close(): Promise<void> {
    for (const slot of this.slots) {
      await this.conn.client.workflow.getHandle(pilotSlotWorkflowId(this.config, slot)).signal(stopSignal).catch(() => undefined);
    }
    this.server.close();
    this.worker.shutdown();
    await this.running;
    await this.conn.close();
    rmSync(this.stateDir, { recursive: true, force: true });
  }
}

/** True while a QEMU process of `name` runs (anywhere on this machine: the namespaces share the pid space). */
export async function qemuRuns(name: string): Promise<boolean> {
  try {
    await promisify(execFile)('pgrep', ['-f', `qemu-system.*${name}`]);
    return true;
  } catch {
    return false;
  }
}
