/**
 * Names derived from the configuration: task queues and workflow ids. One place, so the API, the
 * workers and the tests agree, and a per-test prefix isolates everything a test starts.
 */
import type { WorkspaceRouting } from '../domain/workspace';
import type { VwsConfig } from './schema';

/** Task queue of the head worker. */
export function headTaskQueue(config: VwsConfig): string {
  return `${config.temporal.prefix}-head`;
}

/** Prefix of the per-node task queues; the node's own queue is this plus its name. */
export function nodeTaskQueuePrefix(config: VwsConfig): string {
  return `${config.temporal.prefix}-node.`;
}

/** Task queue served by the node worker (or SSH proxy) of `node`. */
export function nodeTaskQueue(config: VwsConfig, node: string): string {
  return `${nodeTaskQueuePrefix(config)}${node}`;
}

/**
 * Workflow id of the allocator: the one writer of the site's slots and every network pool. It keeps the
 * id it had when a site had a single network (`public`), so an upgraded head finds the allocator that
 * holds the live grants (and sends it the new pools) instead of starting an empty one beside it.
 */
export function allocatorWorkflowId(config: VwsConfig): string {
  return `${config.temporal.prefix}-allocator-public`;
}

/** Workflow id of a workspace. */
export function workspaceWorkflowId(config: VwsConfig, workspaceId: string): string {
  return `${config.temporal.prefix}-${workspaceId}`;
}

/** Workflow id of a group (public id `grp-` and 12 hex digits): the prefix and the public id, as for workspaces. */
export function groupWorkflowId(config: VwsConfig, groupId: string): string {
  return `${config.temporal.prefix}-${groupId}`;
}

/** Workflow id of an ensemble (public id `ens-` and 12 hex digits): the prefix and the public id. */
export function ensembleWorkflowId(config: VwsConfig, ensembleId: string): string {
  return `${config.temporal.prefix}-${ensembleId}`;
}

/** Workflow id of a pilot slot (one batch job of the pilot): the prefix, `pilot-` and the slot id. */
export function pilotSlotWorkflowId(config: VwsConfig, slotId: string): string {
  return `${config.temporal.prefix}-pilot-${slotId}`;
}

/** Where a new workspace workflow sends its work, fixed at its start (it travels in the workflow's input). */
export function workspaceRouting(config: VwsConfig): WorkspaceRouting {
  return {
    headTaskQueue: headTaskQueue(config),
    nodeTaskQueuePrefix: nodeTaskQueuePrefix(config),
    addressTimeoutSeconds: config.timeouts.addressSeconds,
    shutdownTimeoutSeconds: config.timeouts.shutdownSeconds,
    nodeStepSeconds: config.timeouts.nodeStepSeconds,
    nodeHeartbeatSeconds: config.timeouts.nodeHeartbeatSeconds,
    networks: Object.fromEntries(
      config.networks.map((n) => [n.name, { subnet: n.subnet, server: n.dhcp.server, on: n.dhcp.on, ...(n.dhcp.interface ? { interface: n.dhcp.interface } : {}) }]),
    ),
    bridges: Object.fromEntries(config.nodes.map((n) => [n.name, n.bridges])),
  };
}
