/**
 * The one interface every hypervisor driver implements: `qemu` (QMP), `xen` (the `xl` toolstack) and
 * `bench` (no hypervisor work; benchmarks of the orchestration only).
 *
 * Every method is idempotent, because an activity may run again after a worker crash: creating a VM
 * that already runs succeeds, pausing a paused VM succeeds, destroying one that is gone succeeds.
 * Methods that end a VM (`shutdown`, `save`, `destroy`) return only once it is confirmed gone and its
 * interfaces (tap, loop devices) are removed, because its address may be handed out again after.
 */

/** Power state as a driver reports it. */
export type VmPowerState = 'running' | 'paused' | 'shutoff' | 'absent';

/** What a driver needs to boot one VM. */
export interface VmSpec {
  /** Unique VM name on the node: the workspace id. */
  name: string;
  /** Guest hostname (kernel command line `vmname=`). */
  hostname: string;
  memoryMiB: number;
  vcpus: number;
  /** Root disk on the node, in the driver's {@link HypervisorDriver.diskFormat}. */
  rootDisk: string;
  /**
   * Further disks after the root disk, in order: the guest sees them as vdb, vdc, … (QEMU virtio) or
   * xvdb, xvdc, … (Xen PV). Image partitions come in the driver's disk format; blank partitions are raw.
   */
  disks?: ExtraDisk[];
  /** Kernel and initrd provided by the site on the node. */
  kernel: { vmlinuz: string; initrd: string };
  /** The VM's NICs in order (eth0, eth1, …): MAC, the bridge to join, and the host-side interface name. */
  nics: VmNic[];
}

/** One NIC of a VM. */
export interface VmNic {
  mac: string;
  bridge: string;
  /** Host-side interface (tap or vif) name, from `nicInterfaceName`: the anti-spoofing rules match it. */
  iface: string;
}

/** A disk attached after the root disk. */
export interface ExtraDisk {
  path: string;
  format: 'qcow2' | 'raw';
}

/** How a graceful shutdown ended. */
export interface ShutdownResult {
  /** False when the guest ignored the request within the timeout and the VM was destroyed. */
  graceful: boolean;
  /** When not graceful: why, in a sentence for the workspace's notices (what the driver saw). */
  forcedBecause?: string;
}

/** A hypervisor driver. */
export interface HypervisorDriver {
  /** The driver's name as the configuration spells it. */
  readonly kind: 'qemu' | 'xen' | 'bench';
  /** Root disk format this driver boots: a qcow2 overlay (qemu) or a raw file (xen: no qdisk in dom0). */
  readonly diskFormat: 'qcow2' | 'raw';
  /** Boots the VM; succeeds at once if it already runs or is paused. */
  create(spec: VmSpec): Promise<void>;
  /** The VM's power state; `absent` if the driver knows no such VM. */
  status(name: string): Promise<VmPowerState>;
  /** Unschedules the VM without serializing it; succeeds if already paused. Fails with `VmNotFound` if absent. */
  pause(name: string): Promise<void>;
  /** Resumes a paused VM; succeeds if already running. Fails with `VmNotFound` if absent. */
  unpause(name: string): Promise<void>;
  /** Reboots the guest (the VM keeps its identity, disk and interfaces). Fails with `VmNotFound` if absent. */
  reboot(name: string): Promise<void>;
  /**
   * Asks the guest to power off (ACPI power button / `xl shutdown`), waits up to `timeoutMs`, then
   * destroys it; returns once gone with its interfaces removed. Succeeds if already absent.
   */
  shutdown(name: string, timeoutMs: number): Promise<ShutdownResult>;
  /**
   * Saves the VM's whole state, RAM included, to `stateFile` and ends the VM. The file appears under its
   * final name only when complete, so "VM absent and stateFile present" means saved (the idempotent case).
   */
  save(name: string, stateFile: string): Promise<void>;
  /** Resumes a VM from a file written by {@link save}, on the same disk; succeeds if it already runs. */
  restore(spec: VmSpec, stateFile: string): Promise<void>;
  /** Stops and removes the VM and its interfaces; succeeds if already gone; returns when confirmed gone. */
  destroy(name: string): Promise<void>;
  /** Names of the VMs this driver runs on the node (running or paused). */
  list(): Promise<string[]>;
}

/** Dom0 memory control (Xen only): the pilot sets an absolute target, never a relative change. */
export interface Dom0Memory {
  /** Dom0's current memory in MiB, as `xl list 0` reports it. */
  dom0MemoryMiB(): Promise<number>;
  /** Sets dom0's memory to `targetMiB` with `xl mem-set 0` and polls until it is reached (or times out). */
  setDom0MemoryMiB(targetMiB: number, timeoutMs?: number): Promise<void>;
}
