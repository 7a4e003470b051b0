/**
 * `GET /workspaces`: the caller's workspaces from Temporal's visibility store (no query on each
 * workflow, so a list of thousands stays cheap), filtered by state, group and ensemble through the
 * search attributes the workflows keep up to date. Visibility lags the workflows by a moment.
 */
import express from 'express';
import type { Client, WorkflowExecutionInfo } from '@temporalio/client';
import type { VwsConfig } from '../config/schema';
import { VwsEnsemble, VwsGroup, VwsNode, VwsOwner, VwsState } from '../domain/messages';
import { listWorkspacesSchema } from '../domain/requests';
import type { Principal } from './auth';
import { parseBody, principalOf, wrap } from './http';

/** Filters of a listing. */
export interface ListFilter {
  state?: string;
  group?: string;
  ensemble?: string;
  /** Only workspaces whose workflow is still open. */
  open?: boolean;
  /** Only this owner's (an admin's listing shows every owner's otherwise). */
  owner?: string;
}

/** One workspace as a listing shows it. */
export interface WorkspaceListItem {
  id: string;
  state?: string;
  owner?: string;
  node?: string;
  group?: string;
  ensemble?: string;
  /** False once the workspace's workflow has ended (Cancelled). */
  open: boolean;
  createdAt?: string;
  endedAt?: string;
  links: { self: string };
}

/** Most workspaces one listing returns. */
const LIST_LIMIT = 1000;

/** A string literal of the visibility query language. */
const literal = (s: string) => `"${s.replace(/[\\"]/g, (c) => `\\${c}`)}"`;

/** The visibility query for `principal`'s workspaces (every owner's for an admin) under this installation's prefix. */
export function listQuery(config: VwsConfig, principal: Principal, f: ListFilter): string {
  const clauses = [`WorkflowType = "workspaceWorkflow"`, `WorkflowId STARTS_WITH ${literal(`${config.temporal.prefix}-ws-`)}`];
  const owner = principal.admin ? f.owner : principal.identity;
  if (owner !== undefined) clauses.push(`VwsOwner = ${literal(owner)}`);
  if (f.state) clauses.push(`VwsState = ${literal(f.state)}`);
  if (f.group) clauses.push(`VwsGroup = ${literal(f.group)}`);
  if (f.ensemble) clauses.push(`VwsEnsemble = ${literal(f.ensemble)}`);
  if (f.open) clauses.push(`ExecutionStatus = "Running"`);
  return clauses.join(' AND ');
}

function item(config: VwsConfig, w: WorkflowExecutionInfo): WorkspaceListItem {
  const id = w.workflowId.slice(config.temporal.prefix.length + 1);
  const sa = w.typedSearchAttributes;
  const opt = (k: string, v: unknown) => (typeof v === 'string' ? { [k]: v } : {});
  return {
    id,
    ...opt('state', sa.get(VwsState)),
    ...opt('owner', sa.get(VwsOwner)),
    ...opt('node', sa.get(VwsNode)),
    ...opt('group', sa.get(VwsGroup)),
    ...opt('ensemble', sa.get(VwsEnsemble)),
    open: w.status.name === 'RUNNING',
    ...(w.startTime ? { createdAt: w.startTime.toISOString() } : {}),
    ...(w.closeTime ? { endedAt: w.closeTime.toISOString() } : {}),
    links: { self: `/workspaces/${id}` },
  };
}

/** The caller's workspaces, newest first, at most {@link LIST_LIMIT}. */
export async function listWorkspaces(client: Client, config: VwsConfig, principal: Principal, f: ListFilter): Promise<WorkspaceListItem[]> {
  const out: WorkspaceListItem[] = [];
  for await (const w of client.workflow.list({ query: listQuery(config, principal, f), pageSize: 200 })) {
    out.push(item(config, w));
    if (out.length >= LIST_LIMIT) break;
  }
  return out;
}

/** The listing route. */
export function listingRoutes(config: VwsConfig, client: Client): express.Router {
  const r = express.Router();
  r.get(
    '/workspaces',
    wrap(async (req, res) => {
      const f = parseBody(listWorkspacesSchema, req.query);
      const workspaces = await listWorkspaces(client, config, principalOf(res), f);
      res.json({ workspaces, count: workspaces.length, ...(workspaces.length >= LIST_LIMIT ? { truncated: true } : {}) });
    }),
  );
  return r;
}
