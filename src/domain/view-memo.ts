/**
 * The public view a workspace workflow keeps in its memo (issue 8: read latency), so that
 * `GET /workspaces/:id` is answered by the server's DescribeWorkflowExecution, without a workflow query:
 * a query needs the head worker to hold the workflow in its cache (about 0.3 MB each) or to replay its
 * history, which is what bounded the head's memory and the reads' latency. Pure: the workflow writes
 * this shape, the API reads it.
 */
import type { WorkspaceDescription } from './workspace';

/** The memo key of the view. */
export const VIEW_MEMO_KEY = 'view';

/** The name of the workflow patch that starts keeping the view in the memo (older histories have none). */
export const VIEW_MEMO_PATCH = 'view-memo';

/**
 * The largest view (JSON characters) kept in the memo; a larger one is cleared and readers query the
 * workflow. Far below the server's memo limit (32 KiB by default), beyond which a task fails.
 */
export const VIEW_MEMO_MAX_CHARS = 16_000;

/**
 * The view as the memo holds it: the description without its time left, which changes by the second
 * and is computed at read time from `clock` instead (see {@link viewFromMemo}).
 */
export interface WorkspaceViewMemo {
  /** Version of this shape; a reader that does not know it falls back to the query. */
  v: 1;
  view: Omit<WorkspaceDescription, 'runningTimeLeftSeconds'>;
  clock: {
    /** Milliseconds of running time left, not counting the interval since `runningSince`. */
    leftMs: number;
    /** Epoch milliseconds since which the VM has existed (Running or Paused); absent while it does not. */
    runningSince?: number;
  };
}

/** The running time left at `now` (epoch ms), in whole seconds, as the workflow's `describe()` computes it. */
export function runningTimeLeftSeconds(clock: WorkspaceViewMemo['clock'], now: number): number {
  const left = clock.leftMs - (clock.runningSince === undefined ? 0 : now - clock.runningSince);
  return Math.max(0, Math.round(left / 1000));
}

/** The memo of `d` (a description) with its clock. */
export function viewMemo(d: WorkspaceDescription, clock: WorkspaceViewMemo['clock']): WorkspaceViewMemo {
  const { runningTimeLeftSeconds: _left, ...view } = d;
  return { v: 1, view, clock: clock.runningSince === undefined ? { leftMs: clock.leftMs } : clock };
}

/**
 * The description a memo value holds, with its time left at `now`; null when the value is not a view
 * this code knows (absent: a workflow started before the patch, or one whose first task has not run).
 */
export function viewFromMemo(value: unknown, now: number): WorkspaceDescription | null {
  const m = value as Partial<WorkspaceViewMemo> | null | undefined;
  if (!m || m.v !== 1 || typeof m.view !== 'object' || m.view === null || typeof m.clock?.leftMs !== 'number') return null;
  if (typeof m.view.id !== 'string' || typeof m.view.owner !== 'string' || typeof m.view.state !== 'string') return null;
  return { ...m.view, runningTimeLeftSeconds: runningTimeLeftSeconds(m.clock, now) };
}
