/**
 * The allocator: one long-lived workflow per site, the only writer of slots and network addresses.
 * Every grant is decided inside one synchronous Update handler, so a request is granted whole (a slot
 * and an address for every NIC) or refused and never partly held; the ledger is plain data so it
 * survives continue-as-new. An address comes back only through `release`, which the workspace workflow
 * sends after its VM is confirmed destroyed.
 */
import { allHandlersFinished, ApplicationFailure, condition, continueAsNew, setHandler, workflowInfo } from '@temporalio/workflow';
import { fitRequest, normalizeLedger, type LegacyLedger, type Ledger, type SlotRequest } from '../domain/allocation';
import { FailureType } from '../domain/errors';
import { configureUpdate, grantsQuery, releaseUpdate, reserveUpdate } from '../domain/messages';

function validateRequest(req: SlotRequest): void {
  const bad = (field: string, why: string) =>
    ApplicationFailure.create({ type: FailureType.InvalidSpec, message: `${field}: ${why}`, nonRetryable: true });
  if (typeof req?.holder !== 'string' || !req.holder) throw bad('holder', 'must be a workflow id');
  if (!Number.isInteger(req.memoryMiB) || req.memoryMiB <= 0) throw bad('memoryMiB', 'must be a positive integer');
  if (!Number.isInteger(req.vcpus) || req.vcpus <= 0) throw bad('vcpus', 'must be a positive integer');
  if (req.networks !== undefined && (!Array.isArray(req.networks) || !req.networks.length || req.networks.some((n) => typeof n !== 'string'))) {
    throw bad('networks', 'must be a non-empty list of network names');
  }
}

/** Runs the allocator, starting from `initial` (either ledger shape: old histories carry the legacy one). */
export async function allocatorWorkflow(initial: Ledger | LegacyLedger): Promise<void> {
  const ledger = normalizeLedger(initial);
  setHandler(
    reserveUpdate,
    (req) => {
      const existing = ledger.grants[req.holder];
      if (existing) return existing; // a retried reserve gets the same grant
      const fit = fitRequest(ledger, req, new Date().toISOString());
      if (!fit.ok) throw ApplicationFailure.create({ type: FailureType.NoCapacity, message: fit.reason, nonRetryable: true });
      ledger.grants[req.holder] = fit.grant;
      return fit.grant;
    },
    { validator: validateRequest },
  );
  setHandler(releaseUpdate, (holder) => {
    const had = holder in ledger.grants;
    delete ledger.grants[holder];
    return had;
  });
  setHandler(configureUpdate, (site) => {
    ledger.nodes = site.nodes;
    ledger.pools = site.pools;
  });
  setHandler(grantsQuery, () => Object.values(ledger.grants));

  await condition(() => workflowInfo().continueAsNewSuggested && allHandlersFinished());
  await continueAsNew<typeof allocatorWorkflow>(ledger);
}
