/**
 * The allocator's site: nodes, pools, placement, quotas and drain flags, as admins and the head's
 * configuration change them. Pure functions over the ledger; live grants are never touched here.
 */
import type { ClientQuota, Ledger, NodeCapacity, Placement, PoolAddress } from './allocation';
import { useByNode } from './allocation';
import type { NodeUse } from './messages';

/** What `configure` gives the allocator (the site configuration's part that the allocator keeps). */
export interface SiteConfiguration {
  nodes: NodeCapacity[];
  pools: Record<string, PoolAddress[]>;
  placement?: Placement;
  quotas?: Record<string, ClientQuota>;
  chargeGranularitySeconds?: number;
}

/**
 * Takes a configuration's nodes and pools, and its placement, quotas and charge granularity when given.
 * A node that stays keeps its drain flag (an admin's drain outlives a head restart); the round-robin
 * cursor is kept. Live grants stay as they are, even on a node or address the configuration dropped.
 */
export function applyConfiguration(ledger: Ledger, site: SiteConfiguration): void {
  const drained = new Set(ledger.nodes.filter((n) => n.drained).map((n) => n.name));
  ledger.nodes = site.nodes.map((n) => (drained.has(n.name) ? { ...n, drained: true } : n));
  ledger.pools = site.pools;
  if (site.placement !== undefined) ledger.placement = site.placement;
  if (site.quotas !== undefined) ledger.quotas = site.quotas;
  if (site.chargeGranularitySeconds !== undefined) ledger.chargeGranularitySeconds = site.chargeGranularitySeconds;
}

/** Drains (no new grants; live ones stay) or undrains a node the ledger has. */
export function setDrained(ledger: Ledger, node: string, drained: boolean): void {
  ledger.nodes = ledger.nodes.map((n) => {
    if (n.name !== node) return n;
    const { drained: _was, ...rest } = n;
    return drained ? { ...rest, drained: true } : rest;
  });
}

/** Each node's capacity, what live grants use on it, and its drain flag and properties. */
export function nodeUses(ledger: Ledger): NodeUse[] {
  const use = useByNode(ledger);
  return ledger.nodes.map((n) => ({
    name: n.name,
    memoryMiB: n.memoryMiB,
    cpus: n.cpus,
    usedMemoryMiB: use[n.name]?.memoryMiB ?? 0,
    usedVcpus: use[n.name]?.vcpus ?? 0,
    grants: use[n.name]?.grants ?? 0,
    drained: n.drained === true,
    properties: n.properties ?? [],
    ...(n.pilot ? { pilot: true, leasedMemoryMiB: Object.values(ledger.leases ?? {}).filter((l) => l.node === n.name).reduce((s, l) => s + l.memoryMiB, 0) } : {}),
  }));
}
