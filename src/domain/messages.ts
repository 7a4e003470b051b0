/**
 * Message definitions (Updates, Signals, Queries) and search attributes, shared by workflows, the API
 * and tests, as in temporalio/samples-typescript's `shared.ts`.
 */
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { ClientQuota, Grant, GangRequest, NodeCapacity, NodeLease, Placement, PoolAddress, ReleaseInfo, SlotRequest } from './allocation';
import type { EnsembleDescription, EnsembleMemberRequest, EnsembleRegistration, GroupDescription, GroupOperation, GroupOperationResult } from './groups';
import type { PilotMessage } from './pilot-message';
import type { WorkspaceDescription } from './workspace';

/** Allocator: grant a whole request atomically or fail with `NoCapacity`; repeats by the same holder return its grant. */
export const reserveUpdate = defineUpdate<Grant, [SlotRequest]>('reserve');
/** Allocator: release the holder's grant; idempotent, answers whether there was one. */
export const releaseUpdate = defineUpdate<boolean, [string, ReleaseInfo?]>('release');
/** Allocator: grant every member of a gang at once, or refuse (`NoCapacity`, `QuotaExceeded`) holding nothing. Repeats return the same grants. */
export const reserveGangUpdate = defineUpdate<Grant[], [GangRequest]>('reserveGang');
/** Allocator: release every grant reserved by the gang; idempotent, answers how many there were. */
export const releaseGangUpdate = defineUpdate<number, [string]>('releaseGang');
/** Allocator: drain a node (no new grants; live ones stay) or undrain it; answers the nodes. */
export const drainUpdate = defineUpdate<NodeUse[], [{ node: string; drained: boolean }]>('drain');
/** Allocator: each node's capacity, use and drain flag. */
export const nodesQuery = defineQuery<NodeUse[]>('nodes');
/**
 * Allocator: usage per owner (all owners when none is named), as of `asOf` (ISO time, the caller's
 * clock; a Query does not advance workflow time, so without it live grants count up to the allocator's
 * last workflow task).
 */
export const usageQuery = defineQuery<OwnerUsageReport[], [string?, string?]>('usage');

/** A node as admins see it: capacity, what live grants use, and whether it is drained. */
export interface NodeUse {
  name: string;
  memoryMiB: number;
  cpus: number;
  usedMemoryMiB: number;
  usedVcpus: number;
  grants: number;
  drained: boolean;
  properties: string[];
  /** A pilot node: VMs go there only inside leases of node time from the batch system. */
  pilot?: boolean;
  /** Pilot nodes: memory lent by live pilot leases, MiB. */
  leasedMemoryMiB?: number;
}

/** Allocator: record a pilot's lease of node time (idempotent per holder), or refuse (`NoCapacity`). */
export const leaseUpdate = defineUpdate<NodeLease, [NodeLease]>('lease');
/** Allocator: end a pilot lease (idempotent); answers whether there was one. */
export const endLeaseUpdate = defineUpdate<boolean, [string]>('endLease');
/** Allocator: every live pilot lease. */
export const leasesQuery = defineQuery<NodeLease[]>('leases');

/** Pilot slot → its workspace: the pilot reserved node time and the allocator holds the lease; allocate inside it. */
export interface SlotReady {
  /** The lease holder (the slot's workflow id), for `SlotRequest.lease`. */
  lease: string;
  node: string;
  memoryMiB: number;
  /** When the slot ends (ISO). */
  until: string;
  jobId: string;
}
/** Workspace: its pilot slot is ready (see {@link SlotReady}). */
export const slotReadySignal = defineSignal<[SlotReady]>('slot-ready');
/** Workspace: its pilot slot failed before it was ready (the job never started, or ended first). */
export const slotFailedSignal = defineSignal<[{ type: string; reason: string }]>('slot-failed');
/** Pilot slot: the workspace no longer needs the node (its VM is confirmed gone); hand it back. */
export const slotReleaseSignal = defineSignal<[{ reason: string }]>('slot-release');

/** A client's usage (seed 000's status service), from the allocator's accounting. */
export interface OwnerUsageReport {
  owner: string;
  /** Live grants (slots) the owner holds now. */
  liveGrants: number;
  /** Minutes reserved: closed grants' grant-to-release time plus live grants' time so far. */
  reservedMinutes: number;
  /** Minutes used: running time reported by released workspaces (live ones are added by the API). */
  usedMinutes: number;
  /** Running time reserved by the live grants, in minutes (what the reserved-minutes quota counts). */
  heldMinutes: number;
}
/** Allocator: every live grant. */
export const grantsQuery = defineQuery<Grant[]>('grants');
/**
 * Replaces the allocator's nodes and pools with the site configuration's (the head sends it at start).
 * Live grants stay as they are, even on an address or node the configuration no longer has.
 */
export const configureUpdate = defineUpdate<
  void,
  [{ nodes: NodeCapacity[]; pools: Record<string, PoolAddress[]>; placement?: Placement; quotas?: Record<string, ClientQuota>; chargeGranularitySeconds?: number }]
>('configure');

/** Workspace: its resource properties. */
export const describeQuery = defineQuery<WorkspaceDescription>('describe');
/** Workspace: destroy it (refused, naming the state, when the state table does not allow it). */
export const destroyUpdate = defineUpdate<WorkspaceDescription>('destroy');

/** Arguments of `start`: new running time, needed when none is left (a serialized workspace resuming). */
export interface StartArgs {
  durationSeconds?: number;
  /**
   * Boot no earlier than this instant (ISO): the common start time an ensemble gives all its members.
   * Only the first boot honours it; it is not part of the public API.
   */
  notBefore?: string;
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

/** Workspace: the reconciler found its VM gone from its node behind vws's back; it becomes Corrupted with the reason. */
export const vmVanishedSignal = defineSignal<[{ reason: string }]>('vm-vanished');

/** Group: its members and overall state. */
export const groupDescribeQuery = defineQuery<GroupDescription>('describeGroup');
/** Group: an operation fanned out to every live member (destroy included); answers per member. */
export const groupOperateUpdate = defineUpdate<GroupOperationResult, [GroupOperation]>('operate');

/** Ensemble: register a member (a workspace or a group), not launched until `done`. */
export const ensembleRegisterUpdate = defineUpdate<EnsembleRegistration, [EnsembleMemberRequest]>('register');
/** Ensemble: seed 000's done trigger: co-schedule every registered member. */
export const ensembleDoneUpdate = defineUpdate<EnsembleDescription>('done');
/** Ensemble: destroy every member (seed 000's destroy-all); the ensemble ends. */
export const ensembleDestroyUpdate = defineUpdate<EnsembleDescription>('destroyAll');
/** Ensemble: its report. */
export const ensembleDescribeQuery = defineQuery<EnsembleDescription>('describeEnsemble');

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

/**
 * A verified pilot notification as the API delivers it to the slot's workflow: the signed message (its
 * signature checked and dropped), when vws received it and how it came (HTTP, or the SSH fallback).
 */
export interface PilotNotification extends PilotMessage {
  receivedAt: string;
  via: 'http' | 'ssh';
}
/** Pilot slot: a notification from its pilot (`<prefix>-pilot-<slotId>`); recorded even while no worker runs. */
export const pilotNotificationSignal = defineSignal<[PilotNotification]>('pilotNotification');
