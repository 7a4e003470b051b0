/**
 * The allocator's accounting (seed 000's status service): a CREATED event when a grant is made, a
 * REMOVED event when it is released, and per-owner totals of closed grants, all kept in the ledger as
 * plain data so they survive continue-as-new. Pure functions; the allocator workflow is the only caller
 * that mutates a ledger.
 */
import type { AccountingEvent, Grant, Ledger, ReleaseInfo } from './allocation';
import type { OwnerUsageReport } from './messages';

/** Most accounting events the ledger keeps (the oldest go first): the ledger travels through continue-as-new. */
export const MAX_EVENTS = 1000;

/** Charge granularity of ledgers that do not name one, in seconds. */
export const DEFAULT_CHARGE_GRANULARITY_SECONDS = 60;

/** `seconds` rounded up to whole units of `granularity` seconds (what a closed grant is charged). */
export function chargeUp(seconds: number, granularity: number): number {
  if (seconds <= 0) return 0;
  return Math.ceil(seconds / granularity) * granularity;
}

function pushEvent(ledger: Ledger, event: AccountingEvent): void {
  const events = (ledger.events ??= []);
  events.push(event);
  if (events.length > MAX_EVENTS) events.splice(0, events.length - MAX_EVENTS);
}

/** Records a grant in the ledger, with a CREATED event when it has an owner to charge. */
export function recordGrant(ledger: Ledger, grant: Grant): void {
  ledger.grants[grant.holder] = grant;
  if (grant.owner === undefined) return;
  pushEvent(ledger, { kind: 'CREATED', holder: grant.holder, owner: grant.owner, at: grant.grantedAt, memoryMiB: grant.memoryMiB, reservedSeconds: grant.reservedSeconds ?? 0 });
}

/**
 * Seconds from `from` to `to` (ISO times or epoch ms), to the millisecond and never negative: not rounded
 * to whole seconds, so a grant held for a moment is still charged one unit.
 */
function secondsBetween(from: string, to: string | number): number {
  const end = typeof to === 'number' ? to : Date.parse(to);
  return Math.max(0, end - Date.parse(from)) / 1000;
}

/**
 * Releases the holder's grant (idempotent: answers whether there was one). An owned grant gets a
 * REMOVED event with its grant-to-release time and the running time `info` reports, and both are added,
 * rounded up to the charge granularity, to the owner's closed totals.
 */
export function releaseGrant(ledger: Ledger, holder: string, info: ReleaseInfo | undefined, now: string): boolean {
  const grant = ledger.grants[holder];
  if (!grant) return false;
  delete ledger.grants[holder];
  if (grant.owner === undefined) return true;
  const reservedSeconds = secondsBetween(grant.grantedAt, now);
  const usedSeconds = info?.usedSeconds;
  pushEvent(ledger, {
    kind: 'REMOVED',
    holder,
    owner: grant.owner,
    at: now,
    memoryMiB: grant.memoryMiB,
    reservedSeconds,
    ...(usedSeconds !== undefined ? { usedSeconds } : {}),
  });
  const granularity = ledger.chargeGranularitySeconds ?? DEFAULT_CHARGE_GRANULARITY_SECONDS;
  const totals = ((ledger.usage ??= {})[grant.owner] ??= { reservedSeconds: 0, usedSeconds: 0, released: 0 });
  totals.reservedSeconds += chargeUp(reservedSeconds, granularity);
  totals.usedSeconds += chargeUp(usedSeconds ?? 0, granularity);
  totals.released += 1;
  return true;
}

/** Releases every grant the gang reserved (idempotent); answers how many there were. */
export function releaseGangGrants(ledger: Ledger, gang: string, now: string): number {
  const holders = Object.values(ledger.grants)
    .filter((g) => g.gang === gang)
    .map((g) => g.holder);
  for (const h of holders) releaseGrant(ledger, h, undefined, now);
  return holders.length;
}

/**
 * Usage of `owner`, or of every owner with live grants or closed totals (sorted), at `nowMs`: reserved
 * is closed grants' charged time plus live grants' time so far; used is what released workspaces
 * reported; held is the running time live grants reserved.
 */
export function usageReports(ledger: Ledger, owner: string | undefined, nowMs: number): OwnerUsageReport[] {
  const live = Object.values(ledger.grants).filter((g) => g.owner !== undefined);
  const owners = owner !== undefined ? [owner] : [...new Set([...Object.keys(ledger.usage ?? {}), ...live.map((g) => g.owner!)])].sort();
  return owners.map((o) => {
    const mine = live.filter((g) => g.owner === o);
    const closed = ledger.usage?.[o] ?? { reservedSeconds: 0, usedSeconds: 0, released: 0 };
    const liveSeconds = mine.reduce((s, g) => s + secondsBetween(g.grantedAt, nowMs), 0);
    return {
      owner: o,
      liveGrants: mine.length,
      reservedMinutes: (closed.reservedSeconds + liveSeconds) / 60,
      usedMinutes: closed.usedSeconds / 60,
      heldMinutes: mine.reduce((s, g) => s + (g.reservedSeconds ?? 0), 0) / 60,
    };
  });
}
