/**
 * The QEMU driver: one daemonized qemu-system-x86_64 per VM, controlled over QMP, with a tap on the
 * node's bridge. TCG by default (see research/testbed-qemu-vms.md: KVM here hangs stock guests).
 */
import { join } from 'node:path';
import type { Executor } from '../../exec/executor';
import type { HypervisorDriver, VmPowerState, VmSpec } from '../hypervisor';
import { workspaceDir, type NodePaths } from '../node-paths';
import { QmpSession } from './qmp';

/** Settings of the QEMU driver. */
export interface QemuDriverOptions {
  exec: Executor;
  paths: NodePaths;
  binary: string;
  accel: 'tcg' | 'kvm';
  /** Opens a QMP session on a socket path of the node (local unix socket, or forwarded over SSH). */
  openQmp?: (socketPath: string) => Promise<QmpSession>;
}

/** Files of one VM. */
function vmFiles(paths: NodePaths, name: string) {
  const dir = workspaceDir(paths, name);
  return { dir, qmp: join(dir, 'qmp.sock'), pid: join(dir, 'qemu.pid'), serial: join(dir, 'serial.log') };
}

/** Tap device name for a VM: `vw` + the 12 hex digits of its id (15 characters at most, IFNAMSIZ). */
export function tapName(name: string): string {
  return `vw${name.replace(/^ws-/, '')}`;
}

/** The qemu argv for a VM; pure, so it is unit-tested. */
export function qemuArgv(binary: string, accel: string, spec: VmSpec, files: ReturnType<typeof vmFiles>): string[] {
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
    // `quiet`: every console character is slow under TCG.
    '-append', `console=ttyS0 quiet panic=-1 vmname=${spec.hostname}`,
    '-drive', `file=${spec.rootDisk},if=virtio,format=qcow2`,
    '-netdev', `tap,id=n0,ifname=${tapName(spec.name)},script=no,downscript=no`,
    '-device', `virtio-net-pci,netdev=n0,mac=${spec.nic.mac}`,
    '-serial', `file:${files.serial}`,
    '-qmp', `unix:${files.qmp},server=on,wait=off`,
    '-pidfile', files.pid,
    '-daemonize',
  ];
}

/** {@link HypervisorDriver} over QEMU + QMP. */
export class QemuDriver implements HypervisorDriver {
  constructor(private readonly o: QemuDriverOptions) {}

  private openQmp(socket: string): Promise<QmpSession> {
    return this.o.openQmp ? this.o.openQmp(socket) : QmpSession.connectUnix(socket);
  }

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

  private async tapExists(tap: string): Promise<boolean> {
    const r = await this.o.exec.run(['ip', 'link', 'show', 'dev', tap], { okCodes: [0, 1] });
    return r.code === 0;
  }

  async create(spec: VmSpec): Promise<void> {
    if ((await this.livePid(spec.name)) !== null) return;
    const files = vmFiles(this.o.paths, spec.name);
    const tap = tapName(spec.name);
    if (!(await this.tapExists(tap))) {
      await this.o.exec.run(['ip', 'tuntap', 'add', 'dev', tap, 'mode', 'tap']);
    }
    await this.o.exec.run(['ip', 'link', 'set', 'dev', tap, 'master', spec.nic.bridge]);
    await this.o.exec.run(['ip', 'link', 'set', 'dev', tap, 'up']);
    await this.o.exec.remove(files.qmp);
    await this.o.exec.remove(files.pid);
    // -daemonize returns once the VM is set up (about 0.1 s), so the timeout only guards a hang.
    await this.o.exec.run(qemuArgv(this.o.binary, this.o.accel, spec, files), { timeoutMs: 30_000 });
  }

  async status(name: string): Promise<VmPowerState> {
    if ((await this.livePid(name)) === null) return 'absent';
    const qmp = await this.openQmp(vmFiles(this.o.paths, name).qmp);
    try {
      const s = await qmp.execute<{ status: string; running: boolean }>('query-status');
      if (s.running) return 'running';
      return s.status === 'paused' ? 'paused' : 'shutoff';
    } finally {
      qmp.close();
    }
  }

  async destroy(name: string): Promise<void> {
    const files = vmFiles(this.o.paths, name);
    const pid = await this.livePid(name);
    if (pid !== null) {
      await this.o.exec.run(['kill', '-KILL', String(pid)], { okCodes: [0, 1] });
      // Confirm it is gone before anything (its address) is handed out again.
      const deadline = Date.now() + 15_000;
      while ((await this.livePid(name)) !== null) {
        if (Date.now() > deadline) throw new Error(`qemu ${pid} of ${name} did not exit after SIGKILL`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const tap = tapName(name);
    if (await this.tapExists(tap)) await this.o.exec.run(['ip', 'link', 'del', 'dev', tap]);
    await this.o.exec.remove(files.qmp);
    await this.o.exec.remove(files.pid);
  }

  async list(): Promise<string[]> {
    const r = await this.o.exec.run(['ls', '-1', this.o.paths.workspaces], { okCodes: [0, 2] });
    const names = r.stdout.split('\n').filter((n) => /^ws-[0-9a-f]{12}$/.test(n));
    const live: string[] = [];
    for (const n of names) if ((await this.livePid(n)) !== null) live.push(n);
    return live;
  }
}
