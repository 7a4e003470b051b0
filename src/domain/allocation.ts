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
}

/** What a workspace asks the allocator for. */
export interface SlotRequest {
  holder: string;
  memoryMiB: number;
  vcpus: number;
  /** The network of each NIC, in order (the same network may appear twice). Absent: one NIC on the first pool. */
  networks?: string[];
}

/** The allocator's whole state, kept as plain data. */
export interface Ledger {
  nodes: NodeCapacity[];
  /** Each network's address pool. */
  pools: Record<string, PoolAddress[]>;
  /** Live grants by holder workflow id. */
  grants: Record<string, Grant>;
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
