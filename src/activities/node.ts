/**
 * The activities a node serves on its task queue `<prefix>-node.<name>`: propagation, DHCP entries and
 * VM control through the node's hypervisor driver.
 */
import type { VwsConfig } from '../config/schema';
import type { Executor } from '../exec/executor';
import type { HypervisorDriver } from './hypervisor';
import { createImageActivities } from './images/propagate';
import { createDhcpActivities } from './network/dhcp';
import { nodePaths } from './node-paths';
import { QemuDriver } from './qemu/driver';
import { join } from 'node:path';

/** Dependencies of a node's activities. */
export interface NodeActivityDeps {
  config: VwsConfig;
  /** This node's name (must be in `config.nodes`). */
  node: string;
  exec: Executor;
  repositoryToken: () => string;
  /** Defaults to the driver the node's configuration names. */
  driver?: HypervisorDriver;
}

/** Input of `bootVm`. */
export interface BootInput {
  workspaceId: string;
  hostname: string;
  memoryMiB: number;
  vcpus: number;
  mac: string;
  rootDisk: string;
}

/** Creates every activity of one node. */
export function createNodeActivities(deps: NodeActivityDeps) {
  const nodeConfig = deps.config.nodes.find((n) => n.name === deps.node);
  if (!nodeConfig) throw new Error(`node ${deps.node} is not in the configuration (nodes: ${deps.config.nodes.map((n) => n.name).join(', ')})`);
  const paths = nodePaths(deps.config.node.dir);
  const driver =
    deps.driver ??
    new QemuDriver({ exec: deps.exec, paths, binary: deps.config.node.qemuBinary, accel: deps.config.node.accel });
  const kernelDir = join(paths.kernels, deps.config.node.kernel);

  return {
    ...createImageActivities({ exec: deps.exec, paths, repositoryToken: deps.repositoryToken }),
    ...createDhcpActivities({ exec: deps.exec, paths, interface: nodeConfig.bridge }),

    /** Boots the workspace's VM; succeeds at once if it already runs. */
    async bootVm(input: BootInput): Promise<void> {
      await driver.create({
        name: input.workspaceId,
        hostname: input.hostname,
        memoryMiB: input.memoryMiB,
        vcpus: input.vcpus,
        rootDisk: input.rootDisk,
        kernel: { vmlinuz: join(kernelDir, 'vmlinuz'), initrd: join(kernelDir, 'initrd.gz') },
        nic: { mac: input.mac, bridge: nodeConfig.bridge },
      });
    },

    /** Destroys the VM and its interfaces; returns once it is confirmed gone. Idempotent. */
    async destroyVm(input: { workspaceId: string }): Promise<void> {
      await driver.destroy(input.workspaceId);
    },

    /** The VM's power state. */
    async vmStatus(input: { workspaceId: string }) {
      return driver.status(input.workspaceId);
    },

    /** VMs the driver runs on this node (for reconciliation and leak checks). */
    async listVms(): Promise<string[]> {
      return driver.list();
    },
  };
}

/** The node activities' type, for `proxyActivities` in workflows (`import type` only). */
export type NodeActivities = ReturnType<typeof createNodeActivities>;
