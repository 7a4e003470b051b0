/**
 * The reconciler's pilot part (issue 6 item 6, issue 7's "nothing leaked") against the testbed's real
 * Slurm and a real head worker on the dev server: a pilot slot whose workflow was terminated (no release
 * ran) leaves its job running and its lease in the allocator; a vws pilot job no slot workflow owns runs
 * beside it. One run cancels the lease's job, confirms it gone and only then ends the lease, and reports
 * the unowned job; a run after the grace period cancels that job; a live slot's lease and job are left
 * alone until its workflow goes too. Each drift is in the report, the drift listing, the metric and the
 * admin routes (`GET /admin/leases` shows pilot leases; `vws admin leases` prints them).
 *
 * The jobs are `sleep` jobs named as vws names pilots (`<prefix>-pilot-<slot>`), pinned to vmm2 (vmm1
 * is the pilot program test's node, vmm3 the pilot e2e's). No node worker runs: the runs are given no
 * nodes to list, so only the grants and the pilot part are compared. The slot workflows are started on a
 * task queue no worker serves: open (or terminated) workflows under the slot ids, nothing more.
 * Needs: the dev server (TEMPORAL_ADDRESS), the testbed's Slurm, and a fresh `dist/` (for the CLI).
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import request from 'supertest';
import { Worker } from '@temporalio/worker';
import { SlurmBatchSystem } from '../../src/activities/lrm/slurm';
import type { PilotJobRequest } from '../../src/activities/lrm/types';
import { createApp } from '../../src/api/app';
import { AllocatorClient } from '../../src/clients/allocator';
import { reconcilerInput } from '../../src/clients/reconciler';
import { headTaskQueue, pilotSlotWorkflowId } from '../../src/config/names';
import type { VwsConfig } from '../../src/config/schema';
import { tokenDigest } from '../../src/config/secrets';
import type { DriftReport } from '../../src/domain/reconcile';
import { LocalExecutor } from '../../src/exec/local';
import { createHeadWorker } from '../../src/workers/head';
import type { ReconcilerInput } from '../../src/workflows/reconciler';
import { connect, endWorkflowTest, testConfig, workflowBundle, type TestConnections } from '../helpers/temporal';

jest.setTimeout(120_000);

const TB = process.env.VWS_TESTBED_DIR ?? '/var/lib/vws/testbed';
const SLURM_CONF = join(TB, 'slurm', 'slurm.conf');
const NODE = 'vmm2';
const CLI = resolve(__dirname, '../../dist/cli/vws.js');
const run = promisify(execFile);

let conn: TestConnections;
let config: VwsConfig;
let worker: Worker;
let running: Promise<void>;
let server: Server;
let allocator: AllocatorClient;
let slurm: SlurmBatchSystem;
const rootToken = `tok-root-${randomBytes(16).toString('hex')}`;

beforeAll(async () => {
  conn = await connect();
  const dir = mkdtempSync('/tmp/vws-reconcile-pilot-');
  writeFileSync(join(dir, 'root.token'), `${rootToken}\n`, { mode: 0o600 });
  config = testConfig({
    stateDir: dir,
    repository: { dir: join(dir, 'repository'), url: 'http://127.0.0.1:9/repository', nodeTokenFile: join(dir, 'node.token') },
    clients: [{ name: 'root', identity: '/O=Grid/OU=test/CN=root', tokenFile: join(dir, 'root.token'), admin: true }],
    networks: [{ name: 'public', subnet: '10.213.0.0/24', gateway: '10.213.0.1', ranges: [{ first: '10.213.0.240', last: '10.213.0.241' }] }],
    nodes: [{ name: NODE, memoryMiB: 2048, cpus: 4, pilot: true, bridges: { public: 'br0' } }],
    lrm: { kind: 'slurm', partition: 'vws', slurm: { conf: SLURM_CONF } },
    pilot: { secretFile: join(dir, 'pilot.secret'), apiUrl: 'http://127.0.0.1:9' },
    // Runs are started by hand; the long grace period is shortened per run where the test plays it passing.
    reconciler: { enabled: false, graceSeconds: 3600 },
  });
  slurm = new SlurmBatchSystem(new LocalExecutor(), { slurmConf: SLURM_CONF, partition: 'vws' });
  worker = await createHeadWorker({ config, connection: conn.native, client: conn.client, workflowBundle: await workflowBundle() });
  running = worker.run();
  allocator = new AllocatorClient(conn.client, config);
  const app = createApp({
    config,
    client: conn.client,
    allocator,
    clientTokens: () => [{ digest: tokenDigest(rootToken), principal: { name: 'root', identity: '/O=Grid/OU=test/CN=root', admin: true } }],
    nodeTokens: () => [],
  });
  server = app.listen(0, '127.0.0.1');
});

afterAll(async () => {
  // Nothing this test submitted may stay in the batch system, whatever failed; squeue (the CLI) confirms.
  const prefix = `${config?.temporal.prefix}-pilot`;
  for (const j of await slurm?.listByPrefix(prefix).catch(() => []) ?? []) await slurm.cancel(j.jobId).catch(() => undefined);
  for (let i = 0; i < 50 && liveJobs().length; i++) await new Promise((r) => setTimeout(r, 200));
  server?.close();
  if (conn) await endWorkflowTest({ conn, config, worker, running, reason: 'reconcile-pilot test done' });
  expect(liveJobs()).toEqual([]);
});

/** Live jobs named with this test's pilot prefix, as squeue itself lists them (`<id> <name>`). */
function liveJobs(): string[] {
  const out = execFileSync('squeue', ['-h', '-o', '%i %j'], { env: { ...process.env, SLURM_CONF }, encoding: 'utf8' });
  return out
    .split('\n')
    .filter((l) => l.split(' ')[1]?.startsWith(`${config.temporal.prefix}-pilot`))
    .sort();
}

