/**
 * The allocator: one long-lived workflow per site, the only writer of slots and network addresses.
 * Every grant is decided inside one synchronous Update handler, so a request (or a whole gang) is
 * granted whole or refused and never partly held, and two gangs can never each hold part of what both
 * need; the ledger is plain data so it survives continue-as-new. An address comes back only through
 * `release`, which the workspace workflow sends after its VM is confirmed destroyed. The fitting,
 * quotas and accounting are pure functions in `src/domain`; this file only wires them to messages.
 */
import { allHandlersFinished, ApplicationFailure, condition, continueAsNew, setHandler, workflowInfo } from '@temporalio/workflow';
import { normalizeLedger, reserve, reserveGang, type LegacyLedger, type Ledger, type Refusal } from '../domain/allocation';
import { releaseGangGrants, releaseGrant, usageReports } from '../domain/accounting';
import { applyConfiguration, nodeUses, setDrained } from '../domain/allocator-site';
import { drainProblem, gangRequestProblem, releaseProblem, siteConfigurationProblem, slotRequestProblem } from '../domain/allocator-validation';
import { FailureType } from '../domain/errors';
import { setLeaseHandlers } from './allocator-leases';
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
} from '../domain/messages';

/** Throws a validator's problem as a non-retryable `InvalidSpec` (the Update is rejected, nothing recorded). */
function check(problem: string | undefined): void {
  if (problem) throw ApplicationFailure.create({ type: FailureType.InvalidSpec, message: problem, nonRetryable: true });
}

/** A refusal as the typed, non-retryable failure its caller sees. */
function refuse(r: Refusal): never {
  throw ApplicationFailure.create({ type: r.type, message: r.reason, nonRetryable: true });
}

/** Workflow time now, as an ISO string (deterministic: the workflow task's time). */
const now = () => new Date().toISOString();

/** Options of an allocator, carried over continue-as-new unchanged. */
export interface AllocatorOptions {
  /**
   * Continue as new once the history has this many events, besides when the server suggests it. Tests
   * set it low to exercise continue-as-new under load; without it the run is the same as before.
   */
  continueAsNewAfterEvents?: number;
}

/** Runs the allocator, starting from `initial` (either ledger shape: old histories carry the legacy one). */
export async function allocatorWorkflow(initial: Ledger | LegacyLedger, options?: AllocatorOptions): Promise<void> {
  const ledger = normalizeLedger(initial);
  setHandler(
    reserveUpdate,
    (req) => {
      const r = reserve(ledger, req, now());
      return r.ok ? r.grant : refuse(r);
    },
    { validator: (req) => check(slotRequestProblem(req)) },
  );
  setHandler(
    reserveGangUpdate,
    (req) => {
      const r = reserveGang(ledger, req, now());
      return r.ok ? r.grants : refuse(r);
    },
    { validator: (req) => check(gangRequestProblem(req)) },
  );
  setHandler(releaseUpdate, (holder, info?) => releaseGrant(ledger, holder, info, now()), {
    validator: (holder, info?) => check(releaseProblem(holder, info)),
  });
  setHandler(releaseGangUpdate, (gang) => releaseGangGrants(ledger, gang, now()), {
    validator: (gang) => check(typeof gang === 'string' && gang ? undefined : 'gang: must be a workflow id'),
  });
  setHandler(
    drainUpdate,
    ({ node, drained }) => {
      setDrained(ledger, node, drained);
      return nodeUses(ledger);
    },
    { validator: (req) => check(drainProblem(req, ledger.nodes.map((n) => n.name))) },
  );
  setHandler(configureUpdate, (site) => applyConfiguration(ledger, site), { validator: (site) => check(siteConfigurationProblem(site)) });
  setLeaseHandlers(ledger, now);
  setHandler(grantsQuery, () => Object.values(ledger.grants));
  setHandler(nodesQuery, () => nodeUses(ledger));
  setHandler(usageQuery, (owner?, asOf?) => {
    const at = asOf ? Date.parse(asOf) : NaN;
    return usageReports(ledger, owner || undefined, Number.isNaN(at) ? Date.now() : at);
  });

  const limit = options?.continueAsNewAfterEvents;
  const longEnough = () => workflowInfo().continueAsNewSuggested || (limit !== undefined && workflowInfo().historyLength >= limit);
  await condition(() => longEnough() && allHandlersFinished());
  await continueAsNew<typeof allocatorWorkflow>(ledger, ...(options ? [options] : []));
}
