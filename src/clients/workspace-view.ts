/**
 * Reads a workspace's description the cheap way: from the view its workflow keeps in its memo (one
 * DescribeWorkflowExecution, answered by the server alone), and only for a workflow without that view
 * (started before the `view-memo` patch, or whose first task has not run yet) by the describe query,
 * which needs the head worker to hold the workflow in its cache or to replay its history. For every
 * reader of many workspaces (the API, the status report, group fan-outs, the event streams, the
 * reconciler), so that the head's workflow cache need not hold the live set (issue 8: the head's memory).
 *
 * The memo is as fresh as the query: the workflow upserts the view in the very workflow task that
 * changed it (see `publishView` in the workspace workflow), and a query answers the state after the
 * last completed task too. Only the running time left differs in how it is computed (here, from the
 * memo's clock at read time), not in its value.
 */
import type { Client, WorkflowExecutionDescription } from '@temporalio/client';
import { describeQuery } from '../domain/messages';
import { VIEW_MEMO_KEY, viewFromMemo } from '../domain/view-memo';
import type { WorkspaceDescription } from '../domain/workspace';

/** A workspace's description and the execution it was read from (null when it was queried). */
export interface WorkspaceRead {
  description: WorkspaceDescription;
  /** The server's description of the workflow (pending activities, status), when the memo answered. */
  execution: WorkflowExecutionDescription | null;
}

/**
 * The description of the workspace whose workflow is `workflowId`, its running time left computed at
 * `now`. Errors are the client's (WorkflowNotFoundError for an unknown id; ServiceError otherwise).
 */
export async function readWorkspace(client: Client, workflowId: string, now = Date.now()): Promise<WorkspaceRead> {
  const handle = client.workflow.getHandle(workflowId);
  const execution = await handle.describe();
  const description = viewFromMemo(execution.memo?.[VIEW_MEMO_KEY], now);
  if (description) return { description, execution };
  return { description: await handle.query(describeQuery), execution: null };
}

/** The description alone (see {@link readWorkspace}): what the describe query answers, read from the memo. */
export async function describeWorkspace(client: Client, workflowId: string, now = Date.now()): Promise<WorkspaceDescription> {
  return (await readWorkspace(client, workflowId, now)).description;
}
