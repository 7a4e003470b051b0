/**
 * The boot-time reset under a real systemd (issue 7: "on the node's boot, the same reset runs"). A VM boots
 * Debian's systemd from this machine's own root file system (testbed/systemd-node/boot.sh), with
 * deploy/systemd/vws-pilot-boot-reset.service installed unchanged and enabled as `systemctl enable` does it
 * (its WantedBy), its settings in /etc/vws (vws.yaml, pilot-node.env) and /opt/vws pointing at this tree.
 * The node directory (shared with the VM) looks as a reboot left it with a pilot holding the node: the
 * pilot's reservation (512 of 2048 MiB taken) and the lock of a pilot of the previous boot. slurmd's own
 * unit (this machine's, enabled) is there with a slurm.conf, so its ordering is real.
 * Checked after the VM powered off: systemd ran the unit at boot and it succeeded; it finished before
 * slurmd was started (`Before=slurmd.service`); the memory is exactly the configured value again and the
 * stale lock is gone. Needs root, QEMU's virtiofsd and a fresh dist/ (`npx tsc -p tsconfig.build.json`).
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

jest.setTimeout(600_000);

const ROOT = resolve(__dirname, '../..');
const BOOT = join(ROOT, 'testbed/systemd-node/boot.sh');
const UNIT = 'vws-pilot-boot-reset.service';
const UNIT_FILE = join(ROOT, 'deploy/systemd', UNIT);
const NODE = 'sysd1';

let out: string;

/** `systemctl show` output (`Key=Value` lines, units separated by blank lines) → one record per unit `Id`. */
function parseShow(text: string): Record<string, Record<string, string>> {
  const units: Record<string, Record<string, string>> = {};
  for (const block of text.split(/\n\s*\n/)) {
    const props = Object.fromEntries(
      block
        .split('\n')
        .filter((l) => l.includes('='))
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
    if (props.Id) units[props.Id] = props;
  }
  return units;
}

/** Writes `text` at `path` under the seed tree (the files copied over the VM's root). */
function seed(path: string, text: string): void {
  const file = join(out, 'seed', path);
  mkdirSync(resolve(file, '..'), { recursive: true });
  writeFileSync(file, text);
}

beforeAll(() => {
  if (!existsSync(join(ROOT, 'dist/pilot/main.js'))) throw new Error('dist/pilot/main.js is missing: build with npx tsc -p tsconfig.build.json first');
  out = mkdtempSync('/tmp/vws-systemd-boot-');
  chmodSync(out, 0o755);
});

afterAll(() => {
  if (out && !process.env.VWS_KEEP_SYSTEMD_BOOT) rmSync(out, { recursive: true, force: true });
});

describe('vws-pilot boot-reset under systemd', () => {
  it('runs at boot before slurmd: memory exactly configured, the previous boot’s lock removed', async () => {
    const nodeDir = '/mnt/out/node';
    // The unit as shipped, enabled as its [Install] section says.
    const unitText = readFileSync(UNIT_FILE, 'utf8');
    expect(unitText).toMatch(/^WantedBy=multi-user\.target$/m);
    mkdirSync(join(out, 'seed/etc/systemd/system'), { recursive: true });
    copyFileSync(UNIT_FILE, join(out, 'seed/etc/systemd/system', UNIT));
    // This tree at /opt/vws (a bind mount: CI's clone may be under /tmp, which the VM's systemd covers).
    writeFileSync(join(out, 'seed.bind'), `${ROOT} /opt/vws\n`);
    seed(
      'etc/vws/vws.yaml',
      JSON.stringify({
        node: { dir: nodeDir },
        nodes: [{ name: NODE, memoryMiB: 2048, cpus: 4, pilot: true }],
        lrm: { kind: 'slurm', partition: 'vws' },
        pilot: { secretFile: '/etc/vws/pilot.secret', apiUrl: 'http://10.213.0.1:8080' },
      }),
    );
    seed('etc/vws/pilot-node.env', `VWS_NODE=${NODE}\n`);
    // slurmd's unit starts only with a slurm.conf (ConditionPathExists); it then fails to reach a
    // controller, which does not matter here: when systemd started it is what is compared.
    seed('etc/slurm/slurm.conf', `ClusterName=vwsboot\nSlurmctldHost=head\nNodeName=${NODE} CPUs=1 State=UNKNOWN\nPartitionName=vws Nodes=${NODE} Default=YES\n`);
    // The test's own reporter: once both have had their turn, it records them and powers the VM off.
    seed(
      'etc/systemd/system/vws-boot-report.service',
      [
        '[Unit]',
        'Description=vws test: record the boot-time units, then power off',
        `After=${UNIT} slurmd.service`,
        '[Service]',
        'Type=oneshot',
        `ExecStart=/bin/sh -c 'systemctl show ${UNIT} slurmd.service > /mnt/out/units.txt; journalctl -b -o cat -u ${UNIT} > /mnt/out/boot-reset.log'`,
        'ExecStartPost=/bin/systemctl --no-block poweroff',
        '[Install]',
        'WantedBy=multi-user.target',
        '',
      ].join('\n'),
    );
    writeFileSync(join(out, 'seed.enable'), `${UNIT}\nvws-boot-report.service\n`);
    // The node as the reboot left it: 512 MiB still reserved, a pilot's lock from the boot before.
    mkdirSync(join(out, 'node/pilot'), { recursive: true });
    writeFileSync(join(out, 'node/pilot/reserved-memory.json'), `${JSON.stringify({ reservedMiB: 512, at: new Date().toISOString() })}\n`);
    writeFileSync(
      join(out, 'node/pilot/pilot.lock'),
      `${JSON.stringify({ pid: 1, startTicks: null, bootId: 'a-boot-before-this-one', slotId: 'slot-before-reboot', at: new Date().toISOString(), token: randomBytes(12).toString('hex') })}\n`,
    );

    const t0 = Date.now();
    await promisify(execFile)(BOOT, [out, '480'], { timeout: 540_000 });
    const bootMs = Date.now() - t0;

    const units = parseShow(readFileSync(join(out, 'units.txt'), 'utf8'));
    const reset = units[UNIT];
    const slurmd = units['slurmd.service'];
    expect(reset).toMatchObject({ LoadState: 'loaded', ActiveState: 'active', Result: 'success', ExecMainStatus: '0', UnitFileState: 'enabled' });
    // Ordering: slurmd was started only after the reset had finished.
    const resetDone = Number(reset.ExecMainExitTimestampMonotonic);
    const slurmdStarted = Number(slurmd.ExecMainStartTimestampMonotonic);
    expect(resetDone).toBeGreaterThan(0);
    expect(slurmdStarted).toBeGreaterThan(resetDone);

    const lines = readFileSync(join(out, 'boot-reset.log'), 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.find((l) => l.step === 'boot-reset')).toMatchObject({ node: NODE, action: 'reset', memory: 'host', configuredMiB: 2048, nodeDir });
    expect(lines.find((l) => l.step === 'reset')).toMatchObject({ destroyed: [], failed: [], memoryBeforeMiB: 1536, memoryAfterMiB: 2048, configuredMiB: 2048 });
    expect(existsSync(join(out, 'node/pilot/reserved-memory.json'))).toBe(false);
    expect(existsSync(join(out, 'node/pilot/pilot.lock'))).toBe(false);
    console.log(`systemd boot (TCG): power on → off ${bootMs} ms; reset finished ${(resetDone / 1e6).toFixed(1)} s after boot, slurmd started ${((slurmdStarted - resetDone) / 1e6).toFixed(2)} s later`);
  });
});
