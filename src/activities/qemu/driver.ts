/**
 * The QEMU driver: one daemonized qemu-system-x86_64 per VM, controlled over QMP, with a tap on the
 * node's bridge. TCG by default (see research/testbed-qemu-vms.md: KVM here hangs stock guests).
 *
 * Everything goes through the {@link Executor}: commands, files and the QMP socket
 * (`exec.connectUnix`), so the same driver runs inside a node worker or from the head over SSH.
 */
import { ApplicationFailure } from '@temporalio/common';
import { join, resolve } from 'node:path';
import { FailureType } from '../../domain/errors';
import type { Executor } from '../../exec/executor';
import type { HypervisorDriver, ShutdownResult, VmPowerState, VmSpec } from '../hypervisor';
import { workspaceDir, type NodePaths } from '../node-paths';
import { vmNotFound } from '../vm-not-found';
import { QmpSession } from './qmp';

/** Progress of a save: RAM bytes written so far and the guest's RAM size, as `query-migrate` reports. */
export interface SaveProgress {
  bytes: number;
  total: number;
}

/** Options of one {@link QemuDriver.save}. */
export interface SaveOptions {
  /** Called on every poll of the migration (about every 50 ms), e.g. to heartbeat the activity. */
  progress?: (p: SaveProgress) => void;
}

/** Settings of the QEMU driver. */
export interface QemuDriverOptions {
  exec: Executor;
  paths: NodePaths;
  binary: string;
  accel: 'tcg' | 'kvm';
  /**
   * A save that writes no byte for this long is cancelled and fails (default 60 s). A stall detector rather
   * than a total timeout, because a large guest on a slow disk legitimately takes long.
   */
  saveStallMs?: number;
}

/** Files of one VM, all in its workspace directory. */
export interface VmFiles {
  dir: string;
  qmp: string;
  pid: string;
  serial: string;
}

/** The files of VM `name` (a workspace id: the path is built only from a validated id). */
export function vmFiles(paths: NodePaths, name: string): VmFiles {
  const dir = workspaceDir(paths, name);
  return { dir, qmp: join(dir, 'qmp.sock'), pid: join(dir, 'qemu.pid'), serial: join(dir, 'serial.log') };
}

/** The prefix every tap of VM `name` starts with (`nicInterfaceName` adds the NIC index). */
export function tapPrefix(name: string): string {
  return `vw${name.replace(/^ws-/, '')}`;
}

/** Refuses an interface name that is not one (it goes into qemu's option string). */
function checkIface(iface: string): string {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(iface)) throw new Error(`nics: bad interface name ${JSON.stringify(iface)}`);
  return iface;
}

/** Refuses a MAC that is not one. */
function checkMac(mac: string): string {
  if (!/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(mac)) throw new Error(`nics: bad MAC ${JSON.stringify(mac)}`);
  return mac;
}

/** Escapes a value inside a QEMU `key=value,...` option: a comma is written as two. */
export function qemuOptValue(value: string): string {
  return value.replace(/,/g, ',,');
}

/**
 * Refuses a disk path qemu could read as something other than a plain file: only absolute paths, because
 * `file=` takes protocol prefixes (`json:{…}`, `nbd:…`, `http:…`) when a colon comes before any slash.
 */
function checkDiskPath(field: string, path: string): string {
  if (!path.startsWith('/')) {
    throw ApplicationFailure.create({
      type: FailureType.InvalidSpec,
      nonRetryable: true,
      message: `refusing ${field} ${JSON.stringify(path)}: disk paths must be absolute`,
    });
  }
  return path;
}

/**
 * The `-drive` arguments of a VM's disks: the root (a qcow2 overlay) first, then `spec.disks` in order,
 * each as another virtio drive, so the guest sees vda, vdb, vdc… The format is always given: qemu would
 * otherwise probe a raw file's content, and a guest could write a qcow2 header naming a backing file
 * on the node into its raw disk. Restore builds the same list, which migration needs (same devices, same order).
 */
