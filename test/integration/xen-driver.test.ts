/**
 * XenDriver against the testbed's real Xen node xen1 (testbed/xen/xen1.sh): one guest through its whole
 * life, idempotency of every step, and dom0 ballooning. Skipped, with the reason printed, when xen1 is
 * not up. Run: `npx jest --runInBand test/integration/xen-driver.test.ts`.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FailureType } from '../../src/domain/errors';
import { KnownHosts, SshExecutor } from '../../src/exec/ssh';
import type { VmSpec } from '../../src/activities/hypervisor';
import { nodePaths, workspaceDir } from '../../src/activities/node-paths';
import { XenDriver } from '../../src/activities/xen/driver';

const ROOT = join(__dirname, '..', '..');
const TB = process.env.VWS_TESTBED_DIR ?? '/var/lib/vws/testbed';
const GUEST = join(process.env.VWS_CACHE_DIR ?? join(ROOT, '.cache'), 'guest');
const NAME = 'ws-0000000000e1';
const paths = nodePaths('/var/lib/vws/node');
const dir = workspaceDir(paths, NAME);
const CONSOLE = `/var/log/xen/console/guest-${NAME}.log`;

/** Why the suite cannot run here, or null. */
function whyNotUp(): string | null {
  try {
    execFileSync(join(ROOT, 'testbed/xen/xen1.sh'), ['status'], { encoding: 'utf8', stdio: 'pipe' });
    return null;
  } catch (e) {
    const err = e as { stdout?: string; message: string };
    return `testbed/xen/xen1.sh status failed:\n${err.stdout ?? err.message}`;
  }
}

const reason = whyNotUp();
if (reason) console.warn(`SKIPPING xen-driver integration tests: the Xen node xen1 is not up (run testbed/xen/xen1.sh up).\n${reason}`);
const describeIfXen = reason ? describe.skip : describe;

jest.setTimeout(300_000);

describeIfXen('XenDriver on xen1', () => {
  // The production path: SSH mode, the pinned key of xen1 (testbed/xen/xen1.sh pins it as "xen1,10.213.0.21").
  const exec = new SshExecutor({
    host: '10.213.0.21',
    user: 'root',
    privateKey: `${TB}/ssh/id_ed25519`,
    knownHosts: KnownHosts.fromFile(`${TB}/ssh/known_hosts`),
    hostAlias: 'xen1',
  });
  const driver = new XenDriver({ exec, paths });
  const spec: VmSpec = {
    name: NAME,
    hostname: 'xen-e1',
    memoryMiB: 128,
    vcpus: 1,
    rootDisk: `${dir}/root.raw`,
    kernel: { vmlinuz: `${paths.kernels}/default/vmlinuz`, initrd: `${paths.kernels}/default/initrd.gz` },
    nic: { mac: '52:54:00:e1:00:01', bridge: 'xenbr0' },
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
