/**
 * Slot fitting for the allocator: pure functions over plain objects (they survive continue-as-new as
 * JSON, unlike a `Map`). The allocator workflow is the only caller that mutates a ledger; accounting
 * (events, usage, charge granularity) is in `./accounting`.
 */
import { recordGrant } from './accounting';
import { FailureType } from './errors';

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
  /**
   * A pilot node (seed 003): the site's batch system owns it. vws may place VMs on it only inside a
   * lease of node time that a pilot job obtained ({@link NodeLease}); ordinary requests never land here.
   */
  pilot?: boolean;
}

/**
 * Node time a pilot job obtained from the batch system and lent to the allocator: memory and CPUs on
 * one pilot node, until the slot ends. Held by the pilot-slot workflow (its id is the lease's key),
 * which ends it only after the batch system confirms the job is gone.
 */
export interface NodeLease {
  /** Workflow id of the pilot slot that holds the lease. */
  holder: string;
  node: string;
  /** Memory the pilot reserved for VMs (the pilot's `reserved` message), MiB. */
  memoryMiB: number;
  vcpus: number;
  /** When the slot ends (ISO). */
  until: string;
  /** The batch system's job id, for admins. */
  jobId?: string;
  leasedAt?: string;
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
  /** The pilot lease (its holder) this grant lives in, on a pilot node. */
  lease?: string;
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
  /** Place the grant inside this pilot lease (its holder's workflow id), on the lease's node only. */
  lease?: string;
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
  /** The most recent accounting events, newest last (bounded to {@link MAX_EVENTS}: the ledger travels through continue-as-new). */
  events?: AccountingEvent[];
  /** Closed grants' reserved and used seconds are charged in whole units of this many seconds, rounded up (absent: 60). */
  chargeGranularitySeconds?: number;
  /** Live pilot leases by holder (the pilot-slot workflow id); absent in ledgers from before the pilot. */
  leases?: Record<string, NodeLease>;
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

/** Why the allocator refused: the failure type the workflow raises, and a sentence saying why. */
export interface Refusal {
  ok: false;
  type: typeof FailureType.NoCapacity | typeof FailureType.QuotaExceeded | typeof FailureType.InvalidSpec;
  reason: string;
}

/** Memory and CPUs used on `node` by live grants. */
export function usedOn(ledger: Ledger, node: string): { memoryMiB: number; vcpus: number } {
  return useByNode(ledger)[node] ?? { memoryMiB: 0, vcpus: 0 };
}

/** Memory, CPUs and grant count used on every node by live grants, in one pass over the grants. */
export function useByNode(ledger: Ledger): Record<string, { memoryMiB: number; vcpus: number; grants: number }> {
  const use: Record<string, { memoryMiB: number; vcpus: number; grants: number }> = {};
  for (const g of Object.values(ledger.grants)) {
    const u = (use[g.node] ??= { memoryMiB: 0, vcpus: 0, grants: 0 });
    u.memoryMiB += g.memoryMiB;
    u.vcpus += g.vcpus;
    u.grants += 1;
  }
  return use;
}

/** The networks a request's NICs want: as asked, or one NIC on the first pool (requests from before multi-NIC). */
export function requestedNetworks(ledger: Ledger, request: SlotRequest): string[] {
  return request.networks ?? [Object.keys(ledger.pools)[0]];
}

/** The nodes in the order placement tries them: as configured (greedy) or starting at the cursor (round-robin). */
function placementOrder(ledger: Ledger): NodeCapacity[] {
  if (ledger.placement !== 'round-robin' || !ledger.nodes.length) return ledger.nodes;
  const start = (ledger.cursor ?? 0) % ledger.nodes.length;
  return [...ledger.nodes.slice(start), ...ledger.nodes.slice(0, start)];
}

/** The cursor after a grant on `node` (round-robin moves past it; greedy keeps what it had). */
function cursorAfter(ledger: Ledger, node: string): number | undefined {
  if (ledger.placement !== 'round-robin') return ledger.cursor;
  const i = ledger.nodes.findIndex((n) => n.name === node);
  return i < 0 ? ledger.cursor : (i + 1) % ledger.nodes.length;
}

/** Every `network/ip` a live grant holds. */
function heldAddresses(ledger: Ledger): Set<string> {
  return new Set(Object.values(ledger.grants).flatMap((g) => grantNics(g).map((nic) => `${nic.network}/${nic.address.ip}`)));
}

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

/**
 * The node a request goes on: one that carries every requested network, has every requested property,
 * is not drained and has room for the memory (never overcommitted) and the CPUs, tried in placement
 * order. The refusal names what was missing and what each candidate has free.
 */
function pickNode(ledger: Ledger, request: SlotRequest, networks: string[]): { ok: true; node: NodeCapacity } | { ok: false; reason: string } {
  if (request.lease !== undefined) return pickLeasedNode(ledger, request, networks);
  // Pilot nodes belong to the batch system: only a lease opens them (pickLeasedNode).
  const carriers = ledger.nodes.filter((n) => !n.pilot && networks.every((net) => !n.networks || n.networks.includes(net)));
  if (!carriers.length) return { ok: false, reason: `no node carries all of the networks ${[...new Set(networks)].join(', ')}` };
  const wanted = request.nodeProperties ?? [];
  const suitable = carriers.filter((n) => wanted.every((p) => n.properties?.includes(p)));
  if (!suitable.length) {
    return {
      ok: false,
      reason: `no node has the properties ${wanted.join(', ')} (nodes: ${carriers.map((n) => `${n.name} [${(n.properties ?? []).join(', ')}]`).join(', ')})`,
    };
  }
  const open = suitable.filter((n) => !n.drained);
  if (!open.length) return { ok: false, reason: `every node that could take it is drained (${suitable.map((n) => n.name).join(', ')})` };
  const use = useByNode(ledger);
  const free = (n: NodeCapacity) => ({ memoryMiB: n.memoryMiB - (use[n.name]?.memoryMiB ?? 0), vcpus: n.cpus - (use[n.name]?.vcpus ?? 0) });
  const openNames = new Set(open.map((n) => n.name));
  const node = placementOrder(ledger).find((n) => {
    if (!openNames.has(n.name)) return false;
    const f = free(n);
    return request.memoryMiB <= f.memoryMiB && request.vcpus <= f.vcpus;
  });
  if (node) return { ok: true, node };
  const drained = suitable.filter((n) => n.drained).map((n) => n.name);
  return {
    ok: false,
    reason:
      `no node has ${request.memoryMiB} MiB and ${plural(request.vcpus, 'CPU')} free (free: ${open
        .map((n) => `${n.name} ${free(n).memoryMiB} MiB and ${plural(free(n).vcpus, 'CPU')}`)
        .join(', ')})` + (drained.length ? `; drained: ${drained.join(', ')}` : ''),
  };
}

/** Memory and CPUs that live grants use inside each lease, by lease holder. */
export function useByLease(ledger: Ledger): Record<string, { memoryMiB: number; vcpus: number; grants: number }> {
  const use: Record<string, { memoryMiB: number; vcpus: number; grants: number }> = {};
  for (const g of Object.values(ledger.grants)) {
    if (g.lease === undefined) continue;
    const u = (use[g.lease] ??= { memoryMiB: 0, vcpus: 0, grants: 0 });
    u.memoryMiB += g.memoryMiB;
    u.vcpus += g.vcpus;
    u.grants += 1;
  }
  return use;
}

/** The lease's node, if the request fits in what the lease has left (a lease is never overcommitted either). */
function pickLeasedNode(ledger: Ledger, request: SlotRequest, networks: string[]): { ok: true; node: NodeCapacity } | { ok: false; reason: string } {
  const lease = ledger.leases?.[request.lease!];
  if (!lease) return { ok: false, reason: `no live pilot lease ${request.lease} (its slot ended or never reserved)` };
  const node = ledger.nodes.find((n) => n.name === lease.node);
  if (!node) return { ok: false, reason: `pilot lease ${lease.holder} is on node ${lease.node}, which the site no longer has` };
  const missing = networks.filter((net) => node.networks && !node.networks.includes(net));
  if (missing.length) return { ok: false, reason: `pilot node ${node.name} does not carry the networks ${[...new Set(missing)].join(', ')}` };
  const used = useByLease(ledger)[lease.holder] ?? { memoryMiB: 0, vcpus: 0 };
  const freeMiB = lease.memoryMiB - used.memoryMiB;
  const freeCpus = lease.vcpus - used.vcpus;
  if (request.memoryMiB > freeMiB || request.vcpus > freeCpus) {
    return { ok: false, reason: `pilot lease ${lease.holder} on ${node.name} has ${freeMiB} MiB and ${plural(freeCpus, 'CPU')} free; the request needs ${request.memoryMiB} MiB and ${plural(request.vcpus, 'CPU')}` };
  }
  return { ok: true, node };
}

/** Result of {@link lease}. */
export type LeaseResult = { ok: true; lease: NodeLease } | Refusal;

/**
 * Records a pilot's lease of node time: on a configured pilot node, not drained, and never more than
 * the node has beside its other leases. A repeat by the same holder returns its lease unchanged.
 */
export function lease(ledger: Ledger, request: NodeLease, now: string): LeaseResult {
  const existing = ledger.leases?.[request.holder];
  if (existing) return { ok: true, lease: existing };
  const node = ledger.nodes.find((n) => n.name === request.node);
  const refuse = (reason: string): Refusal => ({ ok: false, type: FailureType.NoCapacity, reason: `pilot lease on ${request.node}: ${reason}` });
  if (!node) return refuse(`no such node (nodes: ${ledger.nodes.map((n) => n.name).join(', ')})`);
  if (!node.pilot) return refuse('the node is not a pilot node (nodes[].pilot in the configuration)');
  if (node.drained) return refuse('the node is drained');
  const leased = Object.values(ledger.leases ?? {})
    .filter((l) => l.node === node.name)
    .reduce((s, l) => ({ memoryMiB: s.memoryMiB + l.memoryMiB, vcpus: s.vcpus + l.vcpus }), { memoryMiB: 0, vcpus: 0 });
  if (request.memoryMiB > node.memoryMiB - leased.memoryMiB || request.vcpus > node.cpus - leased.vcpus) {
    return refuse(`asks ${request.memoryMiB} MiB and ${plural(request.vcpus, 'CPU')}, the node has ${node.memoryMiB - leased.memoryMiB} MiB and ${plural(node.cpus - leased.vcpus, 'CPU')} not leased`);
  }
  const recorded: NodeLease = { ...request, leasedAt: now };
  ledger.leases = { ...(ledger.leases ?? {}), [request.holder]: recorded };
  return { ok: true, lease: recorded };
}

/**
 * Ends a lease (idempotent: true if there was one). Grants still inside it stay until their holders
 * release them (their VMs must be confirmed gone first), but nothing new is placed in it.
 */
export function endLease(ledger: Ledger, holder: string): boolean {
  if (!ledger.leases?.[holder]) return false;
  const { [holder]: _gone, ...rest } = ledger.leases;
  ledger.leases = rest;
  return true;
}

/** For each NIC, the first address of its pool not in `held` (which it then joins). All or nothing. */
function pickAddresses(ledger: Ledger, networks: string[], held: Set<string>): { ok: true; nics: NicGrant[] } | { ok: false; reason: string } {
  const nics: NicGrant[] = [];
  for (const network of networks) {
    const pool = ledger.pools[network];
    const address = pool.find((a) => !held.has(`${network}/${a.ip}`));
    if (!address) return { ok: false, reason: `network ${network} has no free address (${pool.length} in pool, all held)` };
    held.add(`${network}/${address.ip}`);
    nics.push({ network, address });
  }
  return { ok: true, nics };
}

/** Networks a request names that have no pool, as a refusal reason. */
function unknownNetworks(ledger: Ledger, networks: string[]): string | undefined {
  const unknown = networks.filter((n) => !ledger.pools[n]);
  return unknown.length ? `no such network: ${unknown.join(', ')} (networks: ${Object.keys(ledger.pools).join(', ')})` : undefined;
}

/** The grant a request gets on `node` with `nics` (only the fields the request gave; the ledger stays lean JSON). */
function grantFor(request: SlotRequest, node: string, nics: NicGrant[], now: string, gang?: string): Grant {
  return {
    holder: request.holder,
    node,
    memoryMiB: request.memoryMiB,
    vcpus: request.vcpus,
    nics,
    grantedAt: now,
    ...(request.owner !== undefined ? { owner: request.owner } : {}),
    ...(request.reservedSeconds !== undefined ? { reservedSeconds: request.reservedSeconds } : {}),
    ...(gang !== undefined ? { gang } : {}),
    ...(request.lease !== undefined ? { lease: request.lease } : {}),
  };
}

/**
 * Fits one request: a node by the placement strategy (carrying its networks, with its properties, not
 * drained, with room: memory is never overcommitted) and, for each NIC, the first address of its pool
 * that no live grant (and no other NIC of this request) holds. All or nothing. Pure; the caller records
 * the grant (see {@link reserve}).
 */
export function fitRequest(ledger: Ledger, request: SlotRequest, now: string): FitResult {
  const networks = requestedNetworks(ledger, request);
  const unknown = unknownNetworks(ledger, networks);
  if (unknown) return { ok: false, reason: unknown };
  const placed = pickNode(ledger, request, networks);
  if (!placed.ok) return placed;
  const addresses = pickAddresses(ledger, networks, heldAddresses(ledger));
  if (!addresses.ok) return addresses;
  return { ok: true, grant: grantFor(request, placed.node.name, addresses.nics, now) };
}

/**
 * Why granting `requests` would take an owner over a quota, as a sentence naming the quota, its limit
 * and what the owner holds; undefined when every owner stays within its quotas. Requests without an
 * owner are not limited.
 */
export function quotaRefusal(ledger: Ledger, requests: SlotRequest[]): string | undefined {
  const owners = [...new Set(requests.map((r) => r.owner).filter((o): o is string => o !== undefined))];
  for (const owner of owners) {
    const quota = ledger.quotas?.[owner];
    if (!quota) continue;
    const live = Object.values(ledger.grants).filter((g) => g.owner === owner);
    const asks = requests.filter((r) => r.owner === owner);
    if (quota.maxWorkspaces !== undefined && live.length + asks.length > quota.maxWorkspaces) {
      return `${owner} may hold at most ${plural(quota.maxWorkspaces, 'workspace')} (quota maxWorkspaces) and holds ${live.length}; this request asks for ${asks.length} more`;
    }
    if (quota.maxReservedMinutes !== undefined) {
      const held = live.reduce((s, g) => s + (g.reservedSeconds ?? 0), 0);
      const asked = asks.reduce((s, r) => s + (r.reservedSeconds ?? 0), 0);
      if (held + asked > quota.maxReservedMinutes * 60) {
        return `${owner} may hold at most ${plural(quota.maxReservedMinutes, 'reserved minute')} (quota maxReservedMinutes) and holds ${minutes(held)}; this request asks for ${minutes(asked)} more`;
      }
    }
  }
  return undefined;
}

/** Seconds as minutes for a sentence: whole when whole, else to two decimals. */
function minutes(seconds: number): string {
  const m = seconds / 60;
  return `${Number.isInteger(m) ? m : m.toFixed(2)} minute${m === 1 ? '' : 's'}`;
}

/** Result of {@link fitGang}: every member's grant (in member order), or why none is granted. */
export type GangFit = { ok: true; grants: Grant[]; cursor?: number; repeated: boolean } | Refusal;

/**
 * Fits every member of a gang, or none: quotas are checked for the whole gang, then nodes are chosen
 * for the larger members first (so a big member is not left without a node that smaller ones took),
 * each on a scratch copy of the grants so a partial fit never touches the ledger, then addresses are
 * handed out in member order. A repeat whose holders all hold grants of this gang returns them; a gang
 * whose holders are partly held is refused as invalid. Pure; the caller records the grants.
 */
export function fitGang(ledger: Ledger, request: GangRequest, now: string): GangFit {
  const { gang, members } = request;
  const invalid = (reason: string): Refusal => ({ ok: false, type: FailureType.InvalidSpec, reason: `gang ${gang}: ${reason}` });
  const holders = members.map((m) => m.holder);
  const twice = holders.filter((h, i) => holders.indexOf(h) !== i);
  if (twice.length) return invalid(`holder ${twice[0]} appears more than once`);
  const held = members.filter((m) => ledger.grants[m.holder]);
  if (held.length === members.length) {
    const strangers = held.filter((m) => ledger.grants[m.holder].gang !== gang).map((m) => m.holder);
    if (strangers.length) return invalid(`holders ${strangers.join(', ')} already hold grants outside this gang`);
    return { ok: true, grants: members.map((m) => ledger.grants[m.holder]), cursor: ledger.cursor, repeated: true };
  }
  if (held.length) {
    return invalid(
      `holders ${held.map((m) => m.holder).join(', ')} already hold grants and ${members
        .filter((m) => !ledger.grants[m.holder])
        .map((m) => m.holder)
        .join(', ')} do not; a repeat must name the same, fully granted members`,
    );
  }
  const quota = quotaRefusal(ledger, members);
  if (quota) return { ok: false, type: FailureType.QuotaExceeded, reason: `gang ${gang}: ${quota}` };

  const noCapacity = (i: number, reason: string): Refusal => ({
    ok: false,
    type: FailureType.NoCapacity,
    reason: `gang ${gang}: member ${members[i].holder} (${i + 1} of ${members.length}, ${members[i].memoryMiB} MiB, ${plural(members[i].vcpus, 'CPU')}) does not fit: ${reason}; nothing is held`,
  });
  const networks = members.map((m) => requestedNetworks(ledger, m));
  for (let i = 0; i < members.length; i++) {
    const unknown = unknownNetworks(ledger, networks[i]);
    if (unknown) return noCapacity(i, unknown);
  }
  // Nodes, largest first, on a scratch ledger: placeholder grants count toward each node's use.
  const scratch: Ledger = { ...ledger, grants: { ...ledger.grants } };
  const order = members.map((_, i) => i).sort((a, b) => members[b].memoryMiB - members[a].memoryMiB || members[b].vcpus - members[a].vcpus || a - b);
  const nodes: string[] = [];
  for (const i of order) {
    const placed = pickNode(scratch, members[i], networks[i]);
    if (!placed.ok) return noCapacity(i, placed.reason);
    nodes[i] = placed.node.name;
    scratch.grants[members[i].holder] = grantFor(members[i], placed.node.name, [], now);
    scratch.cursor = cursorAfter(scratch, placed.node.name);
  }
  // Addresses in member order, so a gang's members get its addresses in the order they were named.
  const taken = heldAddresses(ledger);
  const grants: Grant[] = [];
  for (let i = 0; i < members.length; i++) {
    const addresses = pickAddresses(ledger, networks[i], taken);
    if (!addresses.ok) return noCapacity(i, addresses.reason);
    grants.push(grantFor(members[i], nodes[i], addresses.nics, now, gang));
  }
  return { ok: true, grants, cursor: scratch.cursor, repeated: false };
}

/** Result of {@link reserve}. */
export type ReserveResult = { ok: true; grant: Grant } | Refusal;

/**
 * Grants one request and records it in the ledger (with its accounting event), or refuses changing
 * nothing: `QuotaExceeded` over a quota, `NoCapacity` when nothing fits. A repeat by a holder that holds
 * a grant returns that grant.
 */
export function reserve(ledger: Ledger, request: SlotRequest, now: string): ReserveResult {
  const existing = ledger.grants[request.holder];
  if (existing) return { ok: true, grant: existing };
  const quota = quotaRefusal(ledger, [request]);
  if (quota) return { ok: false, type: FailureType.QuotaExceeded, reason: quota };
  const fit = fitRequest(ledger, request, now);
  if (!fit.ok) return { ok: false, type: FailureType.NoCapacity, reason: fit.reason };
  const cursor = cursorAfter(ledger, fit.grant.node);
  recordGrant(ledger, fit.grant);
  if (cursor !== undefined) ledger.cursor = cursor;
  return { ok: true, grant: fit.grant };
}

/** Result of {@link reserveGang}. */
export type ReserveGangResult = { ok: true; grants: Grant[] } | Refusal;

/** Grants every member of a gang and records them (see {@link fitGang}), or refuses changing nothing. */
export function reserveGang(ledger: Ledger, request: GangRequest, now: string): ReserveGangResult {
  const fit = fitGang(ledger, request, now);
  if (!fit.ok) return fit;
  if (!fit.repeated) {
    for (const g of fit.grants) recordGrant(ledger, g);
    if (fit.cursor !== undefined) ledger.cursor = fit.cursor;
  }
  return { ok: true, grants: fit.grants };
}
