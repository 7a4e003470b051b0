/**
 * The pilot's kill matrix on the Xen node xen1 (issue 7 item 6), for the states whose windows only a real
 * balloon makes wide enough to hit, and for the node's own reboot. On vmm3 (pilot-kill-matrix.test.ts) the
 * reservation is a file write, so `reserving` and `unreserving` last milliseconds; here the pilot moves
 * dom0's memory with `xl mem-set 0` and polls `xl list 0` until it is reached (seconds under TCG), and
 * unreserving destroys a real domU before it balloons dom0 back up.
 * - reserving + SIGKILL of the pilot: dom0 is left ballooning down, vws never heard `reserved`; vws checks
 *   the node the job ran on and sets dom0 back to exactly its configured 768 MiB;
 * - reserving + SIGTERM of the pilot (what scancel, preemption and shutdown send): the pilot puts the
 *   memory back itself;
 * - unreserving + SIGKILL (vws's workers down, so the pilot reaches its slot's own end): nobody finished the
 *   hand-back; back up, vws evacuates the VM and resets dom0;
 * - unreserving + scancel (vws's workers down; the pilot held there with SIGSTOP until Slurm's SIGCONT and
 *   SIGTERM): the pilot finishes the hand-back within the grace alone;
 * - reserving + node reboot (the pilot held at the state's first line with SIGSTOP, vws waiting for
 *   `reserved`; `xen1.sh reboot`): dom0 boots at its configured memory; Slurm ends the job as node-fail,
 *   vws ends the workspace as one whose pilot never reserved, and its check finds the node clean;
 * - unreserving + node reboot (vws's workers down; the pilot held at the state's first line with SIGSTOP,
 *   dom0 still ballooned down; `xen1.sh reboot`: QEMU killed -9, off 10 s, booted): dom0 boots at its
 *   configured memory; back up, vws ends the workspace and finds the node clean; the dead pilot's lock is
 *   removed. (reserved + node reboot is in pilot-kill-matrix.test.ts, on vmm3.)
 * Each injection is made inside dom0 by a watcher that follows the pilot's log (the job's output file), so
 * it lands within ~0.1 s of the state's first line; each test then checks from that log that the pilot was
 * still in the state when the signal came. Afterwards: memory exactly as configured and nothing held.
 */
import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { promisify } from 'node:util';
import { pilotJobName } from '../../src/activities/head/pilot-slot';
import { pilotSlotQuery } from '../../src/domain/pilot-slot';
import type { SshExecutor } from '../../src/exec/ssh';
import { dom0Probe } from '../helpers/memory-monitor';
import { copyPilotSecretToXen1, expectPilotStackClean, startXen1PilotStack, usePilotStack } from '../helpers/pilot-stack';
import { eventually, ROOT } from '../helpers/stack';
import { settled } from '../helpers/workspace';
import { describeIfXen1, xen1Executor, XEN1_DOM0_MIB } from '../helpers/xen1';

jest.setTimeout(900_000);

const NODE = 'xen1';
/** dom0's configured memory on xen1. */
const DOM0_MIB = XEN1_DOM0_MIB;
/** The site's floor for dom0's ballooned memory in this stack (`pilot.minDom0MiB`). */
const MIN_DOM0_MIB = 448;
/** What a pilot of a 128 MiB workspace takes from dom0: the VM and the site's 64 MiB overhead. */
const RESERVED_MIB = 192;
/**
 * The running time of the unreserving cases' workspaces: over by the time vws's workers are back. Not
 * shorter: the clock runs from the VM's start, and a guest on xen1 can take 15 s to show its address.
 */
const UNRESERVING_RUNNING_S = 20;

