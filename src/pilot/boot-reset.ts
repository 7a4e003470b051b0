/**
 * `vws-pilot boot-reset`: the node's reset at boot (issue 7: "on the node's boot, the same reset runs";
 * seed 003's node reboot). A node that went down while a pilot held it comes back with the pilot's
 * traces: its lock (of the previous boot), on QEMU nodes the reservation file the allocator reads, on Xen
 * a dom0 that may come up with autostarted domains. Before slurmd can start a new pilot, this runs the
 * very reset of `vws-pilot reset` ({@link resetNodeState} under the node lock), with the node's settings
 * taken from the site configuration instead of flags, so one systemd unit
 * (`deploy/systemd/vws-pilot-boot-reset.service`) serves every node. This file holds its decisions.
 */
import { hostname } from 'node:os';
import type { VwsConfig } from '../config/schema';
import { nodeMemorySettings, type MemoryMode } from './node-control';
import { PilotUsageError } from './options';

/** What boot-reset does on this node. */
export type BootResetPlan =
  | { action: 'reset'; node: string; memory: MemoryMode; configuredMiB?: number; nodeDir: string }
  | { action: 'skip'; node: string; reason: string };

/**
 * The node boot-reset works for: `--node`, else `VWS_NODE`, else the host's short name (what Slurm
 * calls it by default too).
 */
export function bootResetNodeName(flag: string | undefined, env: NodeJS.ProcessEnv = process.env, host: string = hostname()): string {
  return flag ?? (env.VWS_NODE || host.split('.')[0]);
}

/**
 * Decides from the site configuration: a node vws does not know is a mistake (exit 2, naming `--node`);
 * a node that is not a pilot node, or whose driver is `bench`, has nothing a pilot could leave: skipped
 * (so the unit may be installed on every node); a pilot node is reset with its configured memory.
 */
export function bootResetPlan(config: VwsConfig, node: string): BootResetPlan {
  const listed = config.nodes.find((n) => n.name === node);
  if (!listed) {
    throw new PilotUsageError('--node', `${JSON.stringify(node)} is not a node of the configuration (nodes: ${config.nodes.map((n) => n.name).join(', ') || 'none'}); give --node or VWS_NODE`);
  }
  if (!listed.pilot) return { action: 'skip', node, reason: 'not a pilot node (nodes[].pilot is not set): no pilot ever held it' };
  if (listed.driver === 'bench') return { action: 'skip', node, reason: 'bench driver: no hypervisor to reset' };
  return { action: 'reset', node, ...nodeMemorySettings(listed), nodeDir: config.node.dir };
}
