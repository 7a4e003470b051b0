/**
 * Workspace DTOs shared by the API, the workflows and the activities. Types only: the zod schemas that
 * produce them live in `requests.ts`, which workflow code never imports.
 */
import { grantNics, type Grant } from './allocation';
import type { WorkspaceState, WorkspaceTask } from './states';
import type { PilotSlotInput } from './pilot-slot';

/** An image resolved in the site repository: where a node fetches it and what its digest must be. */
export interface ResolvedImage {
  /** The name the client asked for. */
  name: string;
  /** URL a node pulls the image from (the head's repository endpoint). */
  url: string;
  sha256: string;
  sizeBytes: number;
}

/**
 * An image outside the site repository, as the client named it: stage-in (seed 002 Unstaged →
 * Unpropagated) copies it into the repository and checks its digest before anything else happens.
 */
export interface ImageSource {
  /** `file://`, `http(s)://` or `sftp://user@host[:port]/path`. */
  url: string;
  /** Expected sha256 (hex); when given, a copy with another digest is refused (DigestMismatch). */
  sha256?: string;
}

/** Filesystems a blank partition can be made with on the node. */
export type BlankFilesystem = 'ext4' | 'swap' | 'none';

/** A partition besides the root (seed 001: several partitions per workspace; seed 002 blankspace). */
export interface PartitionSpec {
  /** An image partition from the repository (resolved when the request was accepted)… */
  image?: ResolvedImage;
  /** …or from outside it (staged in first)… */
  imageSource?: ImageSource;
  /** …or a blank partition made on the node: a sparse file of this size, with this filesystem. */
  blank?: { sizeMiB: number; filesystem: BlankFilesystem };
}

/** A validated deployment request with exact values (seed 002: ranges become exact values). */
export interface WorkspaceSpec {
  /** The root image, when it is in the site repository (resolved when the request was accepted). */
  image?: ResolvedImage;
  /** The root image, when it is outside the repository (exactly one of `image` and `imageSource`). */
  imageSource?: ImageSource;
  /** Partitions besides the root, attached in order after it. */
  partitions?: PartitionSpec[];
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
  /**
   * Seed 002 PostShutdown rootPartitionUnpropagationTarget: a repository image name, or a URL under one
   * of the client's allowed stage-out prefixes.
   */
  unpropagationTarget?: string;
  /** Group member index, appended to the target name (seed 002); set by the group issue. */
  memberIndex?: number;
  /** The network of each NIC, in order. Absent only in workflows started before multi-NIC. */
  networks?: string[];
  /** Properties the node must have (every one), for whoever reserves the slot (a group or ensemble). */
  nodeProperties?: string[];
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
  /**
   * A slot and addresses already granted for this workspace (by the factory, a group or an ensemble);
   * the workflow then does not reserve, and releases this grant (held by its workflow id) at the end.
   */
  grant?: Grant;
  /** The group this workspace is a member of (public group id). */
  group?: string;
  /** The ensemble this workspace is a member of (public ensemble id). */
  ensemble?: string;
  /**
   * Pilot mode (seed 003): the node's time is borrowed from the site's batch system by a pilot job,
   * run by the pilot-slot child workflow; the workspace waits in the batch queue, then allocates inside
   * the slot's lease.
   */
  pilot?: { slotWorkflowId: string; slot: PilotSlotInput };
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
  /**
   * Start-to-close of a node's short steps (boot, destroy, pause...), seconds: also how soon one is retried
   * after its worker died. Absent in workflows started before it: {@link DEFAULT_NODE_STEP_SECONDS}.
   */
  nodeStepSeconds?: number;
  /**
   * Heartbeat timeout of a node's long steps (copies, waiting for a lease), seconds: also how soon one is
   * retried after its worker died. Absent in workflows started before it: {@link DEFAULT_NODE_HEARTBEAT_SECONDS}.
   */
  nodeHeartbeatSeconds?: number;
  /** Each network's DHCP delivery, from the site configuration. Absent only in workflows started before pools. */
  networks?: Record<string, NetworkRouting>;
  /** Each node's bridge per network (the node-side DHCP server listens there). */
  bridges?: Record<string, Record<string, string>>;
}

