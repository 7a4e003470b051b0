/**
 * Message definitions (Updates, Signals, Queries) and search attributes, shared by workflows, the API
 * and tests, as in temporalio/samples-typescript's `shared.ts`.
 */
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { Grant, NodeCapacity, PoolAddress, SlotRequest } from './allocation';
import type { WorkspaceDescription } from './workspace';

/** Allocator: grant a whole request atomically or fail with `NoCapacity`; repeats by the same holder return its grant. */
export const reserveUpdate = defineUpdate<Grant, [SlotRequest]>('reserve');
/** Allocator: release the holder's grant; idempotent, answers whether there was one. */
export const releaseUpdate = defineUpdate<boolean, [string]>('release');
/** Allocator: every live grant. */
export const grantsQuery = defineQuery<Grant[]>('grants');
/**
 * Replaces the allocator's nodes and pools with the site configuration's (the head sends it at start).
 * Live grants stay as they are, even on an address or node the configuration no longer has.
 */
export const configureUpdate = defineUpdate<void, [{ nodes: NodeCapacity[]; pools: Record<string, PoolAddress[]> }]>('configure');

/** Workspace: its resource properties. */
export const describeQuery = defineQuery<WorkspaceDescription>('describe');
/** Workspace: destroy it (refused, naming the state, when the state table does not allow it). */
export const destroyUpdate = defineUpdate<WorkspaceDescription>('destroy');

/** Arguments of `start`: new running time, needed when none is left (a serialized workspace resuming). */
export interface StartArgs {
  durationSeconds?: number;
}
/** Arguments of `shutdown-save`: an alternate unpropagation target (repository image name). */
export interface ShutdownSaveArgs {
  target?: string;
}

/**
 * Workspace operations as Updates: each is validated against the state table (refused naming the
 * current state, so nothing half-happens) and answers once the operation is done.
 */
export const startUpdate = defineUpdate<WorkspaceDescription, [StartArgs]>('start');
export const pauseUpdate = defineUpdate<WorkspaceDescription>('pause');
export const unpauseUpdate = defineUpdate<WorkspaceDescription>('unpause');
export const rebootUpdate = defineUpdate<WorkspaceDescription>('reboot');
export const shutdownUpdate = defineUpdate<WorkspaceDescription>('shutdown');
export const shutdownSaveUpdate = defineUpdate<WorkspaceDescription, [ShutdownSaveArgs]>('shutdown-save');

/** Early shutdown-save as a Signal (the design card): recorded even while no worker runs, acted on when one does. */
export const shutdownSaveSignal = defineSignal<[ShutdownSaveArgs]>('shutdown-save-early');

/** A preemption notice (the pilot's early-unreserving): the node's time ends; the VM is evicted at once. */
export interface PreemptNotice {
  reason: string;
}
/** Preemption as a Signal: recorded even while no worker runs, acted on when one does. */
export const preemptSignal = defineSignal<[PreemptNotice]>('preempt');

/** Search attribute: the workspace's stable state. */
export const VwsState = defineSearchAttributeKey('VwsState', SearchAttributeType.KEYWORD);
/** Search attribute: the owning client's identity. */
export const VwsOwner = defineSearchAttributeKey('VwsOwner', SearchAttributeType.KEYWORD);
/** Search attribute: the node the workspace runs on. */
export const VwsNode = defineSearchAttributeKey('VwsNode', SearchAttributeType.KEYWORD);
/** Search attribute: the group the workspace belongs to (issue 6). */
export const VwsGroup = defineSearchAttributeKey('VwsGroup', SearchAttributeType.KEYWORD);
/** Search attribute: the ensemble the workspace belongs to (issue 6). */
export const VwsEnsemble = defineSearchAttributeKey('VwsEnsemble', SearchAttributeType.KEYWORD);

/** Every search attribute vws registers on the Temporal server, as `Name=Type` for `--search-attribute`. */
export const SEARCH_ATTRIBUTES = [VwsState, VwsOwner, VwsNode, VwsGroup, VwsEnsemble];
