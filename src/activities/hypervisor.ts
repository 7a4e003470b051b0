/**
 * The one interface every hypervisor driver implements (`qemu` now; `xen` with `xl` in issue 3).
 * Every method is idempotent: creating a VM that already runs succeeds, destroying one that is gone
 * succeeds. `destroy` returns only once the VM is confirmed gone, because its address is reused after.
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
  /** Root disk: a qcow2 overlay on the node. */
  rootDisk: string;
  /** Kernel and initrd provided by the site on the node. */
  kernel: { vmlinuz: string; initrd: string };
  nic: { mac: string; bridge: string };
}

/** A hypervisor driver. */
export interface HypervisorDriver {
  /** Boots the VM; succeeds at once if it already runs. */
  create(spec: VmSpec): Promise<void>;
  /** The VM's power state; `absent` if the driver knows no such VM. */
  status(name: string): Promise<VmPowerState>;
  /** Stops and removes the VM and its interfaces; succeeds if already gone; returns when confirmed gone. */
  destroy(name: string): Promise<void>;
  /** Names of the VMs this driver runs on the node. */
  list(): Promise<string[]>;
}
