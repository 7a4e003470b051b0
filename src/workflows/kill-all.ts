/**
 * The emergency stop through vws (`POST /admin/kill-all`, `vws admin kill-all`; seed 003's "kill 9"):
 * every node at once destroys every VM its driver lists and sets its memory back to exactly the
 * configured value; then every open workspace of this installation is asked to destroy itself, which,
 * its VM being gone already, cleans its DHCP entries, files and grant. A node whose worker is down is
 * reported, not waited for: when vws itself is down, `node dist/pilot/main.js kill-all` does the node
 * part directly over SSH.
 */
import { proxyActivities, workflowInfo } from '@temporalio/workflow';
import type { MemberActivities } from '../activities/head/members';
import type { ReconcileActivities } from '../activities/head/reconcile';
import type { NodeActivities } from '../activities/node';
import { FailureType } from '../domain/errors';
import type { KillAllInput, KillAllReport } from '../domain/kill-all';
import { errorText } from './reconciler';

/** Runs one kill-all; returns its report. */
export async function killAllWorkflow(input: KillAllInput): Promise<KillAllReport> {
  const startedAt = new Date().toISOString();
  const headQueue = input.routing.headTaskQueue;
  const head = proxyActivities<ReconcileActivities>({ taskQueue: headQueue, startToCloseTimeout: '1m', retry: { maximumAttempts: 3 } });
  const members = proxyActivities<MemberActivities>({
    taskQueue: headQueue,
    startToCloseTimeout: '10m',
    heartbeatTimeout: '30s',
    retry: { initialInterval: '1s', maximumInterval: '10s', maximumAttempts: 5, nonRetryableErrorTypes: [FailureType.InvalidSpec] },
  });
  // A node whose worker is down never starts the reset: the schedule-to-close timeout reports it.
  const node = (name: string) =>
    proxyActivities<NodeActivities>({
      taskQueue: `${input.routing.nodeTaskQueuePrefix}${name}`,
      scheduleToCloseTimeout: '3m',
      startToCloseTimeout: '2m',
      heartbeatTimeout: '30s',
      retry: { maximumAttempts: 2 },
    });

  const nodes = await Promise.all(
    input.nodes.map(async (name) => {
      try {
        return await node(name).resetNode();
      } catch (e) {
        return { node: name, error: errorText(e) };
      }
    }),
  );

  const workspaces: KillAllReport['workspaces'] = { destroyed: 0, failed: [] };
  const open = await head.reconcileWorkspaces();
  if (open.length) {
    const outcomes = await members.operateMembers({ workflowIds: open.map((w) => w.workflowId), op: { op: 'destroy' }, opId: `${workflowInfo().workflowId}/destroy` });
    for (const o of outcomes) {
      if (o.ok) workspaces.destroyed += 1;
      else workspaces.failed.push({ id: open.find((w) => w.workflowId === o.workflowId)?.workspaceId ?? o.workflowId, error: o.error ?? 'refused' });
    }
  }
  return { requestedBy: input.requestedBy, startedAt, endedAt: new Date().toISOString(), nodes, workspaces };
}
