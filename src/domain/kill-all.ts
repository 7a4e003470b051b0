/** The emergency stop (`kill-all`, seed 003's "kill 9") through vws: its input and its report. */
import type { WorkspaceRouting } from './workspace';

/** Input of the kill-all workflow. */
export interface KillAllInput {
  /** Every configured node. */
  nodes: string[];
  routing: WorkspaceRouting;
  /** Who asked (an admin's identity), for the history. */
  requestedBy: string;
}

/** What one node's reset did. */
export interface NodeResetReport {
  node: string;
  /** VMs destroyed and confirmed gone. */
  destroyed: string[];
  /** VMs that resisted, with why. */
  failed: Array<{ name: string; error: string }>;
  /** The node's memory after the reset and its configured value (MiB): the same number when all went well. */
  memoryMiB: number;
  configuredMiB: number;
  ms: number;
}

/** The kill-all report: per node, and the workspaces then destroyed through their workflows. */
export interface KillAllReport {
  requestedBy: string;
  startedAt: string;
  endedAt: string;
  /** One entry per node; `error` when the node did not answer (its worker down) or its reset failed. */
  nodes: Array<NodeResetReport | { node: string; error: string }>;
  /** Open workspaces asked to destroy themselves (their VMs are gone already), and those that refused. */
  workspaces: { destroyed: number; failed: Array<{ id: string; error: string }> };
}
