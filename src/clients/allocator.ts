/**
 * The allocator as its callers see it: the head's activities (for workflows, which cannot send Updates
 * to each other) and the API's factory (which reserves before it starts a workspace, so a refusal is the
 * create's own answer). Temporal client calls only. Each call is a plain Update; only when the allocator
 * does not exist (or has ended) is it repeated as Update-with-Start, which brings the allocator into being,
 * so no caller depends on another having started it, and the initial ledger (the whole pools) is not sent
 * on every call (the allocator benchmark measured plain Updates at about four times the rate).
 */
import { ApplicationFailure, WorkflowNotFoundError, type UpdateDefinition } from '@temporalio/common';
import { WithStartWorkflowOperation, WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError, type Client } from '@temporalio/client';

import type { GangRequest, Grant, Ledger, NodeLease, ReleaseInfo, SlotRequest } from '../domain/allocation';
import {
  configureUpdate,
  drainUpdate,
  endLeaseUpdate,
  leasesQuery,
  leaseUpdate,
  grantsQuery,
  nodesQuery,
  releaseGangUpdate,
  releaseUpdate,
  reserveGangUpdate,
  reserveUpdate,
  usageQuery,
  type NodeUse,
  type OwnerUsageReport,
} from '../domain/messages';
import { configuredPools } from '../config/pools';
import type { VwsConfig } from '../config/schema';
import { allocatorWorkflowId, headTaskQueue } from '../config/names';
import { log } from '../log';
import { InFlightGate } from './in-flight-gate';

/**
 * How many Updates one process keeps in flight to one allocator; the rest wait their turn here. The
 * server admits at most 10 in-flight Updates per workflow (`history.maxInFlightUpdates`) and refuses the
 * next with RESOURCE_EXHAUSTED, which the client retries only after 1.7 s, 2.9 s, 4.9 s, 5 s…; worse,
 * every refusal drops the workflow's cached state on the server, which aborts all Updates then in flight
 * (retried as UNAVAILABLE) and loses the speculative workflow task the worker is completing ("Workflow
 * task not found"). Measured with 40 concurrent callers (test/workflow/allocator-continue-as-new.test.ts):
 * most calls took seconds, the slowest 54 s, and some failed after ten attempts. Two processes send
 * (the API and the head worker), so five each stays within the server's ten; the allocator answers
 * every Update admitted while a workflow task runs in the next one, so five keep it busy.
 */
export const ALLOCATOR_UPDATES_IN_FLIGHT = 5;

/**
 * How long one attempt of an Update may take before it is sent again (with a new Update id; every
 * allocator Update is idempotent), and how many attempts a call makes. Under load an admitted Update was
 * seen to wait for minutes with no workflow task to deliver it, while the client kept re-polling; a
 * fresh Update makes the server schedule a task, which delivers every waiting one. The bound also frees
 * this call's place in the gate, so one stuck Update cannot hold up the process's others.
 */
export const ALLOCATOR_ATTEMPT_MS = 10_000;
const ALLOCATOR_ATTEMPTS = 3;

/** One gate per allocator (server, namespace, workflow id) in this process, shared by every client of it. */
const gates = new Map<string, InFlightGate>();
function gateFor(config: VwsConfig, workflowId: string): InFlightGate {
  const key = `${config.temporal.address}|${config.temporal.namespace}|${workflowId}`;
  let gate = gates.get(key);
  if (!gate) gates.set(key, (gate = new InFlightGate(ALLOCATOR_UPDATES_IN_FLIGHT)));
  return gate;
}

/** The allocator's initial ledger, from the configuration. */
export function initialLedger(config: VwsConfig): Ledger {
  return {
    nodes: config.nodes.map((n) => ({
      name: n.name,
      memoryMiB: n.memoryMiB,
      cpus: n.cpus,
      networks: config.networks.filter((net) => !net.nodes || net.nodes.includes(n.name)).map((net) => net.name),
      ...(n.properties.length ? { properties: n.properties } : {}),
      ...(n.pilot ? { pilot: true } : {}),
    })),
    pools: configuredPools(config),
    grants: {},
    placement: config.allocator.placement,
    quotas: Object.fromEntries(config.clients.filter((c) => c.quota).map((c) => [c.identity, c.quota!])),
    chargeGranularitySeconds: config.accounting.chargeGranularitySeconds,
  };
}

/**
 * Re-raises an allocator refusal (a failed Update) as an `ApplicationFailure` of the same type, so
 * activities keep its type across the activity boundary and the API can map it to an HTTP status.
 */
function unwrapRefusal(e: unknown): never {
  if (e instanceof WorkflowUpdateFailedError && e.cause instanceof ApplicationFailure) {
    throw ApplicationFailure.create({ type: e.cause.type ?? undefined, message: e.cause.message, nonRetryable: e.cause.nonRetryable ?? false });
  }
  throw e;
}

/** A handle on one site's allocator workflow. */
export class AllocatorClient {
  /** The allocator's workflow id. */
  readonly workflowId: string;
  /** Used only if the allocator does not exist yet; computed once (pools can be large). */
  private readonly ledger: Ledger;
  /** Limits this process's Updates in flight to this allocator (see {@link ALLOCATOR_UPDATES_IN_FLIGHT}). */
  private readonly gate: InFlightGate;

