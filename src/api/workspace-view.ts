/**
 * A workspace as clients see it: the workflow's description with its links, and the progress of a copy
 * in flight read from the copying activity's heartbeat. `GET /workspaces/:id` and the event stream
 * answer the same shape, so a client can treat an event as a fresh read.
 */
import type { Client } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import { workspaceWorkflowId } from '../config/names';
import type { VwsConfig } from '../config/schema';
import type { WorkspaceDescription } from '../domain/workspace';
import { log } from '../log';

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
    const desc = await client.workflow.getHandle(workspaceWorkflowId(config, d.id)).describe();
    for (const a of desc.raw.pendingActivities ?? []) {
      const payload = a.heartbeatDetails?.payloads?.[0];
      if (!payload) continue;
      const p = defaultPayloadConverter.fromPayload<{ bytes?: unknown; total?: unknown; image?: unknown }>(payload);
      if (typeof p?.bytes === 'number' && typeof p.total === 'number' && p.total > 0) {
        return { ...d, progress: { bytes: p.bytes, total: p.total, ...(typeof p.image === 'string' ? { image: p.image } : {}) } };
      }
    }
  } catch (e) {
    log.debug({ err: e, workspace: d.id }, 'no progress for the workspace');
  }
  return d;
}