/** A stand-in for a pilot: `sleep`, named as the slot's pilot would be, pinned to vmm2. */
async function submitSleep(slot: string): Promise<string> {
  const job: PilotJobRequest = {
    name: pilotSlotWorkflowId(config, slot),
    command: { kind: 'argv', argv: ['sleep', '600'] },
    node: NODE,
    walltimeSeconds: 600,
    cpus: 1,
    memoryMiB: 16,
    outputFile: '/dev/null',
    workDir: '/tmp',
  };
  return (await slurm.submit(job)).jobId;
}

/** Starts a slot workflow under the slot's id on a task queue no worker serves: open, doing nothing. */
async function openSlot(slot: string): Promise<string> {
  const workflowId = pilotSlotWorkflowId(config, slot);
  await conn.client.workflow.start('pilotSlotWorkflow', { workflowId, taskQueue: `${config.temporal.prefix}-nobody` });
  return workflowId;
}

let runs = 0;
/** One reconcile run, as the Schedule starts it (no nodes to list: no node worker runs here). */
async function reconcile(over: Partial<ReconcilerInput> = {}): Promise<{ report: DriftReport; workflowId: string }> {
  runs += 1;
  const workflowId = `${config.temporal.prefix}-reconcile-pilot-${runs}`;
  const report = (await conn.client.workflow.execute('reconcilerWorkflow', {
    taskQueue: headTaskQueue(config),
    workflowId,
    args: [{ ...reconcilerInput(config), nodes: [], ...over }],
  })) as DriftReport;
  return { report, workflowId };
}

const call = (path: string) => request(server).get(path).set('authorization', `Bearer ${rootToken}`);
/** The drifts of a report as [kind, what it is about]: the lease's holder when a lease ended, otherwise the job. */
const kinds = (r: DriftReport) => r.drifts.map((d) => [d.kind, d.kind === 'orphan-lease-ended' ? d.holder : d.jobId]);

