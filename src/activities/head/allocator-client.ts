/**
 * Head activities that talk to the allocator workflow. Workflows cannot send Updates to each other, so
 * the workspace workflow reaches the allocator through these, with Update-with-Start so the allocator
 * comes into being on first use.
 */
import { ApplicationFailure } from '@temporalio/common';
import { WithStartWorkflowOperation, WorkflowUpdateFailedError, type Client } from '@temporalio/client';
import type { Grant, Ledger, SlotRequest } from '../../domain/allocation';
import { configureUpdate, releaseUpdate, reserveUpdate } from '../../domain/messages';
import { configuredPools } from '../../config/pools';
import type { VwsConfig } from '../../config/schema';
import { allocatorWorkflowId, headTaskQueue } from '../../config/names';

/** The allocator's initial ledger, from the configuration. */
export function initialLedger(config: VwsConfig): Ledger {
  return {
    nodes: config.nodes.map((n) => ({
      name: n.name,
      memoryMiB: n.memoryMiB,
      cpus: n.cpus,
      networks: config.networks.filter((net) => !net.nodes || net.nodes.includes(n.name)).map((net) => net.name),
    })),
    pools: configuredPools(config),
    grants: {},
  };
}

/** Creates the head activities. */
export function createHeadActivities(deps: { client: Client; config: VwsConfig }) {
  const workflowId = allocatorWorkflowId(deps.config);
  // Used only if the allocator does not exist yet; computed once, not on every call.
  const ledger = initialLedger(deps.config);
  // A start operation can be used once, so each call gets its own.
  const startOp = () =>
    new WithStartWorkflowOperation('allocatorWorkflow', {
      workflowId,
      taskQueue: headTaskQueue(deps.config),
      args: [ledger],
      workflowIdConflictPolicy: 'USE_EXISTING',
    });

  return {
    /** Asks the allocator for a slot and an address; fails with `NoCapacity` (non-retryable) if none fits. */
    async reserve(request: SlotRequest): Promise<Grant> {
      try {
        return await deps.client.workflow.executeUpdateWithStart(reserveUpdate, {
          args: [request],
          startWorkflowOperation: startOp(),
        });
      } catch (e) {
        // Re-raise the allocator's typed refusal as this activity's own failure, keeping its type.
        if (e instanceof WorkflowUpdateFailedError && e.cause instanceof ApplicationFailure) {
          throw ApplicationFailure.create({ type: e.cause.type ?? undefined, message: e.cause.message, nonRetryable: e.cause.nonRetryable ?? false });
        }
        throw e;
      }
    },

    /**
     * Gives the allocator this configuration's nodes and pools (the head calls it at start), so a
     * changed configuration takes effect for new grants; live grants are kept.
     */
    async configureAllocator(): Promise<void> {
      await deps.client.workflow.executeUpdateWithStart(configureUpdate, {
        args: [{ nodes: ledger.nodes, pools: ledger.pools }],
        startWorkflowOperation: startOp(),
      });
    },

    /** Releases the holder's grant. Idempotent. */
    async release(holder: string): Promise<boolean> {
      return deps.client.workflow.executeUpdateWithStart(releaseUpdate, {
        args: [holder],
        startWorkflowOperation: startOp(),
      });
    },
  };
}

/** The head activities' type, for `proxyActivities` in workflows. */
export type HeadActivities = ReturnType<typeof createHeadActivities>;
