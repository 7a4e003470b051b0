import { fitRequest, grantNics, normalizeLedger, reserve, reserveGang, type Grant, type Ledger, type Placement, type SlotRequest } from '../../src/domain/allocation';
import { chargeUp, MAX_EVENTS, releaseGangGrants, releaseGrant, usageReports } from '../../src/domain/accounting';
import { applyConfiguration, nodeUses, setDrained } from '../../src/domain/allocator-site';
import { drainProblem, gangRequestProblem, releaseProblem, siteConfigurationProblem, slotRequestProblem } from '../../src/domain/allocator-validation';
import { broadcastOf, inSubnet, macForIp, netmaskOf } from '../../src/domain/network';
import { poolAddresses } from '../../src/config/pools';

const pool = (subnet: string, gateway: string, first: string, last: string) =>
  poolAddresses({ subnet, gateway, dns: [], ranges: [{ first, last, hostnamePrefix: 'ws-' }], entries: [] }).map(({ origin: _o, ...a }) => a);

function ledger(): Ledger {
  return {
    nodes: [
      { name: 'vmm1', memoryMiB: 256, cpus: 2, networks: ['public', 'private'] },
      { name: 'vmm2', memoryMiB: 512, cpus: 4, networks: ['public'] },
    ],
    pools: {
      public: pool('10.213.0.0/24', '10.213.0.1', '10.213.0.100', '10.213.0.102'),
      private: pool('10.214.0.0/24', '10.214.0.1', '10.214.0.100', '10.214.0.101'),
    },
    grants: {},
  };
}

function grant(l: Ledger, holder: string, memoryMiB: number, vcpus = 1, networks?: string[]) {
  const r = fitRequest(l, { holder, memoryMiB, vcpus, ...(networks ? { networks } : {}) }, '2026-01-01T00:00:00Z');
  if (r.ok) l.grants[holder] = r.grant;
  return r;
}

const ips = (r: ReturnType<typeof grant>) => (r.ok ? grantNics(r.grant).map((n) => `${n.network}/${n.address.ip}`) : r.reason);

describe('slot fitting', () => {
  it('fills the first node that fits, and never overcommits memory', () => {
    const l = ledger();
    expect(grant(l, 'a', 200)).toMatchObject({ ok: true, grant: { node: 'vmm1' } });
    expect(grant(l, 'b', 100)).toMatchObject({ ok: true, grant: { node: 'vmm2' } });
    expect(grant(l, 'c', 56)).toMatchObject({ ok: true, grant: { node: 'vmm1' } });
  });

  it('refuses with a reason when no node has room, holding nothing', () => {
    const l = ledger();
    const r = grant(l, 'big', 1024);
    expect(r).toEqual({ ok: false, reason: expect.stringContaining('no node has 1024 MiB') });
    expect(l.grants).toEqual({});
  });

  it('refuses when a pool is out of addresses, naming the network', () => {
    const l = ledger();
    for (const h of ['a', 'b', 'c']) expect(grant(l, h, 64, 1, ['public']).ok).toBe(true);
    expect(grant(l, 'd', 64, 1, ['public'])).toEqual({ ok: false, reason: 'network public has no free address (3 in pool, all held)' });
  });

  it('hands an address out again only after its grant is gone', () => {
    const l = ledger();
    grant(l, 'a', 64, 1, ['public']);
    delete l.grants.a;
    expect(ips(grant(l, 'b', 64, 1, ['public']))).toEqual(['public/10.213.0.100']);
  });

  it('counts CPUs as well as memory', () => {
    const l = ledger();
    expect(grant(l, 'a', 64, 2).ok).toBe(true);
    expect(grant(l, 'b', 64, 2)).toMatchObject({ ok: true, grant: { node: 'vmm2' } });
  });

  it('gives each NIC an address from its own pool, two NICs on one network two addresses', () => {
    const l = ledger();
    expect(ips(grant(l, 'a', 64, 1, ['public', 'private', 'public']))).toEqual(['public/10.213.0.100', 'private/10.214.0.100', 'public/10.213.0.101']);
    expect(ips(grant(l, 'b', 64, 1, ['private']))).toEqual(['private/10.214.0.101']);
  });

  it('places a VM only on a node that carries all its networks', () => {
    const l = ledger();
    l.nodes[0].memoryMiB = 64;
    grant(l, 'fill', 64, 1, ['public']);
    // vmm1 is full and vmm2 has no private bridge: refused, nothing held.
    expect(grant(l, 'p', 64, 1, ['private'])).toEqual({ ok: false, reason: expect.stringContaining('no node has 64 MiB') });
    expect(grant(l, 'q', 64, 1, ['nowhere'])).toEqual({ ok: false, reason: 'no such network: nowhere (networks: public, private)' });
    expect(Object.keys(l.grants)).toEqual(['fill']);
  });

  it('grants all NICs or none: a short second pool holds nothing of the first', () => {
    const l = ledger();
    grant(l, 'a', 64, 1, ['private', 'private']);
    expect(grant(l, 'b', 64, 1, ['public', 'private'])).toEqual({ ok: false, reason: expect.stringContaining('network private has no free address') });
    expect(ips(grant(l, 'c', 64, 1, ['public']))).toEqual(['public/10.213.0.100']);
  });

  it('reads ledgers and grants recorded before multi-network pools', () => {
    const legacy = { network: 'public', nodes: [{ name: 'vmm1', memoryMiB: 256, cpus: 2 }], addresses: pool('10.213.0.0/24', '10.213.0.1', '10.213.0.100', '10.213.0.100'), grants: {} };
    const l = normalizeLedger(legacy);
    expect(Object.keys(l.pools)).toEqual(['public']);
    expect(ips(grant(l, 'old', 64))).toEqual(['public/10.213.0.100']);
    expect(grantNics({ holder: 'x', node: 'vmm1', memoryMiB: 1, vcpus: 1, network: 'public', address: { ip: '1.2.3.4', mac: 'm', hostname: 'h' }, grantedAt: '' })).toEqual([
      { network: 'public', address: { ip: '1.2.3.4', mac: 'm', hostname: 'h' } },
    ]);
  });
});

