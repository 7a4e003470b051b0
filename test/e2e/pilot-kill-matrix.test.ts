/**
 * The pilot's kill matrix (issue 7 item 6), on the testbed's real Slurm and vmm3 with real VMs: at a pilot
 * state, something is killed or cancelled; afterwards the node's memory is exactly its configured value and
 * nothing is held (no slot, lease, grant, batch job, VM, DHCP entry or file).
 * - queued: the workspace is destroyed while its job waits behind a job that fills the node;
 * - queued: the job is cancelled with scancel while it waits;
 * - queued: vws's head and node workers are killed; the job starts and the pilot reserves while they are
 *   down (its `reserved` reaches the API and waits in the slot's history); back up, the workspace runs;
 * - queued: the node reboots while the job waits (the running blocker dies with it; the pilot job starts
 *   after the boot and the workspace runs);
 * - reserved: the pilot process is killed with SIGKILL (it never hands back: vws resets the node);
 * - reserved: the pilot alone gets SIGTERM, as in a node's shutdown (early-unreserving; vws trashes the VM);
 * - reserved: vws's head and node workers are down for a while; nothing on the node notices, and back up
 *   the workspace runs on;
 * - reserved: the job's slurmstepd is killed and the job cancelled: the batch system ends the job without
 *   signalling the pilot, which lives on; vws's check after the job stops it (SIGTERM) and resets the node;
 *   the same with the pilot stopped (SIGSTOP), so that SIGTERM does nothing: vws SIGKILLs it after its grace;
 * - reserved: vws's head and node workers are killed, the job is cancelled while they are down (the pilot
 *   hands back alone), and the workers come back;
 * - reserved: the node reboots (`testbed.sh reboot`: every process on it killed -9 at once, the VM, the
 *   pilot and its job step, the node worker, slurmd; the node is off 25 s; then `vws-pilot boot-reset`
 *   runs as its systemd unit would, before slurmd);
 * - early-unreserving: with vws's workers down, the job is cancelled and the pilot killed with SIGKILL
 *   while it waits out vws's share of the grace (so neither vws nor the pilot trashed the VM or restored
 *   the memory): back up, vws finds the job gone, evacuates the VM and resets the node;
 * - early-unreserving: with vws's workers down, the job is cancelled again and the pilot gets a second
 *   SIGTERM: it goes on with its one hand-back;
 * - early-unreserving: with vws's workers down, the node reboots while the pilot waits out vws's share of
 *   the grace: the boot reset hands the node back; back up, vws ends the workspace.
 * The whole matrix, with the cells tested elsewhere and those that cannot happen, is in README.md ("The
 * kill matrix").
 * Not covered here: the reserving state (on a QEMU node it lasts milliseconds; a pilot killed after it
 * reserved but before vws heard `reserved` is in pilot-unheard.test.ts) and unreserving (the slot's normal
 * end, bench/pilot-trials' Test A ends there 100 times).
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { pilotJobName } from '../../src/activities/head/pilot-slot';
import { pilotSlotWorkflowId } from '../../src/config/names';
import { pilotSlotQuery } from '../../src/domain/pilot-slot';
import { expectPilotStackClean, testbedReservationProbe, usePilotStack } from '../helpers/pilot-stack';
import { eventually, ROOT, TEST_NODES } from '../helpers/stack';
import { settled, show } from '../helpers/workspace';

jest.setTimeout(600_000);

const NODE = 'vmm3';
const memory = testbedReservationProbe(NODE);
/** vmm3's memory with nothing reserved, and while a pilot holds a 128 MiB workspace's share (+ 64 MiB overhead). */
const CONFIGURED_MIB = TEST_NODES[NODE].memoryMiB;
const RESERVED_MIB = CONFIGURED_MIB - 192;

// endIfOrphaned off: the orphan cases test vws's own check after the job, which is all a PBS site has; the
// pilot's watch on its parent (on by default with Slurm) is tested in pilot-program.test.ts.
const f = usePilotStack({ label: 'pilot-kill-matrix', first: '10.213.0.78', last: '10.213.0.79', node: NODE, headProcess: true, pilot: { pollSeconds: 3, endIfOrphaned: false } });