export function driveArgs(spec: VmSpec): string[] {
  const disks = [{ path: spec.rootDisk, format: 'qcow2' as const }, ...(spec.disks ?? [])];
  const seen = new Set<string>();
  return disks.flatMap((d, i) => {
    const field = i === 0 ? 'rootDisk' : `disks[${i - 1}]`;
    checkDiskPath(field, d.path);
    if (d.format !== 'qcow2' && d.format !== 'raw') {
      throw ApplicationFailure.create({ type: FailureType.InvalidSpec, nonRetryable: true, message: `${field} ${d.path}: unknown format ${JSON.stringify(d.format)}` });
    }
    // qemu would fail on its own image lock, but only after the tap was made; say which disk instead.
    if (seen.has(d.path)) {
      throw ApplicationFailure.create({ type: FailureType.InvalidSpec, nonRetryable: true, message: `${field} ${d.path} is attached twice` });
    }
    seen.add(d.path);
    return ['-drive', `file=${qemuOptValue(d.path)},if=virtio,format=${d.format}`];
  });
}

/**
 * The qemu argv for a VM; pure, so it is unit-tested. With `incoming`, qemu starts stopped (`-S`) and waits
 * for `migrate-incoming` (`-incoming defer`), which is how a saved state is loaded.
 */
export function qemuArgv(binary: string, accel: string, spec: VmSpec, files: VmFiles, options: { incoming?: boolean } = {}): string[] {
  const v = qemuOptValue;
  return [
    binary,
    '-name', `${spec.name},process=vws-${spec.name}`,
    '-accel', accel,
    '-machine', 'pc',
    '-m', String(spec.memoryMiB),
    '-smp', String(spec.vcpus),
    '-nodefaults', '-no-user-config', '-display', 'none',
    '-kernel', spec.kernel.vmlinuz,
    '-initrd', spec.kernel.initrd,
    // `quiet`: every console character is slow under TCG. panic=-1: a panicking guest reboots at once.
    '-append', `console=ttyS0 quiet panic=-1 vmname=${spec.hostname}`,
    ...driveArgs(spec),
    ...spec.nics.flatMap((nic, i) => [
      '-netdev', `tap,id=n${i},ifname=${v(checkIface(nic.iface))},script=no,downscript=no`,
      '-device', `virtio-net-pci,netdev=n${i},mac=${checkMac(nic.mac)}`,
    ]),
    // `-serial file:` truncates the log when qemu starts; append=on keeps the console of the boot before
    // a save (and before a host-side restart) in one file.
    '-chardev', `file,id=s0,path=${v(files.serial)},append=on`,
    '-serial', 'chardev:s0',
    '-qmp', `unix:${v(files.qmp)},server=on,wait=off`,
    '-pidfile', files.pid,
    ...(options.incoming ? ['-S', '-incoming', 'defer'] : []),
    '-daemonize',
  ];
}

/** Maps QMP `query-status` to a driver power state. */
export function powerState(s: { status: string; running: boolean }): VmPowerState {
  if (s.running) return 'running';
  // Without -no-shutdown qemu exits when the guest powers off, so these are brief or exceptional.
  if (s.status === 'shutdown' || s.status === 'guest-panicked' || s.status === 'internal-error') return 'shutoff';
  // paused, prelaunch, inmigrate, postmigrate, finish-migrate, io-error, suspended...: stopped but resumable.
  return 'paused';
}

/** Temporary names of a save in progress, next to the state file. */
export function stateFileNames(stateFile: string): { part: string; done: string; failed: string } {
  return { part: `${stateFile}.part`, done: `${stateFile}.done`, failed: `${stateFile}.failed` };
}

/**
 * Refuses a state file path that is not a plain absolute path below the node's workspaces directory.
 * The path goes into a `/bin/sh -c` command line inside qemu (`exec:` migration URIs), so only a safe
 * character set passes and nothing needs quoting.
 */
