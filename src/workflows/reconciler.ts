/**
 * One reconcile run (started by the `<prefix>-reconciler` Schedule, or by hand): compares the
 * allocator's grants with the open workflows and with what each node's hypervisor actually runs, and
 * puts right what drifted (seed 004: a slot that stayed lost for good must not outlive one period).
 *
 * Order matters. This installation's workspaces are described before the nodes are listed, so a VM that
 * boots in between is never taken for one that vanished; the open workflows are listed after the nodes,
 * so a workspace that booted a VM before the listing is seen as its owner. Destroys come before
 * releases: an address goes back only once its VM is confirmed gone.
 *
 * A node that does not answer is reported, never failed on; every action that fails is reported and
 * left to the next run. The run's result is its report; the drift listing keeps the last one.
 *
 * Pilot mode (runs since the `reconcile-pilot-leases-and-jobs` patch): last, the allocator's pilot leases
 * and the batch system's vws pilot jobs are compared with the open pilot-slot workflows
 * (`./reconcile-pilot.ts`); this part does not need the grants, so it runs even when they could not be read.
 */
import { getExternalWorkflowHandle, patched, proxyActivities, workflowInfo, type RetryPolicy } from '@temporalio/workflow';
import type { ReconcileActivities } from '../activities/head/reconcile';
import type { NodeActivities } from '../activities/node';
import type { DhcpServerSpec } from '../activities/network/types';
import type { createDhcpActivities } from '../activities/network/dhcp';
import { grantNics, type NicGrant } from '../domain/allocation';
import { vmVanishedSignal } from '../domain/messages';
import { addCounts, planReconcile, zeroCounts, type DriftCounts, type DriftEntry, type DriftReport, type WorkspaceSighting } from '../domain/reconcile';
import type { WorkspaceRouting } from '../domain/workspace';
import { PILOT_PATCH, reconcilePilot, type PilotOutcome } from './reconcile-pilot';

/** The DHCP activities (served on a node's queue, or the head's for central delivery). */
type DhcpActivities = ReturnType<typeof createDhcpActivities>;

/** What a reconcile run needs to know of the site (the Schedule passes it; the head refreshes it at start). */
export interface ReconcilerInput {
  /** The installation's prefix (`temporal.prefix`): its grants' holders are `<prefix>-<workspace id>`. */
  prefix: string;
  /** Seconds before an orphaned grant is released or an unowned VM destroyed. */
  graceSeconds: number;
  /** The configured nodes, each listed on its own task queue. */
  nodes: string[];
  /** Task queues and DHCP delivery, as workspaces get them. */
  routing: WorkspaceRouting;
  /** How long a node's listing may take before the node counts as not answering, seconds (default {@link LIST_BUDGET}). */
  listBudgetSeconds?: number;
}

/** A failed action is left to the next run (the Schedule's period is the retry). */
const FEW: RetryPolicy = { initialInterval: '1s', maximumInterval: '5s', maximumAttempts: 3 };

/** How long a node's listing may take, queueing included, before the node counts as not answering, seconds. */
export const LIST_BUDGET = 60;

/** The message of an activity failure (its cause's, which says what the activity hit). */
export const errorText = (e: unknown): string => {
  const err = e as Error & { cause?: Error };
  return err.cause?.message ?? err.message ?? String(e);
};

/** The report's fields with the pilot part's outcome added (unchanged, without pilot fields, when it did not run). */
function withPilot(pilot: PilotOutcome | undefined, counts: DriftCounts, drifts: DriftEntry[], errors: string[]): Pick<DriftReport, 'counts' | 'drifts' | 'errors' | 'waitingLeases' | 'pendingJobs'> {
  if (!pilot) return { counts, drifts, errors };
  return {
    counts: addCounts(counts, pilot.counts),
    drifts: [...drifts, ...pilot.drifts],
    errors: [...errors, ...pilot.errors],
    waitingLeases: pilot.waitingLeases,
    pendingJobs: pilot.pendingJobs,
  };
}

