/**
 * A pilot slot as vws tracks it (issue 7 item 3): one batch job that borrows one node's time for one
 * workspace. The DTOs of the pilot-slot workflow, shared by the workspace workflow, the API and tests;
 * pure, no I/O.
 */
import { defineQuery } from '@temporalio/workflow';

/** What the workspace workflow gives its pilot slot (its child workflow). */
export interface PilotSlotInput {
  slotId: string;
  /** The workspace the slot serves: told when the slot is ready, failed or must be evacuated. */
  workspaceWorkflowId: string;
  memoryMiB: number;
  vcpus: number;
  /** How long the pilot holds the node once it runs, seconds. */
  holdSeconds: number;
  constraints?: string[];
  headTaskQueue: string;
  /** Prefix of the nodes' task queues: after the job is gone, the node's worker checks the hand-back. */
  nodeTaskQueuePrefix?: string;
  /** The site's pilot settings, copied at creation so a running slot keeps the rules it started with. */
  settings: PilotSlotSettings;
}

/** The site's pilot timing, seconds. */
export interface PilotSlotSettings {
  reserveTimeoutSeconds: number;
  /** The pilot starts handing the node back this long before its hold ends. */
  marginSeconds: number;
  /** vws evacuates the slot's VMs this long before the pilot's hand-back starts. */
  evacuateSeconds: number;
  pollSeconds: number;
  /** A notification older than this (at receipt) is stale and moves nothing. */
  windowSeconds: number;
}

/** Where a slot is: submitting → queued → reserved → releasing → ended. */
export type PilotSlotState = 'submitting' | 'queued' | 'reserved' | 'releasing' | 'ended';

/** A slot as its query answers. */
export interface PilotSlotDescription {
  slotId: string;
  state: PilotSlotState;
  jobId?: string;
  node?: string;
  memoryMiB?: number;
  submittedAt?: string;
  reservedAt?: string;
  /** When the slot's node time ends (ISO). */
  until?: string;
  /** Why the slot ended or was evacuated. */
  reason?: string;
  /** Every notification received and what became of it. */
  notices: string[];
}

/** Pilot slot: its description. */
export const pilotSlotQuery = defineQuery<PilotSlotDescription>('describeSlot');

/** How long a workspace of `durationSeconds` needs the node: its running time, the start-up and evacuation, and the pilot's margin. */
export function pilotHoldSeconds(durationSeconds: number, s: Pick<PilotSlotSettings, 'marginSeconds' | 'evacuateSeconds'>, startupSeconds: number): number {
  return durationSeconds + startupSeconds + s.evacuateSeconds + s.marginSeconds;
}