export function checkStatePath(paths: NodePaths, stateFile: string): void {
  const safe = /^\/[A-Za-z0-9._/-]+$/;
  const ok =
    safe.test(stateFile) &&
    resolve(stateFile) === stateFile &&
    stateFile.startsWith(`${resolve(paths.workspaces)}/`) &&
    !stateFile.split('/').includes('..');
  if (!ok) {
    throw ApplicationFailure.create({
      type: FailureType.InvalidSpec,
      nonRetryable: true,
      message: `refusing state file ${JSON.stringify(stateFile)}: it must be a path below ${paths.workspaces} of [A-Za-z0-9._/-] only`,
    });
  }
}

/**
 * The outgoing migration URI that writes the state to `<stateFile>.part`, fsyncs it and renames it to
 * `<stateFile>.done`, or touches `<stateFile>.failed`.
 *
 * Why not `exec:cat > file`: when the migration ends, qemu closes the pipe and at once SIGTERMs its child if
 * it has not exited yet, so `cat` could die with the last pipe buffer unread and the file be silently short.
 * Here the shell qemu starts exits immediately; the writer runs in the background, reads the pipe
 * (saved as fd 3, since a background list's stdin is /dev/null) to its end, and its `.done` rename is the
 * driver's proof that every byte is on disk.
 */
export function saveUri(stateFile: string): string {
  const f = stateFileNames(stateFile);
  return (
    `exec:exec 3<&0 </dev/null; ` +
    `{ dd of=${f.part} bs=1M conv=fsync <&3 2>/dev/null && mv -f ${f.part} ${f.done} || : >${f.failed}; } &`
  );
}