/** Runs one reconciliation; returns its report. */
export async function reconcilerWorkflow(input: ReconcilerInput): Promise<DriftReport> {
  const info = workflowInfo();
  const startedAt = new Date().toISOString();
  const head = proxyActivities<ReconcileActivities>({ taskQueue: input.routing.headTaskQueue, startToCloseTimeout: '1m', retry: FEW });
  const nodeQueue = (node: string) => `${input.routing.nodeTaskQueuePrefix}${node}`;
  // A node whose worker is down never starts the activity: the schedule-to-close timeout says so. The
  // listing itself takes milliseconds (measured: under 20 ms, picked up within 0.3 s), yet on a loaded
  // machine with a busy dev server it missed a 20 s budget from scheduling to completion; such a stall
  // must not pass for a node that does not answer, so the budget is a minute.
  const lister = (node: string) =>
    proxyActivities<NodeActivities>({ taskQueue: nodeQueue(node), scheduleToCloseTimeout: `${input.listBudgetSeconds ?? LIST_BUDGET}s`, startToCloseTimeout: '30s', retry: { ...FEW, maximumAttempts: 3 } });
  const nodeOps = (node: string) => proxyActivities<NodeActivities>({ taskQueue: nodeQueue(node), startToCloseTimeout: '30s', scheduleToCloseTimeout: '2m', retry: FEW });
  const dhcpFor = (node: string, nic: NicGrant): { server: DhcpServerSpec; dhcp: DhcpActivities } => {
    const net = input.routing.networks?.[nic.network];
    const onHead = net?.on === 'head';
    const server: DhcpServerSpec = {
      network: nic.network,
      subnet: net?.subnet ?? '',
      interface: (onHead ? net?.interface : input.routing.bridges?.[node]?.[nic.network]) ?? '',
      server: net?.server ?? 'dnsmasq',
    };
    const taskQueue = onHead ? input.routing.headTaskQueue : nodeQueue(node);
    return { server, dhcp: proxyActivities<DhcpActivities>({ taskQueue, startToCloseTimeout: '30s', scheduleToCloseTimeout: '2m', retry: FEW }) };
  };

  const errors: string[] = [];
  const drifts: DriftEntry[] = [];

  // 1. This installation's workspaces, before the nodes.
  let workspaces: WorkspaceSighting[] = [];
  try {
    workspaces = await head.reconcileWorkspaces();
  } catch (e) {
    errors.push(`could not describe the workspaces: ${errorText(e)}`);
  }

  // 2. What each node's hypervisor runs.
  const nodes: Record<string, string[] | null> = {};
  const nodeErrors: Record<string, string> = {};
  await Promise.all(
    input.nodes.map(async (n) => {
      try {
        nodes[n] = await lister(n).listVms();
      } catch (e) {
        nodes[n] = null;
        nodeErrors[n] = errorText(e);
      }
    }),
  );

  // 3. Grants, holders, every open workspace workflow, first-seen times. Without them nothing can be
  // decided: the run reports why and acts on nothing (the next run tries again), instead of failing.
  let world: Awaited<ReturnType<ReconcileActivities['reconcileWorld']>>;
  try {
    world = await head.reconcileWorld();
  } catch (e) {
    errors.push(`could not read the grants and open workflows, nothing decided: ${errorText(e)}`);
    const pilot = patched(PILOT_PATCH) ? await reconcilePilot(head, input) : undefined;
    const report: DriftReport = {
      workflowId: info.workflowId,
      runId: info.runId,
      startedAt,
      finishedAt: new Date().toISOString(),
      waiting: [],
      pending: [],
      ...withPilot(pilot, zeroCounts(), drifts, errors),
    };
    await head.reconcileRecord(report);
    return report;
  }
  const now = new Date().toISOString();
  const plan = planReconcile({ prefix: input.prefix, now, graceSeconds: input.graceSeconds, nodes, workspaces, ...world });
  const counts = { ...plan.counts, 'orphan-grant-released': 0, 'unowned-vm-destroyed': 0, 'vm-vanished': 0 };

  for (const n of plan.unreachable) drifts.push({ kind: 'node-unreachable', node: n, detail: `node ${n} did not answer: ${nodeErrors[n] ?? 'no answer'}` });
  for (const u of plan.unowned.filter((x) => x.newlySeen)) {
    drifts.push({ kind: 'unowned-vm-reported', node: u.node, vm: u.vm, detail: `VM ${u.vm} on ${u.node} has no open workspace workflow; destroyed after ${u.destroyAfter}` });
  }

  // 4. Vanished VMs: the workspace decides (it ignores the notice if it is busy or no longer up).
  for (const v of plan.vanished) {
    try {
      await getExternalWorkflowHandle(v.workflowId).signal(vmVanishedSignal, { reason: v.reason });
      counts['vm-vanished'] += 1;
      drifts.push({ kind: 'vm-vanished', node: v.node, vm: v.workspaceId, workflowId: v.workflowId, detail: v.reason });
    } catch (e) {
      errors.push(`could not tell ${v.workflowId} that its VM vanished: ${errorText(e)}`);
    }
  }

  // 5. Unowned VMs past their grace period: destroyed with their interfaces and files.
  const firstSeen = { ...plan.firstSeen };
  const destroyed = new Set<string>();
  for (const u of plan.destroy) {
    const key = `${u.node}/${u.vm}`;
    try {
      const ops = nodeOps(u.node);
      await ops.destroyVm({ workspaceId: u.vm });
      await ops.removeWorkspaceFiles({ workspaceId: u.vm });
      destroyed.add(key);
      delete firstSeen[key];
      counts['unowned-vm-destroyed'] += 1;
      drifts.push({ kind: 'unowned-vm-destroyed', node: u.node, vm: u.vm, detail: `VM ${u.vm} on ${u.node}, unowned since ${u.firstSeen}, destroyed` });
    } catch (e) {
      errors.push(`could not destroy VM ${u.vm} on ${u.node}: ${errorText(e)}`);
    }
  }

  // 6. Grants no live workflow holds: the node's entries and files go first, then the grant.
  for (const r of plan.release) {
    const g = r.grant;
    if (r.afterDestroy && !destroyed.has(r.afterDestroy)) continue; // its VM still runs: next run
    try {
      for (const nic of grantNics(g)) {
        const { server, dhcp } = dhcpFor(g.node, nic);
        const a = nic.address;
        await dhcp.removeDhcpEntry({
          server,
          entry: { mac: a.mac, ip: a.ip, hostname: a.hostname, gateway: a.gateway ?? '', netmask: a.netmask ?? '', broadcast: a.broadcast ?? '', dns: a.dns ?? [] },
        });
      }
      if (r.workspaceId) await nodeOps(g.node).removeWorkspaceFiles({ workspaceId: r.workspaceId });
      if (await head.reconcileRelease({ holder: g.holder })) {
        counts['orphan-grant-released'] += 1;
        drifts.push({ kind: 'orphan-grant-released', node: g.node, holder: g.holder, detail: r.detail });
      }
    } catch (e) {
      errors.push(`could not release the grant of ${g.holder}: ${errorText(e)}`);
    }
  }

  await head.reconcileSaveFirstSeen(firstSeen);
  // 7. Pilot leases and jobs.
  const pilot = patched(PILOT_PATCH) ? await reconcilePilot(head, input) : undefined;
  const report: DriftReport = {
    workflowId: info.workflowId,
    runId: info.runId,
    startedAt,
    finishedAt: new Date().toISOString(),
    waiting: plan.waiting,
    pending: plan.unowned.filter((u) => !destroyed.has(`${u.node}/${u.vm}`)),
    ...withPilot(pilot, counts, drifts, errors),
  };
  await head.reconcileRecord(report);
  return report;
}
