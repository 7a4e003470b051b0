/**
 * XenDriver against the testbed's real Xen node xen1 (testbed/xen/xen1.sh): one guest through its whole
 * life, idempotency of every step, dom0 ballooning, and a second guest with extra disks. Skipped, with the reason printed, when xen1 is
 * not up. Run: `npx jest --runInBand test/integration/xen-driver.test.ts`.
 */
import { nicInterfaceName } from '../../src/activities/network/types';
import { execFileSync } from 'node:child_process';
import { createWriteStream, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { FailureType } from '../../src/domain/errors';
import { describeIfXen1, xen1Executor } from '../helpers/xen1';
import type { VmSpec } from '../../src/activities/hypervisor';
import { createBlankPartition } from '../../src/activities/images/blank';
import { nodePaths, workspaceDir } from '../../src/activities/node-paths';
import { XenDriver } from '../../src/activities/xen/driver';

const ROOT = join(__dirname, '..', '..');
const TB = process.env.VWS_TESTBED_DIR ?? '/var/lib/vws/testbed';
const GUEST = join(process.env.VWS_CACHE_DIR ?? join(ROOT, '.cache'), 'guest');
const NAME = 'ws-0000000000e1';
const paths = nodePaths('/var/lib/vws/node');
const dir = workspaceDir(paths, NAME);
const CONSOLE = `/var/log/xen/console/guest-${NAME}.log`;

const describeIfXen = describeIfXen1('xen-driver');

jest.setTimeout(300_000);

describeIfXen('XenDriver on xen1', () => {
  // The production path: SSH mode, the pinned key of xen1 (testbed/xen/xen1.sh pins it as "xen1,10.213.0.21").
  const exec = xen1Executor();
  const driver = new XenDriver({ exec, paths });
  const spec: VmSpec = {
    name: NAME,
    hostname: 'xen-e1',
    memoryMiB: 128,
    vcpus: 1,
    rootDisk: `${dir}/root.raw`,
    kernel: { vmlinuz: `${paths.kernels}/default/vmlinuz`, initrd: `${paths.kernels}/default/initrd.gz` },
    nics: [{ mac: '52:54:00:e1:00:01', bridge: 'xenbr0', iface: nicInterfaceName(NAME, 0) }],
  };
  const stateFile = `${dir}/state.xl`;

  const markers = async () => ((await exec.readFile(CONSOLE)) ?? '').split('\n').filter((l) => l.startsWith('VWS-GUEST: image=')).length;
  /** Waits until the console log holds more than `before` boot markers (the guest's /init ran again). */
  const waitBoot = async (before: number) => {
    const deadline = Date.now() + 120_000;
    while ((await markers()) <= before) {
      if (Date.now() > deadline) {
        const xlLog = await exec.readFile(`/var/log/xen/xl-${NAME}.log`);
        const list = (await exec.run(['xl', 'list'])).stdout;
        throw new Error(`no new VWS-GUEST marker in ${CONSOLE}:\n${await exec.readFile(CONSOLE)}\nxl list:\n${list}\nxl log:\n${xlLog}`);
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  };
  /** Our loop devices (backing file in our workspace dir). */
  const ourLoops = async () => (await exec.run(['losetup', '-a'])).stdout.split('\n').filter((l) => l.includes(`${dir}/`));

  beforeAll(async () => {
    await driver.destroy(NAME); // a previous run that died half-way
    await exec.remove(dir);
    await exec.remove(CONSOLE);
    await exec.mkdir(dir);
    // The 16 MiB sample disk, copied as a raw root disk (binary: through ssh's stdin, not argv).
    execFileSync('ssh', ['-F', `${TB}/ssh/config`, 'xen1', `dd of=${spec.rootDisk} bs=1M status=none`], {
      input: readFileSync(join(GUEST, 'disk.raw')),
    });
  });

  afterAll(async () => {
    await driver.destroy(NAME).catch(() => undefined);
    await exec.remove(dir);
    await exec.remove(CONSOLE);
    // Nothing of ours may be left: no domain, no loop device, no workspace dir.
    expect(await driver.status(NAME)).toBe('absent');
    expect(await ourLoops()).toEqual([]);
    expect(await exec.exists(dir)).toBe(false);
    await exec.close();
  });

  test('create (twice) boots the guest: running, listed, VWS-GUEST on hvc0', async () => {
    await driver.create(spec);
    await driver.create(spec); // idempotent: already running
    expect(await driver.status(NAME)).toBe('running');
    expect(await driver.list()).toContain(NAME);
    expect(await ourLoops()).toHaveLength(1);
    await waitBoot(0);
    expect(await exec.readFile(CONSOLE)).toContain('VWS-GUEST: image=vws-sample-image v1');
  });

  test('pause (twice), unpause (twice)', async () => {
    await driver.pause(NAME);
    await driver.pause(NAME);
    expect(await driver.status(NAME)).toBe('paused');
    expect(await driver.list()).toContain(NAME);
    await driver.unpause(NAME);
    await driver.unpause(NAME);
    expect(await driver.status(NAME)).toBe('running');
  });

  test('reboot: same domain name and disk, guest boots again', async () => {
    const before = await markers();
    await driver.reboot(NAME);
    await waitBoot(before);
    expect(await driver.status(NAME)).toBe('running');
    expect(await ourLoops()).toHaveLength(1);
  });

  test('save ends the VM and writes the state file; saving again succeeds', async () => {
    await driver.save(NAME, stateFile);
    expect(await driver.status(NAME)).toBe('absent');
    expect(await exec.fileSize(stateFile)).toBeGreaterThan(128 * 1024 * 1024);
    expect(await exec.exists(`${stateFile}.part`)).toBe(false);
    expect(await ourLoops()).toEqual([]);
    await driver.save(NAME, stateFile); // idempotent: absent + file present
  });

  test('restore (twice) resumes the guest on a fresh loop device', async () => {
    await driver.restore(spec, stateFile);
    await driver.restore(spec, stateFile);
    expect(await driver.status(NAME)).toBe('running');
    expect(await ourLoops()).toHaveLength(1);
    // The guest runs on: its disk answers (a write to boots.log goes through blkfront).
    const before = await markers();
    await driver.reboot(NAME);
    await waitBoot(before);
    await exec.remove(stateFile);
  });

  test('shutdown is graceful (the guest powers off on xl shutdown); again succeeds', async () => {
    expect(await driver.shutdown(NAME, 60_000)).toEqual({ graceful: true });
    expect(await driver.status(NAME)).toBe('absent');
    expect(await ourLoops()).toEqual([]);
    expect(await driver.shutdown(NAME, 60_000)).toEqual({ graceful: true });
  });

  test('VmNotFound for pause/unpause/reboot of an absent VM', async () => {
    for (const op of [() => driver.pause(NAME), () => driver.unpause(NAME), () => driver.reboot(NAME)]) {
      await expect(op()).rejects.toMatchObject({ type: FailureType.VmNotFound, nonRetryable: true });
    }
  });

  test('create again, then destroy (twice): gone with its loop device', async () => {
    await driver.create(spec);
    expect(await driver.status(NAME)).toBe('running');
    await driver.destroy(NAME);
    await driver.destroy(NAME);
    expect(await driver.status(NAME)).toBe('absent');
    expect(await driver.list()).not.toContain(NAME);
    expect(await ourLoops()).toEqual([]);
  });

  test('dom0 memory: down by 64 MiB and back to the original absolute value', async () => {
    const original = await driver.dom0MemoryMiB();
    expect(original).toBeGreaterThan(256);
    try {
      await driver.setDom0MemoryMiB(original - 64);
      expect(Math.abs((await driver.dom0MemoryMiB()) - (original - 64))).toBeLessThanOrEqual(1);
    } finally {
      await driver.setDom0MemoryMiB(original);
    }
    expect(Math.abs((await driver.dom0MemoryMiB()) - original)).toBeLessThanOrEqual(1);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Extra disks on xen1: blank partitions made in dom0 by createBlankPartition (dom0's mkfs.ext4 from
// e2fsprogs, busybox's truncate and mkswap), one loop device each, seen by the PV guest as xvdb and xvdc;
// no loop device left after any ending, including after a crash between losetup and xl create.

const DISKS_NAME = 'ws-0000000000e2';

describeIfXen('XenDriver with extra disks on xen1', () => {
  const exec = xen1Executor();
  const driver = new XenDriver({ exec, paths });
  const wsDir = workspaceDir(paths, DISKS_NAME);
  const console_ = `/var/log/xen/console/guest-${DISKS_NAME}.log`;
  const spec: VmSpec = {
    name: DISKS_NAME,
    hostname: 'xen-e2',
    memoryMiB: 128,
    vcpus: 1,
    rootDisk: `${wsDir}/root.raw`,
    disks: [
      { path: `${wsDir}/part1.raw`, format: 'raw' },
      { path: `${wsDir}/part2.raw`, format: 'raw' },
    ],
    kernel: { vmlinuz: `${paths.kernels}/default/vmlinuz`, initrd: `${paths.kernels}/default/initrd.gz` },
    nics: [{ mac: '52:54:00:e2:00:01', bridge: 'xenbr0', iface: nicInterfaceName(DISKS_NAME, 0) }],
  };
  const EXT4_LINE = 'VWS-GUEST: disk xvdb sectors=131072 fs=ext4';
  const SWAP_LINE = 'VWS-GUEST: disk xvdc sectors=131072 fs=swap';
  const times: Record<string, number> = {};
  async function timed<T>(op: string, work: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    try {
      return await work();
    } finally {
      times[op] = performance.now() - t0;
    }
  }
  const consoleLog = async () => (await exec.readFile(console_)) ?? '';
  async function waitConsole(text: string, n: number): Promise<void> {
    const deadline = Date.now() + 120_000;
    while ((await consoleLog()).split(text).length - 1 < n) {
      if (Date.now() > deadline) {
        const xlLog = await exec.readFile(`/var/log/xen/xl-${DISKS_NAME}.log`);
        throw new Error(`no ${n}x ${JSON.stringify(text)} in ${console_}:\n${await consoleLog()}\nxl log:\n${xlLog}`);
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  /** Our loop devices (backing file in our workspace dir), as `losetup -a` lines. */
  const ourLoops = async () => (await exec.run(['losetup', '-a'])).stdout.split('\n').filter((l) => l.includes(`${wsDir}/`));

  beforeAll(async () => {
    await driver.destroy(DISKS_NAME);
    await exec.remove(wsDir);
    await exec.remove(console_);
    await exec.mkdir(wsDir);
    execFileSync('ssh', ['-F', `${TB}/ssh/config`, 'xen1', `dd of=${spec.rootDisk} bs=1M status=none`], {
      input: readFileSync(join(GUEST, 'disk.raw')),
    });
  });

  afterAll(async () => {
    await driver.destroy(DISKS_NAME).catch(() => undefined);
    await exec.remove(wsDir);
    await exec.remove(console_);
    expect(await ourLoops()).toEqual([]);
    await exec.close();
    console.log(`XenDriver extra disks on xen1 (PV, 128 MiB), ms:\n${Object.entries(times).map(([k, v]) => `  ${k.padEnd(36)} ${v.toFixed(0).padStart(6)}`).join('\n')}`);
  });

  test('blank partitions made in dom0: exact size, ext4 with its label, swap; nothing temporary left', async () => {
    await timed('createBlankPartition ext4 64 MiB', () => createBlankPartition(exec, spec.disks![0].path, 64, 'ext4', 'part1'));
    await timed('createBlankPartition swap 64 MiB', () => createBlankPartition(exec, spec.disks![1].path, 64, 'swap', 'part2'));
    await timed('createBlankPartition again (no-op)', () => createBlankPartition(exec, spec.disks![0].path, 64, 'ext4', 'part1'));
    for (const d of spec.disks!) expect(await exec.fileSize(d.path)).toBe(64 * 1024 * 1024);
    const ls = (await exec.run(['ls', '-1', wsDir])).stdout.split('\n').filter(Boolean).sort();
    expect(ls).toEqual(['part1.raw', 'part2.raw', 'root.raw']);
  });

  test('a qcow2 extra disk is refused, naming it, before any loop device is attached', async () => {
    const bad: VmSpec = { ...spec, disks: [spec.disks![0], { path: `${wsDir}/part2.qcow2`, format: 'qcow2' }] };
    await expect(driver.create(bad)).rejects.toMatchObject({
      type: FailureType.InvalidSpec,
      nonRetryable: true,
      message: expect.stringContaining(`disks[1] "${wsDir}/part2.qcow2" (xvdc) is qcow2`),
    });
    expect(await ourLoops()).toEqual([]);
    expect(await driver.status(DISKS_NAME)).toBe('absent');
  });

  test('a crash between losetup and xl create: destroy detaches the leftover; create reuses one', async () => {
    // What a worker killed inside prepare() leaves: a loop device on a disk, no domain.
    await exec.run(['losetup', '--find', '--show', spec.disks![1].path]);
    expect(await ourLoops()).toHaveLength(1);
    await driver.destroy(DISKS_NAME);
    expect(await ourLoops()).toEqual([]);
    await exec.run(['losetup', '--find', '--show', spec.disks![0].path]);
    await timed('create (one loop left over)', () => driver.create(spec));
    // Root, part1 (the leftover, reused) and part2: one loop device per disk, no more.
    expect(await ourLoops()).toHaveLength(3);
    const cfg = (await exec.readFile(`${wsDir}/domain.cfg`)) ?? '';
    expect(cfg).toMatch(/^disk = \[ "phy:\/dev\/loop\d+,xvda,w", "phy:\/dev\/loop\d+,xvdb,w", "phy:\/dev\/loop\d+,xvdc,w" \]$/m);
  });

  test('the guest sees xvdb (ext4, mounted, written) and xvdc (swap)', async () => {
    await timed('create to both disk lines', async () => {
      await waitConsole(EXT4_LINE, 1);
      await waitConsole(SWAP_LINE, 1);
    });
    const text = await consoleLog();
    expect(text).toContain('VWS-GUEST: image=vws-sample-image v1');
    expect(text).not.toMatch(/VWS-GUEST: disk xvdd/);
    expect(text).not.toMatch(/swapon:|mount:/);
  });

  test('after a graceful shutdown every loop device is gone and part1 holds the guest writes.log', async () => {
    expect(await timed('shutdown (graceful)', () => driver.shutdown(DISKS_NAME, 60_000))).toEqual({ graceful: true });
    expect(await ourLoops()).toEqual([]);
    // dom0 has no debugfs: fetch the file and look inside it here. Compressed first (64 MiB of mostly zeros
    // become ~70 KiB), because SFTP from the emulated dom0 moves only a few MB/s.
    const local = join(mkdtempSync(join(tmpdir(), 'vws-xen-disk-')), 'part1.raw');
    const gz = `${spec.disks![0].path}.gz`;
    try {
      await timed('fetch part1 (64 MiB, gzip) from dom0', async () => {
        await exec.run(['gzip', '-1', '-k', '-f', spec.disks![0].path]);
        await pipeline(await exec.readStream(gz), createGunzip(), createWriteStream(local));
        await exec.remove(gz);
      });
      expect(statSync(local).size).toBe(64 * 1024 * 1024);
      const log = execFileSync('debugfs', ['-R', 'cat /writes.log', local], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      const lines = log.split('\n').filter((l) => l.startsWith('write '));
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/^write \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ host=xen-e2 dev=xvdb up=[\d.]+$/);
      execFileSync('e2fsck', ['-fn', local], { stdio: 'ignore' }); // cleanly unmounted by vws-poweroff
    } finally {
      rmSync(dirname(local), { recursive: true, force: true });
    }
  });

  test('destroy: gone with all three loop devices; the workspace files go with the directory', async () => {
    await driver.create(spec);
    expect(await ourLoops()).toHaveLength(3);
    await timed('destroy', () => driver.destroy(DISKS_NAME));
    await driver.destroy(DISKS_NAME);
    expect(await driver.status(DISKS_NAME)).toBe('absent');
    expect(await ourLoops()).toEqual([]);
    expect(await exec.exists(`${wsDir}/domain.cfg`)).toBe(false);
    await exec.remove(wsDir);
    expect(await exec.exists(wsDir)).toBe(false);
  });
});
