/** A VmSpec for the drivers' pure unit tests (nothing is booted from it). */
import type { VmSpec } from '../../src/activities/hypervisor';

/** ws-0123456789ab on node dir /n, 128 MiB, bridge br0. */
export const sampleVmSpec: VmSpec = {
  name: 'ws-0123456789ab',
  hostname: 'ws-10-213-0-100',
  memoryMiB: 128,
  vcpus: 1,
  rootDisk: '/n/workspaces/ws-0123456789ab/root.qcow2',
  kernel: { vmlinuz: '/n/kernels/default/vmlinuz', initrd: '/n/kernels/default/initrd.gz' },
  nics: [{ mac: '52:54:0a:d5:00:64', bridge: 'br0', iface: 'vw0123456789ab0' }],
};
