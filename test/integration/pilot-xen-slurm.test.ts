/**
 * The real pilot program (`dist/pilot/main.js run --memory xen`) as a real Slurm batch job on the testbed's
 * Xen node xen1: slurmd runs in xen1's dom0 (Slurm partition `xen`, feature `xen`; testbed/xen/xen1.sh),
 * the job is submitted through vws's Slurm adapter, and the pilot balloons dom0 with `xl mem-set 0` (seed
 * 004), notifying the real `POST /pilot/notifications` route (a recorder workflow on the dev server).
 * Checked: dom0 is at exactly `configured − reserve` while reserved (the pilot's log and `xl list 0` over
 * SSH) and back at exactly the configured value after a normal end and after `scancel` (early-unreserving).
 * The measured times and memory values are printed.
 *
 * The pilot's node directory is `/var/lib/vws/node/<prefix>-pilot` on dom0's node disk; the secret is
 * copied there over SSH (dom0 does not see the head's /tmp). NOTE: a pilot destroys every vws VM
 * (`ws-…`) its node lists, and xen1's `xl list` is node-wide: do not run this file at the same time as
 * other tests that keep VMs on xen1 (xen-driver, e2e on xen1), nor with pilot-dom0 (both move dom0's memory).
 * Skipped, with the reason, when xen1 or its slurmd is not up. Needs the dev server (TEMPORAL_ADDRESS), the
 * testbed, and a fresh `dist/` (it is copied to dom0 by `xen1.sh sync-project` in beforeAll).
 */
