/**
 * The pilot's memory targets: absolute targets from the configuration, Xen's `dom0_mem` parsing, and
 * the QEMU nodes' reservation file through the real local executor (reserve, restore, reserve again:
 * the file always says exactly configured − target). Xen ballooning itself is tested on xen1
 * (test/integration/pilot-dom0.test.ts).
 */
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalExecutor } from '../../src/exec/local';
import {
  HostMemoryReservation,
  hostReservationFile,
  MemoryTargetInvalid,
  parseDom0MemMiB,
  readHostReservationMiB,
  reservationTargetMiB,
  XenDom0Memory,
} from '../../src/pilot/dom0-memory';

describe('absolute targets', () => {
  it('is configured − reserved, whatever the current value, and refuses going below the minimum', () => {
    expect(reservationTargetMiB(512, 256)).toBe(256);
    expect(reservationTargetMiB(512, 0)).toBe(512);
    expect(reservationTargetMiB(2048, 1920, 128)).toBe(128);
    expect(() => reservationTargetMiB(2048, 1921, 128)).toThrow(new MemoryTargetInvalid('reserving 1921 MiB of 2048 MiB leaves 127 MiB, below the host\'s minimum of 128 MiB'));
    expect(() => reservationTargetMiB(512, -1)).toThrow(/reserveMiB must be an integer >= 0/);
    expect(() => reservationTargetMiB(512, 1.5)).toThrow(MemoryTargetInvalid);
    expect(() => reservationTargetMiB(0, 0)).toThrow(/configured memory must be a positive integer/);
  });

  it('refuses a Xen target outside [min, configured] before running anything', async () => {
    const mem = new XenDom0Memory({ exec: new LocalExecutor(), configuredMiB: 512 });
    await expect(mem.setAndWait(513)).rejects.toThrow(/from 128 to the configured 512, got 513/);
    await expect(mem.setAndWait(64)).rejects.toThrow(MemoryTargetInvalid);
    await expect(mem.reserve(400)).rejects.toThrow(/leaves 112 MiB, below the host's minimum of 128 MiB/);
    expect(() => new XenDom0Memory({ exec: new LocalExecutor(), configuredMiB: 100 })).toThrow(MemoryTargetInvalid);
  });

  it("keeps the site's dom0 floor (pilot.minDom0MiB → --min-dom0-mib): a share that would leave less is refused", async () => {
    const mem = new XenDom0Memory({ exec: new LocalExecutor(), configuredMiB: 768, minDom0MiB: 448 });
    await expect(mem.reserve(321)).rejects.toThrow("reserving 321 MiB of 768 MiB leaves 447 MiB, below the host's minimum of 448 MiB");
    await expect(mem.setAndWait(447)).rejects.toThrow(/from 448 to the configured 768, got 447/);
    expect(() => new XenDom0Memory({ exec: new LocalExecutor(), configuredMiB: 400, minDom0MiB: 448 })).toThrow(/leaves 400 MiB, below the host's minimum of 448 MiB/);
  });
});

describe("Xen's dom0_mem", () => {
  it('reads the boot amount in MiB, ignoring min:/max:, with kB as the default unit', () => {
    expect(parseDom0MemMiB('console=com1 com1=115200,8n1 dom0_mem=512M,max:512M bootscrub=0')).toBe(512);
    expect(parseDom0MemMiB('dom0_mem=max:4G,2G')).toBe(2048);
    expect(parseDom0MemMiB('dom0_mem=min:1G,max:4G,1536m')).toBe(1536);
    expect(parseDom0MemMiB('dom0_mem=1048576')).toBe(1024);
    expect(parseDom0MemMiB('dom0_mem=1073741824B')).toBe(1024);
  });

  it('gives null where the amount depends on the host or is missing', () => {
    expect(parseDom0MemMiB('console=com1')).toBeNull();
    expect(parseDom0MemMiB('dom0_mem=max:512M')).toBeNull();
    expect(parseDom0MemMiB('dom0_mem=-1G')).toBeNull();
    expect(parseDom0MemMiB('dom0_mem=10%')).toBeNull();
    expect(parseDom0MemMiB('xdom0_mem=512M')).toBeNull();
  });
});

describe('HostMemoryReservation (QEMU nodes) on the local filesystem', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'vws-pilot-mem-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('records the reserved MiB, restores to exactly nothing reserved, and does it again identically', async () => {
    const exec = new LocalExecutor();
    const file = hostReservationFile(join(dir, 'node'));
    expect(file).toBe(join(dir, 'node', 'pilot', 'reserved-memory.json'));
    const mem = new HostMemoryReservation({ exec, configuredMiB: 2048, file });
    expect(await mem.currentMiB()).toBe(2048);
    for (let round = 0; round < 2; round++) {
      const r = await mem.reserve(1536);
      expect(r).toMatchObject({ targetMiB: 512, reachedMiB: 512 });
      expect(JSON.parse(readFileSync(file, 'utf8'))).toEqual({ reservedMiB: 1536, at: expect.any(String) });
      expect(await readHostReservationMiB(exec, file)).toBe(1536);
      // A second reserve of another size is absolute too: the file says the new size, not a sum.
      await mem.reserve(1024);
      expect(await readHostReservationMiB(exec, file)).toBe(1024);
      expect(await mem.restore()).toMatchObject({ targetMiB: 2048, reachedMiB: 2048 });
      expect(existsSync(file)).toBe(false);
      expect(await mem.currentMiB()).toBe(2048);
    }
  });

  it('refuses targets outside [minHostMiB, configured], and a reservation file it cannot read', async () => {
    const exec = new LocalExecutor();
    const file = join(dir, 'reserved-memory.json');
    const mem = new HostMemoryReservation({ exec, configuredMiB: 1024, file, minHostMiB: 256 });
    await expect(mem.reserve(900)).rejects.toThrow(/leaves 124 MiB, below the host's minimum of 256 MiB/);
    await expect(mem.setAndWait(1025)).rejects.toThrow(MemoryTargetInvalid);
    expect(existsSync(file)).toBe(false);
    await exec.writeFileAtomic(file, '{"reservedMiB":"lots"}');
    await expect(mem.currentMiB()).rejects.toThrow(/holds no reservedMiB/);
  });
});