  constructor(
    private readonly client: Client,
    private readonly config: VwsConfig,
  ) {
    this.workflowId = allocatorWorkflowId(config);
    this.ledger = initialLedger(config);
    this.gate = gateFor(config, this.workflowId);
  }

  /** A start operation can be used once, so each call gets its own. */
  private startOp() {
    return new WithStartWorkflowOperation('allocatorWorkflow', {
      workflowId: this.workflowId,
      taskQueue: headTaskQueue(this.config),
      args: [this.ledger],
      workflowIdConflictPolicy: 'USE_EXISTING',
    });
  }

  /**
   * Sends an Update to the allocator; if it does not exist (never started, or ended), sends it again as
   * Update-with-Start. A refusal comes back as a typed `ApplicationFailure` (see {@link unwrapRefusal}).
   */
  private update<Ret, Args extends [unknown, ...unknown[]]>(def: UpdateDefinition<Ret, Args>, args: Args): Promise<Ret> {
    return this.gate.run(() => this.send(def, args));
  }

  /** {@link update} once it is this call's turn: up to {@link ALLOCATOR_ATTEMPTS} attempts of {@link ALLOCATOR_ATTEMPT_MS}. */
  private async send<Ret, Args extends [unknown, ...unknown[]]>(def: UpdateDefinition<Ret, Args>, args: Args): Promise<Ret> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.client.withDeadline(Date.now() + ALLOCATOR_ATTEMPT_MS, () => this.attempt(def, args));
      } catch (e) {
        if (!(e instanceof WorkflowUpdateRPCTimeoutOrCancelledError) || attempt >= ALLOCATOR_ATTEMPTS) throw e;
        log.warn({ update: def.name, attempt, allocator: this.workflowId }, 'allocator Update unanswered; sending it again');
      }
    }
  }

  /** One attempt: a plain Update, or Update-with-Start if the allocator does not exist. */
  private async attempt<Ret, Args extends [unknown, ...unknown[]]>(def: UpdateDefinition<Ret, Args>, args: Args): Promise<Ret> {
    try {
      try {
        return await this.client.workflow.getHandle(this.workflowId).executeUpdate(def, { args });
      } catch (e) {
        if (!(e instanceof WorkflowNotFoundError)) throw e;
        return await this.client.workflow.executeUpdateWithStart(def, { args, startWorkflowOperation: this.startOp() });
      }
    } catch (e) {
      return unwrapRefusal(e);
    }
  }

  /** Grants a slot and an address per NIC, or fails with a typed refusal (`NoCapacity`, `QuotaExceeded`). Repeats by the same holder return its grant. */
  async reserve(request: SlotRequest): Promise<Grant> {
    return this.update(reserveUpdate, [request]);
  }

  /** Grants every member of a gang, or none (typed refusal). Repeats return the same grants. */
  async reserveGang(request: GangRequest): Promise<Grant[]> {
    return this.update(reserveGangUpdate, [request]);
  }

  /** Releases the holder's grant (idempotent); `info` reports the running time used, for accounting. */
  async release(holder: string, info?: ReleaseInfo): Promise<boolean> {
    return this.update(releaseUpdate, info ? [holder, info] : [holder]);
  }

  /** Releases every grant the gang reserved (idempotent); answers how many there were. */
  async releaseGang(gang: string): Promise<number> {
    return this.update(releaseGangUpdate, [gang]);
  }

  /** Drains or undrains a node; answers every node's capacity and use. */
  async drain(node: string, drained: boolean): Promise<NodeUse[]> {
    return this.update(drainUpdate, [{ node, drained }]);
  }

  /** Gives the allocator this configuration's nodes, pools, placement, quotas and charge granularity; live grants and drain flags are kept. */
  async configure(): Promise<void> {
    const { nodes, pools, placement, quotas, chargeGranularitySeconds } = this.ledger;
    await this.update(configureUpdate, [
      { nodes, pools, ...(placement ? { placement } : {}), ...(quotas ? { quotas } : {}), ...(chargeGranularitySeconds ? { chargeGranularitySeconds } : {}) },
    ]);
  }

  /** Records a pilot's lease of node time (idempotent per holder), or fails with a typed refusal (`NoCapacity`). */
  async lease(request: NodeLease): Promise<NodeLease> {
    return this.update(leaseUpdate, [request]);
  }

  /** Ends a pilot lease (idempotent); answers whether there was one. */
  async endLease(holder: string): Promise<boolean> {
    return this.update(endLeaseUpdate, [holder]);
  }

  /** Every live pilot lease. */
  leases(): Promise<NodeLease[]> {
    return this.client.workflow.getHandle(this.workflowId).query(leasesQuery);
  }

  /** Every live grant. */
  grants(): Promise<Grant[]> {
    return this.client.workflow.getHandle(this.workflowId).query(grantsQuery);
  }

  /** Each node's capacity, use and drain flag. */
  nodes(): Promise<NodeUse[]> {
    return this.client.workflow.getHandle(this.workflowId).query(nodesQuery);
  }

  /** Usage of one owner, or of every owner, as of now (live grants count up to this moment). */
  usage(owner?: string): Promise<OwnerUsageReport[]> {
    return this.client.workflow.getHandle(this.workflowId).query(usageQuery, owner ?? '', new Date().toISOString());
  }
}