describe('address helpers', () => {
  it('binds a MAC to each IP for good, and expands ranges across octets', () => {
    expect(macForIp('10.213.0.100')).toBe('52:54:0a:d5:00:64');
    expect(pool('10.213.0.0/23', '10.213.0.1', '10.213.0.254', '10.213.1.1').map((a) => a.ip)).toEqual(['10.213.0.254', '10.213.0.255', '10.213.1.0', '10.213.1.1']);
  });

  it('knows subnets, netmasks and broadcasts', () => {
    expect(inSubnet('10.213.0.199', '10.213.0.0/24')).toBe(true);
    expect(inSubnet('10.213.1.1', '10.213.0.0/24')).toBe(false);
    expect(() => inSubnet('10.213.0.300', '10.213.0.0/24')).toThrow(/not an IPv4 address/);
    expect(netmaskOf('10.0.0.0/20')).toBe('255.255.240.0');
    expect(broadcastOf('10.213.0.0/24')).toBe('10.213.0.255');
  });

  it('gives each pool address its options: network defaults, or the entry own', () => {
    const [a, b] = poolAddresses({
      subnet: '10.214.0.0/24',
      gateway: '10.214.0.1',
      dns: ['10.214.0.2'],
      ranges: [{ first: '10.214.0.10', last: '10.214.0.10', hostnamePrefix: 'p-' }],
      entries: [{ hostname: 'db', ip: '10.214.0.20', mac: '02:00:00:00:00:14', gateway: '10.214.0.254' }],
    });
    expect(a).toMatchObject({ ip: '10.214.0.10', hostname: 'p-10-214-0-10', mac: '52:54:0a:d6:00:0a', gateway: '10.214.0.1', netmask: '255.255.255.0', broadcast: '10.214.0.255', dns: ['10.214.0.2'] });
    expect(b).toMatchObject({ ip: '10.214.0.20', hostname: 'db', mac: '02:00:00:00:00:14', gateway: '10.214.0.254' });
  });
});

const T0 = '2026-01-01T00:00:00.000Z';
const at = (seconds: number) => new Date(Date.parse(T0) + seconds * 1000).toISOString();
const snapshot = (l: Ledger) => JSON.parse(JSON.stringify(l)) as Ledger;

