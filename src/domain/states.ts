/**
 * The workspace state machine: the single table that the workflow, the API's early refusals, the CLI
 * and the documentation all read. Pure data, no I/O: workflow code imports it.
 *
 * The nine stable states are seed 002's `WorkspaceState`. What is happening *right now* (propagating,
 * starting, saving...) is kept apart as a {@link WorkspaceTask}, the way Nova keeps `task_state` apart
 * from `vm_state`, so no stable state is invented where the seed has one.
 */

/** The nine stable states of seed 002. */
export const WORKSPACE_STATES = [
  'Unstaged',
  'Unpropagated',
  'Propagated',
  'Running',
  'Paused',
  'TransportReady',
  'StagedOut',
  'Corrupted',
  'Cancelled',
] as const;

/** A stable workspace state (seed 002). */
export type WorkspaceState = (typeof WORKSPACE_STATES)[number];

/** In-flight detail shown beside the stable state; `null` when nothing is in flight. */
export type WorkspaceTask =
  | 'staging-in'
  /** Pilot mode: the pilot job waits in the site's batch queue (best effort) for node time. */
  | 'queued-in-batch'
  | 'allocating'
  | 'propagating'
  | 'starting'
  | 'restoring'
  | 'awaiting-address'
  | 'pausing'
  | 'unpausing'
  | 'rebooting'
  | 'shutting-down'
  | 'serializing'
  | 'unpropagating'
  | 'staging-out'
  | 'trashing'
  | 'destroying'
  | null;

/** Client operations on one workspace. */
export const WORKSPACE_OPERATIONS = ['start', 'pause', 'unpause', 'reboot', 'shutdown', 'shutdown-save', 'destroy'] as const;

/** A client operation on one workspace. */
export type WorkspaceOperation = (typeof WORKSPACE_OPERATIONS)[number];

/**
 * Which operations each stable state allows. Destroy is allowed everywhere but Cancelled (a Corrupted
 * workspace must always be destroyable: Nimbus #112 was the opposite). `start` from StagedOut is only
 * for a workspace whose VM was serialized ({@link startNeedsSavedState}); shutdown-save from
 * Propagated unpropagates a VM that is already shut down.
 */
export const ALLOWED_OPERATIONS: Readonly<Record<WorkspaceState, readonly WorkspaceOperation[]>> = {
  Unstaged: ['destroy'],
  Unpropagated: ['start', 'destroy'],
  Propagated: ['start', 'shutdown-save', 'destroy'],
  Running: ['pause', 'reboot', 'shutdown', 'shutdown-save', 'destroy'],
  Paused: ['unpause', 'shutdown', 'shutdown-save', 'destroy'],
  TransportReady: ['destroy'],
  StagedOut: ['start', 'destroy'],
  Corrupted: ['destroy'],
  Cancelled: [],
};

/** Where each operation takes the workspace when it succeeds (for the docs and for Corrupted's `heading`). */
export const OPERATION_TARGET: Readonly<Record<WorkspaceOperation, WorkspaceState>> = {
  start: 'Running',
  pause: 'Paused',
  unpause: 'Running',
  reboot: 'Running',
  shutdown: 'Propagated',
  'shutdown-save': 'StagedOut',
  destroy: 'Cancelled',
};

/** States in which the VM exists on the node, so DeploymentTime runs (pause does not stop it). */
export const VM_STATES: readonly WorkspaceState[] = ['Running', 'Paused'];

/** States a workspace never leaves. */
export const TERMINAL_STATES: readonly WorkspaceState[] = ['Cancelled'];

/** A StagedOut workspace can be started only if its VM was serialized (it resumes from the saved state). */
export const startNeedsSavedState = (state: WorkspaceState): boolean => state === 'StagedOut';

/** What the table needs to know of a workspace to judge an operation. */
export interface OperationContext {
  state: WorkspaceState;
  task: WorkspaceTask;
  /** True when the VM's state was serialized (Serialize at deadline) and can be resumed. */
  hasSavedState?: boolean;
}

/** Why `operation` cannot be done now, or `null` if it can. The one rule the API and the workflow share. */
export function refusalReason(ctx: OperationContext, operation: WorkspaceOperation): string | null {
  if (!ALLOWED_OPERATIONS[ctx.state].includes(operation)) return refusalMessage(ctx.state, operation);
  if (operation === 'destroy') return ctx.task === 'destroying' ? 'the workspace is already being destroyed' : null;
  if (ctx.task !== null) return `cannot ${operation} a workspace in state ${ctx.state} while it is ${ctx.task}; try again when that is done`;
  if (operation === 'start' && startNeedsSavedState(ctx.state) && !ctx.hasSavedState) {
    return `cannot start a workspace in state StagedOut: only a workspace serialized at its deadline can be started again (this one was shut down)`;
  }
  return null;
}

/** True when `operation` may be asked of a workspace in `state` (ignoring what is in flight). */
export function isOperationAllowed(state: WorkspaceState, operation: WorkspaceOperation): boolean {
  return ALLOWED_OPERATIONS[state].includes(operation);
}

/** The sentence used when an operation is refused, naming the current state. */
export function refusalMessage(state: WorkspaceState, operation: WorkspaceOperation): string {
  const allowed = ALLOWED_OPERATIONS[state];
  const hint = allowed.length ? `; allowed now: ${allowed.join(', ')}` : '';
  return `cannot ${operation} a workspace in state ${state}${hint}`;
}