describeIfXen1('pilot kill matrix')('pilot kill matrix on xen1 (dom0 ballooning)', () => {
  const f = usePilotStack(
    {
      label: 'pilot-kill-matrix-xen',
      first: '10.213.0.92',
      last: '10.213.0.93',
      headProcess: true,
      // A short hold, so the unreserving tests (20 s of running time) reach the slot's own end 85 s after the
      // pilot starts: the hold is running time + startupSeconds + evacuateSeconds + marginSeconds. vws would
      // evacuate 80 s after `reserved` (xen1's deploys take 20-60 s); in these cases its workers are down
      // by then, so 5 s of evacuation is all the slot needs.
      // The site's floor for dom0 (pilot.minDom0MiB): a 128 MiB workspace's share leaves 576 MiB, above it.
      pilot: { pollSeconds: 3, startupSeconds: 60, evacuateSeconds: 5, reserveTimeoutSeconds: 300, minDom0MiB: MIN_DOM0_MIB },
    },
    startXen1PilotStack,
  );
  let dom0: SshExecutor;
  const memory = () => dom0Probe(NODE, dom0).read();
  /**
   * The pilot set dom0 back to exactly its configured memory, and dom0 got there: the pilot's wait ends
   * within `xl list`'s 1 MiB of rounding (CI saw 767 of 768 while the balloon took its last pages), so
   * the exact figure is awaited here.
   */
  const expectRestored = async (log: string) => {
    const line = log.split('\n').find((l) => l.includes('"step":"restore"'));
    expect(line).toBeDefined();
    const r = JSON.parse(line!) as { targetMiB: number; reachedMiB: number };
    expect(r.targetMiB).toBe(DOM0_MIB);
    expect(Math.abs(r.reachedMiB - DOM0_MIB)).toBeLessThanOrEqual(1);
    await eventually(30, async () => (await memory()) === DOM0_MIB, `dom0 at exactly ${DOM0_MIB} MiB`);
  };

  beforeAll(() => {
    dom0 = xen1Executor();
  });
  afterAll(async () => {
    await dom0?.close();
  });

  // Trashed at the end of its running time, as a preempted one is: either way it ends Cancelled.
  const create = async (durationSeconds: number, memoryMiB = 128) => {
    const r = await f.stack.call('alice', 'POST', '/workspaces', { image: 'sample', memoryMiB, durationSeconds, shutdownMechanism: 'Trash', pilot: true });
    expect(r.status).toBe(202);
    return String(r.body.id);
  };
  const jobOf = (id: string) => eventually(120, async () => (await f.slot(id).query(pilotSlotQuery)).jobId, 'the pilot job submitted');
  const jobEnded = (jobId: string) => eventually(120, async () => (await f.slurm.status(jobId)).state === 'ended', 'the job ended');
  /** A new workspace Running in its pilot slot: its id and its job's. */
  const running = async (durationSeconds: number) => {
    const id = await create(durationSeconds);
    const jobId = await jobOf(id);
    await settled(f.stack, id, 'Running', 240);
    return { id, jobId };
  };
  /** The pilot's log in dom0 (Slurm writes the job's output there). */
  const logFile = (id: string) => `/tmp/${pilotJobName(f.stack.config, id)}.out`;
  const pilotLog = async (id: string) => (await dom0.run(['cat', logFile(id)], { timeoutMs: 30_000 })).stdout;

  /**
   * In dom0: waits (up to `seconds`) until the pilot's log shows `"to":"<state>"`, then sends it `signal`
   * (busybox has no pkill: the pilot is found by its command line in /proc). Answers when the signal is sent.
   */
  async function signalPilotAt(id: string, state: string, signal: 'KILL' | 'TERM' | 'STOP', seconds = 300): Promise<void> {
    // The pilot's pid is found first (while its Node.js starts, seconds under TCG), so the signal follows
    // the log line within one 50 ms poll: a scan of /proc alone takes ~1 s in dom0.
    const script = [
      'f=$1; pat=$2; sig=$3; slot=$4; end=$(($(date +%s) + $5)); pids=',
      'while :; do',
      '  if [ -z "$pids" ]; then',
      '    for d in /proc/[0-9]*; do',
      '      c=$(tr "\\000" " " < "$d/cmdline" 2>/dev/null) || continue',
      '      case "$c" in *"pilot/main.js run --slot $slot "*) pids="$pids ${d#/proc/}" ;; esac',
      '    done',
      '  fi',
      '  [ -n "$pids" ] && grep -qF "$pat" "$f" 2>/dev/null && break',
      '  [ "$(date +%s)" -lt "$end" ] || exit 9',
      '  sleep 0.05',
      'done',
      'kill -"$sig" $pids && echo "signalled$pids"',
    ].join('\n');
    const r = await dom0.run(['sh', '-c', script, 'sh', logFile(id), `"to":"${state}"`, signal, id, String(seconds)], { timeoutMs: (seconds + 30) * 1000 });
    expect(r.stdout).toMatch(/signalled \d+/);
  }

  /** The slot ended; no job, lease, grant or leftover; dom0 exactly at its configured memory. */
  const expectClean = (id: string) => expectPilotStackClean(f, [id], [{ probe: { node: NODE, read: memory }, configuredMiB: DOM0_MIB }], 180);

  /**
   * xen1's power cut and boot (`xen1.sh reboot`: QEMU killed -9, off 10 s, booted); answers the ms it took.
   * dom0's tmpfs is lost with it: the pilot secret is copied in again, over a new connection.
   */
  async function rebootXen1(): Promise<number> {
    const t0 = Date.now();
    await promisify(execFile)(resolve(ROOT, 'testbed/xen/xen1.sh'), ['reboot', '--off-seconds', '10'], { timeout: 600_000 });
    const ms = Date.now() - t0;
    await dom0.close();
    dom0 = xen1Executor();
    await copyPilotSecretToXen1(f.stack, dom0);
    return ms;
  }

    it('reserving + SIGKILL of the pilot: dom0 left ballooning, vws never heard reserved; vws resets dom0 to its configured memory', async () => {
      const id = await create(600);
      const jobId = await jobOf(id);
      await signalPilotAt(id, 'reserving', 'KILL');
      const log = await pilotLog(id);
      // Killed while reserving: it never reached its target, never told vws.
      expect(log).not.toContain('"to":"reserved"');
      const ws = await settled(f.stack, id, 'Cancelled', 240);
      expect(ws.reason).toMatch(new RegExp(`the pilot job ${jobId} ended .*before its pilot reserved the node`));
      await expectClean(id);
      expect((await f.slot(id).query(pilotSlotQuery)).notices).toContain(`node ${NODE} checked after the job: 0 VMs left, memory at ${DOM0_MIB} MiB`);
    });

    it('reserving + SIGTERM of the pilot: it stops ballooning and puts dom0 back itself', async () => {
      const id = await create(600);
      const jobId = await jobOf(id);
      await signalPilotAt(id, 'reserving', 'TERM');
      await jobEnded(jobId);
      const log = await pilotLog(id);
      expect(log).toContain('"signal":"SIGTERM","state":"reserving"');
      await expectRestored(log);
      const ws = await settled(f.stack, id, 'Cancelled', 240);
      expect(ws.reason).toMatch(new RegExp(`the pilot job ${jobId} ended`));
      await expectClean(id);
    });

    it('unreserving + SIGKILL of the pilot while vws is down: back up, vws evacuates the VM and resets dom0', async () => {
      const { id, jobId } = await running(UNRESERVING_RUNNING_S);
      expect(await memory()).toBe(DOM0_MIB - RESERVED_MIB);
      // vws down: nothing ends the slot early, so the pilot reaches its own end and starts unreserving.
      f.stack.killHead();
      await signalPilotAt(id, 'unreserving', 'KILL');
      await jobEnded(jobId);
      const log = await pilotLog(id);
      expect(log).not.toContain('leftover VMs destroyed');
      expect(log).not.toContain('memory restored');
      // Nobody handed the node back: the VM runs on and dom0 is still ballooned down.
      expect(await f.stack.vmStatus(id)).toBe('running');
      expect(await memory()).toBe(DOM0_MIB - RESERVED_MIB);
      await f.stack.startHead();
      // Its running time is over too: either way it is trashed, and the slot reads the job as gone.
      await settled(f.stack, id, 'Cancelled', 240);
      await expectClean(id);
      expect((await f.slot(id).query(pilotSlotQuery)).notices.some((n) => n.startsWith(`node ${NODE} checked after the job`))).toBe(true);
    });

    it('unreserving + scancel while vws is down: the pilot finishes the hand-back alone within the grace', async () => {
      const { id, jobId } = await running(UNRESERVING_RUNNING_S);
      f.stack.killHead();
      // Held in unreserving (SIGSTOP at its first line), so the cancel surely lands there: Slurm sends a
      // cancelled job SIGCONT and then SIGTERM, and the pilot goes on with the signal pending.
      await signalPilotAt(id, 'unreserving', 'STOP');
      await f.slurm.cancel(jobId);
      await jobEnded(jobId);
      const log = await pilotLog(id);
      expect(log).toContain('"signal":"SIGTERM","state":"unreserving"');
      await expectRestored(log);
      expect(await f.stack.vmStatus(id)).toBe('absent');
      await f.stack.startHead();
      await expectClean(id);
    });

    it("a share that would balloon dom0 below the site's floor: the pilot refuses before touching dom0, vws refuses the workspace", async () => {
      // 512 MiB + the 64 MiB overhead would leave dom0 192 MiB, under the 448 MiB floor.
      const id = await create(600, 512);
      const jobId = await jobOf(id);
      const ws = await settled(f.stack, id, 'Cancelled', 240);
      expect(ws.reason).toContain(`reserving 576 MiB of ${DOM0_MIB} MiB leaves 192 MiB, below the host's minimum of ${MIN_DOM0_MIB} MiB`);
      await jobEnded(jobId);
      const log = await pilotLog(id);
      expect(log).toContain('"minDom0MiB":448');
      expect(log).not.toContain('"to":"reserved"');
      await expectClean(id);
    });

    // The reboots last: they lose dom0's tmpfs (the job logs; the pilot secret is copied in again).
    it('reserving + node reboot: every process on xen1 dies mid-balloon; dom0 boots at its configured memory, vws never heard reserved and ends the workspace', async () => {
      const id = await create(600);
      const jobId = await jobOf(id);
      // Held at the first line of reserving (SIGSTOP), its `xl mem-set 0` maybe issued; vws waits for
      // `reserved`, its workers up. Then the power goes.
      await signalPilotAt(id, 'reserving', 'STOP');
      expect(await pilotLog(id)).not.toContain('"to":"reserved"');
      const t0 = Date.now();
      const bootMs = await rebootXen1();
      expect(await memory()).toBe(DOM0_MIB);
      // Slurm ends the job as node-fail at slurmd's first registration; the slot reads it as a job that
      // ended before its pilot reserved the node, and checks the node it ran on.
      const ws = await settled(f.stack, id, 'Cancelled', 300);
      const endedMs = Date.now() - t0;
      expect(ws.reason).toMatch(new RegExp(`the pilot job ${jobId} ended .*before its pilot reserved the node`));
      await jobEnded(jobId);
      await expectClean(id);
      expect((await f.slot(id).query(pilotSlotQuery)).notices).toContain(`node ${NODE} checked after the job: 0 VMs left, memory at ${DOM0_MIB} MiB`);
      expect((await dom0.run(['ls', '/var/lib/vws/node/pilot'])).stdout).not.toMatch(/pilot\.lock/);
      console.log(`xen1 reboot in reserving: power cut → up again ${bootMs} ms; → workspace Cancelled ${endedMs} ms (${ws.reason})`);
    });

    it('unreserving + node reboot while vws is down: every process on xen1 dies mid-hand-back; back up, vws ends the workspace and finds dom0 at its configured memory', async () => {
      const { id, jobId } = await running(UNRESERVING_RUNNING_S);
      // vws down: nothing ends the slot early, so the pilot reaches its own end. Held at the first line of
      // unreserving (SIGSTOP), dom0 still ballooned down and the VM still there, the power goes.
      f.stack.killHead();
      await signalPilotAt(id, 'unreserving', 'STOP');
      expect(await memory()).toBe(DOM0_MIB - RESERVED_MIB);
      const t0 = Date.now();
      const bootMs = await rebootXen1();
      // A new boot: Xen gives dom0 its dom0_mem again, and no domU survived.
      expect(await memory()).toBe(DOM0_MIB);
      expect(await f.stack.vmStatus(id)).toBe('absent');
      await f.stack.startHead();
      // Its running time is over too: either way it is trashed, and the slot reads the job as gone.
      const ws = await settled(f.stack, id, 'Cancelled', 300);
      const endedMs = Date.now() - t0;
      await jobEnded(jobId);
      await expectClean(id);
      expect((await f.slot(id).query(pilotSlotQuery)).notices).toContain(`node ${NODE} checked after the job: 0 VMs left, memory at ${DOM0_MIB} MiB`);
      // The dead pilot's lock (a pid of the previous boot) was removed by vws's check.
      expect((await dom0.run(['ls', '/var/lib/vws/node/pilot'])).stdout).not.toMatch(/pilot\.lock/);
      console.log(`xen1 reboot in unreserving: power cut → up again ${bootMs} ms; → workspace Cancelled ${endedMs} ms (${ws.reason})`);
    });
});