const create = async () => {
  const r = await f.stack.call('alice', 'POST', '/workspaces', { image: 'sample', memoryMiB: 128, durationSeconds: 600, pilot: true });
  expect(r.status).toBe(202);
  return String(r.body.id);
};
const slot = f.slot;

/** The slot ended; no job, lease, grant or leftover; memory exactly configured. */
const expectClean = (id: string) => expectPilotStackClean(f, [id], [{ probe: memory, configuredMiB: CONFIGURED_MIB }]);

/** A job that takes every CPU of vmm3, so the next pilot waits in the queue. */
async function fillNode(): Promise<string> {
  const { jobId } = await f.slurm.submit({ name: `${f.stack.config.temporal.prefix}-blocker`, command: { kind: 'argv', argv: ['/bin/sleep', '600'] }, node: NODE, cpus: 4, walltimeSeconds: 600, workDir: '/tmp' });
  await eventually(30, async () => (await f.slurm.status(jobId)).state === 'running', 'the blocker running');
  return jobId;
}

/**
 * Reboots vmm3 (`testbed.sh reboot`: every process on it killed -9, off 25 s, then `vws-pilot boot-reset`
 * from the site configuration as its systemd unit would, before slurmd); answers the ms it took. Off for
 * 25 s, as a real node is for longer: Slurm then reads a running job as lost at the node's first
 * registration, not at its next periodic one (~2 min later; the matrix's slowest minutes before). The node
 * worker comes back with the node (a systemd unit; here the stack starts it).
 */
async function rebootNode(): Promise<number> {
  const bootReset = ['env', '-u', 'VWS_NODE', `VWS_CONFIG=${f.stack.configFile}`, process.execPath, join(ROOT, 'dist/pilot/main.js'), 'boot-reset', '--wait-seconds', '0'];
  const t0 = Date.now();
  await promisify(execFile)(resolve(ROOT, 'testbed/testbed.sh'), ['reboot', NODE, '--off-seconds', '25', '--', ...bootReset], { timeout: 120_000 });
  return Date.now() - t0;
}

/** Signals vmm3's pilot of this workspace's slot (`pkill`; it runs in vmm3's namespace, seen from here). */
const signalPilot = (id: string, signal: 'KILL' | 'TERM') => promisify(execFile)('pkill', [`-${signal}`, '-f', `pilot/main.js run --slot ${id}`]);

/** The pilot's log (Slurm writes the job's output to the shared /tmp). */
const pilotLog = (id: string) => readFileSync(`/tmp/${pilotJobName(f.stack.config, id)}.out`, 'utf8');

/** vws's head and node workers killed -9 (the API stays up and records what pilots send). */
const vwsDown = () => {
  f.stack.killHead();
  f.stack.killNodeWorker();
};
const vwsUp = async () => {
  await f.stack.startHead();
  await f.stack.startNodeWorker();
};

/** Waits until the job has ended and the node's memory is back, with vws down: the pilot alone did it. */
const handedBackAlone = (jobId: string) =>
  eventually(60, async () => (await f.slurm.status(jobId)).state === 'ended' && (await memory.read()) === CONFIGURED_MIB, 'the pilot handing back alone');

/** The reason a workspace ends with when its slot heard `early-unreserving`. */
const EARLY_UNRESERVING = /preempted: the batch system is taking node vmm3 back \(early-unreserving\)/;

/** Waits until the batch system reports the job gone. */
const jobEnded = (jobId: string) => eventually(60, async () => (await f.slurm.status(jobId)).state === 'ended', 'the job ended');

/** Waits until the workspace is Running in its slot; answers the job id. */
async function running(id: string): Promise<string> {
  await settled(f.stack, id, 'Running', 240);
  return (await slot(id).query(pilotSlotQuery)).jobId!;
}

/**
 * A new workspace Running in its slot; then vws's workers go down and its job is cancelled. Answers once the
 * pilot is in early-unreserving, waiting out vws's share of the grace with nobody to hear it.
 */
async function earlyUnreservingWithVwsDown(): Promise<{ id: string; jobId: string }> {
  const id = await create();
  const jobId = await running(id);
  vwsDown();
  await f.slurm.cancel(jobId);
  await eventually(10, async () => pilotLog(id).includes('"to":"early-unreserving"'), 'the pilot in early-unreserving');
  return { id, jobId };
}

