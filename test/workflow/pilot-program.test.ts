/**
 * The real pilot program (`dist/pilot/main.js run`) as a real Slurm batch job on the testbed's node
 * vmm1, notifying the real `POST /pilot/notifications` route, which delivers to a recorder workflow on
 * the dev server under the slot's workflow id. Scenarios: a normal slot (reserved, then unreserving,
 * signed and in order; the reservation exists while reserved and is gone after; the job ends before its
 * limit), scancel while reserved (early-unreserving, exit within KillWait, memory restored, lock gone),
 * a second pilot on the node (refused at once, touching nothing), Slurm's USR1 (handled as SIGTERM),
 * the job's slurmstepd killed (the pilot, orphaned, hands back alone with --end-if-orphaned),
 * and vws unreachable (the node is handed back on time all the same).
 *
 * Each pilot uses a node directory of its own inside vmm1 (`/var/lib/vws/node/<prefix>-pilot`), so its
 * "destroy every vws VM on the node" can never reach the VMs of other tests running on vmm1.
 * Needs: the dev server (TEMPORAL_ADDRESS), the testbed (Slurm, vmm1), and a fresh `dist/`.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import type { SlurmBatchSystem } from '../../src/activities/lrm/slurm';
import type { VwsConfig } from '../../src/config/schema';
import { PILOT_MAIN as MAIN, PilotHarness, pilotRunArgs, qemuRuns, waitFor, type PilotJob } from '../helpers/pilot-program';

jest.setTimeout(240_000);

const TB = process.env.VWS_TESTBED_DIR ?? '/var/lib/vws/testbed';
const NODE = 'vmm1';
/** vmm1's node directory as the head sees it (inside vmm1 it is /var/lib/vws/node). */
const NODE_DIR_ON_HEAD = join(TB, 'hosts', NODE, 'node');
/** The testbed's KillWait (slurm.conf). */
const KILL_WAIT_S = 15;
const CONFIGURED_MIB = 4096;
const RESERVE_MIB = 64;

let h: PilotHarness;
let config: VwsConfig;
let stateDir: string;
let slurm: SlurmBatchSystem;
/** The pilots' node directory: inside vmm1, and the same directory seen from the head. */
let pilotDir: string;
let pilotDirOnHead: string;
const timings: Record<string, number> = {};

const lockOnHead = () => join(pilotDirOnHead, 'pilot', 'pilot.lock');
const reservationOnHead = () => join(pilotDirOnHead, 'pilot', 'reserved-memory.json');
const run = promisify(execFile);
const TESTBED = resolve(__dirname, '../../testbed/testbed.sh');
const BOOT_VM = resolve(__dirname, '../fixtures/boot-pilot-vm.js');
/** VMs this test booted (killed in afterAll if a scenario failed before the pilot destroyed them). */
const vms: string[] = [];

/** Boots a real QEMU VM in vmm1, in the pilots' node directory, through vws's own QEMU driver. */
async function bootVmOnNode(name: string): Promise<void> {
  vms.push(name);
  const r = await run(TESTBED, ['exec', NODE, '--', process.execPath, BOOT_VM, pilotDir, name], { timeout: 60_000 });
  expect(r.stdout.trim()).toBe(name);
}


const startRecorder = (slotId: string) => h.startRecorder(slotId);
const received = (slotId: string) => h.received(slotId);
const ended = (job: PilotJob, ms: number) => h.ended(job, ms);

/** A URL on the bridge where nobody listens (a port just freed). */
async function deadApi(): Promise<string> {
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '10.213.0.1', r));
  const url = `http://10.213.0.1:${(probe.address() as AddressInfo).port}`;
  await new Promise<void>((r) => probe.close(() => r()));
  return url;
}

