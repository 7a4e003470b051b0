/**
 * Names derived from the configuration: task queues and workflow ids. One place, so the API, the
 * workers and the tests agree, and a per-test prefix isolates everything a test starts.
 */
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

/** Workflow id of the allocator that owns the configured pool. */
export function allocatorWorkflowId(config: VwsConfig): string {
  return `${config.temporal.prefix}-allocator-${config.network.name}`;
}

/** Workflow id of a workspace. */
export function workspaceWorkflowId(config: VwsConfig, workspaceId: string): string {
  return `${config.temporal.prefix}-${workspaceId}`;
}
