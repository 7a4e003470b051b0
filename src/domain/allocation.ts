/**
 * Slot fitting for the allocator: pure functions over plain objects (they survive continue-as-new as
 * JSON, unlike a `Map`). The allocator workflow is the only caller that mutates a ledger.
 */

/** A node's capacity as the allocator sees it. */
export interface NodeCapacity {
  name: string;
  memoryMiB: number;
  cpus: number;
}

/** One address of a network pool; the MAC stays bound to its IP for good. */
export interface PoolAddress {
  ip: string;
  mac: string;
  hostname: string;
}

/** What the allocator grants a workspace: a slot on one node and one address. */
export interface Grant {
  /** Workflow id of the holder; a lease is released only by or for this holder. */
  holder: string;
  node: string;
  memoryMiB: number;
  vcpus: number;
  network: string;
  address: PoolAddress;
  grantedAt: string;
}

/** What a workspace asks the allocator for. */
export interface SlotRequest {
  holder: string;
  memoryMiB: number;
  vcpus: number;
}

/** The allocator's whole state, kept as plain data. */
export interface Ledger {
  network: string;
  nodes: NodeCapacity[];
  addresses: PoolAddress[];
  /** Live grants by holder workflow id. */
  grants: Record<string, Grant>;
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

/**
 * Greedy first fit: the first node with room for the memory (never overcommitted) and the CPUs, and
 * the first address no live grant holds. Pure; the caller records the grant.
 */
export function fitRequest(ledger: Ledger, request: SlotRequest, now: string): FitResult {
  const node = ledger.nodes.find((n) => {
    const used = usedOn(ledger, n.name);
    return used.memoryMiB + request.memoryMiB <= n.memoryMiB && used.vcpus + request.vcpus <= n.cpus;
  });
  if (!node) {
    return {
      ok: false,
      reason: `no node has ${request.memoryMiB} MiB and ${request.vcpus} CPU(s) free (nodes: ${ledger.nodes
        .map((n) => `${n.name} ${n.memoryMiB - usedOn(ledger, n.name).memoryMiB} MiB free`)
        .join(', ')})`,
    };
  }
  const held = new Set(Object.values(ledger.grants).map((g) => g.address.ip));
  const address = ledger.addresses.find((a) => !held.has(a.ip));
  if (!address) {
    return { ok: false, reason: `network ${ledger.network} has no free address (${ledger.addresses.length} in pool)` };
  }
  return {
    ok: true,
    grant: {
      holder: request.holder,
      node: node.name,
      memoryMiB: request.memoryMiB,
      vcpus: request.vcpus,
      network: ledger.network,
      address,
      grantedAt: now,
    },
  };
}
