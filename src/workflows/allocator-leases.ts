/**
 * The allocator's pilot leases (issue 7): node time a pilot job obtained from the batch system, lent to
 * the allocator so workspaces can be placed on that pilot node inside it. Kept apart from the allocator's
 * main file so the lease messages read in one place; the rules are pure functions in `src/domain`.
 */
import { ApplicationFailure, setHandler } from '@temporalio/workflow';
import { endLease, lease, type Ledger } from '../domain/allocation';
import { FailureType } from '../domain/errors';
import { endLeaseUpdate, leasesQuery, leaseUpdate } from '../domain/messages';

/** A lease request's first problem, naming the field; undefined when it is well formed. */
function leaseProblem(l: unknown): string | undefined {
  const r = l as Record<string, unknown> | undefined;
  if (!r || typeof r !== 'object') return 'lease: must be an object';
  if (typeof r.holder !== 'string' || !r.holder) return 'holder: must be the slot workflow id';
  if (typeof r.node !== 'string' || !r.node) return 'node: must be a node name';
  if (!Number.isInteger(r.memoryMiB) || (r.memoryMiB as number) < 1) return 'memoryMiB: must be a positive whole number';
  if (!Number.isInteger(r.vcpus) || (r.vcpus as number) < 1) return 'vcpus: must be a positive whole number';
  if (typeof r.until !== 'string' || Number.isNaN(Date.parse(r.until))) return 'until: must be an ISO date-time';
  return undefined;
}

/** Registers the lease Updates and Query on the allocator whose ledger is `ledger`. */
export function setLeaseHandlers(ledger: Ledger, now: () => string): void {
  setHandler(
    leaseUpdate,
    (req) => {
      const r = lease(ledger, req, now());
      if (r.ok) return r.lease;
      throw ApplicationFailure.create({ type: r.type, message: r.reason, nonRetryable: true });
    },
    {
      validator: (req) => {
        const problem = leaseProblem(req);
        if (problem) throw ApplicationFailure.create({ type: FailureType.InvalidSpec, message: problem, nonRetryable: true });
      },
    },
  );
  setHandler(endLeaseUpdate, (holder) => endLease(ledger, holder), {
    validator: (holder) => {
      if (typeof holder !== 'string' || !holder) throw ApplicationFailure.create({ type: FailureType.InvalidSpec, message: 'holder: must be the slot workflow id', nonRetryable: true });
    },
  });
  setHandler(leasesQuery, () => Object.values(ledger.leases ?? {}));
}
