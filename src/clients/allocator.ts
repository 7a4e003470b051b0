/**
 * The allocator as its callers see it: the head's activities (for workflows, which cannot send Updates
 * to each other) and the API's factory (which reserves before it starts a workspace, so a refusal is the
 * create's own answer). Temporal client calls only. Each call is a plain Update; only when the allocator
 * does not exist (or has ended) is it repeated as Update-with-Start, which brings the allocator into being,
 * so no caller depends on another having started it, and the initial ledger (the whole pools) is not sent
 * on every call (the allocator benchmark measured plain Updates at about four times the rate).
 */
import { ApplicationFailure, WorkflowNotFoundError, type UpdateDefinition } from '@temporalio/common';
import { WithStartWorkflowOperation, WorkflowUpdateFailedError, type Client } from '@temporalio/client';

import type { GangRequest, Grant, Ledger, ReleaseInfo, SlotRequest } from '../domain/allocation';
import {
  configureUpdate,
  drainUpdate,
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

/** The allocator's initial ledger, from the configuration. */
export function initialLedger(config: VwsConfig): Ledger {
  return {
    nodes: config.nodes.map((n) => ({
      name: n.name,
      memoryMiB: n.memoryMiB,
      cpus: n.cpus,
      networks: config.networks.filter((net) => !net.nodes || net.nodes.includes(n.name)).map((net) => net.name),
      ...(n.properties.length ? { properties: n.properties } : {}),
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

  constructor(
    private readonly client: Client,
    private readonly config: VwsConfig,
  ) {
    this.workflowId = allocatorWorkflowId(config);
    this.ledger = initialLedger(config);
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
  private async update<Ret, Args extends [unknown, ...unknown[]]>(def: UpdateDefinition<Ret, Args>, args: Args): Promise<Ret> {
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
