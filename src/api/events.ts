/**
 * Server-sent events (`text/event-stream`) for following a workspace, group or ensemble live:
 * `GET /workspaces/:id/events`, `GET /groups/:id/events`, `GET /ensembles/:id/events`.
 *
 * The stream polls the workflow's describe query on the server and sends an event only when something
 * a client follows has changed (state, task, the IP obtained by DHCP, bytes copied; members for groups
 * and ensembles). Each event's data is the object exactly as `GET` on it answers, so an event is a fresh
 * read. When the object has ended (Cancelled, or Corrupted at rest; a group or ensemble Ended; or its
 * workflow closed) an `end` event carries the last description and the stream closes.
 *
 * Ownership is checked before the stream starts, as for `GET`: another client's object, or one that does
 * not exist, is a 404 problem+json and no stream. Comment lines keep proxies from closing a quiet stream,
 * and everything stops the moment the client goes away.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import express from 'express';
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import { ensembleWorkflowId, groupWorkflowId, workspaceWorkflowId } from '../config/names';
import type { VwsConfig } from '../config/schema';
import type { EnsembleDescription, GroupDescription, MemberSummary } from '../domain/groups';
import { describeQuery, ensembleDescribeQuery, groupDescribeQuery } from '../domain/messages';
import { ensembleIdSchema, groupIdSchema, workspaceIdSchema } from '../domain/requests';
import type { WorkspaceDescription } from '../domain/workspace';
import { log } from '../log';
import { principalOf, queryOwned, wrap } from './http';
import { presentWorkspace, withCopyProgress } from './workspace-view';

/** How a stream polls and keeps itself alive. */
export interface EventStreamOptions {
  /** Milliseconds between two reads of the workflow (default 400). */
  pollMs?: number;
  /** Milliseconds between two keep-alive comments (default 15 000: below common proxy idle timeouts). */
  heartbeatMs?: number;
  /** Reads between two checks that the workflow still runs (a terminated one answers queries forever; default 5). */
  closedCheckEvery?: number;
  /** Milliseconds of failed reads in a row after which the stream gives up with an `error` event (default 30 000). */
  giveUpMs?: number;
}

/** What a stream follows. */
interface Followed<T> {
  kind: 'workspace' | 'group' | 'ensemble';
  workflowId: string;
  /** Reads the object now. */
  read(): Promise<T>;
  /** What a client follows, as a string: an event is sent when it changes. */
  key(v: T): string;
  /** True when nothing will change any more. */
  ended(v: T): boolean;
  /** The object as `GET` answers it. */
  present(v: T): object;
}

/** The open streams, each by the function that closes it. */
const streams = new Set<() => void>();

/** How many event streams are open in this process (each one polls until its client goes away). */
export function openEventStreams(): number {
  return streams.size;
}

/**
 * Closes every open stream with an `error` event saying the API is stopping (clients read the object
 * again, or follow it elsewhere). Call before `server.close()`, which otherwise waits for every stream.
 */
export function closeEventStreams(): void {
  for (const close of [...streams]) close();
}

/** A workspace has ended when Cancelled, or Corrupted with nothing in flight (only destroy can follow). */
export function workspaceEnded(d: Pick<WorkspaceDescription, 'state' | 'task'>): boolean {
  return d.state === 'Cancelled' || (d.state === 'Corrupted' && d.task === null);
}

/** What a client follows of a workspace. */
export function workspaceKey(d: WorkspaceDescription): string {
  return JSON.stringify([
    d.state,
    d.task,
    d.heading ?? null,
    d.reason ?? null,
    d.obtainedIp ?? null,
    (d.nics ?? []).map((n) => n.obtainedIp ?? null),
    d.progress?.bytes ?? null,
    d.propagation?.bytesCopied ?? null,
    (d.stagedIn ?? []).map((s) => s.bytesCopied),
    d.saved?.disk ?? null,
  ]);
}

const memberKey = (m: MemberSummary) => [m.id, m.state, m.task, m.ip ?? null, m.reason ?? null];

