/**
 * Head activities that talk to the allocator workflow. Workflows cannot send Updates to each other, so
 * the workspace, group and ensemble workflows reach the allocator through these.
 */
import type { Client } from '@temporalio/client';
import type { GangRequest, Grant, ReleaseInfo, SlotRequest } from '../../domain/allocation';
import type { VwsConfig } from '../../config/schema';
import { AllocatorClient } from '../../clients/allocator';

export { initialLedger } from '../../clients/allocator';

/** Creates the head activities. */
export function createHeadActivities(deps: { client: Client; config: VwsConfig }) {
  const allocator = new AllocatorClient(deps.client, deps.config);
  return {
    /** Asks the allocator for a slot and an address; fails with `NoCapacity` (non-retryable) if none fits. */
    reserve(request: SlotRequest): Promise<Grant> {
      return allocator.reserve(request);
    },

    /** Asks for every member of a gang at once; all or nothing. */
    reserveGang(request: GangRequest): Promise<Grant[]> {
      return allocator.reserveGang(request);
    },

    /**
     * Gives the allocator this configuration's nodes and pools (the head calls it at start), so a
     * changed configuration takes effect for new grants; live grants are kept.
     */
    configureAllocator(): Promise<void> {
      return allocator.configure();
    },

    /** Releases the holder's grant. Idempotent. */
    release(holder: string, info?: ReleaseInfo): Promise<boolean> {
      return allocator.release(holder, info);
    },

    /** Releases every grant of a gang. Idempotent. */
    releaseGang(gang: string): Promise<number> {
      return allocator.releaseGang(gang);
    },
  };
}

/** The head activities' type, for `proxyActivities` in workflows. */
export type HeadActivities = ReturnType<typeof createHeadActivities>;
