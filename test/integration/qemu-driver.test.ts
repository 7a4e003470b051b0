/**
 * The QEMU driver end to end on this machine (LocalExecutor, no namespace): one real 128 MiB TCG VM through
 * every method. Needs root, qemu-system-x86_64, qemu-img, the guest from testbed/guest/build.sh and the
 * testbed's bridge vwsbr0 (the guest gets no DHCP answer on it; the test only reads its serial console).
 * Prints per-operation timings; they are never asserted.
 */
import { ApplicationFailure } from '@temporalio/common';
import { execFileSync } from 'node:child_process';
import { copyFileSync, createReadStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { VmSpec } from '../../src/activities/hypervisor';
import { createBlankPartition } from '../../src/activities/images/blank';
import { nodePaths, workspaceDir } from '../../src/activities/node-paths';
import { nicInterfaceName } from '../../src/activities/network/types';
import { QemuDriver, saveUri, vmFiles } from '../../src/activities/qemu/driver';
import { QmpSession } from '../../src/activities/qemu/qmp';
import { LocalExecutor } from '../../src/exec/local';
import { KnownHosts, SshExecutor } from '../../src/exec/ssh';

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
    execFileSync('ip', ['link', 'show', 'dev', nicInterfaceName(NAME, 0)], { stdio: 'ignore' });
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
    nics: [{ mac: '52:54:00:aa:bb:01', bridge: BRIDGE, iface: nicInterfaceName(NAME, 0) }],
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
    expect(forced).toEqual({ graceful: false, forcedBecause: 'the guest did not power off within 1 s of the power button' });
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

// ---------------------------------------------------------------------------------------------------------
// Extra disks on the testbed's vmm1, through the node's executor in SSH mode (what the head uses for an SSH
// node; a node worker's LocalExecutor runs the same commands): two blank partitions made on the node by
// createBlankPartition, seen by the guest as vdb (ext4, mounted and written) and vdc (swap, swapon),
// kept across save/restore, and the guest's write found in the ext4 file after shutdown.

const TB = process.env.VWS_TESTBED_DIR ?? '/var/lib/vws/testbed';
const DISKS_NAME = 'ws-0000000000c2';

/** Why the vmm1 suite cannot run here, or null. */
function whyNoVmm1(): string | null {
  try {
    execFileSync('ssh', ['-F', `${TB}/ssh/config`, '-o', 'ConnectTimeout=3', 'vmm1', 'true'], { stdio: 'pipe', timeout: 10_000 });
    return existsSync(join(guestDir, 'disk.raw')) ? null : `no guest build in ${guestDir}`;
  } catch (e) {
    return `ssh to vmm1 failed (run testbed/testbed.sh up): ${(e as Error).message}`;
  }
}
const noVmm1 = whyNoVmm1();
if (noVmm1) console.warn(`SKIPPING the extra-disk test on vmm1: ${noVmm1}`);

(noVmm1 ? describe.skip : describe)('QemuDriver with extra disks on vmm1', () => {
  const exec = new SshExecutor({
    host: '10.213.0.11',
    user: 'root',
    privateKey: `${TB}/ssh/id_ed25519`,
    knownHosts: KnownHosts.fromFile(`${TB}/ssh/known_hosts`),
    hostAlias: 'vmm1',
  });
  // The node's own layout and site kernel: the guest initrd the testbed copied to vmm1.
  const paths = nodePaths('/var/lib/vws/node');
  const wsDir = workspaceDir(paths, DISKS_NAME);
  const files = vmFiles(paths, DISKS_NAME);
  const driver = new QemuDriver({ exec, paths, binary: 'qemu-system-x86_64', accel: 'tcg' });
  const spec: VmSpec = {
    name: DISKS_NAME,
    hostname: 'c2',
    memoryMiB: 128,
    vcpus: 1,
    rootDisk: `${wsDir}/root.qcow2`,
    disks: [
      { path: `${wsDir}/part1.raw`, format: 'raw' },
      { path: `${wsDir}/part2.raw`, format: 'raw' },
    ],
    kernel: { vmlinuz: `${paths.kernels}/default/vmlinuz`, initrd: `${paths.kernels}/default/initrd.gz` },
    nics: [{ mac: '52:54:00:aa:bb:c2', bridge: 'br0', iface: nicInterfaceName(DISKS_NAME, 0) }],
  };
  const times: Record<string, number> = {};
  async function timed<T>(op: string, work: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    try {
      return await work();
    } finally {
      times[op] = performance.now() - t0;
    }
  }
  const consoleLog = async () => (await exec.readFile(files.serial)) ?? '';
  const countOf = async (text: string) => (await consoleLog()).split(text).length - 1;
  async function waitConsole(text: string, n: number, timeoutMs = 90_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while ((await countOf(text)) < n) {
      if (Date.now() > deadline) throw new Error(`no ${n}x ${JSON.stringify(text)} on the console of ${DISKS_NAME}:\n${await consoleLog()}`);
      await sleep(250);
    }
  }
  const nodeTapExists = async () => (await exec.run(['ip', 'link', 'show', 'dev', nicInterfaceName(DISKS_NAME, 0)], { okCodes: [0, 1] })).code === 0;
  const EXT4_LINE = 'VWS-GUEST: disk vdb sectors=131072 fs=ext4';
  const SWAP_LINE = 'VWS-GUEST: disk vdc sectors=131072 fs=swap';

  beforeAll(async () => {
    await driver.destroy(DISKS_NAME); // a previous run that died half-way
    await exec.remove(wsDir);
    await exec.mkdir(wsDir);
    await pipeline(createReadStream(join(guestDir, 'disk.raw')), await exec.writeStream(`${wsDir}/base.raw`));
    await exec.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', `${wsDir}/base.raw`, '-F', 'raw', spec.rootDisk]);
  }, 60_000);

  afterAll(async () => {
    await driver.destroy(DISKS_NAME).catch(() => undefined);
    await exec.remove(wsDir);
    await exec.close();
    console.log(`QemuDriver extra disks on vmm1 (TCG, 128 MiB), ms:\n${Object.entries(times).map(([k, v]) => `  ${k.padEnd(34)} ${v.toFixed(0).padStart(6)}`).join('\n')}`);
  });

  it('makes blank partitions on the node: exact size, formatted, nothing temporary left', async () => {
    await timed('createBlankPartition ext4 64 MiB', () => createBlankPartition(exec, spec.disks![0].path, 64, 'ext4', 'part1'));
    await timed('createBlankPartition swap 64 MiB', () => createBlankPartition(exec, spec.disks![1].path, 64, 'swap', 'part2'));
    await timed('createBlankPartition again (no-op)', () => createBlankPartition(exec, spec.disks![0].path, 64, 'ext4', 'part1'));
    for (const d of spec.disks!) expect(await exec.fileSize(d.path)).toBe(64 * 1024 * 1024);
    const ls = (await exec.run(['ls', '-1', wsDir])).stdout.split('\n').filter(Boolean).sort();
    expect(ls).toEqual(['base.raw', 'part1.raw', 'part2.raw', 'root.qcow2']);
    // Sparse on the node: metadata only.
    const du = Number((await exec.run(['du', '-k', spec.disks![0].path])).stdout.split(/\s/)[0]);
    expect(du).toBeLessThan(8 * 1024);
    expect((await exec.run(['dumpe2fs', '-h', spec.disks![0].path])).stdout).toMatch(/Filesystem volume name:\s+part1\n/);
  });

  it('boots with both disks: the guest sees their size and filesystem, mounts the ext4 one, swaps on the other', async () => {
    await timed('create', () => driver.create(spec));
    await timed('boot to both disk lines', async () => {
      await waitConsole(EXT4_LINE, 1);
      await waitConsole(SWAP_LINE, 1);
    });
    const text = await consoleLog();
    expect(text).toContain('VWS-GUEST: image=vws-sample-image v1');
    expect(text.indexOf('VWS-GUEST: image=')).toBeLessThan(text.indexOf(EXT4_LINE));
    expect(text.indexOf(EXT4_LINE)).toBeLessThan(text.indexOf(SWAP_LINE));
    expect(text).not.toMatch(/VWS-GUEST: disk vdd/);
    // busybox prints "swapon: /dev/vdc: …" or "mount: …" on the console if either failed.
    expect(text).not.toMatch(/swapon:|mount:/);
  });

  it('save and restore keep the disks (same devices, same order); the restored guest still writes to vdb', async () => {
    const stateFile = `${wsDir}/vmstate`;
    await timed('save', () => driver.save(DISKS_NAME, stateFile));
    expect(await driver.status(DISKS_NAME)).toBe('absent');
    await timed('restore', () => driver.restore(spec, stateFile));
    expect(await driver.status(DISKS_NAME)).toBe('running');
    // A hard reset in the restored qemu: the guest boots again from the same three disks and writes again.
    await driver.reboot(DISKS_NAME);
    await timed('reboot to both disk lines', async () => {
      await waitConsole(EXT4_LINE, 2);
      await waitConsole(SWAP_LINE, 2);
    });
    await exec.remove(stateFile);
  });

  it('after a graceful shutdown the ext4 file holds the guest writes.log (debugfs on the node)', async () => {
    expect(await timed('shutdown (graceful)', () => driver.shutdown(DISKS_NAME, 60_000))).toEqual({ graceful: true });
    const log = (await exec.run(['debugfs', '-R', 'cat /writes.log', spec.disks![0].path])).stdout;
    const lines = log.split('\n').filter((l) => l.startsWith('write '));
    // One line per boot: the first boot and the boot after the reset.
    expect(lines).toHaveLength(2);
    for (const l of lines) expect(l).toMatch(/^write \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ host=c2 dev=vdb up=[\d.]+$/);
    // Cleanly unmounted by vws-poweroff: e2fsck finds nothing to fix.
    await exec.run(['e2fsck', '-fn', spec.disks![0].path]);
  });

  it('destroy leaves no qemu, tap, socket or pid file; the workspace files go with the directory', async () => {
    await driver.create(spec);
    await waitConsole(EXT4_LINE, 3);
    const pid = Number((await exec.readFile(files.pid))?.trim());
    expect(pid).toBeGreaterThan(0);
    await timed('destroy', () => driver.destroy(DISKS_NAME));
    await driver.destroy(DISKS_NAME);
    expect(await driver.status(DISKS_NAME)).toBe('absent');
    expect(await nodeTapExists()).toBe(false);
    expect(await exec.exists(files.qmp)).toBe(false);
    expect(await exec.exists(files.pid)).toBe(false);
    // Gone, or a zombie: this machine's PID 1 reaps the daemonized qemu only after a second or two.
    const stat = await exec.readFile(`/proc/${pid}/stat`);
    expect(stat === null || / Z /.test(stat.slice(stat.lastIndexOf(')')))).toBe(true);
    const ls = (await exec.run(['ls', '-1', wsDir])).stdout.split('\n').filter(Boolean).sort();
    expect(ls).toEqual(['base.raw', 'part1.raw', 'part2.raw', 'root.qcow2', 'serial.log']);
    await exec.remove(wsDir);
    expect(await exec.exists(wsDir)).toBe(false);
  }, 120_000);
});
