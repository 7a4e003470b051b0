/**
 * The workspace state machine: the single table that the workflow, the API's early refusals, the CLI
 * and the documentation all read. Pure data, no I/O: workflow code imports it.
 *
 * The nine stable states are seed 002's `WorkspaceState`. What is happening *right now* (propagating,
 * starting, destroying...) is kept apart as a {@link WorkspaceTask}, the way Nova keeps `task_state`
 * apart from `vm_state`, so no stable state is invented where the seed has one.
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
  | 'allocating'
  | 'propagating'
  | 'starting'
  | 'awaiting-address'
  | 'destroying'
  | null;

/** Client operations on one workspace. */
export const WORKSPACE_OPERATIONS = [
  'start',
  'pause',
  'unpause',
  'reboot',
  'shutdown',
  'shutdown-save',
  'destroy',
] as const;

/** A client operation on one workspace. */
export type WorkspaceOperation = (typeof WORKSPACE_OPERATIONS)[number];

/**
 * Which operations each stable state allows. Destroy is allowed everywhere but Cancelled (a Corrupted
 * workspace must always be destroyable: Nimbus #112 was the opposite).
 */
export const ALLOWED_OPERATIONS: Readonly<Record<WorkspaceState, readonly WorkspaceOperation[]>> = {
  Unstaged: ['destroy'],
  Unpropagated: ['start', 'destroy'],
  Propagated: ['start', 'destroy'],
  Running: ['pause', 'reboot', 'shutdown', 'shutdown-save', 'destroy'],
  Paused: ['unpause', 'shutdown', 'shutdown-save', 'destroy'],
  TransportReady: ['destroy'],
  StagedOut: ['destroy'],
  Corrupted: ['destroy'],
  Cancelled: [],
};

/** States a workspace never leaves. */
export const TERMINAL_STATES: readonly WorkspaceState[] = ['Cancelled'];

/** True when `operation` may be asked of a workspace in `state`. */
export function isOperationAllowed(state: WorkspaceState, operation: WorkspaceOperation): boolean {
  return ALLOWED_OPERATIONS[state].includes(operation);
}

/** The sentence used when an operation is refused, naming the current state. */
export function refusalMessage(state: WorkspaceState, operation: WorkspaceOperation): string {
  const allowed = ALLOWED_OPERATIONS[state];
  const hint = allowed.length ? `; allowed now: ${allowed.join(', ')}` : '';
  return `cannot ${operation} a workspace in state ${state}${hint}`;
}