it('ends the lease of a terminated slot after cancelling its job, reports an unowned job and cancels it after the grace period, and leaves a live slot alone', async () => {
  const until = new Date(Date.now() + 3_600_000).toISOString();
  // A slot whose workflow was terminated while reserved: its job still runs and its lease is still lent.
  const dead = await openSlot('dead');
  const deadJob = await submitSleep('dead');
  await allocator.lease({ holder: dead, node: NODE, memoryMiB: 256, vcpus: 1, until, jobId: deadJob });
  await conn.client.workflow.getHandle(dead).terminate('the test plays a slot that died without its release');
  // A live slot with its job and lease: never touched.
  const live = await openSlot('live');
  const liveJob = await submitSleep('live');
  await allocator.lease({ holder: live, node: NODE, memoryMiB: 128, vcpus: 1, until, jobId: liveJob });
  // A vws pilot job no slot workflow owns (its slot never existed, or is long gone).
  const orphan = pilotSlotWorkflowId(config, 'orphan');
  const orphanJob = await submitSleep('orphan');
  expect(liveJobs()).toEqual([`${deadJob} ${dead}`, `${liveJob} ${live}`, `${orphanJob} ${orphan}`].sort());

  // Admins see both pilot leases (and the grants, under their old name, unchanged).
  const before = await call('/admin/leases');
  expect(before.status).toBe(200);
  expect(before.body).toMatchObject({ leases: [], count: 0, pilotCount: 2 });
  expect(before.body.pilotLeases).toEqual([
    expect.objectContaining({ holder: dead, node: NODE, memoryMiB: 256, vcpus: 1, jobId: deadJob, until, grants: 0, usedMemoryMiB: 0, usedVcpus: 0, leasedAt: expect.any(String) }),
    expect.objectContaining({ holder: live, node: NODE, memoryMiB: 128, jobId: liveJob }),
  ]);
  const cli = await run(process.execPath, [CLI, 'admin', 'leases'], { env: { ...process.env, VWS_API: `http://127.0.0.1:${(server.address() as { port: number }).port}`, VWS_TOKEN: rootToken } });
  expect(cli.stdout).toMatch(/PILOT LEASE\s+NODE\s+USED MiB/);
  expect(cli.stdout).toMatch(new RegExp(`${dead}\\s+${NODE}\\s+0/256\\s+0/1\\s+0\\s+${deadJob}`));
  expect(cli.stdout).toContain(live);

  // One run: the dead slot's job is cancelled and confirmed gone, then its lease ends; the orphan is reported.
  const first = await reconcile();
  expect(first.report.errors).toEqual([]);
  expect(kinds(first.report)).toEqual(
    expect.arrayContaining([
      ['unowned-job-reported', orphanJob],
      ['orphan-lease-job-cancelled', deadJob],
      ['orphan-lease-ended', dead],
    ]),
  );
  expect(first.report.drifts).toHaveLength(3);
  const order = first.report.drifts.map((d) => d.kind);
  expect(order.indexOf('orphan-lease-job-cancelled')).toBeLessThan(order.indexOf('orphan-lease-ended'));
  expect(first.report.drifts.find((d) => d.kind === 'unowned-job-reported')).toMatchObject({ workflowId: orphan, detail: expect.stringContaining('has no open slot workflow') });
  expect(first.report.counts).toMatchObject({ 'orphan-lease-job-cancelled': 1, 'orphan-lease-ended': 1, 'unowned-job-reported': 1, 'unowned-job-cancelled': 0 });
  expect(first.report.pendingJobs).toEqual([expect.objectContaining({ jobId: orphanJob, name: orphan, newlySeen: true })]);
  expect(first.report.waitingLeases).toEqual([]);
  expect(await slurm.status(deadJob)).toMatchObject({ state: 'ended', outcome: 'cancelled' });
  expect((await allocator.leases()).map((l) => l.holder)).toEqual([live]);
  expect(liveJobs()).toEqual([`${liveJob} ${live}`, `${orphanJob} ${orphan}`].sort());

  // The new commands replay deterministically from the recorded history.
  const history = await conn.client.workflow.getHandle(first.workflowId).fetchHistory();
  await Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, history, first.workflowId);

  // A run within the grace period does nothing more, and does not report the orphan twice.
  const second = await reconcile();
  expect(second.report.drifts).toEqual([]);
  expect(second.report.pendingJobs).toEqual([expect.objectContaining({ jobId: orphanJob, newlySeen: false })]);

  // The grace period has passed (here: it is shortened to nothing): the orphan is cancelled.
  const third = await reconcile({ graceSeconds: 0 });
  expect(third.report.errors).toEqual([]);
  expect(kinds(third.report)).toEqual([['unowned-job-cancelled', orphanJob]]);
  expect(third.report.pendingJobs).toEqual([]);
  expect(liveJobs()).toEqual([`${liveJob} ${live}`]);
  expect((await allocator.leases()).map((l) => l.holder)).toEqual([live]);

  // When the live slot goes too (terminated: no release runs), the next run puts it right: nothing is left.
  await conn.client.workflow.getHandle(live).terminate('the test ends the live slot');
  const last = await reconcile();
  expect(kinds(last.report)).toEqual([
    ['orphan-lease-job-cancelled', liveJob],
    ['orphan-lease-ended', live],
  ]);
  expect(await allocator.leases()).toEqual([]);
  expect(liveJobs()).toEqual([]);

  // Every drift is counted in the listing, the metric and the admin routes.
  const drift = await call('/admin/drift');
  expect(drift.body).toMatchObject({
    runs: 4,
    totals: { 'orphan-lease-job-cancelled': 2, 'orphan-lease-ended': 2, 'unowned-job-reported': 1, 'unowned-job-cancelled': 1, 'orphan-grant-released': 0 },
  });
  const metrics = (await call('/metrics')).text;
  expect(metrics).toContain('vws_reconcile_drift{kind="orphan-lease-ended"} 2');
  expect(metrics).toContain('vws_reconcile_drift{kind="unowned-job-cancelled"} 1');
  expect((await call('/admin/leases')).body).toMatchObject({ pilotLeases: [], pilotCount: 0 });
});
