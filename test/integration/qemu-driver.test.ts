/**
 * The QEMU driver end to end on this machine (LocalExecutor, no namespace): one real 128 MiB TCG VM through
 * every method. Needs root, qemu-system-x86_64, qemu-img, the guest from testbed/guest/build.sh and the
 * testbed's bridge vwsbr0 (the guest gets no DHCP answer on it; the test only reads its serial console).
 * Prints per-operation timings; they are never asserted.
 */
import { ApplicationFailure } from '@temporalio/common';
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { VmSpec } from '../../src/activities/hypervisor';
import { nodePaths, workspaceDir } from '../../src/activities/node-paths';
import { QemuDriver, saveUri, tapName, vmFiles } from '../../src/activities/qemu/driver';
import { QmpSession } from '../../src/activities/qemu/qmp';
import { LocalExecutor } from '../../src/exec/local';

const NAME = 'ws-0000000000c1';
const BRIDGE = 'vwsbr0';
const guestDir = join(process.env.VWS_CACHE_DIR ?? join(__dirname, '..', '..', '.cache'), 'guest');
const haveBridge = (() => {
  try {
    execFileSync('ip', ['link', 'show', 'dev', BRIDGE], { stdio: 'ignore' });
    return existsSync(join(guestDir, 'vmlinuz'));
  } catch {
    return false;
  }
})();
const maybe = haveBridge ? describe : describe.skip;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const tapExists = () => {
  try {
    execFileSync('ip', ['link', 'show', 'dev', tapName(NAME)], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};
const qemuRuns = () => {
  try {
    execFileSync('pgrep', ['-f', NAME], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

maybe('QemuDriver on a real VM', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vws-qemu-'));
  const paths = nodePaths(dir);
  const wsDir = workspaceDir(paths, NAME);
  const serial = vmFiles(paths, NAME).serial;
  const stateFile = join(wsDir, 'vmstate');
  const driver = new QemuDriver({ exec: new LocalExecutor(), paths, binary: 'qemu-system-x86_64', accel: 'tcg' });
  const times: Record<string, number[]> = {};
  const spec: VmSpec = {
    name: NAME,
    hostname: 'c1',
    memoryMiB: 128,
    vcpus: 1,
    rootDisk: join(wsDir, 'root.qcow2'),
    kernel: { vmlinuz: join(guestDir, 'vmlinuz'), initrd: join(guestDir, 'initrd.gz') },
    nic: { mac: '52:54:00:aa:bb:01', bridge: BRIDGE },
  };

  async function timed<T>(op: string, work: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    const r = await work();
    (times[op] ??= []).push(performance.now() - t0);
    return r;
  }
  const log = () => readFileSync(serial, 'utf8');
  const count = (text: string) => log().split(text).length - 1;
  /** Waits until `text` occurs at least `n` times in the serial log; returns the milliseconds waited. */
  async function waitSerial(text: string, n: number, timeoutMs = 60_000): Promise<number> {
    const t0 = performance.now();
    while (!existsSync(serial) || count(text) < n) {
      if (performance.now() - t0 > timeoutMs) throw new Error(`no ${n}x ${JSON.stringify(text)} in the serial log:\n${existsSync(serial) ? log() : '(none)'}`);
      await sleep(50);
    }
    return performance.now() - t0;
  }
  // Printed by the guest's /init once it has mounted its disk (before DHCP, which nobody answers here).
  const READY = 'VWS-GUEST: image=';

  beforeAll(() => {
    mkdirSync(wsDir, { recursive: true });
    copyFileSync(join(guestDir, 'disk.raw'), join(wsDir, 'base.raw'));
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', join(wsDir, 'base.raw'), '-F', 'raw', spec.rootDisk]);
  });

  afterAll(async () => {
    await driver.destroy(NAME).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
    const lines = Object.entries(times).map(([op, ms]) => {
      const sorted = [...ms].sort((a, b) => a - b);
      return `  ${op.padEnd(22)} median ${sorted[Math.floor(sorted.length / 2)].toFixed(0).padStart(6)} ms  (n=${ms.length}: ${ms.map((t) => t.toFixed(0)).join(', ')})`;
    });
    console.log(`QemuDriver timings (TCG, 128 MiB):\n${lines.join('\n')}`);
  });

  it('runs a VM through every method', async () => {
    await timed('create', () => driver.create(spec));
    await timed('create (idempotent)', () => driver.create(spec));
    (times['boot to ready marker'] ??= []).push(await waitSerial(READY, 1));
    expect(await timed('status', () => driver.status(NAME))).toBe('running');
    expect(await driver.list()).toEqual([NAME]);
    expect(tapExists()).toBe(true);

    for (let i = 0; i < 3; i++) {
      await timed('pause', () => driver.pause(NAME));
      expect(await driver.status(NAME)).toBe('paused');
      await timed('pause (idempotent)', () => driver.pause(NAME));
      await timed('unpause', () => driver.unpause(NAME));
      expect(await driver.status(NAME)).toBe('running');
    }
    await driver.unpause(NAME);

    await timed('reboot', () => driver.reboot(NAME));
    (times['reboot to ready marker'] ??= []).push(await waitSerial(READY, 2));
    expect(await driver.status(NAME)).toBe('running');

    // Save and restore three times; the guest must carry on each time (console kept, guest answers).
    for (let i = 0; i < 3; i++) {
      const progress: number[] = [];
      await timed('save', () => driver.save(NAME, stateFile, { progress: (p) => progress.push(p.bytes) }));
      expect(existsSync(stateFile)).toBe(true);
      expect(progress.length).toBeGreaterThan(0);
      expect(await driver.status(NAME)).toBe('absent');
      expect(tapExists()).toBe(false);
      expect(qemuRuns()).toBe(false);
      await timed('save (idempotent)', () => driver.save(NAME, stateFile));
      const before = log();
      await timed('restore', () => driver.restore(spec, stateFile));
      await timed('restore (idempotent)', () => driver.restore(spec, stateFile));
      expect(await driver.status(NAME)).toBe('running');
      expect(tapExists()).toBe(true);
      // Appended, not truncated: the boots before the save are still in the log.
      expect(log().startsWith(before)).toBe(true);
      expect(count(READY)).toBe(2);
    }
    console.log(`state file: ${readFileSync(stateFile).length} bytes`);

    // The restored guest runs: it reacts to the power button (acpid → vws-poweroff) and qemu exits.
    const r = await timed('shutdown (graceful)', () => driver.shutdown(NAME, 30_000));
    expect(r).toEqual({ graceful: true });
    expect(await driver.status(NAME)).toBe('absent');
    expect(tapExists()).toBe(false);
    expect(qemuRuns()).toBe(false);
    expect(await driver.shutdown(NAME, 1000)).toEqual({ graceful: true });

    // A guest that has not booted far enough to run acpid ignores the button: forced after the timeout.
    await driver.create(spec);
    const forced = await timed('shutdown (forced, 1 s)', () => driver.shutdown(NAME, 1000));
    expect(forced).toEqual({ graceful: false });
    expect(tapExists()).toBe(false);

    // A paused VM is resumed so that it can see the button.
    await driver.create(spec);
    await waitSerial(READY, 3);
    await driver.pause(NAME);
    expect(await timed('shutdown (from paused)', () => driver.shutdown(NAME, 30_000))).toEqual({ graceful: true });

    await timed('create', () => driver.create(spec));
    await timed('destroy', () => driver.destroy(NAME));
    await timed('destroy (idempotent)', () => driver.destroy(NAME));
    expect(await driver.status(NAME)).toBe('absent');
    expect(await driver.list()).toEqual([]);
    expect(tapExists()).toBe(false);
    expect(qemuRuns()).toBe(false);

    for (const op of ['pause', 'unpause', 'reboot'] as const) {
      const e = await driver[op](NAME).then(() => null, (x: unknown) => x);
      expect(e).toBeInstanceOf(ApplicationFailure);
      expect((e as ApplicationFailure).type).toBe('VmNotFound');
      expect((e as ApplicationFailure).nonRetryable).toBe(true);
      expect((e as ApplicationFailure).message).toContain(NAME);
      expect((e as ApplicationFailure).message).toContain(op);
    }
  }, 300_000);

  it('finishes a save that a crashed worker left after the migration', async () => {
    await driver.create(spec);
    await waitSerial(READY, 1 + count(READY));
    // What an interrupted save leaves: the VM stopped in postmigrate, the state in `.done`, qemu still up.
    const q = await QmpSession.open(await new LocalExecutor().connectUnix(vmFiles(paths, NAME).qmp));
    try {
      await q.execute('stop');
      await q.execute('migrate', { uri: saveUri(stateFile) });
      while ((await q.execute<{ status: string }>('query-migrate')).status !== 'completed') await sleep(50);
    } finally {
      q.close();
    }
    await timed('save (resumed)', () => driver.save(NAME, stateFile));
    expect(await driver.status(NAME)).toBe('absent');
    expect(tapExists()).toBe(false);
    expect(existsSync(`${stateFile}.done`)).toBe(false);
    await driver.restore(spec, stateFile);
    expect(await driver.status(NAME)).toBe('running');
    expect(await driver.shutdown(NAME, 30_000)).toEqual({ graceful: true });
  }, 120_000);

  it('refuses a state file outside the workspaces directory', async () => {
    await expect(driver.save(NAME, '/tmp/x; touch /tmp/pwned')).rejects.toThrow(/refusing state file/);
  });

  it('leaves nothing behind', async () => {
    await driver.destroy(NAME);
    expect(qemuRuns()).toBe(false);
    expect(tapExists()).toBe(false);
  });
});
