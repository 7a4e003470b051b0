/**
 * A workspace as clients see it: the workflow's description with its links, and the progress of a copy
 * in flight read from the copying activity's heartbeat. `GET /workspaces/:id` and the event stream
 * answer the same shape, so a client can treat an event as a fresh read.
 */
import { WorkflowNotFoundError, type Client, type WorkflowExecutionDescription } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import { workspaceWorkflowId } from '../config/names';
import type { VwsConfig } from '../config/schema';
import { readWorkspace, type WorkspaceRead } from '../clients/workspace-view';
import { workspaceIdSchema } from '../domain/requests';
import type { WorkspaceDescription } from '../domain/workspace';
import { log } from '../log';
import type { Principal } from './auth';
import { unavailable } from './http';
import { HttpProblem } from './problem';

/** Tasks that copy bytes and heartbeat their progress. */
const COPY_TASKS = new Set<WorkspaceDescription['task']>(['staging-in', 'propagating', 'unpropagating', 'staging-out']);

/** A workspace as the API answers it: its description and links to itself and to its run in the Temporal UI. */
export type PresentedWorkspace = WorkspaceDescription & { links: { self: string; temporalUi: string } };

/** The description with its links. */
export function presentWorkspace(config: VwsConfig, d: WorkspaceDescription): PresentedWorkspace {
  const wf = encodeURIComponent(workspaceWorkflowId(config, d.id));
  return {
    ...d,
    links: {
      self: `/workspaces/${d.id}`,
      temporalUi: `${config.temporal.uiUrl}/namespaces/${encodeURIComponent(config.temporal.namespace)}/workflows/${wf}`,
    },
  };
}

/**
 * The description with copy progress (bytes of total) from the heartbeat of the copy in flight, when
 * there is one; unchanged otherwise, or when the workflow cannot be described (progress is a nicety).
 */
export async function withCopyProgress(client: Client, config: VwsConfig, d: WorkspaceDescription): Promise<WorkspaceDescription> {
  if (!d.task || !COPY_TASKS.has(d.task)) return d;
  try {
    return progressFrom(d, await client.workflow.getHandle(workspaceWorkflowId(config, d.id)).describe());
  } catch (e) {
    log.debug({ err: e, workspace: d.id }, 'no progress for the workspace');
  }
  return d;
}

/** `d` with the progress heartbeated by the copy in flight among `desc`'s pending activities, if any. */
function progressFrom(d: WorkspaceDescription, desc: WorkflowExecutionDescription): WorkspaceDescription {
  if (!d.task || !COPY_TASKS.has(d.task)) return d;
  for (const a of desc.raw.pendingActivities ?? []) {
    const payload = a.heartbeatDetails?.payloads?.[0];
    if (!payload) continue;
    const p = defaultPayloadConverter.fromPayload<{ bytes?: unknown; total?: unknown; image?: unknown }>(payload);
    if (typeof p?.bytes === 'number' && typeof p.total === 'number' && p.total > 0) {
      return { ...d, progress: { bytes: p.bytes, total: p.total, ...(typeof p.image === 'string' ? { image: p.image } : {}) } };
    }
  }
  return d;
}

/**
 * A workspace the principal owns, with the progress of a copy in flight: `GET /workspaces/:id`. Read
 * by {@link readWorkspace}: from the view the workflow keeps in its memo with one DescribeWorkflowExecution
 * answered by the server (no workflow query, so the head worker neither holds the workflow in its cache
 * nor replays it; the running time left is computed at read time), or by the query for a workflow
 * without that view. Someone else's workspace, or one that does not exist, is a 404 naming the id,
 * unless the caller is an admin.
 */
export async function readOwnedWorkspace(client: Client, config: VwsConfig, principal: Principal, id: string): Promise<WorkspaceDescription> {
  return withProgress(client, config, await readOwned(client, config, principal, id));
}

/**
 * A workspace the principal owns, as {@link readOwnedWorkspace} reads it but without the copy progress
 * (what the describe query answered): for the operations' early refusal and their 202 answers.
 */
export async function readOwnedDescription(client: Client, config: VwsConfig, principal: Principal, id: string): Promise<WorkspaceDescription> {
  return (await readOwned(client, config, principal, id)).description;
}

/** The description of `read` with the progress of a copy in flight (from the execution it was read with, when there is one). */
function withProgress(client: Client, config: VwsConfig, read: WorkspaceRead): Promise<WorkspaceDescription> {
  return read.execution ? Promise.resolve(progressFrom(read.description, read.execution)) : withCopyProgress(client, config, read.description);
}

/** Reads a workspace the principal owns; someone else's, an unknown or a malformed id is a 404 naming the id. */
async function readOwned(client: Client, config: VwsConfig, principal: Principal, id: string): Promise<WorkspaceRead> {
  const notFound = new HttpProblem(404, 'Not Found', `no workspace ${id}`);
  if (!workspaceIdSchema.safeParse(id).success) throw notFound;
  let read: WorkspaceRead;
  try {
    read = await readWorkspace(client, workspaceWorkflowId(config, id));
  } catch (e) {
    if (e instanceof WorkflowNotFoundError) throw notFound;
    throw unavailable(e) ?? e;
  }
  if (read.description.owner !== principal.identity && !principal.admin) throw notFound;
  return read;
}