/** Three public-only nodes and a ten-address pool, for gangs, quotas and placement. */
function site(over: Partial<Ledger> = {}): Ledger {
  return {
    nodes: [
      { name: 'n1', memoryMiB: 300, cpus: 4, networks: ['public'], properties: ['pool-a'] },
      { name: 'n2', memoryMiB: 500, cpus: 4, networks: ['public'], properties: ['pool-a', 'bigmem'] },
      { name: 'n3', memoryMiB: 300, cpus: 4, networks: ['public'] },
    ],
    pools: { public: pool('10.213.0.0/24', '10.213.0.1', '10.213.0.100', '10.213.0.109') },
    grants: {},
    ...over,
  };
}
const member = (holder: string, memoryMiB: number, extra: Partial<SlotRequest> = {}): SlotRequest => ({ holder, memoryMiB, vcpus: 1, ...extra });

describe('gangs', () => {
  it('grants every member or none: a gang one member too big holds nothing', () => {
    const l = site();
    const before = snapshot(l);
    const r = reserveGang(l, { gang: 'g1', members: [member('a', 300), member('b', 300), member('c', 300), member('d', 300)] }, T0);
    expect(r).toEqual({ ok: false, type: 'NoCapacity', reason: expect.stringMatching(/^gang g1: member .* does not fit: no node has 300 MiB and 1 CPU free .*; nothing is held$/) });
    expect(l).toEqual(before);
  });

  it('places larger members first so the gang packs, and answers in member order with addresses in member order', () => {
    const l = site({ nodes: site().nodes.slice(0, 2) }); // 300 + 500 MiB
    // In member order, greedy would put 200 on n1 and then find no room for the second 300.
    const r = reserveGang(l, { gang: 'g', members: [member('small', 200), member('mid1', 300), member('mid2', 300)] }, T0);
    expect(r.ok).toBe(true);
    const grants = r.ok ? r.grants : [];
    expect(grants.map((g) => [g.holder, g.node, g.gang, grantNics(g)[0].address.ip])).toEqual([
      ['small', 'n2', 'g', '10.213.0.100'],
      ['mid1', 'n1', 'g', '10.213.0.101'],
      ['mid2', 'n2', 'g', '10.213.0.102'],
    ]);
    for (const n of nodeUses(l)) expect(n.usedMemoryMiB).toBeLessThanOrEqual(n.memoryMiB);
  });

  it('answers a repeat with the same grants, and refuses a gang whose holders are partly held', () => {
    const l = site();
    const req = { gang: 'g', members: [member('a', 100), member('b', 100)] };
    const first = reserveGang(l, req, T0);
    const again = reserveGang(l, req, at(5));
    expect(again).toEqual(first);
    expect(l.events ?? []).toHaveLength(0); // no owner: nothing to charge, and the repeat added nothing
    expect(reserveGang(l, { gang: 'g', members: [member('a', 100), member('c', 100)] }, T0)).toEqual({
      ok: false,
      type: 'InvalidSpec',
      reason: expect.stringContaining('holders a already hold grants and c do not'),
    });
    reserve(l, member('solo', 50), T0);
    expect(reserveGang(l, { gang: 'other', members: [member('solo', 50)] }, T0)).toMatchObject({ ok: false, type: 'InvalidSpec', reason: expect.stringContaining('outside this gang') });
    expect(Object.keys(l.grants).sort()).toEqual(['a', 'b', 'solo']);
  });

  it('releases a whole gang and nothing else', () => {
    const l = site();
    reserveGang(l, { gang: 'g', members: [member('a', 100), member('b', 100)] }, T0);
    reserve(l, member('c', 100), T0);
    expect(releaseGangGrants(l, 'g', at(60))).toBe(2);
    expect(releaseGangGrants(l, 'g', at(60))).toBe(0);
    expect(Object.keys(l.grants)).toEqual(['c']);
  });
});

