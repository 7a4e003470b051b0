/**
 * Pure pieces of the Xen driver: the `xl` domain config rendered from a {@link VmSpec}, and parsers for
 * what `xl list` and `losetup` print. No I/O here, so all of it is unit-tested.
 */
import { ApplicationFailure } from '@temporalio/common';
import { posix } from 'node:path';
import { FailureType } from '../../domain/errors';
import type { VmPowerState, VmSpec } from '../hypervisor';

/** Workspace ids, the only domain names this driver touches (never Domain-0 or a stranger's domain). */
export const WORKSPACE_ID = /^ws-[0-9a-f]{12}$/;

function invalid(message: string): ApplicationFailure {
  return ApplicationFailure.create({ type: FailureType.InvalidSpec, nonRetryable: true, message });
}

/**
 * One value as an `xl` config string. xl's parser gives `\` and `"` meaning inside quotes, and a newline
 * would end the setting, so such values are refused rather than escaped: the spec is validated upstream,
 * and a value that still carries them is a bug to surface, not to paper over.
 */
export function xlString(field: string, value: string): string {
  // eslint-disable-next-line no-control-regex
  if (/["\\\x00-\x1f\x7f]/.test(value)) throw invalid(`${field} ${JSON.stringify(value)}: quotes, backslashes and control characters cannot go into an xl config`);
  return `"${value}"`;
}

/** Checks `value` against `pattern` for a field that goes into a list item or the kernel command line. */
function token(field: string, value: string, pattern: RegExp): string {
  if (!pattern.test(value)) throw invalid(`${field} ${JSON.stringify(value)} does not match ${pattern}`);
  return value;
}

function positiveInt(field: string, value: number): number {
  if (!Number.isInteger(value) || value <= 0) throw invalid(`${field} must be a positive integer, got ${value}`);
  return value;
}

/**
 * The PV disk name of the disk at `index` (0 = root): xvda, xvdb, … xvdz. Xen's `xvd` names go further
 * (xvdaa…), but a workspace never has that many partitions (see `images.maxExtraPartitions`).
 */
export function xenVdev(index: number): string {
  if (!Number.isInteger(index) || index < 0 || index > 25) throw invalid(`disk index ${index}: at most 26 disks (xvda…xvdz)`);
  return `xvd${String.fromCharCode(97 + index)}`;
}

/**
 * Checks the disks of `spec` (root and extra) for Xen before anything is attached: raw files only (dom0 has no qdisk
 * backend, so every disk goes through a loop device, which shows a qcow2 file's bytes, not its content),
 * each in `dir` (the workspace directory: the driver finds leftover loop devices after a crash by their
 * backing file's directory, see {@link loopsUnder}), none twice. Errors name the disk.
 */
export function checkXenDisks(spec: VmSpec, dir: string): void {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  const all = [{ path: spec.rootDisk, format: 'raw' as const }, ...(spec.disks ?? [])];
  xenVdev(all.length - 1);
  const seen = new Set<string>();
  all.forEach((d, i) => {
    const field = i === 0 ? 'rootDisk' : `disks[${i - 1}]`;
    if (d.format !== 'raw') {
      throw invalid(`${field} ${JSON.stringify(d.path)} (${xenVdev(i)}) is ${d.format}: Xen attaches raw files only (through a loop device)`);
    }
    if (posix.normalize(d.path) !== d.path || !d.path.startsWith(prefix) || d.path.length === prefix.length) {
      throw invalid(`${field} ${JSON.stringify(d.path)} is not a file in the workspace directory ${dir}`);
    }
    if (seen.has(d.path)) throw invalid(`${field} ${JSON.stringify(d.path)} is attached twice`);
    seen.add(d.path);
  });
}

/**
 * The `xl` config of a PV domain for `spec`: its root disk attached as `loopDevice` and `spec.disks` as
 * `diskLoops` (same order; dom0 has no qdisk backend, so raw files go through loop devices as `phy:`),
 * which the guest sees as xvda, xvdb, xvdc… Every disk must be raw: a qcow2 disk is refused, naming it.
 * `on_reboot="restart"` keeps the domain's identity across a guest reboot; poweroff and crash end it, and
 * the driver cleans up after.
 */
export function renderDomainConfig(spec: VmSpec, loopDevice: string, diskLoops: readonly string[] = []): string {
  const name = token('name', spec.name, /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/);
  // Space-separated kernel arguments: a space or quote in the hostname would add arguments.
  const hostname = token('hostname', spec.hostname, /^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$/);
  // vif and disk items are comma/equals-separated lists inside a quoted string.
  const vifs = spec.nics.map((nic, i) => {
    const mac = token(`nics[${i}].mac`, nic.mac, /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/);
    const bridge = token(`nics[${i}].bridge`, nic.bridge, /^[A-Za-z0-9_.-]{1,15}$/);
    // vifname: the backend interface gets the name the anti-spoofing rules match (not vif<domid>.<n>).
    const iface = token(`nics[${i}].iface`, nic.iface, /^[A-Za-z0-9_.-]{1,15}$/);
    return xlString('vif', `mac=${mac},bridge=${bridge},vifname=${iface}`);
  });
  const loop = token('loop device', loopDevice, /^\/dev\/loop[0-9]+$/);
  const extra = spec.disks ?? [];
  if (diskLoops.length !== extra.length) throw new Error(`${extra.length} extra disks but ${diskLoops.length} loop devices`);
  const disks = extra.map((d, i) => {
    const vdev = xenVdev(i + 1);
    if (d.format !== 'raw') throw invalid(`disks[${i}] ${JSON.stringify(d.path)} (${vdev}) is ${d.format}: Xen attaches raw files only (through a loop device)`);
    return { vdev, path: xlString(`disks[${i}]`, d.path), loop: token('loop device', diskLoops[i], /^\/dev\/loop[0-9]+$/) };
  });
  return [
    // For whoever reads the file on the node: which file each loop device stands for.
    `# Written by vws (XenDriver); root disk ${xlString('rootDisk', spec.rootDisk)} as ${loop}`,
    ...disks.map((d) => `# ${d.vdev}: ${d.path} as ${d.loop}`),
    `name = ${xlString('name', name)}`,
    `type = "pv"`,
    `memory = ${positiveInt('memoryMiB', spec.memoryMiB)}`,
    `vcpus = ${positiveInt('vcpus', spec.vcpus)}`,
    `kernel = ${xlString('kernel.vmlinuz', spec.kernel.vmlinuz)}`,
    `ramdisk = ${xlString('kernel.initrd', spec.kernel.initrd)}`,
    `extra = ${xlString('extra', `console=hvc0 quiet vmname=${hostname}`)}`,
    `vif = [ ${vifs.join(', ')} ]`,
    `disk = [ ${[xlString('disk', `phy:${loop},xvda,w`), ...disks.map((d) => xlString('disk', `phy:${d.loop},${d.vdev},w`))].join(', ')} ]`,
    `on_poweroff = "destroy"`,
    `on_reboot = "restart"`,
    `on_crash = "destroy"`,
    '',
  ].join('\n');
}

/**
 * Power state from `xl list`'s State column: six positions, `r` running, `b` blocked, `p` paused,
 * `s` shut down, then the shutdown reason (`-` poweroff, `r` reboot, `s` suspend, `c` crash, `w`
 * watchdog, `S` soft reset; xl_list.c) and `d` dying. E.g. `-b----`, `--p---`, `---sr-` (shut down to
 * reboot; xl's monitor is about to restart it), `---sc-` (crashed). Paused wins over running/blocked;
 * shut down or dying counts as shutoff: the domain exists but no longer runs. No flag at all: runnable.
 */
export function powerStateFromFlags(flags: string): VmPowerState {
  if (!/^[r-][b-][p-][s-][-rscwS?][d-]$/.test(flags)) throw new Error(`unexpected xl state ${JSON.stringify(flags)}`);
  if (flags[3] === 's' || flags[5] === 'd') return 'shutoff';
  if (flags[2] === 'p') return 'paused';
  return 'running';
}

/** One row of plain `xl list` output. */
export interface XlListRow {
  name: string;
  domid: number;
  memMiB: number;
  vcpus: number;
  state: string;
}

/** Rows of plain `xl list [name]` output (the header line is skipped). */
export function parseXlList(stdout: string): XlListRow[] {
  const rows: XlListRow[] = [];
  for (const line of stdout.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length < 6 || f[0] === 'Name' || !/^\d+$/.test(f[1])) continue;
    rows.push({ name: f[0], domid: Number(f[1]), memMiB: Number(f[2]), vcpus: Number(f[3]), state: f[4] });
  }
  return rows;
}

/** Loop devices named by `losetup -j <file>` (`/dev/loop0: [65024]:17 (/path)` per line). */
export function parseLosetupAssociations(stdout: string): string[] {
  return stdout
    .split('\n')
    .map((l) => /^(\/dev\/loop[0-9]+):/.exec(l)?.[1])
    .filter((d): d is string => d !== undefined);
}

/** Loop devices from `losetup -J -l -O NAME,BACK-FILE` whose backing file is below `dir`. */
export function loopsUnder(losetupJson: string, dir: string): string[] {
  if (losetupJson.trim() === '') return [];
  const parsed = JSON.parse(losetupJson) as { loopdevices?: Array<{ name?: string; 'back-file'?: string | null }> };
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  return (parsed.loopdevices ?? [])
    // A backing file deleted while attached is shown with a " (deleted)" suffix; the prefix still matches.
    .filter((d) => typeof d.name === 'string' && typeof d['back-file'] === 'string' && d['back-file'].startsWith(prefix))
    .map((d) => d.name as string);
}