/** Submits `dist/pilot/main.js run` as a Slurm job pinned to vmm1. */
async function submitPilot(o: { slotId: string; endInS: number; api?: string; marginS?: number; extra?: string[]; minutes?: number }): Promise<PilotJob> {
  const args = pilotRunArgs({
    slotId: o.slotId,
    node: NODE,
    api: o.api ?? h.apiUrl,
    secretFile: h.secretFile,
    reserveMiB: RESERVE_MIB,
    memory: 'host',
    configuredMiB: CONFIGURED_MIB,
    endInS: o.endInS,
    marginS: o.marginS ?? 5,
    graceS: KILL_WAIT_S,
    pilotNeedsS: 1.5,
    nodeDir: pilotDir,
    extra: o.extra,
  });
  const name = `${h.jobPrefix}-${o.slotId}`;
  return h.submit({
    slotId: o.slotId,
    argv: [process.execPath, MAIN, ...args],
    node: NODE,
    walltimeSeconds: (o.minutes ?? 3) * 60,
    outputFile: `${pilotDir}/${name}.out`,
    outputOnHead: join(pilotDirOnHead, `${name}.out`),
  });
}

/** The pilot's JSON log lines so far. */
function logLines(job: PilotJob): Array<Record<string, unknown>> {
  if (!existsSync(job.output)) return [];
  return readFileSync(job.output, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

const lineOf = (job: PilotJob, step: string) => logLines(job).find((l) => l.step === step);

/** The node is clean: no reservation file and no lock. */
function expectNodeClean(): void {
  expect(existsSync(reservationOnHead())).toBe(false);
  expect(existsSync(lockOnHead())).toBe(false);
}

beforeAll(async () => {
  expect(existsSync(MAIN)).toBe(true); // npx tsc -p tsconfig.build.json first
  // Its state directory is under /tmp: the same files inside vmm1's mount namespace, so the pilot reads
  // the secret there. The API listens on the testbed's bridge: the pilot runs inside vmm1's network namespace.
  h = await PilotHarness.start('pilot-program');
  ({ config, stateDir, slurm } = h);
  pilotDir = `/var/lib/vws/node/${h.jobPrefix}`;
  pilotDirOnHead = join(NODE_DIR_ON_HEAD, h.jobPrefix);
  mkdirSync(pilotDirOnHead, { recursive: true });
});

afterEach(async () => {
  // Nothing of this test may stay in Slurm, whatever happened.
  await h.cancelAll(20_000);
  expectNodeClean();
});

afterAll(async () => {
  for (const name of vms) {
    if (await qemuRuns(name)) await run('pkill', ['-KILL', '-f', `qemu-system.*${name}`]).catch(() => undefined);
  }
  await h?.close();
  if (pilotDirOnHead) rmSync(pilotDirOnHead, { recursive: true, force: true });
  // Measured timings, for the notes.
  console.log(`pilot-program timings (ms): ${JSON.stringify(timings)}`);
});

/**
 * The slots that run to their own end: long enough to reserve (CI: 0.8 s from submission to `reserved`
 * delivered) and hold for a while before the pilot unreserves at end − 5 s.
 */
const SHORT_SLOT_S = 15;

describe('the pilot program as a Slurm job on vmm1', () => {
  it('normal slot: reserved then unreserving arrive signed and in order; reservation held during, gone after; ends before its limit', async () => {
    const slotId = 'normal';
    await startRecorder(slotId);
    // Like the unreachable slot below: reserved within a second or two, held, handed back at end − 5 s.
    const job = await submitPilot({ slotId, endInS: SHORT_SLOT_S });
    const reserved = await waitFor('reserved notification', 30_000, async () => (await received(slotId)).find((n) => n.event === 'reserved'));
    timings.normalSubmitToReservedDelivered = Date.parse(reserved.receivedAt) - job.submittedAt;
    // Delivered through the API means the HMAC and timestamp checked out; the message says what was reserved.
    expect(reserved).toMatchObject({ slotId, node: NODE, memoryMiB: RESERVE_MIB, via: 'http' });
    expect(JSON.parse(readFileSync(reservationOnHead(), 'utf8'))).toMatchObject({ reservedMiB: RESERVE_MIB });
    expect(JSON.parse(readFileSync(lockOnHead(), 'utf8'))).toMatchObject({ slotId });

    const end = await ended(job, 60_000);
    const events = (await received(slotId)).map((n) => n.event);
    expect(events).toEqual(['reserved', 'unreserving']);
    expect(end).toMatchObject({ outcome: 'completed', exitCode: 0 });
    // Well before Slurm's 3-minute limit: the pilot left on its own at end − margin.
    expect(Date.now() - job.submittedAt).toBeLessThan(60_000);
    expectNodeClean();
    const lines = logLines(job);
    expect(lines.map((l) => l.step)).toEqual(expect.arrayContaining(['lock', 'reserve', 'notified', 'sleep', 'restore', 'exit']));
    expect(lines.find((l) => l.step === 'restore')).toMatchObject({ targetMiB: CONFIGURED_MIB, reachedMiB: CONFIGURED_MIB });
    expect(lines.find((l) => l.step === 'exit')).toMatchObject({ endReason: 'completed', exitCode: 0, lockReleased: true });
    // The secret never appears in the log.
    expect(readFileSync(job.output, 'utf8')).not.toContain(readFileSync(config.pilot!.secretFile, 'utf8').trim());
    timings.reservedNotificationLatency = lineOf(job, 'notified')!.latencyMs as number;
    timings.normalTotal = lineOf(job, 'exit')!.totalMs as number;
  });

  it('scancel while reserved: a second pilot is refused meanwhile; early-unreserving arrives; exit within KillWait; memory and lock gone', async () => {
    const slotId = 'cancelled';
    await startRecorder(slotId);
    const job = await submitPilot({ slotId, endInS: 150 });
    await waitFor('reserved notification', 30_000, async () => (await received(slotId)).find((n) => n.event === 'reserved'));
    const heldBy = readFileSync(lockOnHead(), 'utf8');
    const reservation = readFileSync(reservationOnHead(), 'utf8');

    // A second pilot on the same node: refused at once, non-zero, nothing touched.
    await startRecorder('second');
    const second = await submitPilot({ slotId: 'second', endInS: 150 });
    const secondEnd = await ended(second, 30_000);
    expect(secondEnd).toMatchObject({ outcome: 'failed', exitCode: 4 });
    expect(lineOf(second, 'lock')).toMatchObject({ level: 50, holder: { slotId } });
    expect(String(lineOf(second, 'lock')!.msg)).toMatch(/refusing to run: .*pilot\.lock is held by pid \d+ \(slot cancelled\)/);
    expect(readFileSync(lockOnHead(), 'utf8')).toBe(heldBy);
    expect(readFileSync(reservationOnHead(), 'utf8')).toBe(reservation);
    expect(await received('second')).toEqual([]);

    const cancelledAt = Date.now();
    await slurm.cancel(job.jobId);
    const early = await waitFor('early-unreserving', KILL_WAIT_S * 1000, async () => (await received(slotId)).find((n) => n.event === 'early-unreserving'));
    timings.scancelToEarlyUnreservingDelivered = Date.parse(early.receivedAt) - cancelledAt;
    await waitFor('the lock to go', KILL_WAIT_S * 1000, async () => !existsSync(lockOnHead()));
    timings.scancelToLockGoneObserved = Date.now() - cancelledAt;
    const end = await ended(job, 20_000);
    expect(end.outcome).toBe('cancelled');
    expectNodeClean();
    const exit = lineOf(job, 'exit')!;
    expect(exit).toMatchObject({ endReason: 'early-unreserved', exitCode: 0, signal: 'SIGTERM', lockReleased: true });
    expect(exit.sinceSignalMs as number).toBeLessThan(KILL_WAIT_S * 1000);
    timings.sigtermToPilotExit = exit.sinceSignalMs as number;
    expect((await received(slotId)).map((n) => n.event)).toEqual(['reserved', 'early-unreserving']);
  });

  it("its slurmstepd killed -9 (--end-if-orphaned): no signal reaches the pilot; it notices its parent gone, sends early-unreserving and hands the node back alone", async () => {
    // The batch system lost the job's step manager (seen on xen1: heap corruption); vws may be down.
    const slotId = 'orphaned';
    await startRecorder(slotId);
    const job = await submitPilot({ slotId, endInS: 150, extra: ['--end-if-orphaned'] });
    await waitFor('reserved notification', 30_000, async () => (await received(slotId)).find((n) => n.event === 'reserved'));
    const pattern = `^slurmstepd: \\[${job.jobId}\\.batch\\]`;
    const stepd = Number((await run('pgrep', ['-f', pattern])).stdout.trim());
    expect(stepd).toBeGreaterThan(1);
    const killedAt = Date.now();
    await run('pkill', ['-KILL', '-f', pattern]);
    const early = await waitFor('early-unreserving', KILL_WAIT_S * 1000, async () => (await received(slotId)).find((n) => n.event === 'early-unreserving'));
    timings.stepdKilledToEarlyUnreservingDelivered = Date.parse(early.receivedAt) - killedAt;
    await waitFor('the lock to go', KILL_WAIT_S * 1000, async () => !existsSync(lockOnHead()));
    timings.stepdKilledToLockGoneObserved = Date.now() - killedAt;
    expectNodeClean();
    expect(lineOf(job, 'orphaned')).toMatchObject({ level: 40, parent: stepd });
    await waitFor('the exit line', 10_000, async () => lineOf(job, 'exit'));
    expect(lineOf(job, 'exit')).toMatchObject({ endReason: 'early-unreserved', exitCode: 0, signal: 'ORPHANED', lockReleased: true });
    await expect(run('pgrep', ['-f', `pilot/main.js run --slot ${slotId} `])).rejects.toMatchObject({ code: 1 });
    expect((await received(slotId)).map((n) => n.event)).toEqual(['reserved', 'early-unreserving']);
    // Slurm is left to end the job (afterEach cancels it and waits until it is gone).
  });

  it('vws resetting the node after an earlier pilot (a fresh reset intent): the pilot gives the lock back and waits, and reserves once the reset is done', async () => {
    const slotId = 'after-reset';
    const intent = join(pilotDirOnHead, 'pilot', 'reset.intent');
    mkdirSync(join(pilotDirOnHead, 'pilot'), { recursive: true });
    writeFileSync(intent, '{"by":"pilot-program.test"}\n');
    try {
      await startRecorder(slotId);
      const job = await submitPilot({ slotId, endInS: 150 });
      await waitFor('the pilot waiting for the reset', 30_000, async () => logLines(job).find((l) => l.step === 'lock' && l.resetIntent === `${pilotDir}/pilot/reset.intent`));
      // Waiting, it holds nothing: vws's reset may remove a stale lock and set memory as it must.
      await new Promise((r) => setTimeout(r, 1_500));
      expectNodeClean();
      expect(await received(slotId)).toEqual([]);
      rmSync(intent);
      const removedAt = Date.now();
      await waitFor('reserved notification', 30_000, async () => (await received(slotId)).find((n) => n.event === 'reserved'));
      timings.resetIntentRemovedToReserved = Date.now() - removedAt;
      expect(JSON.parse(readFileSync(lockOnHead(), 'utf8'))).toMatchObject({ slotId });
      expect(JSON.parse(readFileSync(reservationOnHead(), 'utf8'))).toMatchObject({ reservedMiB: RESERVE_MIB });
      await slurm.cancel(job.jobId);
      expect(await ended(job, 20_000)).toMatchObject({ outcome: 'cancelled' });
      expect(lineOf(job, 'exit')).toMatchObject({ endReason: 'early-unreserved', exitCode: 0 });
    } finally {
      rmSync(intent, { force: true });
    }
  });

  it("Slurm's USR1 (--signal=B:USR1@N, here sent by hand) is handled like SIGTERM", async () => {
    const slotId = 'usr1';
    await startRecorder(slotId);
    const job = await submitPilot({ slotId, endInS: 150 });
    await waitFor('reserved notification', 30_000, async () => (await received(slotId)).find((n) => n.event === 'reserved'));
    await slurm.cancel(job.jobId, { signal: 'USR1' });
    const end = await ended(job, 15_000);
    expect(end).toMatchObject({ outcome: 'completed', exitCode: 0 });
    expect(lineOf(job, 'exit')).toMatchObject({ endReason: 'early-unreserved', signal: 'SIGUSR1' });
    expect((await received(slotId)).map((n) => n.event)).toEqual(['reserved', 'early-unreserving']);
    expectNodeClean();
  });

  it('scancel with a VM left on the node: vws does not trash it (recorder), so the pilot destroys it itself within KillWait', async () => {
    const slotId = 'leftover';
    const vm = 'ws-00000001a701';
    await startRecorder(slotId);
    const job = await submitPilot({ slotId, endInS: 150 });
    await waitFor('reserved notification', 30_000, async () => (await received(slotId)).find((n) => n.event === 'reserved'));
    await bootVmOnNode(vm);
    expect(await qemuRuns(vm)).toBe(true);
    const cancelledAt = Date.now();
    await slurm.cancel(job.jobId);
    const end = await ended(job, 20_000);
    expect(end.outcome).toBe('cancelled');
    expect(await qemuRuns(vm)).toBe(false);
    expectNodeClean();
    const exit = lineOf(job, 'exit')!;
    expect(exit).toMatchObject({ endReason: 'early-unreserved', exitCode: 0, signal: 'SIGTERM' });
    expect(exit.sinceSignalMs as number).toBeLessThan(KILL_WAIT_S * 1000);
    expect(lineOf(job, 'destroy')).toMatchObject({ destroyed: [vm], failed: [] });
    // vws's share of the grace (ratio 0.5 of KillWait) was waited out, since the VM was still there.
    expect(lineOf(job, 'grace')).toMatchObject({ vwsMs: (KILL_WAIT_S * 1000) / 2 });
    timings.sigtermToPilotExitWithLeftoverVm = exit.sinceSignalMs as number;
    timings.scancelToJobEndedObservedWithVm = Date.now() - cancelledAt;
    expect((await received(slotId)).map((n) => n.event)).toEqual(['reserved', 'early-unreserving']);
  });

  it('reset after a pilot was SIGKILLed: stale lock and reservation removed, memory exact; a second reset changes nothing', async () => {
    const slotId = 'killed';
    await startRecorder(slotId);
    const job = await submitPilot({ slotId, endInS: 150 });
    await waitFor('reserved notification', 30_000, async () => (await received(slotId)).find((n) => n.event === 'reserved'));
    // SIGKILL of the pilot process itself (`scancel --signal=KILL` would not do: Slurm turns it into a
    // normal cancel, SIGTERM first). The testbed's hosts share the head's pid namespace.
    process.kill(lineOf(job, 'start')!.pid as number, 'SIGKILL');
    await ended(job, 20_000);
    // What a node looks like after a crash or a power cut: the dead pilot's lock and reservation.
    expect(existsSync(lockOnHead())).toBe(true);
    expect(existsSync(reservationOnHead())).toBe(true);
    const reset = () => run(TESTBED, ['exec', NODE, '--', process.execPath, MAIN, 'reset', '--node', NODE, '--memory', 'host', '--configured-mib', String(CONFIGURED_MIB), '--node-dir', pilotDir], { timeout: 60_000 });
    const first = JSON.parse((await reset()).stdout.trim().split('\n').pop()!);
    expect(first).toMatchObject({ step: 'reset', destroyed: [], failed: [], memoryBeforeMiB: CONFIGURED_MIB - RESERVE_MIB, memoryAfterMiB: CONFIGURED_MIB });
    expectNodeClean();
    const second = JSON.parse((await reset()).stdout.trim().split('\n').pop()!);
    expect(second).toMatchObject({ step: 'reset', destroyed: [], memoryBeforeMiB: CONFIGURED_MIB, memoryAfterMiB: CONFIGURED_MIB });
    expectNodeClean();
  });

  it('kill-all (over SSH, from the head) destroys the VMs and resets memory under a live pilot; the pilot then ends cleanly', async () => {
    const slotId = 'killall';
    const vm = 'ws-00000001a702';
    await startRecorder(slotId);
    const job = await submitPilot({ slotId, endInS: 150 });
    await waitFor('reserved notification', 30_000, async () => (await received(slotId)).find((n) => n.event === 'reserved'));
    await bootVmOnNode(vm);
    const siteConfig = join(stateDir, 'site.yaml');
    writeFileSync(
      siteConfig,
      JSON.stringify({
        nodes: [{ name: NODE, memoryMiB: CONFIGURED_MIB, cpus: 4, driver: 'qemu', agent: 'ssh', ssh: { host: '10.213.0.11' } }],
        node: { dir: pilotDir },
        ssh: { keyFile: join(TB, 'ssh', 'id_ed25519'), knownHostsFile: join(TB, 'ssh', 'known_hosts') },
      }),
    );
    const t0 = Date.now();
    const out = await run(process.execPath, [MAIN, 'kill-all', '--config', siteConfig], { timeout: 120_000 });
    timings.killAllOneNode = Date.now() - t0;
    const lines = out.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.find((l) => l.step === 'kill-all-node')).toMatchObject({ node: NODE, ok: true, where: expect.stringContaining('10.213.0.11'), destroyed: [vm], memoryBeforeMiB: CONFIGURED_MIB - RESERVE_MIB, memoryAfterMiB: CONFIGURED_MIB });
    expect(lines.find((l) => l.step === 'kill-all')).toMatchObject({ nodes: 1, failed: [] });
    expect(await qemuRuns(vm)).toBe(false);
    expect(existsSync(reservationOnHead())).toBe(false);
    // The pilot still holds its lock; cancelling it hands the rest back (nothing left to do but release).
    expect(existsSync(lockOnHead())).toBe(true);
    await slurm.cancel(job.jobId);
    await ended(job, 20_000);
    expect(lineOf(job, 'exit')).toMatchObject({ endReason: 'early-unreserved', exitCode: 0 });
    expectNodeClean();
  });

  it('vws unreachable and scancel: the pilot hands the node back within KillWait all the same', async () => {
    const slotId = 'unreachable-cancelled';
    const job = await submitPilot({ slotId, endInS: 150, api: await deadApi() });
    await waitFor('the reservation', 20_000, async () => existsSync(reservationOnHead()) && lineOf(job, 'sleep'));
    await slurm.cancel(job.jobId);
    const end = await ended(job, 20_000);
    expect(end.outcome).toBe('cancelled');
    const exit = lineOf(job, 'exit')!;
    expect(exit).toMatchObject({ endReason: 'early-unreserved', exitCode: 0, signal: 'SIGTERM' });
    expect(exit.sinceSignalMs as number).toBeLessThan(KILL_WAIT_S * 1000);
    expect(logLines(job).find((l) => l.step === 'notify' && l.event === 'early-unreserving')).toMatchObject({ result: 'gave-up' });
    timings.sigtermToPilotExitVwsUnreachable = exit.sinceSignalMs as number;
    expectNodeClean();
  });

  it('vws unreachable: the pilot still reserves, holds and hands the node back on time, memory restored', async () => {
    const slotId = 'unreachable';
    await startRecorder(slotId);
    const endInS = SHORT_SLOT_S;
    const job = await submitPilot({ slotId, endInS, api: await deadApi() });
    const endAt = Date.now() + endInS * 1000;
    await waitFor('the reservation', 20_000, async () => existsSync(reservationOnHead()));
    expect(JSON.parse(readFileSync(reservationOnHead(), 'utf8'))).toMatchObject({ reservedMiB: RESERVE_MIB });
    const end = await ended(job, 45_000);
    expect(end).toMatchObject({ outcome: 'completed', exitCode: 0 });
    // On time: before the slot's end (it starts unreserving 5 s before it).
    const exit = lineOf(job, 'exit')!;
    expect(Date.parse(String(exit.time))).toBeLessThan(endAt);
    timings.unreachableExitBeforeEndMs = endAt - Date.parse(String(exit.time));
    expect(logLines(job).filter((l) => l.step === 'notify').map((l) => [l.event, l.result])).toEqual([
      ['reserved', 'gave-up'],
      ['unreserving', 'gave-up'],
    ]);
    expect(lineOf(job, 'restore')).toMatchObject({ reachedMiB: CONFIGURED_MIB });
    expect(await received(slotId)).toEqual([]);
    expectNodeClean();
  });
});