describe('quotas', () => {
  const quotas = { alice: { maxWorkspaces: 2 }, bob: { maxReservedMinutes: 10 } };

  it('refuses a workspace over maxWorkspaces, naming the quota, the limit and what is held', () => {
    const l = site({ quotas });
    expect(reserve(l, member('a1', 10, { owner: 'alice' }), T0).ok).toBe(true);
    expect(reserve(l, member('a2', 10, { owner: 'alice' }), T0).ok).toBe(true);
    const before = snapshot(l);
    expect(reserve(l, member('a3', 10, { owner: 'alice' }), T0)).toEqual({
      ok: false,
      type: 'QuotaExceeded',
      reason: 'alice may hold at most 2 workspaces (quota maxWorkspaces) and holds 2; this request asks for 1 more',
    });
    expect(l).toEqual(before);
    // Another client, and the same client after a release, are not held back.
    expect(reserve(l, member('c1', 10, { owner: 'carol' }), T0).ok).toBe(true);
    releaseGrant(l, 'a1', undefined, at(1));
    expect(reserve(l, member('a3', 10, { owner: 'alice' }), T0).ok).toBe(true);
  });

  it('counts a whole gang against the quota, and refuses it whole', () => {
    const l = site({ quotas });
    reserve(l, member('a1', 10, { owner: 'alice' }), T0);
    const before = snapshot(l);
    expect(reserveGang(l, { gang: 'g', members: [member('a2', 10, { owner: 'alice' }), member('a3', 10, { owner: 'alice' })] }, T0)).toEqual({
      ok: false,
      type: 'QuotaExceeded',
      reason: 'gang g: alice may hold at most 2 workspaces (quota maxWorkspaces) and holds 1; this request asks for 2 more',
    });
    expect(l).toEqual(before);
  });

  it('sums the reserved running time of live grants against maxReservedMinutes', () => {
    const l = site({ quotas });
    expect(reserve(l, member('b1', 10, { owner: 'bob', reservedSeconds: 300 }), T0).ok).toBe(true);
    expect(reserve(l, member('b2', 10, { owner: 'bob', reservedSeconds: 360 }), T0)).toEqual({
      ok: false,
      type: 'QuotaExceeded',
      reason: 'bob may hold at most 10 reserved minutes (quota maxReservedMinutes) and holds 5 minutes; this request asks for 6 minutes more',
    });
    expect(reserve(l, member('b2', 10, { owner: 'bob', reservedSeconds: 300 }), T0).ok).toBe(true);
  });
});

