/**
 * What the pilot, `reset` and `kill-all` do to a node, over one {@link Executor}: list and destroy the
 * node's vws VMs through its hypervisor driver, and set its memory (dom0 on Xen, the host reservation on
 * QEMU) back to the exact configured value. In pilot mode every vws VM on the node is pilot-hosted, so
 * "destroy what is left" means every VM the driver lists.
 */
import { createDriver } from '../activities/drivers';
import type { HypervisorDriver } from '../activities/hypervisor';
import { nodePaths } from '../activities/node-paths';
import { parseConfig } from '../config/load';
import type { NodeConfig, VwsConfig } from '../config/schema';
import type { Executor } from '../exec/executor';
import { HostMemoryReservation, hostReservationFile, readDom0BootMiB, XenDom0Memory, type PilotMemoryControl, type SetResult } from './dom0-memory';

/** How the node's memory is taken: dom0 ballooning (`xen`) or the host reservation file (`host`, QEMU nodes). */
export type MemoryMode = 'xen' | 'host';

/** What {@link nodeControl} needs. */
export interface NodeControlOptions {
  exec: Executor;
  /** The node's name (the configuration's), for the driver and the logs. */
  node: string;
  /** The node directory (`node.dir`): VM files, the reservation file, the lock. */
  nodeDir: string;
  memory: MemoryMode;
  /** The node's memory when nothing is reserved (MiB). For `xen`, absent: read from Xen's `dom0_mem`. */
  configuredMiB?: number;
  /** `xen`: dom0 is never ballooned below this (default DEFAULT_MIN_DOM0_MIB, 128 MiB). */
  minDom0MiB?: number;
  /** The site configuration (default: the embedded defaults), for the driver's settings. */
  config?: VwsConfig;
}

/**
 * How a configured node's memory is handed out: dom0 ballooning on Xen (its configured value is read
 * from Xen's `dom0_mem`), the reservation file on QEMU (configured: `nodes[].memoryMiB`). Shared by
 * `kill-all` and `boot-reset`, so both reset a node to the same value.
 */
export function nodeMemorySettings(node: NodeConfig): { memory: MemoryMode; configuredMiB?: number } {
  return node.driver === 'xen' ? { memory: 'xen' } : { memory: 'host', configuredMiB: node.memoryMiB };
}

/** A node's driver and memory control. */
export interface NodeControl {
  readonly node: string;
  readonly driver: HypervisorDriver;
  readonly memory: PilotMemoryControl;
}

/**
 * The driver and memory control of a node. The driver follows the memory mode (`xen` → the `xl` driver,
 * `host` → QEMU) unless the configuration lists the node with its own driver.
 * @throws Error naming the missing setting (`--configured-mib` for `host`).
 */
export async function nodeControl(o: NodeControlOptions): Promise<NodeControl> {
  const config = o.config ?? parseConfig({});
  const listed = config.nodes.find((n) => n.name === o.node);
  let configuredMiB = o.configuredMiB;
  if (configuredMiB === undefined) {
    if (o.memory === 'xen') configuredMiB = await readDom0BootMiB(o.exec);
    else if (listed) configuredMiB = listed.memoryMiB;
    else throw new Error(`--configured-mib is required for --memory host when node ${o.node} is not in the configuration`);
  }
  const nodeConfig: NodeConfig = listed ?? {
    name: o.node,
    memoryMiB: Math.max(64, configuredMiB),
    cpus: 1,
    driver: o.memory === 'xen' ? 'xen' : 'qemu',
    bridges: {},
    antiSpoofing: true,
    properties: [],
    agent: 'worker',
  };
  const driver = createDriver(config, nodeConfig, o.exec, nodePaths(o.nodeDir));
  const memory: PilotMemoryControl =
    o.memory === 'xen'
      ? new XenDom0Memory({ exec: o.exec, configuredMiB, ...(o.minDom0MiB !== undefined ? { minDom0MiB: o.minDom0MiB } : {}) })
      : new HostMemoryReservation({ exec: o.exec, configuredMiB, file: hostReservationFile(o.nodeDir) });
  return { node: o.node, driver, memory };
}

/** What {@link destroyAllVms} did. */
export interface DestroyReport {
  /** VMs destroyed (confirmed gone). */
  destroyed: string[];
  /** VMs that could not be destroyed, with the error. */
  failed: Array<{ name: string; error: string }>;
}

/**
 * Destroys every VM the driver lists, one by one (a failure does not stop the others), then lists again:
 * a VM that is still there is reported as failed.
 */
export async function destroyAllVms(driver: HypervisorDriver): Promise<DestroyReport> {
  const destroyed: string[] = [];
  const failed: Array<{ name: string; error: string }> = [];
  for (const name of await driver.list()) {
    try {
      await driver.destroy(name);
      destroyed.push(name);
    } catch (e) {
      failed.push({ name, error: (e as Error).message });
    }
  }
  const left = await driver.list();
  for (const name of left) if (!failed.some((f) => f.name === name)) failed.push({ name, error: 'still listed after destroy' });
  return { destroyed: destroyed.filter((n) => !left.includes(n)), failed };
}

/** What {@link resetNodeState} did. */
export interface ResetReport {
  node: string;
  vms: DestroyReport;
  /** Memory before and after, MiB (host memory: dom0's, or configured − reserved). */
  memoryBeforeMiB: number | null;
  memory: SetResult;
  configuredMiB: number;
}

/**
 * The node's reset: every vws VM destroyed, memory set to exactly the configured value (absolute, then
 * polled). Idempotent: on a clean node it destroys nothing and sets the value it already has.
 * @throws Error when a VM could not be destroyed (after the memory was restored all the same).
 */
export async function resetNodeState(control: NodeControl, options: { timeoutMs?: number } = {}): Promise<ResetReport> {
  const memoryBeforeMiB = await control.memory.currentMiB().catch(() => null);
  let vms: DestroyReport;
  try {
    vms = await destroyAllVms(control.driver);
  } catch (e) {
    vms = { destroyed: [], failed: [{ name: '(list)', error: (e as Error).message }] };
  }
  // Restored even when a VM resisted: the memory is what the next slot and the allocator rely on.
  const memory = await control.memory.restore({ timeoutMs: options.timeoutMs ?? 60_000 });
  return { node: control.node, vms, memoryBeforeMiB, memory, configuredMiB: control.memory.configuredMiB };
}