import { execFile, execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { promisify } from 'node:util';
import type { SlurmBatchSystem } from '../../src/activities/lrm/slurm';
import { parseXlList } from '../../src/activities/xen/config';
import type { SshExecutor } from '../../src/exec/ssh';
import { PILOT_MAIN as MAIN, PilotHarness, pilotRunArgs, waitFor as waitForEvery, type PilotJob } from '../helpers/pilot-program';
import { describeIfXen1, xen1Executor, XEN1_DOM0_MIB } from '../helpers/xen1';

jest.setTimeout(600_000);

const XEN1 = resolve(__dirname, '../../testbed/xen/xen1.sh');
const NODE = 'xen1';
/** The project is at the same path in dom0 (xen1.sh sync-project); node is the host's binary (/usr/bin/node in dom0). */
const DOM0_NODE = '/usr/bin/node';
/** The pilot reads dom0's configured memory from Xen's boot line (no --configured-mib). */
const CONFIGURED_MIB = XEN1_DOM0_MIB;
const RESERVE_MIB = 128;
const KILL_WAIT_S = 15;
/** Node starts in ~8 s in dom0 (TCG) when the machine is idle; much longer under load. */
const RESERVED_WITHIN_MS = 240_000;

/** Slurm must list xen1 as responding, too: the `describeIfXen1` check covers only xl. */
function slurmdUp(): boolean {
  try {
    execFileSync(XEN1, ['slurm-status'], { stdio: 'pipe' });
    return true;
  } catch (e) {
    console.warn(`SKIPPING pilot-xen-slurm: xen1's slurmd is not up:\n${(e as { stdout?: Buffer }).stdout?.toString() ?? (e as Error).message}`);
    return false;
  }
}

const describeIfXen = slurmdUp() ? describeIfXen1('pilot-xen-slurm') : describe.skip;

const run = promisify(execFile);
/** Polls every 500 ms: some of what is polled runs commands in dom0 (emulated, and slow to spawn). */
const waitFor = <T>(what: string, ms: number, f: () => Promise<T | undefined | null | false>) => waitForEvery(what, ms, f, 500);

describeIfXen('the pilot with --memory xen as a Slurm job on xen1', () => {
  let h: PilotHarness;
  let slurm: SlurmBatchSystem;
  let dom0: SshExecutor;
  let pilotDir: string;
  let secretFile: string;
  const measured: Record<string, number | string> = {};

  async function dom0MiB(): Promise<number> {
    const row = parseXlList((await dom0.run(['xl', 'list', '0'], { timeoutMs: 60_000 })).stdout).find((d) => d.domid === 0);
    if (!row) throw new Error('xl list 0 printed no Domain-0 row');
    return row.memMiB;
  }

  async function dom0File(path: string): Promise<string | null> {
    const r = await dom0.run(['sh', '-c', 'cat "$1" 2>/dev/null || true', 'sh', path], { timeoutMs: 60_000 });
    return r.stdout === '' ? null : r.stdout;
  }

  async function logLines(job: PilotJob): Promise<Array<Record<string, unknown>>> {
    const text = (await dom0File(job.output)) ?? '';
    return text
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  const startRecorder = (slotId: string) => h.startRecorder(slotId);
  const received = (slotId: string) => h.received(slotId);
  const ended = (job: PilotJob, ms: number) => h.ended(job, ms);

  /**
   * `dist/pilot/main.js run --memory xen` through vws's Slurm adapter, partition xen, pinned to xen1. The
   * slot lasts `slot.holdS` from the pilot's own start (node starts slowly in the emulated dom0, and how
   * slowly depends on the machine's load), or ends at a fixed `slot.endInS` from now.
   */
  async function submitPilot(slotId: string, slot: { holdS: number } | { endInS: number }): Promise<PilotJob> {
    const args = pilotRunArgs({
      slotId,
      node: NODE,
      api: h.apiUrl,
      secretFile,
      reserveMiB: RESERVE_MIB,
      memory: 'xen',
      ...slot,
      marginS: 10,
      graceS: KILL_WAIT_S,
      pilotNeedsS: 3,
      nodeDir: pilotDir,
    });
    return h.submit({
      slotId,
      argv: [DOM0_NODE, MAIN, ...args],
      node: NODE,
      partition: 'xen',
      constraints: ['xen'],
      walltimeSeconds: 10 * 60,
      outputFile: `${pilotDir}/${h.jobPrefix}-${slotId}.out`,
    });
  }

  beforeAll(async () => {
    expect(readFileSync(MAIN, 'utf8').length).toBeGreaterThan(0); // npx tsc -p tsconfig.build.json first
    // dom0 gets the current dist/ (only when it changed), while the head's side starts.
    const synced = run(XEN1, ['sync-project'], { timeout: 400_000 });
    synced.catch(() => undefined);
    h = await PilotHarness.start('pilot-xen-slurm');
    slurm = h.slurm;
    dom0 = xen1Executor();
    pilotDir = `/var/lib/vws/node/${h.jobPrefix}`;
    secretFile = `${pilotDir}/pilot.secret`;
    // createApp made the site's pilot secret; dom0 (which does not see the head's /tmp) gets a copy in
    // the pilots' node directory.
    const secret = readFileSync(h.secretFile, 'utf8');
    await dom0.run(['sh', '-c', 'mkdir -p "$1" && umask 077 && cat > "$2"', 'sh', pilotDir, secretFile], { input: secret, timeoutMs: 60_000 });
    expect(await dom0MiB()).toBe(CONFIGURED_MIB);
    await synced;
  });

  afterEach(async () => {
    await h.cancelAll(60_000);
  });

  afterAll(async () => {
    // Leave xen1 as found, whatever a failed test left behind.
    if (dom0) {
      if ((await dom0MiB()) !== CONFIGURED_MIB) await dom0.run(['xl', 'mem-set', '0', `${CONFIGURED_MIB}m`], { timeoutMs: 60_000 });
      await dom0.run(['rm', '-rf', pilotDir], { timeoutMs: 60_000 }).catch(() => undefined);
      await dom0.close();
    }
    await h?.close();
    console.log(`pilot-xen-slurm measured: ${JSON.stringify(measured)}`);
  });

  it('normal slot: dom0 at exactly configured − reserve while reserved, exactly configured after the end', async () => {
    const slotId = 'xen-normal';
    await startRecorder(slotId);
    // Held 60 s from the pilot's start: 50 s reserved (margin 10 s), plenty for the checks below, however
    // long node took to start in dom0.
    const job = await submitPilot(slotId, { holdS: 60 });
    const reserved = await waitFor('reserved notification', RESERVED_WITHIN_MS, async () => (await received(slotId)).find((n) => n.event === 'reserved'));
    measured.normalSubmitToReservedMs = Date.parse(reserved.receivedAt) - job.submittedAt;
    expect(reserved).toMatchObject({ slotId, node: NODE, memoryMiB: RESERVE_MIB, via: 'http' });
    const whileReserved = await dom0MiB();
    measured.dom0WhileReservedMiB = whileReserved;
    expect(whileReserved).toBe(CONFIGURED_MIB - RESERVE_MIB);
    const reserveLine = (await logLines(job)).find((l) => l.step === 'reserve');
    expect(reserveLine).toMatchObject({ targetMiB: CONFIGURED_MIB - RESERVE_MIB, reachedMiB: CONFIGURED_MIB - RESERVE_MIB });
    measured.reserveBalloonMs = reserveLine!.elapsedMs as number;

    const end = await ended(job, 240_000);
    expect(end).toMatchObject({ outcome: 'completed', exitCode: 0 });
    expect((await received(slotId)).map((n) => n.event)).toEqual(['reserved', 'unreserving']);
    const after = await dom0MiB();
    measured.dom0AfterNormalEndMiB = after;
    expect(after).toBe(CONFIGURED_MIB);
    const lines = await logLines(job);
    expect(lines.find((l) => l.step === 'start')).toMatchObject({ memory: 'xen', reserveMiB: RESERVE_MIB });
    // Read from Xen's boot line (no --configured-mib given).
    expect(lines.find((l) => l.step === 'state' && l.to === 'reserving')).toMatchObject({ configuredMiB: CONFIGURED_MIB });
    expect(lines.find((l) => l.step === 'restore')).toMatchObject({ targetMiB: CONFIGURED_MIB, reachedMiB: CONFIGURED_MIB });
    expect(lines.find((l) => l.step === 'exit')).toMatchObject({ endReason: 'completed', exitCode: 0, lockReleased: true });
    measured.restoreBalloonMs = lines.find((l) => l.step === 'restore')!.elapsedMs as number;
  });

  it('scancel while reserved: early-unreserving, dom0 back at exactly configured within KillWait', async () => {
    const slotId = 'xen-cancelled';
    await startRecorder(slotId);
    const job = await submitPilot(slotId, { endInS: 400 });
    const reserved = await waitFor('reserved notification', RESERVED_WITHIN_MS, async () => (await received(slotId)).find((n) => n.event === 'reserved'));
    measured.cancelledSubmitToReservedMs = Date.parse(reserved.receivedAt) - job.submittedAt;
    expect(await dom0MiB()).toBe(CONFIGURED_MIB - RESERVE_MIB);

    const cancelledAt = Date.now();
    await slurm.cancel(job.jobId);
    const early = await waitFor('early-unreserving', 30_000, async () => (await received(slotId)).find((n) => n.event === 'early-unreserving'));
    measured.scancelToEarlyUnreservingMs = Date.parse(early.receivedAt) - cancelledAt;
    const end = await ended(job, 60_000);
    expect(end.outcome).toBe('cancelled');
    // Slurm calls the job CANCELLED at once; the pilot is still unreserving (SIGKILL only after KillWait).
    const exit0 = await waitFor('the pilot\'s exit line', 60_000, async () => (await logLines(job)).find((l) => l.step === 'exit'));
    measured.scancelToExitLineSeenMs = Date.now() - cancelledAt;
    expect(exit0).toBeDefined();
    const after = await dom0MiB();
    measured.dom0AfterScancelMiB = after;
    expect(after).toBe(CONFIGURED_MIB);
    const lines = await logLines(job);
    const exit = lines.find((l) => l.step === 'exit')!;
    expect(exit).toMatchObject({ endReason: 'early-unreserved', exitCode: 0, signal: 'SIGTERM', lockReleased: true });
    expect(exit.sinceSignalMs as number).toBeLessThan(KILL_WAIT_S * 1000);
    measured.sigtermToPilotExitMs = exit.sinceSignalMs as number;
    expect(lines.find((l) => l.step === 'restore')).toMatchObject({ targetMiB: CONFIGURED_MIB, reachedMiB: CONFIGURED_MIB });
    expect((await received(slotId)).map((n) => n.event)).toEqual(['reserved', 'early-unreserving']);
    expect(await dom0File(`${pilotDir}/pilot/pilot.lock`)).toBeNull();
  });
});