describe('placement, properties and drain', () => {
  it('rotates over the nodes round-robin with a plain-number cursor, skipping nodes without room', () => {
    const l = site({ placement: 'round-robin' });
    const nodes = ['a', 'b', 'c', 'd'].map((h) => (reserve(l, member(h, 100), T0) as { grant: Grant }).grant.node);
    expect(nodes).toEqual(['n1', 'n2', 'n3', 'n1']);
    expect(l.cursor).toBe(1);
    expect(JSON.parse(JSON.stringify(l))).toEqual(l);
    // n2 is next; a 250 MiB request fits only n2 (n1 and n3 have 100 and 200 left).
    expect((reserve(l, member('e', 250), T0) as { grant: Grant }).grant.node).toBe('n2');
    expect((reserve(l, member('f', 100), T0) as { grant: Grant }).grant.node).toBe('n3');
  });

  it('fills the first node that fits with greedy placement', () => {
    const l = site();
    expect(['a', 'b', 'c'].map((h) => (reserve(l, member(h, 100), T0) as { grant: Grant }).grant.node)).toEqual(['n1', 'n1', 'n1']);
  });

  it('places a request only on nodes with every property it asks for', () => {
    const l = site();
    expect((reserve(l, member('big', 100, { nodeProperties: ['bigmem'] }), T0) as { grant: Grant }).grant.node).toBe('n2');
    expect((reserve(l, member('pa', 100, { nodeProperties: ['pool-a'] }), T0) as { grant: Grant }).grant.node).toBe('n1');
    expect(reserve(l, member('x', 100, { nodeProperties: ['pool-a', 'gpu'] }), T0)).toEqual({
      ok: false,
      type: 'NoCapacity',
      reason: 'no node has the properties pool-a, gpu (nodes: n1 [pool-a], n2 [pool-a, bigmem], n3 [])',
    });
  });

  it('gives a drained node no new grants, keeps its live ones, and says so when nothing else fits', () => {
    const l = site();
    reserve(l, member('live', 100), T0);
    setDrained(l, 'n1', true);
    expect((reserve(l, member('next', 100), T0) as { grant: Grant }).grant.node).toBe('n2');
    expect(l.grants.live.node).toBe('n1');
    expect(reserve(l, member('huge', 450, { nodeProperties: ['pool-a'] }), T0)).toMatchObject({
      ok: false,
      reason: 'no node has 450 MiB and 1 CPU free (free: n2 400 MiB and 3 CPUs); drained: n1',
    });
    setDrained(l, 'n2', true);
    expect(reserve(l, member('pa', 10, { nodeProperties: ['pool-a'] }), T0)).toMatchObject({ ok: false, reason: 'every node that could take it is drained (n1, n2)' });
    expect(nodeUses(l).map((n) => [n.name, n.drained, n.usedMemoryMiB, n.grants])).toEqual([
      ['n1', true, 100, 1],
      ['n2', true, 100, 1],
      ['n3', false, 0, 0],
    ]);
    setDrained(l, 'n1', false);
    expect(l.nodes[0]).not.toHaveProperty('drained');
  });

  it('keeps drain flags of nodes that stay and the cursor across configure, and takes placement and quotas', () => {
    const l = site({ placement: 'round-robin', cursor: 2 });
    setDrained(l, 'n2', true);
    setDrained(l, 'n3', true);
    applyConfiguration(l, { nodes: [{ name: 'n1', memoryMiB: 300, cpus: 4 }, { name: 'n2', memoryMiB: 900, cpus: 8 }], pools: l.pools, quotas: { alice: { maxWorkspaces: 1 } }, chargeGranularitySeconds: 1 });
    expect(l.nodes).toEqual([{ name: 'n1', memoryMiB: 300, cpus: 4 }, { name: 'n2', memoryMiB: 900, cpus: 8, drained: true }]);
    expect(l.cursor).toBe(2);
    expect(l.placement).toBe('round-robin');
    expect(l.quotas).toEqual({ alice: { maxWorkspaces: 1 } });
    expect(l.chargeGranularitySeconds).toBe(1);
    applyConfiguration(l, { nodes: l.nodes, pools: l.pools, placement: 'greedy' });
    expect(l.placement).toBe('greedy');
    expect(l.quotas).toEqual({ alice: { maxWorkspaces: 1 } });
  });
});

