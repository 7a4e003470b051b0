/**
 * `vws-pilot boot-reset` on a testbed node (vmm2: its own network, UTS and mount namespaces, so its host
 * name is `vmm2`), in a node directory of the test's own, as a node looks after a reboot that caught a
 * pilot holding it: a real QEMU VM left in the node directory (booted with vws's own driver), the pilot's
 * reservation file (the allocator would still count 512 MiB as taken), and the lock of a pilot of the
 * previous boot (pid 1, which is alive: only the boot id tells it is stale). boot-reset, with nothing but
 * the site configuration (the node found by its host name), destroys the VM, restores the memory to
 * exactly the configured value and removes the lock; run again it changes nothing; while a live pilot of
 * this boot holds the lock it touches nothing (exit 4).
 *
 * Needs the testbed and a fresh dist/ in the working directory (`npx tsc -p tsconfig.build.json`).
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { qemuRuns } from '../helpers/pilot-program';

jest.setTimeout(180_000);

const run = promisify(execFile);
const TESTBED = resolve(__dirname, '../../testbed/testbed.sh');
const BOOT_VM = resolve(__dirname, '../fixtures/boot-pilot-vm.js');
const MAIN = resolve('dist/pilot/main.js');
const NODE = 'vmm2';

let dir: string;
let nodeDir: string;
let configFile: string;
const vm = `ws-${randomBytes(6).toString('hex')}`;

const reservationFile = () => join(nodeDir, 'pilot', 'reserved-memory.json');
const lockFile = () => join(nodeDir, 'pilot', 'pilot.lock');
const bootId = () => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();


/** Runs boot-reset inside vmm2, as its systemd unit would (no --node): exit code and log lines. */
async function bootReset(): Promise<{ code: number; lines: Array<Record<string, unknown>> }> {
  let out = '';
  const child = spawn(TESTBED, ['exec', NODE, '--', 'env', '-u', 'VWS_NODE', `VWS_CONFIG=${configFile}`, process.execPath, MAIN, 'boot-reset', '--wait-seconds', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (out += c.toString()));
  const code = await new Promise<number>((r) => child.on('exit', (c) => r(c ?? -1)));
  const lines = out
    .trim()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  return { code, lines };
}

function writeReservation(mib: number): void {
  mkdirSync(join(nodeDir, 'pilot'), { recursive: true });
  writeFileSync(reservationFile(), `${JSON.stringify({ reservedMiB: mib, at: new Date().toISOString() })}\n`);
}

function writeLock(holder: { pid: number; startTicks: string | null; bootId: string; slotId: string }): void {
  writeFileSync(lockFile(), `${JSON.stringify({ ...holder, at: new Date().toISOString(), token: randomBytes(12).toString('hex') })}\n`);
}

beforeAll(() => {
  if (!existsSync(MAIN)) throw new Error(`${MAIN} is missing: build with npx tsc -p tsconfig.build.json first`);
  // Under /tmp: vmm2's mount namespace shares it.
  dir = mkdtempSync(join(tmpdir(), 'vws-boot-reset-'));
  chmodSync(dir, 0o755);
  nodeDir = join(dir, 'node');
  mkdirSync(nodeDir, { recursive: true });
  configFile = join(dir, 'vws.json');
  writeFileSync(
    configFile,
    JSON.stringify({
      node: { dir: nodeDir },
      nodes: [{ name: NODE, memoryMiB: 2048, cpus: 4, pilot: true }],
      lrm: { kind: 'slurm', partition: 'vws' },
      pilot: { secretFile: join(dir, 'pilot.secret'), apiUrl: 'http://10.213.0.1:8080' },
    }),
  );
});

afterAll(async () => {
  if (await qemuRuns(vm)) await run('pkill', ['-KILL', '-f', `qemu-system.*${vm}`]).catch(() => undefined);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('vws-pilot boot-reset on vmm2', () => {
  it("hands a node back after a reboot that caught a pilot: VM destroyed, memory exact, previous boot's lock removed", async () => {
    const booted = await run(TESTBED, ['exec', NODE, '--', process.execPath, BOOT_VM, nodeDir, vm], { timeout: 90_000 });
    expect(booted.stdout.trim()).toBe(vm);
    expect(await qemuRuns(vm)).toBe(true);
    writeReservation(512);
    writeLock({ pid: 1, startTicks: null, bootId: 'a-boot-before-this-one', slotId: 'slot-before-reboot' });

    const first = await bootReset();
    expect(first.code).toBe(0);
    expect(first.lines.find((l) => l.step === 'boot-reset')).toMatchObject({ node: NODE, action: 'reset', memory: 'host', configuredMiB: 2048, nodeDir });
    expect(first.lines.find((l) => l.step === 'reset')).toMatchObject({ destroyed: [vm], failed: [], memoryBeforeMiB: 1536, memoryAfterMiB: 2048, configuredMiB: 2048 });
    expect(await qemuRuns(vm)).toBe(false);
    expect(existsSync(reservationFile())).toBe(false);
    expect(existsSync(lockFile())).toBe(false);

    // Idempotent: a clean node stays as it is.
    const again = await bootReset();
    expect(again.code).toBe(0);
    expect(again.lines.find((l) => l.step === 'reset')).toMatchObject({ destroyed: [], failed: [], memoryBeforeMiB: 2048, memoryAfterMiB: 2048 });
  });

  it('touches nothing while a live pilot of this boot holds the node (exit 4)', async () => {
    // A live process of this boot stands in as the lock's holder (the pid space is shared with vmm2).
    const holder = spawn('sleep', ['120'], { stdio: 'ignore' });
    try {
      const stat = readFileSync(`/proc/${holder.pid}/stat`, 'utf8');
      const startTicks = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
      writeReservation(256);
      writeLock({ pid: holder.pid!, startTicks, bootId: bootId(), slotId: 'slot-live' });
      const r = await bootReset();
      expect(r.code).toBe(4);
      expect(r.lines.find((l) => l.step === 'lock')).toMatchObject({ holder: { pid: holder.pid, slotId: 'slot-live' } });
      expect(JSON.parse(readFileSync(reservationFile(), 'utf8'))).toMatchObject({ reservedMiB: 256 });
      expect(existsSync(lockFile())).toBe(true);
    } finally {
      holder.kill('SIGKILL');
    }
    // Once the holder is gone its lock is stale, and the reset goes through.
    await new Promise((r) => setTimeout(r, 200));
    const after = await bootReset();
    expect(after.code).toBe(0);
    expect(after.lines.find((l) => l.step === 'reset')).toMatchObject({ memoryBeforeMiB: 1792, memoryAfterMiB: 2048 });
    expect(existsSync(reservationFile())).toBe(false);
    expect(existsSync(lockFile())).toBe(false);
  });
});