/** Writes one event; nothing once the client has gone. */
function send(res: express.Response, seq: number, event: string, data: unknown): void {
  if (res.destroyed || res.writableEnded) return;
  // JSON.stringify escapes newlines inside strings: the data is one line, as the format requires.
  res.write(`id: ${seq}\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
}

/** True when the workflow is no longer running (completed, terminated, …); false when that cannot be told. */
async function closed(client: Client, workflowId: string): Promise<string | null> {
  try {
    const status = (await client.workflow.getHandle(workflowId).describe()).status.name;
    return status === 'RUNNING' ? null : status;
  } catch (e) {
    return e instanceof WorkflowNotFoundError ? 'NOT_FOUND' : null;
  }
}

/** Streams `f` from `first` (already read, owner checked) until it ends or the client goes away. */
async function stream<T>(client: Client, res: express.Response, f: Followed<T>, first: T, o: Required<EventStreamOptions>): Promise<void> {
  const gone = new AbortController();
  res.once('close', () => gone.abort());
  let seq = 0;
  const close = () => {
    send(res, ++seq, 'error', { type: 'about:blank', title: 'Service Unavailable', status: 503, detail: 'the vws API is stopping; read the object again shortly' });
    gone.abort();
    if (!res.writableEnded) res.end();
  };
  res.status(200);
  res.setHeader('Content-Type', 'text/event-stream; charset=utf-8');
  res.setHeader('Cache-Control', 'no-cache, no-transform');
  res.setHeader('Connection', 'keep-alive');
  // nginx buffers responses unless told not to; a buffered stream shows nothing live.
  res.setHeader('X-Accel-Buffering', 'no');
  res.flushHeaders();
  streams.add(close);
  const heartbeat = setInterval(() => {
    if (!res.destroyed && !res.writableEnded) res.write(': keep-alive\n\n');
  }, o.heartbeatMs);
  let current = first;
  let last = f.key(first);
  let failingSince: number | undefined;
  try {
    // Tells an EventSource how long to wait before reconnecting after a dropped connection.
    res.write('retry: 2000\n\n');
    send(res, ++seq, f.kind, f.present(first));
    for (let reads = 1; !gone.signal.aborted; reads++) {
      if (f.ended(current)) {
        send(res, ++seq, 'end', f.present(current));
        return;
      }
      await sleep(o.pollMs, undefined, { signal: gone.signal }).catch(() => undefined);
      if (gone.signal.aborted) return;
      try {
        current = await f.read();
        failingSince = undefined;
      } catch (e) {
        if (e instanceof WorkflowNotFoundError) {
          send(res, ++seq, 'end', { ...f.present(current), workflowStatus: 'NOT_FOUND' });
          return;
        }
        failingSince ??= Date.now();
        log.debug({ err: e, [f.kind]: f.workflowId }, 'event stream: read failed; trying again');
        if (Date.now() - failingSince >= o.giveUpMs) {
          send(res, ++seq, 'error', { type: 'about:blank', title: 'Service Unavailable', status: 503, detail: 'the vws head worker is not answering; nothing is lost: read the object again shortly' });
          return;
        }
        continue;
      }
      const key = f.key(current);
      if (key !== last) {
        last = key;
        send(res, ++seq, f.kind, f.present(current));
      }
      if (!f.ended(current) && reads % o.closedCheckEvery === 0) {
        const status = await closed(client, f.workflowId);
        if (status) {
          send(res, ++seq, 'end', { ...f.present(current), workflowStatus: status });
          return;
        }
      }
    }
  } finally {
    clearInterval(heartbeat);
    streams.delete(close);
    if (!res.writableEnded) res.end();
  }
}

/** Routes: the event streams of workspaces, groups and ensembles. */
export function eventRoutes(config: VwsConfig, client: Client, options: EventStreamOptions = {}): express.Router {
  const o: Required<EventStreamOptions> = { pollMs: 400, heartbeatMs: 15_000, closedCheckEvery: 5, giveUpMs: 30_000, ...options };
  const r = express.Router();

  r.get(
    '/workspaces/:id/events',
    wrap(async (req, res) => {
      const id = String(req.params.id);
      const workflowId = workspaceWorkflowId(config, id);
      const principal = principalOf(res);
      const first = await withCopyProgress(client, config, await queryOwned(client, workflowId, describeQuery, principal, 'workspace', id, workspaceIdSchema));
      await stream<WorkspaceDescription>(client, res, {
        kind: 'workspace',
        workflowId,
        read: async () => withCopyProgress(client, config, await client.workflow.getHandle(workflowId).query(describeQuery)),
        key: workspaceKey,
        ended: workspaceEnded,
        present: (d) => presentWorkspace(config, d),
      }, first, o);
    }),
  );

  r.get(
    '/groups/:id/events',
    wrap(async (req, res) => {
      const id = String(req.params.id);
      const workflowId = groupWorkflowId(config, id);
      const first = await queryOwned(client, workflowId, groupDescribeQuery, principalOf(res), 'group', id, groupIdSchema);
      await stream<GroupDescription>(client, res, {
        kind: 'group',
        workflowId,
        read: () => client.workflow.getHandle(workflowId).query(groupDescribeQuery),
        key: (g) => JSON.stringify([g.state, g.reason ?? null, g.members.map(memberKey)]),
        ended: (g) => g.state === 'Ended',
        present: (g) => ({ ...g, links: { self: `/groups/${id}` } }),
      }, first, o);
    }),
  );

  r.get(
    '/ensembles/:id/events',
    wrap(async (req, res) => {
      const id = String(req.params.id);
      const workflowId = ensembleWorkflowId(config, id);
      const first = await queryOwned(client, workflowId, ensembleDescribeQuery, principalOf(res), 'ensemble', id, ensembleIdSchema);
      await stream<EnsembleDescription>(client, res, {
        kind: 'ensemble',
        workflowId,
        read: () => client.workflow.getHandle(workflowId).query(ensembleDescribeQuery),
        key: (e) => JSON.stringify([e.state, e.reason ?? null, e.attempts, e.lastRefusal ?? null, e.members.map((m) => [m.memberId, m.workspaces.map(memberKey)])]),
        ended: (e) => e.state === 'Ended',
        present: (e) => ({ ...e, links: { self: `/ensembles/${id}`, members: `/ensembles/${id}/members`, done: `/ensembles/${id}/done` } }),
      }, first, o);
    }),
  );
  return r;
}