describe('accounting', () => {
  it('records CREATED and REMOVED events and charges closed grants in whole units, rounded up', () => {
    const l = site();
    reserve(l, member('a', 64, { owner: 'alice', reservedSeconds: 3600 }), T0);
    expect(releaseGrant(l, 'a', { usedSeconds: 61 }, at(90))).toBe(true);
    expect(releaseGrant(l, 'a', { usedSeconds: 61 }, at(95))).toBe(false);
    expect(l.events).toEqual([
      { kind: 'CREATED', holder: 'a', owner: 'alice', at: T0, memoryMiB: 64, reservedSeconds: 3600 },
      { kind: 'REMOVED', holder: 'a', owner: 'alice', at: at(90), memoryMiB: 64, reservedSeconds: 90, usedSeconds: 61 },
    ]);
    // 90 s and 61 s in units of 60 s: two minutes each.
    expect(l.usage).toEqual({ alice: { reservedSeconds: 120, usedSeconds: 120, released: 1 } });
    l.chargeGranularitySeconds = 1;
    reserve(l, member('b', 64, { owner: 'alice', reservedSeconds: 600 }), at(100));
    releaseGrant(l, 'b', { usedSeconds: 30 }, at(130));
    expect(l.usage!.alice).toEqual({ reservedSeconds: 150, usedSeconds: 150, released: 2 });
    expect(chargeUp(0, 60)).toBe(0);
    expect(chargeUp(60, 60)).toBe(60);
    expect(chargeUp(60.5, 60)).toBe(120);
    // A grant held for a moment is still charged one whole unit.
    l.chargeGranularitySeconds = 60;
    reserve(l, member('c', 64, { owner: 'alice' }), at(200));
    releaseGrant(l, 'c', undefined, new Date(Date.parse(at(200)) + 15).toISOString());
    expect(l.events!.at(-1)).toMatchObject({ kind: 'REMOVED', holder: 'c', reservedSeconds: 0.015 });
    expect(l.usage!.alice).toEqual({ reservedSeconds: 210, usedSeconds: 150, released: 3 });
  });

  it('reports reserved as closed plus live time so far, used as reported, held as live reservations', () => {
    const l = site();
    reserve(l, member('a', 64, { owner: 'alice', reservedSeconds: 600 }), T0);
    releaseGrant(l, 'a', { usedSeconds: 100 }, at(100)); // charged 120 s reserved, 120 s used
    reserve(l, member('b', 64, { owner: 'alice', reservedSeconds: 1200 }), at(100));
    reserve(l, member('c', 64, { owner: 'bob', reservedSeconds: 60 }), at(100));
    reserve(l, member('anon', 64), at(100));
    expect(usageReports(l, undefined, Date.parse(at(400)))).toEqual([
      { owner: 'alice', liveGrants: 1, reservedMinutes: (120 + 300) / 60, usedMinutes: 2, heldMinutes: 20 },
      { owner: 'bob', liveGrants: 1, reservedMinutes: 5, usedMinutes: 0, heldMinutes: 1 },
    ]);
    expect(usageReports(l, 'nobody', Date.parse(at(400)))).toEqual([{ owner: 'nobody', liveGrants: 0, reservedMinutes: 0, usedMinutes: 0, heldMinutes: 0 }]);
  });

  it('keeps only the last MAX_EVENTS events', () => {
    const l = site({ pools: { public: pool('10.213.0.0/20', '10.213.0.1', '10.213.1.0', '10.213.3.255') } });
    for (let i = 0; i < 600; i++) {
      reserve(l, member(`h${i}`, 1, { owner: 'alice' }), T0);
      releaseGrant(l, `h${i}`, undefined, T0);
    }
    expect(l.events).toHaveLength(MAX_EVENTS);
    expect(l.events![MAX_EVENTS - 1]).toMatchObject({ kind: 'REMOVED', holder: 'h599' });
    expect(l.usage!.alice.released).toBe(600);
  });
});

describe('allocator input checks', () => {
  it('name the field of a malformed request', () => {
    expect(slotRequestProblem({ holder: 'a', memoryMiB: 64, vcpus: 0 })).toBe('vcpus: must be a positive integer');
    expect(slotRequestProblem(member('a', 64, { reservedSeconds: -1 }))).toBe('reservedSeconds: must be a non-negative integer');
    expect(slotRequestProblem(member('a', 64, { nodeProperties: [''] }))).toBe('nodeProperties: must be a list of property names');
    expect(gangRequestProblem({ gang: 'g', members: [] })).toBe('members: must be a non-empty list of slot requests');
    expect(gangRequestProblem({ gang: 'g', members: [member('a', 64), member('b', 1.5)] })).toBe('members[1].memoryMiB: must be a positive integer');
    expect(gangRequestProblem({ gang: 'g', members: [member('a', 64), member('a', 64)] })).toBe('members[1].holder: a appears more than once');
    expect(releaseProblem('h', { usedSeconds: -3 })).toBe('info.usedSeconds: must be a non-negative number');
    expect(releaseProblem('h', undefined)).toBeUndefined();
    expect(drainProblem({ node: 'n9', drained: true }, ['n1', 'n2'])).toBe('node: no such node: n9 (nodes: n1, n2)');
    expect(drainProblem({ node: 'n1', drained: 'yes' as unknown as boolean }, ['n1'])).toBe('drained: must be true or false');
    expect(siteConfigurationProblem({ nodes: site().nodes, pools: {}, placement: 'random' as Placement })).toBe('placement: must be greedy or round-robin');
    expect(siteConfigurationProblem({ nodes: site().nodes, pools: {}, chargeGranularitySeconds: 0 })).toBe('chargeGranularitySeconds: must be a positive integer');
    expect(siteConfigurationProblem({ nodes: site().nodes, pools: site().pools })).toBeUndefined();
  });
});
