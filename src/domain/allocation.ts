/**
 * Slot fitting for the allocator: pure functions over plain objects (they survive continue-as-new as
 * JSON, unlike a `Map`). The allocator workflow is the only caller that mutates a ledger.
 */

/** A node's capacity as the allocator sees it. */
export interface NodeCapacity {
  name: string;
  memoryMiB: number;
  cpus: number;
  /** Networks the node carries (has a bridge for); absent in ledgers from before networks had pools: all. */
  networks?: string[];
  /** Site-defined properties (node pools), e.g. `pool-a`, `bigmem`; a request may require some. */
  properties?: string[];
  /** Drained: no new grants on this node; live grants are untouched. Kept across `configure`. */
  drained?: boolean;
}

/** One address of a network pool with its DHCP options; the MAC stays bound to its IP for good. */
export interface PoolAddress {
  ip: string;
  mac: string;
  hostname: string;
  /** Absent in grants recorded before pools had options (replayed histories only). */
  gateway?: string;
  netmask?: string;
  broadcast?: string;
  dns?: string[];
}

/** One NIC of a grant: the network and the address it was given. */
export interface NicGrant {
  network: string;
  address: PoolAddress;
}

/** What the allocator grants a workspace: a slot on one node and one address per NIC. */
export interface Grant {
  /** Workflow id of the holder; a lease is released only by or for this holder. */
  holder: string;
  node: string;
  memoryMiB: number;
  vcpus: number;
  /** One per requested network, in request order. Absent in grants from before multi-NIC (see {@link grantNics}). */
  nics?: NicGrant[];
  /** The single NIC of grants recorded before multi-NIC; kept so their histories still replay. */
  network?: string;
  address?: PoolAddress;
  grantedAt: string;
  /** Identity of the client the grant is charged to (quotas, accounting); absent in old grants. */
  owner?: string;
  /** Running time reserved with the grant, in seconds (the quota of reserved minutes counts it). */
  reservedSeconds?: number;
  /** The group or ensemble workflow id that reserved this grant with others (see {@link GangRequest}). */
  gang?: string;
}

/** What a workspace asks the allocator for. */
export interface SlotRequest {
  holder: string;
  memoryMiB: number;
  vcpus: number;
  /** The network of each NIC, in order (the same network may appear twice). Absent: one NIC on the first pool. */
  networks?: string[];
  /** Identity of the client to charge (quotas, accounting). */
  owner?: string;
  /** Running time reserved, in seconds (counted against the owner's reserved-minutes quota). */
  reservedSeconds?: number;
  /** Properties the node must have (every one of them), e.g. a node pool. */
  nodeProperties?: string[];
}

/**
 * Several members granted at once (a group, or every member of an ensemble): all of them fit, or none
 * is held. Each member keeps its own holder (the member workspace's workflow id, which releases it);
 * every grant records `gang`, so the gang's workflow can release them all at once on backout.
 */
export interface GangRequest {
  /** Workflow id of the group or ensemble. */
  gang: string;
  members: SlotRequest[];
}

/** How the allocator picks among nodes that fit: pack the first (greedy) or rotate (round-robin). */
export type Placement = 'greedy' | 'round-robin';

/** A client's limits, enforced by the allocator at grant time (the single writer, so never raced). */
export interface ClientQuota {
  /** Most slots (workspaces) the client may hold at once. */
  maxWorkspaces?: number;
  /** Most running time the client may hold reserved at once, summed over its live grants, in minutes. */
  maxReservedMinutes?: number;
}

/** What `release` may report about the workspace that held the grant (accounting). */
export interface ReleaseInfo {
  /** Running time the workspace used, first start to last shutdown, in seconds. */
  usedSeconds?: number;
}

/** An accounting record (Nimbus style CREATED/REMOVED pairs), kept by the allocator. */
export interface AccountingEvent {
  kind: 'CREATED' | 'REMOVED';
  holder: string;
  owner: string;
  at: string;
  memoryMiB: number;
  /** CREATED: running time reserved. REMOVED: time from grant to release. */
  reservedSeconds: number;
  /** REMOVED: running time used, as the workspace reported it. */
  usedSeconds?: number;
}

