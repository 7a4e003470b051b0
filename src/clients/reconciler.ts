/**
 * The reconciler's Temporal Schedule, `<prefix>-reconciler`: every `reconciler.periodSeconds` it starts
 * `reconcilerWorkflow` on the head task queue; a run still going when the next is due makes that one
 * skip (overlap SKIP). The head creates or updates it at start, so a changed configuration takes effect;
 * a disabled reconciler's Schedule is deleted.
 */
import { ScheduleAlreadyRunning, ScheduleNotFoundError, ScheduleOverlapPolicy, type Client, type ScheduleOptionsAction } from '@temporalio/client';
import { headTaskQueue, workspaceRouting } from '../config/names';
import type { VwsConfig } from '../config/schema';
import type { ReconcilerInput } from '../workflows/reconciler';

/** The Schedule's id (also the id of the workflows it starts, with the start time appended by Temporal). */
export function reconcilerScheduleId(config: VwsConfig): string {
  return `${config.temporal.prefix}-reconciler`;
}

/** What every reconcile run is given: the prefix, the grace period, the nodes and the routing. */
export function reconcilerInput(config: VwsConfig): ReconcilerInput {
  return {
    prefix: config.temporal.prefix,
    graceSeconds: config.reconciler.graceSeconds,
    nodes: config.nodes.map((n) => n.name),
    routing: workspaceRouting(config),
  };
}

/** What ensureReconcilerSchedule did. */
export type ScheduleOutcome = 'created' | 'updated' | 'deleted' | 'absent';

/** Creates or updates (idempotently) the reconciler's Schedule, or deletes it when the reconciler is disabled. */
export async function ensureReconcilerSchedule(client: Client, config: VwsConfig): Promise<ScheduleOutcome> {
  const scheduleId = reconcilerScheduleId(config);
  const handle = client.schedule.getHandle(scheduleId);
  if (!config.reconciler.enabled) {
    try {
      await handle.delete();
      return 'deleted';
    } catch (e) {
      if (e instanceof ScheduleNotFoundError) return 'absent';
      throw e;
    }
  }
  const spec = { intervals: [{ every: config.reconciler.periodSeconds * 1000 }] };
  const action: ScheduleOptionsAction = {
    type: 'startWorkflow',
    workflowType: 'reconcilerWorkflow',
    workflowId: scheduleId,
    taskQueue: headTaskQueue(config),
    args: [reconcilerInput(config)],
  };
  const policies = { overlap: ScheduleOverlapPolicy.SKIP };
  try {
    await client.schedule.create({ scheduleId, spec, action, policies });
    return 'created';
  } catch (e) {
    if (!(e instanceof ScheduleAlreadyRunning)) throw e;
  }
  await handle.update((previous) => ({ ...previous, spec, action, policies: { ...previous.policies, ...policies } }));
  return 'updated';
}