/** A node's short steps' start-to-close when the routing names none, seconds. */
export const DEFAULT_NODE_STEP_SECONDS = 30;
/** A node's long steps' heartbeat timeout when the routing names none, seconds. */
export const DEFAULT_NODE_HEARTBEAT_SECONDS = 20;

/** Where and how a network's addresses are delivered by DHCP. */
export interface NetworkRouting {
  subnet: string;
  server: 'dnsmasq' | 'isc-dhcpd';
  /** `node`: a server on the VM's node, on the network's bridge; `head`: one server on the head, on `interface`. */
  on: 'node' | 'head';
  interface?: string;
}

/** One NIC of a workspace as its resource properties show it (seed 001: network, MAC, IP, hostname). */
export interface NicDescription {
  network: string;
  mac: string;
  ip: string;
  hostname: string;
  /** The IP the VM actually obtained on this NIC by DHCP. */
  obtainedIp?: string;
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
  /** Pilot mode: the slot that borrows the node's time from the batch system. */
  pilot?: { slotId: string; jobId?: string; node?: string; until?: string };
  image: string;
  memoryMiB: number;
  vcpus: number;
  node?: string;
  /** The first NIC's network and address (the VM's primary address; every NIC is in `nics`). */
  network?: { name: string; ip: string; mac: string; hostname: string };
  /** The address the VM actually obtained by DHCP on its first NIC. */
  obtainedIp?: string;
  /** Every NIC: network, MAC, assigned IP and hostname, and the IP obtained by DHCP. */
  nics?: NicDescription[];
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
  /** Images staged in from URLs (Unstaged → Unpropagated): the repository name each became. */
  stagedIn?: Array<{ index: number; name: string; sha256: string; bytesCopied: number }>;
  /** What the last propagation copied: 0 bytes when the node cache had every image. */
  propagation?: { bytesCopied: number; resumedFromBytes: number };
  /**
   * Where the root disk was saved (StagedOut): a repository image name or the target URL, with the
   * sha256 taken at TransportReady; `state` names a serialized VM state saved beside it.
   */
  saved?: { disk: string; sha256?: string; sizeBytes?: number; state?: string };
  /** Progress of the copy in flight (staging in, propagating, staging out), from its heartbeats. */
  progress?: { bytes: number; total: number; image?: string };
  /** How the last shutdown ended: the guest powered off, or it was forced after the timeout. */
  lastShutdown?: 'graceful' | 'forced';
  /** Signals received and what became of them (seed 000: early shutdown-save; pilot preemption). */
  notices: string[];
}

/** True when an image reference or target is a URL rather than a repository name. */
export function isUrl(ref: string): boolean {
  return /^[a-z][a-z0-9+.-]*:\/\//.test(ref);
}

/**
 * The unpropagation target of a group member (seed 002: members get their id appended to the target
 * name): `target-<index>`, before the extension of a URL's file name. A single workspace keeps it as is.
 */
export function targetForMember(target: string, memberIndex?: number): string {
  if (memberIndex === undefined) return target;
  if (!isUrl(target)) return `${target}-${memberIndex}`;
  const slash = target.lastIndexOf('/');
  const dot = target.indexOf('.', slash + 1);
  return dot > slash + 1 ? `${target.slice(0, dot)}-${memberIndex}${target.slice(dot)}` : `${target}-${memberIndex}`;
}

/** The NICs of a description from a grant (obtained IPs not yet known). */
export function nicsOf(grant: Grant): NicDescription[] {
  return grantNics(grant).map((n) => ({ network: n.network, mac: n.address.mac, ip: n.address.ip, hostname: n.address.hostname }));
}
