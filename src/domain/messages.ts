/**
 * Message definitions (Updates, Signals, Queries) and search attributes, shared by workflows, the API
 * and tests, as in temporalio/samples-typescript's `shared.ts`.
 */
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
import { defineQuery, defineUpdate } from '@temporalio/workflow';
import type { Grant, SlotRequest } from './allocation';
import type { WorkspaceDescription } from './workspace';

/** Allocator: grant a whole request atomically or fail with `NoCapacity`; repeats by the same holder return its grant. */
export const reserveUpdate = defineUpdate<Grant, [SlotRequest]>('reserve');
/** Allocator: release the holder's grant; idempotent, answers whether there was one. */
export const releaseUpdate = defineUpdate<boolean, [string]>('release');
/** Allocator: every live grant. */
export const grantsQuery = defineQuery<Grant[]>('grants');

/** Workspace: its resource properties. */
export const describeQuery = defineQuery<WorkspaceDescription>('describe');
/** Workspace: destroy it (refused, naming the state, when the state table does not allow it). */
export const destroyUpdate = defineUpdate<WorkspaceDescription>('destroy');

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
