/**
 * `GET /status`: seed 000's status service for the caller: its current workspaces and the minutes it
 * used and reserved, charged in whole units of `accounting.chargeGranularitySeconds`. Closed totals come
 * from the allocator's durable accounting (CREATED/REMOVED pairs); the running time of live workspaces
 * is added from the workspaces themselves, since it is reported to the allocator only at release.
 */
import express from 'express';
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import type { AllocatorClient } from '../clients/allocator';
import { workspaceWorkflowId } from '../config/names';
import type { VwsConfig } from '../config/schema';
import { describeWorkspace } from '../clients/workspace-view';
import type { OwnerUsageReport } from '../domain/messages';
import type { WorkspaceDescription } from '../domain/workspace';
import { log } from '../log';
import type { Principal } from './auth';
import { emptyRequestSchema } from '../domain/requests';
import { parseBody, principalOf, unavailable, wrap } from './http';
import { listWorkspaces } from './listing';

/** Minutes charged for `seconds`: rounded up to whole units of `granularity` seconds. */
export function chargedMinutes(seconds: number, granularity: number): number {
  if (seconds <= 0) return 0;
  return (Math.ceil(seconds / granularity) * granularity) / 60;
}

/** Running time a live workspace has used so far (first start to now, less nothing: pause does not stop it). */
export function usedSecondsOf(d: Pick<WorkspaceDescription, 'firstStartedAt' | 'durationSeconds' | 'runningTimeLeftSeconds'>): number {
  return d.firstStartedAt ? Math.max(0, d.durationSeconds - d.runningTimeLeftSeconds) : 0;
}

/** The caller's usage report. */
export async function statusOf(config: VwsConfig, client: Client, allocator: AllocatorClient, principal: Principal) {
  const g = config.accounting.chargeGranularitySeconds;
  let closed: OwnerUsageReport = { owner: principal.identity, liveGrants: 0, reservedMinutes: 0, usedMinutes: 0, heldMinutes: 0 };
  try {
    closed = (await allocator.usage(principal.identity)).find((u) => u.owner === principal.identity) ?? closed;
  } catch (e) {
    // No allocator yet: nothing was ever granted at this site.
    if (!(e instanceof WorkflowNotFoundError)) throw unavailable(e) ?? e;
  }
  const open = await listWorkspaces(client, config, principal, { open: true, owner: principal.identity });
  const described = await Promise.all(
    open.map(async (w) => {
      try {
        // From the view in the memo: no query, so the head worker neither caches nor replays each workspace.
        return await describeWorkspace(client, workspaceWorkflowId(config, w.id));
      } catch (err) {
        log.debug({ err, workspace: w.id }, 'workspace ended while the status was taken');
        return null;
      }
    }),
  );
  const workspaces = described
    .filter((d): d is WorkspaceDescription => !!d && d.state !== 'Cancelled')
    .map((d) => ({
      id: d.id,
      state: d.state,
      node: d.node,
      memoryMiB: d.memoryMiB,
      vcpus: d.vcpus,
      durationSeconds: d.durationSeconds,
      runningTimeLeftSeconds: d.runningTimeLeftSeconds,
      usedMinutes: chargedMinutes(usedSecondsOf(d), g),
      links: { self: `/workspaces/${d.id}` },
    }));
  const liveUsed = workspaces.reduce((sum, w) => sum + w.usedMinutes, 0);
  const quota = config.clients.find((c) => c.identity === principal.identity)?.quota;
  return {
    owner: principal.identity,
    chargeGranularitySeconds: g,
    /** Used: first start to last shutdown, of ended workspaces (accounting) and live ones (so far). */
    usedMinutes: chargedMinutes(closed.usedMinutes * 60, g) + liveUsed,
    /** Reserved: grant to release (live grants: so far). */
    reservedMinutes: chargedMinutes(closed.reservedMinutes * 60, g),
    /** Running time the live grants hold reserved, what the reserved-minutes quota counts. */
    heldMinutes: closed.heldMinutes,
    liveGrants: closed.liveGrants,
    ...(quota ? { quota } : {}),
    workspaces,
  };
}

/** The status route. */
export function statusRoutes(config: VwsConfig, client: Client, allocator: AllocatorClient): express.Router {
  const r = express.Router();
  r.get(
    '/status',
    wrap(async (req, res) => {
      parseBody(emptyRequestSchema, req.query);
      res.json(await statusOf(config, client, allocator, principalOf(res)));
    }),
  );
  return r;
}