/** The incoming migration URI that reads a saved state. */
export function restoreUri(stateFile: string): string {
  return `exec:cat ${stateFile}`;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Migration states in which a migration is under way (`query-migrate`). */
const MIGRATING = new Set(['setup', 'active', 'device', 'pre-switchover', 'wait-unplug', 'postcopy-active', 'cancelling']);

type MigrateInfo = {
  status?: string;
  'error-desc'?: string;
  ram?: { transferred?: number; total?: number };
};

/** {@link HypervisorDriver} over QEMU + QMP. */
export class QemuDriver implements HypervisorDriver {
  readonly kind = 'qemu' as const;
  readonly diskFormat = 'qcow2' as const;

  constructor(private readonly o: QemuDriverOptions) {}

  /** The qemu pid of this VM, only if that process is alive and really is this VM's qemu. */
  private async livePid(name: string): Promise<number | null> {
    const files = vmFiles(this.o.paths, name);
    const text = await this.o.exec.readFile(files.pid);
    const pid = Number(text?.trim());
    if (!Number.isInteger(pid) || pid <= 0) return null;
    // A pid file can outlive its process and the pid be reused: check the command line names our socket.
    const cmdline = await this.o.exec.readFile(`/proc/${pid}/cmdline`);
    if (cmdline === null || !cmdline.split('\0').some((arg) => arg.includes(files.qmp))) return null;
    const stat = await this.o.exec.readFile(`/proc/${pid}/stat`);
    if (stat && / Z /.test(stat.slice(stat.lastIndexOf(')')))) return null; // zombie: already dead
    return pid;
  }

  /** A QMP session on the VM, or null if the VM is not running (also if it exits while connecting). */
  private async session(name: string): Promise<QmpSession | null> {
    if ((await this.livePid(name)) === null) return null;
    try {
      return await QmpSession.open(await this.o.exec.connectUnix(vmFiles(this.o.paths, name).qmp));
    } catch (e) {
      if ((await this.livePid(name)) === null) return null;
      throw e;
    }
  }

  /** Runs `fn` on a session; `absent` if the VM is not running, or stopped running during `fn`. */
  private async withQmp<T>(name: string, fn: (q: QmpSession) => Promise<T>): Promise<T | 'absent'> {
    const q = await this.session(name);
    if (!q) return 'absent';
    try {
      return await fn(q);
    } catch (e) {
      if ((await this.livePid(name)) === null) return 'absent';
      throw e;
    } finally {
      q.close();
    }
  }

  /** Polls until the VM's qemu has exited; false on timeout. */
  private async waitGone(name: string, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while ((await this.livePid(name)) !== null) {
      if (Date.now() > deadline) return false;
      await sleep(100);
    }
    return true;
  }

  private async tapExists(tap: string): Promise<boolean> {
    const r = await this.o.exec.run(['ip', 'link', 'show', 'dev', tap], { okCodes: [0, 1] });
    return r.code === 0;
  }

  /** The VM's taps that exist on the node (any NIC count, so cleanup needs nothing but the name). */
  private async tapsOf(name: string): Promise<string[]> {
    const prefix = tapPrefix(name);
    const out = (await this.o.exec.run(['ip', '-o', 'link', 'show'])).stdout;
    return [...out.matchAll(/^\d+: ([^:@\s]+)/gm)].map((m) => m[1]).filter((n) => n.startsWith(prefix));
  }

  /** SIGKILLs the VM's qemu if it runs and waits until it is gone. */
  private async kill(name: string): Promise<void> {
    const pid = await this.livePid(name);
    if (pid === null) return;
    await this.o.exec.run(['kill', '-KILL', String(pid)], { okCodes: [0, 1] });
    // Confirm it is gone before anything (its address) is handed out again.
    if (!(await this.waitGone(name, 15_000))) throw new Error(`qemu ${pid} of ${name} did not exit after SIGKILL`);
  }

  /** Removes what a VM leaves behind once its qemu is gone: tap, QMP socket, pid file. */
  private async cleanup(name: string): Promise<void> {
    const files = vmFiles(this.o.paths, name);
    for (const tap of await this.tapsOf(name)) await this.o.exec.run(['ip', 'link', 'del', 'dev', tap], { okCodes: [0, 1] });
    await this.o.exec.remove(files.qmp);
    await this.o.exec.remove(files.pid);
  }

  /** Creates the tap on the bridge and starts a daemonized qemu (`-daemonize` returns once QMP listens). */
  private async launch(spec: VmSpec, incoming: boolean): Promise<void> {
    const files = vmFiles(this.o.paths, spec.name);
    // Built first: an invalid spec (a relative disk path) must fail before anything is made on the node.
    const argv = qemuArgv(this.o.binary, this.o.accel, spec, files, { incoming });
    for (const nic of spec.nics) {
      if (!(await this.tapExists(nic.iface))) await this.o.exec.run(['ip', 'tuntap', 'add', 'dev', nic.iface, 'mode', 'tap']);
      await this.o.exec.run(['ip', 'link', 'set', 'dev', nic.iface, 'master', nic.bridge]);
      await this.o.exec.run(['ip', 'link', 'set', 'dev', nic.iface, 'up']);
    }
    await this.o.exec.remove(files.qmp);
    await this.o.exec.remove(files.pid);
    // -daemonize returns once the VM is set up (about 0.1 s), so the timeout only guards a hang.
    await this.o.exec.run(argv, { timeoutMs: 30_000 });
  }

  async create(spec: VmSpec): Promise<void> {
    if ((await this.livePid(spec.name)) !== null) return;
    await this.launch(spec, false);
  }

  async status(name: string): Promise<VmPowerState> {
    return this.withQmp(name, async (q) => powerState(await q.execute<{ status: string; running: boolean }>('query-status')));
  }

  async pause(name: string): Promise<void> {
    // `stop` on a stopped VM is a no-op, so no status check is needed for idempotency.
    if ((await this.withQmp(name, (q) => q.execute('stop'))) === 'absent') throw vmNotFound(name, 'pause');
  }

  async unpause(name: string): Promise<void> {
    const r = await this.withQmp(name, async (q) => {
      const s = await q.execute<{ status: string; running: boolean }>('query-status');
      if (!s.running) await q.execute('cont');
    });
    if (r === 'absent') throw vmNotFound(name, 'unpause');
  }

  async reboot(name: string): Promise<void> {
    // A hard reset: the guest boots again in the same qemu (same tap, disk and MAC). A paused VM stays paused.
    if ((await this.withQmp(name, (q) => q.execute('system_reset'))) === 'absent') throw vmNotFound(name, 'reboot');
  }

  /**
   * ACPI power button, then SIGKILL after `timeoutMs`. A VM paused by {@link pause} is resumed first: a
   * stopped guest cannot see the button, and resuming gives it the chance to flush its disk, which is the
   * point of a graceful shutdown (forcing it would be {@link destroy}). VMs stopped for other reasons
   * (migration, I/O error) are killed at once: resuming them is unsafe. Already absent → `graceful: true`
   * (a retry after the VM powered off must not report a forced stop).
   */
  async shutdown(name: string, timeoutMs: number): Promise<ShutdownResult> {
    const asked = await this.withQmp(name, async (q) => {
      const s = await q.execute<{ status: string; running: boolean }>('query-status');
      if (!s.running && s.status === 'paused') await q.execute('cont');
      else if (!s.running) return false;
      await q.execute('system_powerdown');
      return true;
    });
    let graceful = true;
    let forcedBecause: string | undefined;
    if (asked !== 'absent') {
      graceful = asked && (await this.waitGone(name, timeoutMs));
      if (!asked) forcedBecause = 'the VM was stopped (not paused by vws) and could not see the power button';
      else if (!graceful) forcedBecause = `the guest did not power off within ${Math.round(timeoutMs / 1000)} s of the power button`;
      if (!graceful) await this.kill(name);
    }
    await this.cleanup(name);
    return forcedBecause ? { graceful, forcedBecause } : { graceful };
  }

  /**
   * Saves the VM (RAM and devices; the disk stays in its overlay) to `stateFile` and ends it: QMP `stop`,
   * `migrate` to an `exec:` URI ({@link saveUri}), poll `query-migrate` until `completed`, wait for the
   * writer's `.done`, `quit`, wait until qemu is gone, remove the tap, then rename `.done` to `stateFile`.
   * So `stateFile` exists only once the VM is gone and the state is complete on disk.
   *
   * Idempotent: VM absent and `stateFile` present → done; a retry after a crash resumes at whichever step
   * it reached. VM absent and no state → `VmNotFound`. A state file left from an earlier save is replaced.
   */
  async save(name: string, stateFile: string, options: SaveOptions = {}): Promise<void> {
    checkStatePath(this.o.paths, stateFile);
    const f = stateFileNames(stateFile);
    const q = await this.session(name);
    if (!q) {
      if (await this.o.exec.exists(stateFile)) return this.cleanup(name);
      if (await this.o.exec.exists(f.done)) {
        await this.cleanup(name);
        return this.o.exec.rename(f.done, stateFile);
      }
      throw vmNotFound(name, 'save');
    }
    try {
      const s = await q.execute<{ status: string }>('query-status');
      const m = await q.execute<MigrateInfo>('query-migrate');
      let written = false;
      if (s.status === 'postmigrate' && m.status === 'completed') {
        // An earlier attempt finished the migration: its writer has finished or is about to.
        written = await this.waitWriter(name, f, 10_000).then(() => true, () => false);
      }
      if (!written) {
        if (!MIGRATING.has(m.status ?? '')) {
          for (const p of [stateFile, f.part, f.done, f.failed]) await this.o.exec.remove(p);
          await q.execute('stop');
          // The default bandwidth cap (128 MiB/s) would only slow down a local file write.
          await q.execute('migrate-set-parameters', { 'max-bandwidth': 10 * 1024 ** 3 });
          await q.execute('migrate', { uri: saveUri(stateFile) });
        }
        await this.pollMigration(q, name, options);
        await this.waitWriter(name, f, 60_000);
      }
      // qemu answers `quit` and exits; the answer may be lost with the connection, which is fine.
      await q.execute('quit').catch(() => undefined);
    } finally {
      q.close();
    }
    // The state is safely on disk by now, so a qemu that does not quit can be killed.
    if (!(await this.waitGone(name, 15_000))) await this.kill(name);
    await this.cleanup(name);
    await this.o.exec.rename(f.done, stateFile);
  }

  /** Polls `query-migrate` until `completed`; fails on `failed`/`cancelled` or when no byte moves for too long. */
  private async pollMigration(q: QmpSession, name: string, options: SaveOptions): Promise<void> {
    const stallMs = this.o.saveStallMs ?? 60_000;
    let last = -1;
    let lastMove = Date.now();
    for (;;) {
      const m = await q.execute<MigrateInfo>('query-migrate');
      const bytes = m.ram?.transferred ?? 0;
      options.progress?.({ bytes, total: m.ram?.total ?? 0 });
      if (m.status === 'completed') return;
      if (m.status === 'failed' || m.status === 'cancelled') {
        throw new Error(`saving ${name} failed: migration ${m.status}${m['error-desc'] ? `: ${m['error-desc']}` : ''}`);
      }
      if (bytes !== last) {
        last = bytes;
        lastMove = Date.now();
      } else if (Date.now() - lastMove > stallMs) {
        await q.execute('migrate_cancel').catch(() => undefined);
        throw new Error(`saving ${name} stalled: no progress for ${stallMs} ms at ${bytes} bytes (cancelled)`);
      }
      await sleep(50);
    }
  }

  /** Waits for the background writer of {@link saveUri} to report `.done` (or `.failed`). */
  private async waitWriter(name: string, f: ReturnType<typeof stateFileNames>, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (await this.o.exec.exists(f.done)) return;
      if (await this.o.exec.exists(f.failed)) throw new Error(`saving ${name} failed: could not write ${f.part} (disk full?)`);
      if (Date.now() > deadline) throw new Error(`saving ${name}: the state writer did not finish ${f.part} within ${timeoutMs} ms`);
      await sleep(50);
    }
  }

  /**
   * Starts qemu with the VM's argv plus `-S -incoming defer`, loads `stateFile` with `migrate-incoming`,
   * waits until the load is over (`query-status` leaves `inmigrate`: the saved VM was stopped, so it
   * arrives `paused`), then `cont`. Returns once the VM runs. Idempotent: a running VM succeeds at once;
   * a retry finds a half-done restore in its qemu and finishes it. The state file is kept (the caller owns it).
   */
  async restore(spec: VmSpec, stateFile: string): Promise<void> {
    checkStatePath(this.o.paths, stateFile);
    const name = spec.name;
    if ((await this.livePid(name)) === null) {
      if (!(await this.o.exec.exists(stateFile))) {
        throw ApplicationFailure.create({
          type: FailureType.VmNotFound,
          nonRetryable: true,
          message: `cannot restore VM ${name}: it does not run and has no saved state at ${stateFile}`,
        });
      }
      await this.launch(spec, true);
    }
    const r = await this.withQmp(name, async (q) => {
      let s = await q.execute<{ status: string; running: boolean }>('query-status');
      if (s.running) return;
      if (s.status === 'inmigrate') {
        const m = await q.execute<MigrateInfo>('query-migrate');
        if (!m.status || m.status === 'none') await q.execute('migrate-incoming', { uri: restoreUri(stateFile) });
        // qemu exits if the load fails, which ends this loop with a closed connection.
        while ((s = await q.execute<{ status: string; running: boolean }>('query-status')).status === 'inmigrate') await sleep(50);
      }
      if (!s.running) await q.execute('cont');
    });
    if (r === 'absent') {
      await this.cleanup(name);
      throw new Error(`restoring ${name}: qemu exited while loading ${stateFile} (corrupt or incompatible state file?)`);
    }
  }

  async destroy(name: string): Promise<void> {
    await this.kill(name);
    await this.cleanup(name);
  }

  async list(): Promise<string[]> {
    const r = await this.o.exec.run(['ls', '-1', this.o.paths.workspaces], { okCodes: [0, 2] });
    const names = r.stdout.split('\n').filter((n) => /^ws-[0-9a-f]{12}$/.test(n));
    const live: string[] = [];
    for (const n of names) if ((await this.livePid(n)) !== null) live.push(n);
    return live;
  }
}
