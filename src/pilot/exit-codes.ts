/**
 * The pilot's exit codes. The batch system records them (Slurm `ExitCode`), so an admin reading a
 * job's end can tell a clean hand-back from a node that needs `reset`.
 */
import type { PilotEndReason } from '../domain/pilot-states';

/** Exit codes of `vws-pilot`. */
export const PILOT_EXIT = {
  /** The node was handed back: VMs gone, memory exact (completed, early-unreserved, or cancelled before reserving). */
  ok: 0,
  /** Something unexpected (a bug, an unreadable file). */
  internal: 1,
  /** Bad usage or an invalid option (named in the message); nothing was touched. */
  usage: 2,
  /** Handing back failed: memory not restored or a VM left. The node needs `vws-pilot reset`. */
  unreserveFailed: 3,
  /** Another live pilot holds the node lock; nothing was touched. */
  lockHeld: 4,
  /** The slot failed (reserving or while reserved) but the node was handed back cleanly. */
  slotFailed: 5,
  /** `kill-all`: at least one node could not be reset (each is reported). */
  someNodesFailed: 6,
} as const;

/** The exit code of a pilot that ended for `reason`. */
export function exitCodeFor(reason: PilotEndReason): number {
  switch (reason) {
    case 'completed':
    case 'early-unreserved':
    case 'cancelled':
      return PILOT_EXIT.ok;
    case 'error-reserving':
    case 'error-reserved':
      return PILOT_EXIT.slotFailed;
    case 'error-unreserving':
      return PILOT_EXIT.unreserveFailed;
  }
}