describe('pilot kill matrix on vmm3', () => {
  it('queued + destroy: the waiting job is cancelled, nothing was ever reserved', async () => {
    const blocker = await fillNode();
    const id = await create();
    const jobId = await eventually(60, async () => (await slot(id).query(pilotSlotQuery)).jobId, 'the pilot job submitted');
    expect((await f.slurm.status(jobId)).state).toBe('queued');
    expect(await show(f.stack, id)).toMatchObject({ task: 'queued-in-batch' });
    expect((await f.stack.call('alice', 'DELETE', `/workspaces/${id}`)).status).toBe(202);
    await settled(f.stack, id, 'Cancelled', 120);
    await f.slurm.cancel(blocker);
    await expectClean(id);
  });

  it('queued + scancel: the workspace ends with the reason, nothing held', async () => {
    const blocker = await fillNode();
    const id = await create();
    const jobId = await eventually(60, async () => (await slot(id).query(pilotSlotQuery)).jobId, 'the pilot job submitted');
    await f.slurm.cancel(jobId);
    const ws = await settled(f.stack, id, 'Cancelled', 120);
    expect(ws.reason).toMatch(/refused: pilot mode: the pilot job \d+ ended \(cancelled.*before its pilot reserved the node/);
    await f.slurm.cancel(blocker);
    await expectClean(id);
  });

  it('queued + vws workers down: the job starts and the pilot reserves meanwhile; back up, the workspace runs', async () => {
    const blocker = await fillNode();
    const id = await create();
    await eventually(60, async () => (await slot(id).query(pilotSlotQuery)).jobId, 'the pilot job submitted');
    vwsDown();
    await f.slurm.cancel(blocker);
    // The pilot reserves and its `reserved` reaches the API, which records it in the slot's history.
    await eventually(60, async () => (await memory.read()) === RESERVED_MIB, 'the pilot reserving while vws is down');
    await vwsUp();
    await settled(f.stack, id, 'Running', 240);
    expect((await slot(id).query(pilotSlotQuery)).state).toBe('reserved');
    expect((await f.stack.call('alice', 'DELETE', `/workspaces/${id}`)).status).toBe(202);
    await settled(f.stack, id, 'Cancelled', 120);
    await expectClean(id);
  });

  it('queued + node reboot: the waiting job outlives the reboot and starts after it; the workspace runs', async () => {
    const blocker = await fillNode();
    const id = await create();
    const jobId = await eventually(60, async () => (await slot(id).query(pilotSlotQuery)).jobId, 'the pilot job submitted');
    await rebootNode();
    await f.stack.startNodeWorker();
    // The reboot killed the running blocker (node-fail, never requeued); the queued pilot job is untouched
    // and starts once the node is back.
    await eventually(60, async () => (await f.slurm.status(blocker)).state === 'ended', 'the blocker ended with the node');
    await settled(f.stack, id, 'Running', 240);
    expect((await slot(id).query(pilotSlotQuery)).jobId).toBe(jobId);
    expect(await memory.read()).toBe(RESERVED_MIB);
    expect((await f.stack.call('alice', 'DELETE', `/workspaces/${id}`)).status).toBe(202);
    await settled(f.stack, id, 'Cancelled', 120);
    await expectClean(id);
  });

  it('reserved + SIGKILL of the pilot: the workspace is evacuated and vws resets the node it never handed back', async () => {
    const id = await create();
    const jobId = await running(id);
    expect(await memory.read()).toBe(RESERVED_MIB);
    await signalPilot(id, 'KILL');
    const ws = await settled(f.stack, id, 'Cancelled', 120);
    expect(ws.reason).toMatch(new RegExp(`preempted: the pilot job ${jobId} ended`));
    await expectClean(id);
    expect((await slot(id).query(pilotSlotQuery)).notices.some((n) => n.startsWith(`node ${NODE} checked after the job`))).toBe(true);
  });

  it("reserved + the job's slurmstepd killed, then scancel: the batch system loses the pilot and ends the job; vws stops the orphan pilot and the node is handed back", async () => {
    // As dom0's slurmstepd died on xen1 (heap corruption) in a Test B trial: the job step's manager dies,
    // the pilot (the batch shell) lives on, and scancel ends the job without any signal reaching it.
    const id = await create();
    const jobId = await running(id);
    await promisify(execFile)('pkill', ['-KILL', '-f', `^slurmstepd: \\[${jobId}\\.batch\\]`]);
    await f.slurm.cancel(jobId);
    await jobEnded(jobId);
    const ws = await settled(f.stack, id, 'Cancelled', 120);
    expect(ws.reason).toMatch(new RegExp(`preempted: the pilot job ${jobId} ended`));
    await expectClean(id);
    const notices = (await slot(id).query(pilotSlotQuery)).notices;
    expect(notices.some((n) => /^node vmm3: the pilot \(pid \d+\) outlived its job; stopped with SIGTERM in \d+ ms$/.test(n))).toBe(true);
    expect(notices).toContain(`node ${NODE} checked after the job: 0 VMs left, memory at ${CONFIGURED_MIB} MiB`);
    // The pilot itself heard only vws's SIGTERM, and handed back as on a preemption.
    expect(pilotLog(id)).toContain('"signal":"SIGTERM","state":"reserved"');
    await expect(promisify(execFile)('pgrep', ['-f', `pilot/main.js run --slot ${id}`])).rejects.toMatchObject({ code: 1 });
    await f.stack.recordWorkflowHistory(pilotSlotWorkflowId(f.stack.config, id), 'pilot-slot-stops-orphan-pilot');
  });

  it("reserved + the job's slurmstepd killed and the pilot stopped (SIGSTOP), then scancel: the orphan does not answer SIGTERM; vws kills it after its grace and resets the node", async () => {
    const id = await create();
    const jobId = await running(id);
    await promisify(execFile)('pkill', ['-KILL', '-f', `^slurmstepd: \\[${jobId}\\.batch\\]`]);
    await promisify(execFile)('pkill', ['-STOP', '-f', `pilot/main.js run --slot ${id}`]);
    await f.slurm.cancel(jobId);
    await jobEnded(jobId);
    await settled(f.stack, id, 'Cancelled', 120);
    await expectClean(id);
    const notices = (await slot(id).query(pilotSlotQuery)).notices;
    expect(notices.some((n) => /^node vmm3: the pilot \(pid \d+\) outlived its job; stopped with SIGKILL in \d+ ms$/.test(n))).toBe(true);
    expect(notices).toContain(`node ${NODE} checked after the job: 0 VMs left, memory at ${CONFIGURED_MIB} MiB`);
    expect(pilotLog(id)).not.toContain('"signal":"SIGTERM"');
    await expect(promisify(execFile)('pgrep', ['-f', `pilot/main.js run --slot ${id}`])).rejects.toMatchObject({ code: 1 });
  });

  it('reserved + vws workers down + scancel: the pilot hands back alone; back up, vws finds it all gone', async () => {
    const id = await create();
    const jobId = await running(id);
    vwsDown();
    await f.slurm.cancel(jobId);
    // The pilot waits out vws's share of the grace, destroys the VM itself and restores the memory.
    await handedBackAlone(jobId);
    expect(await f.stack.vmStatus(id)).toBe('absent');
    await vwsUp();
    const ws = await settled(f.stack, id, 'Cancelled', 180);
    expect(ws.reason).toMatch(EARLY_UNRESERVING);
    await expectClean(id);
  });

  it('reserved + SIGTERM of the pilot (a node shutdown: Slurm not asked): early-unreserving, vws trashes the VM, the pilot hands back', async () => {
    const id = await create();
    const jobId = await running(id);
    await signalPilot(id, 'TERM');
    const ws = await settled(f.stack, id, 'Cancelled', 120);
    expect(ws.reason).toMatch(EARLY_UNRESERVING);
    await jobEnded(jobId);
    expect(pilotLog(id)).toContain('"signal":"SIGTERM","state":"reserved"');
    await expectClean(id);
  });

  it('reserved + vws workers down: the VM and the reservation hold; back up, the workspace runs on and is destroyed cleanly', async () => {
    const id = await create();
    const jobId = await running(id);
    vwsDown();
    // Down for two of the pilot's polls and more: nothing on the node notices.
    await new Promise((r) => setTimeout(r, 10_000));
    expect(await f.stack.vmStatus(id)).toBe('running');
    expect(await memory.read()).toBe(RESERVED_MIB);
    expect((await f.slurm.status(jobId)).state).toBe('running');
    await vwsUp();
    expect(await show(f.stack, id)).toMatchObject({ state: 'Running' });
    expect((await slot(id).query(pilotSlotQuery)).state).toBe('reserved');
    expect((await f.stack.call('alice', 'DELETE', `/workspaces/${id}`)).status).toBe(202);
    await settled(f.stack, id, 'Cancelled', 120);
    await expectClean(id);
  });

  it('reserved + node reboot: everything on the node dies; the boot reset restores memory, vws ends the workspace', async () => {
    const id = await create();
    const jobId = await running(id);
    expect(await memory.read()).toBe(RESERVED_MIB);
    const t0 = Date.now();
    const bootMs = await rebootNode();
    expect(await memory.read()).toBe(CONFIGURED_MIB);
    expect(await f.stack.vmStatus(id)).toBe('absent');
    await f.stack.startNodeWorker();
    const ws = await settled(f.stack, id, 'Cancelled', 240);
    expect(ws.reason).toMatch(new RegExp(`the pilot job ${jobId} ended`));
    const endedMs = Date.now() - t0;
    await expectClean(id);
    // The boot reset had already put the node right: vws's own check after the job found nothing to do.
    expect((await slot(id).query(pilotSlotQuery)).notices).toContain(`node ${NODE} checked after the job: 0 VMs left, memory at ${CONFIGURED_MIB} MiB`);
    console.log(`node reboot: power cut → booted with boot-reset ${bootMs} ms; → workspace Cancelled ${endedMs} ms (${ws.reason})`);
  });

  it('early-unreserving + SIGKILL of the pilot while vws is down: back up, vws evacuates and resets the node', async () => {
    // The pilot tells nobody (vws is down) and waits out vws's share of the grace: kill it in there.
    const { id, jobId } = await earlyUnreservingWithVwsDown();
    await signalPilot(id, 'KILL');
    await jobEnded(jobId);
    // Nobody handed the node back: the VM runs on and the memory is still reserved.
    expect(await f.stack.vmStatus(id)).toBe('running');
    expect(await memory.read()).toBe(RESERVED_MIB);
    await vwsUp();
    const ws = await settled(f.stack, id, 'Cancelled', 180);
    expect(ws.reason).toMatch(/preempted/);
    await expectClean(id);
    expect((await slot(id).query(pilotSlotQuery)).notices.some((n) => n.startsWith(`node ${NODE} checked after the job`))).toBe(true);
  });

  it('early-unreserving + scancel and SIGTERM again while vws is down: the pilot goes on with its hand-back within the grace', async () => {
    const { id, jobId } = await earlyUnreservingWithVwsDown();
    // An impatient admin cancels again, and a shutdown's SIGTERM comes on top.
    await f.slurm.cancel(jobId);
    await signalPilot(id, 'TERM');
    await handedBackAlone(jobId);
    const log = pilotLog(id);
    expect(log).toContain('SIGTERM again: already handing the node back');
    expect(log).toContain(`memory restored to ${CONFIGURED_MIB} MiB`);
    expect(await f.stack.vmStatus(id)).toBe('absent');
    await vwsUp();
    const ws = await settled(f.stack, id, 'Cancelled', 180);
    expect(ws.reason).toMatch(EARLY_UNRESERVING);
    await expectClean(id);
  });

  it('early-unreserving + node reboot while vws is down: the boot reset hands the node back; back up, vws ends the workspace', async () => {
    const { id } = await earlyUnreservingWithVwsDown();
    // The power goes while the pilot waits out vws's share of the grace: nobody has handed anything back.
    await rebootNode();
    expect(pilotLog(id)).not.toContain('memory restored');
    expect(await memory.read()).toBe(CONFIGURED_MIB);
    expect(await f.stack.vmStatus(id)).toBe('absent');
    await vwsUp();
    const ws = await settled(f.stack, id, 'Cancelled', 240);
    expect(ws.reason).toMatch(/preempted/);
    await expectClean(id);
  });
});