/** The allocator's whole state, kept as plain data. */
export interface Ledger {
  nodes: NodeCapacity[];
  /** Each network's address pool. */
  pools: Record<string, PoolAddress[]>;
  /** Live grants by holder workflow id. */
  grants: Record<string, Grant>;
  /** Placement strategy (default greedy). */
  placement?: Placement;
  /** Round-robin: index of the node after the last one granted. */
  cursor?: number;
  /** Quotas by owner identity (from the configuration). */
  quotas?: Record<string, ClientQuota>;
  /** Closed accounting totals by owner (released grants), so usage survives continue-as-new. */
  usage?: Record<string, { reservedSeconds: number; usedSeconds: number; released: number }>;
  /** The most recent accounting events, newest last (bounded). */
  events?: AccountingEvent[];
}

/** A ledger as recorded before multi-network pools (one `network` and its `addresses`). */
export interface LegacyLedger {
  network: string;
  nodes: NodeCapacity[];
  addresses: PoolAddress[];
  grants: Record<string, Grant>;
}

/** Brings a ledger of either shape to the current one. Pure. */
export function normalizeLedger(l: Ledger | LegacyLedger): Ledger {
  if ('pools' in l) return l;
  return { nodes: l.nodes, pools: { [l.network]: l.addresses }, grants: l.grants };
}

/** A grant's NICs, for grants of either shape. */
export function grantNics(g: Grant): NicGrant[] {
  if (g.nics) return g.nics;
  return g.address ? [{ network: g.network ?? 'public', address: g.address }] : [];
}

/** Result of {@link fitRequest}: a grant, or the reason none fits. */
export type FitResult = { ok: true; grant: Grant } | { ok: false; reason: string };

/** Memory and CPUs used on `node` by live grants. */
export function usedOn(ledger: Ledger, node: string): { memoryMiB: number; vcpus: number } {
  let memoryMiB = 0;
  let vcpus = 0;
  for (const g of Object.values(ledger.grants)) {
    if (g.node === node) {
      memoryMiB += g.memoryMiB;
      vcpus += g.vcpus;
    }
  }
  return { memoryMiB, vcpus };
}

/** The networks a request's NICs want: as asked, or one NIC on the first pool (requests from before multi-NIC). */
export function requestedNetworks(ledger: Ledger, request: SlotRequest): string[] {
  return request.networks ?? [Object.keys(ledger.pools)[0]];
}

/**
 * Greedy first fit: the first node that carries every requested network and has room for the memory
 * (never overcommitted) and the CPUs; for each NIC, the first address of its pool that no live grant
 * (and no other NIC of this request) holds. All or nothing. Pure; the caller records the grant.
 */
export function fitRequest(ledger: Ledger, request: SlotRequest, now: string): FitResult {
  const networks = requestedNetworks(ledger, request);
  const unknown = networks.filter((n) => !ledger.pools[n]);
  if (unknown.length) return { ok: false, reason: `no such network: ${unknown.join(', ')} (networks: ${Object.keys(ledger.pools).join(', ')})` };
  const carriers = ledger.nodes.filter((n) => networks.every((net) => !n.networks || n.networks.includes(net)));
  if (!carriers.length) return { ok: false, reason: `no node carries all of the networks ${[...new Set(networks)].join(', ')}` };
  const node = carriers.find((n) => {
    const used = usedOn(ledger, n.name);
    return used.memoryMiB + request.memoryMiB <= n.memoryMiB && used.vcpus + request.vcpus <= n.cpus;
  });
  if (!node) {
    return {
      ok: false,
      reason: `no node has ${request.memoryMiB} MiB and ${request.vcpus} CPU(s) free (nodes: ${carriers
        .map((n) => `${n.name} ${n.memoryMiB - usedOn(ledger, n.name).memoryMiB} MiB free`)
        .join(', ')})`,
    };
  }
  const held = new Set(Object.values(ledger.grants).flatMap((g) => grantNics(g).map((nic) => `${nic.network}/${nic.address.ip}`)));
  const nics: NicGrant[] = [];
  for (const network of networks) {
    const pool = ledger.pools[network];
    const address = pool.find((a) => !held.has(`${network}/${a.ip}`));
    if (!address) return { ok: false, reason: `network ${network} has no free address (${pool.length} in pool, all held)` };
    held.add(`${network}/${address.ip}`);
    nics.push({ network, address });
  }
  return { ok: true, grant: { holder: request.holder, node: node.name, memoryMiB: request.memoryMiB, vcpus: request.vcpus, nics, grantedAt: now } };
}
