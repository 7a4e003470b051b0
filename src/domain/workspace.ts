/**
 * Workspace DTOs shared by the API, the workflows and the activities. Types only: the zod schemas that
 * produce them live in `requests.ts`, which workflow code never imports.
 */
import type { Grant } from './allocation';
import type { WorkspaceState, WorkspaceTask } from './states';

/** An image resolved in the site repository: where a node fetches it and what its digest must be. */
export interface ResolvedImage {
  /** The name the client asked for. */
  name: string;
  /** URL a node pulls the image from (the head's repository endpoint). */
  url: string;
  sha256: string;
  sizeBytes: number;
}

/** A validated deployment request with exact values (seed 002: ranges become exact values). */
export interface WorkspaceSpec {
  image: ResolvedImage;
  memoryMiB: number;
  vcpus: number;
  /** Seed 002 DeploymentTime: seconds from first start to last shutdown. */
  durationSeconds: number;
  /** Seed 002: how far the service advances the workspace. */
  targetState: 'Propagated' | 'Running';
  /** Seed 002 ShutdownMechanism: what happens when DeploymentTime runs out. */
  shutdownMechanism: ShutdownMechanism;
  /** Seed 000 `--trash-at-shutdown`: discard the VM after use instead of unpropagating it (overrides the mechanism). */
  trashAtShutdown: boolean;
  /** Seed 002 PostShutdown rootPartitionUnpropagationTarget: repository image name the disk is saved as. */
  unpropagationTarget?: string;
}

/** Seed 002 ShutdownMechanism. */
export type ShutdownMechanism = 'Normal' | 'Serialize' | 'Trash';

/** Everything the workspace workflow needs, fixed at start. */
export interface WorkspaceInput {
  /** Public workspace id (the workflow id is derived from it). */
  id: string;
  /** Identity of the owning client (grid-style DN). */
  owner: string;
  spec: WorkspaceSpec;
  routing: WorkspaceRouting;
  createdAt: string;
}

/** Where the workflow sends its activities and which allocator it uses; set by the head from config. */
export interface WorkspaceRouting {
  /** Task queue of the head worker (allocator calls, repository work). */
  headTaskQueue: string;
  /** Prefix of per-node task queues: the node's queue is `${nodeTaskQueuePrefix}${node}`. */
  nodeTaskQueuePrefix: string;
  /** Seconds to wait for the VM's DHCP lease before the workspace is Corrupted. */
  addressTimeoutSeconds: number;
  /** Seconds a guest has to power off on a graceful shutdown before it is destroyed. */
  shutdownTimeoutSeconds: number;
}

/** The workspace's resource properties, as the `describe` query answers. */
export interface WorkspaceDescription {
  id: string;
  owner: string;
  state: WorkspaceState;
  task: WorkspaceTask;
  /** For Corrupted: the state the workspace was heading to. */
  heading?: WorkspaceState;
  /** Why the workspace is Corrupted or was cancelled early. */
  reason?: string;
  image: string;
  memoryMiB: number;
  vcpus: number;
  node?: string;
  network?: { name: string; ip: string; mac: string; hostname: string };
  /** The address the VM actually obtained by DHCP (read from the node's lease). */
  obtainedIp?: string;
  createdAt: string;
  firstStartedAt?: string;
  endedAt?: string;
  /** The requested DeploymentTime in seconds (first start to last shutdown). */
  durationSeconds: number;
  /** Seconds of running time left; counts down while the VM exists (Running or Paused). */
  runningTimeLeftSeconds: number;
  /** The mechanism that applies when running time runs out (Trash when trash-at-shutdown was asked). */
  shutdownMechanism: ShutdownMechanism;
  /** The slot the allocator granted. */
  allocation?: { node: string; memoryMiB: number; vcpus: number };
  /** Files staged out to the repository (StagedOut), and whether a serialized VM state is among them. */
  saved?: { disk: string; state?: string };
  /** How the last shutdown ended: the guest powered off, or it was forced after the timeout. */
  lastShutdown?: 'graceful' | 'forced';
  /** Signals received and what became of them (seed 000: early shutdown-save; pilot preemption). */
  notices: string[];
}

/** Convenience: the network part of a description from a grant. */
export function networkOf(grant: Grant): NonNullable<WorkspaceDescription['network']> {
  return { name: grant.network, ip: grant.address.ip, mac: grant.address.mac, hostname: grant.address.hostname };
}
