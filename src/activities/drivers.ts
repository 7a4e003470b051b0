/** Picks a node's hypervisor driver from its configuration. */
import type { NodeConfig, VwsConfig } from '../config/schema';
import type { Executor } from '../exec/executor';
import { BenchDriver } from './bench/driver';
import type { HypervisorDriver } from './hypervisor';
import type { NodePaths } from './node-paths';
import { QemuDriver } from './qemu/driver';
import { XenDriver } from './xen/driver';

/** The driver `node.driver` names, over the node's executor. */
export function createDriver(config: VwsConfig, node: NodeConfig, exec: Executor, paths: NodePaths): HypervisorDriver {
  switch (node.driver) {
    case 'qemu':
      return new QemuDriver({ exec, paths, binary: config.node.qemuBinary, accel: config.node.accel });
    case 'xen':
      return new XenDriver({ exec, paths });
    case 'bench':
      // No hypervisor work at all: only for benchmarks of vws itself, and only when a node's config asks.
      return new BenchDriver();
  }
}
