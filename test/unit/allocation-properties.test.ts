/**
 * Property test of the allocator's fitting: random sites and random sequences of reserve, reserveGang,
 * release, releaseGang and drain, checked after every step against the invariants the allocator
 * promises (fast-check shrinks any counterexample to a minimal sequence).
 */
import fc from 'fast-check';
import { grantNics, reserve, reserveGang, type Grant, type Ledger, type SlotRequest } from '../../src/domain/allocation';
import { releaseGangGrants, releaseGrant } from '../../src/domain/accounting';
import { setDrained } from '../../src/domain/allocator-site';
import { poolAddresses } from '../../src/config/pools';

const pool = (third: number, size: number) =>
  poolAddresses({ subnet: `10.${third}.0.0/24`, gateway: `10.${third}.0.1`, dns: [], ranges: [{ first: `10.${third}.0.10`, last: `10.${third}.0.${9 + size}`, hostnamePrefix: 'ws-' }], entries: [] }).map(
    ({ origin: _o, ...a }) => a,
  );

const HOLDERS = Array.from({ length: 12 }, (_, i) => `h${i}`);
const OWNERS = ['alice', 'bob', undefined];

const siteArb = fc.record({
  nodes: fc.array(fc.record({ memoryMiB: fc.integer({ min: 64, max: 1024 }), cpus: fc.integer({ min: 1, max: 4 }), privateNet: fc.boolean(), big: fc.boolean() }), { minLength: 1, maxLength: 4 }),
  publicSize: fc.integer({ min: 1, max: 8 }),
  privateSize: fc.integer({ min: 1, max: 4 }),
  placement: fc.constantFrom('greedy' as const, 'round-robin' as const),
  maxWorkspaces: fc.option(fc.integer({ min: 0, max: 5 }), { nil: undefined }),
  maxReservedMinutes: fc.option(fc.integer({ min: 0, max: 60 }), { nil: undefined }),
});

type SiteShape = typeof siteArb extends fc.Arbitrary<infer T> ? T : never;

const requestArb = (holder: fc.Arbitrary<string>) =>
  fc.record({
    holder,
    memoryMiB: fc.integer({ min: 16, max: 600 }),
    vcpus: fc.integer({ min: 1, max: 3 }),
    owner: fc.constantFrom(...OWNERS),
    reservedSeconds: fc.integer({ min: 0, max: 1800 }),
    networks: fc.constantFrom<string[] | undefined>(undefined, ['public'], ['private'], ['public', 'private'], ['public', 'public']),
    nodeProperties: fc.constantFrom<string[] | undefined>(undefined, [], ['big']),
  }).map((r) => Object.fromEntries(Object.entries(r).filter(([, v]) => v !== undefined)) as unknown as SlotRequest);

type Command =
  | { kind: 'reserve'; request: SlotRequest }
  | { kind: 'reserveGang'; gang: string; members: SlotRequest[] }
  | { kind: 'release'; holder: string; usedSeconds: number }
  | { kind: 'releaseGang'; gang: string }
  | { kind: 'drain'; node: number; drained: boolean };

const commandArb: fc.Arbitrary<Command> = fc.oneof(
  requestArb(fc.constantFrom(...HOLDERS)).map((request) => ({ kind: 'reserve' as const, request })),
  fc
    .record({ gang: fc.constantFrom('g1', 'g2', 'g3'), members: fc.uniqueArray(requestArb(fc.constantFrom(...HOLDERS)), { minLength: 1, maxLength: 4, selector: (r) => r.holder }) })
    .map((g) => ({ kind: 'reserveGang' as const, ...g })),
  fc.record({ holder: fc.constantFrom(...HOLDERS), usedSeconds: fc.integer({ min: 0, max: 3600 }) }).map((r) => ({ kind: 'release' as const, ...r })),
  fc.constantFrom('g1', 'g2', 'g3').map((gang) => ({ kind: 'releaseGang' as const, gang })),
  fc.record({ node: fc.integer({ min: 0, max: 3 }), drained: fc.boolean() }).map((r) => ({ kind: 'drain' as const, ...r })),
);

function buildLedger(s: SiteShape): Ledger {
  const quota = { ...(s.maxWorkspaces !== undefined ? { maxWorkspaces: s.maxWorkspaces } : {}), ...(s.maxReservedMinutes !== undefined ? { maxReservedMinutes: s.maxReservedMinutes } : {}) };
  return {
    nodes: s.nodes.map((n, i) => ({
      name: `n${i}`,
      memoryMiB: n.memoryMiB,
      cpus: n.cpus,
      networks: n.privateNet ? ['public', 'private'] : ['public'],
      ...(n.big ? { properties: ['big'] } : {}),
    })),
    pools: { public: pool(213, s.publicSize), private: pool(214, s.privateSize) },
    grants: {},
    placement: s.placement,
    quotas: { alice: quota },
  };
}

/** Every invariant that must hold of a ledger at rest. */
function checkInvariants(l: Ledger): void {
  const grants = Object.values(l.grants);
  for (const n of l.nodes) {
    const on = grants.filter((g) => g.node === n.name);
    expect(on.reduce((s, g) => s + g.memoryMiB, 0)).toBeLessThanOrEqual(n.memoryMiB);
    expect(on.reduce((s, g) => s + g.vcpus, 0)).toBeLessThanOrEqual(n.cpus);
  }
  const addresses = grants.flatMap((g) => grantNics(g).map((nic) => `${nic.network}/${nic.address.ip}`));
  expect(new Set(addresses).size).toBe(addresses.length);
  for (const g of grants) expect(l.grants[g.holder]).toBe(g);
  const alice = grants.filter((g) => g.owner === 'alice');
  const q = l.quotas?.alice ?? {};
  if (q.maxWorkspaces !== undefined) expect(alice.length).toBeLessThanOrEqual(q.maxWorkspaces);
  if (q.maxReservedMinutes !== undefined) expect(alice.reduce((s, g) => s + (g.reservedSeconds ?? 0), 0)).toBeLessThanOrEqual(q.maxReservedMinutes * 60);
  // Plain JSON: it survives continue-as-new unchanged.
  expect(JSON.parse(JSON.stringify(l))).toEqual(l);
}

/** A new grant went to a node that was open, carries its networks and has its properties. */
function checkPlacement(before: Ledger, request: SlotRequest, g: Grant): void {
  const node = before.nodes.find((n) => n.name === g.node)!;
  expect(node.drained).not.toBe(true);
  for (const p of request.nodeProperties ?? []) expect(node.properties).toContain(p);
  for (const nic of grantNics(g)) expect(node.networks).toContain(nic.network);
  expect(grantNics(g).map((n) => n.network)).toEqual(request.networks ?? ['public']);
}

describe('allocator fitting, for random sites and request sequences', () => {
  it('never overcommits a node, never holds an address twice, and a refusal changes nothing', () => {
    // Outcomes seen over all runs, so the test shows it exercised grants and refusals of every kind.
    const seen: Record<string, number> = {};
    const tally = (k: string) => (seen[k] = (seen[k] ?? 0) + 1);
    fc.assert(
      fc.property(siteArb, fc.array(commandArb, { maxLength: 40 }), (site, commands) => {
        const l = buildLedger(site);
        commands.forEach((c, step) => {
          const now = new Date(Date.UTC(2026, 0, 1, 0, 0, step)).toISOString();
          const before = JSON.parse(JSON.stringify(l)) as Ledger;
          switch (c.kind) {
            case 'reserve': {
              const held = before.grants[c.request.holder];
              const r = reserve(l, c.request, now);
              tally(r.ok ? 'reserve granted' : `reserve ${r.type}`);
              if (!r.ok) expect(l).toEqual(before);
              else if (held) expect(l).toEqual(before);
              else checkPlacement(before, c.request, r.grant);
              break;
            }
            case 'reserveGang': {
              const r = reserveGang(l, { gang: c.gang, members: c.members }, now);
              tally(r.ok ? 'gang granted' : `gang ${r.type}`);
              if (!r.ok) expect(l).toEqual(before);
              else {
                expect(r.grants.map((g) => g.holder)).toEqual(c.members.map((m) => m.holder));
                for (const g of r.grants) expect(l.grants[g.holder]).toEqual({ ...g, gang: c.gang });
                if (c.members.some((m) => !before.grants[m.holder])) c.members.forEach((m, i) => checkPlacement(before, m, r.grants[i]));
              }
              // All or nothing: every member held by this gang, or the ledger untouched.
              const mine = c.members.filter((m) => l.grants[m.holder]?.gang === c.gang).length;
              expect(r.ok ? mine === c.members.length : JSON.stringify(l) === JSON.stringify(before)).toBe(true);
              break;
            }
            case 'release':
              expect(releaseGrant(l, c.holder, { usedSeconds: c.usedSeconds }, now)).toBe(c.holder in before.grants);
              expect(l.grants[c.holder]).toBeUndefined();
              break;
            case 'releaseGang':
              releaseGangGrants(l, c.gang, now);
              expect(Object.values(l.grants).some((g) => g.gang === c.gang)).toBe(false);
              break;
            case 'drain':
              if (c.node < l.nodes.length) {
                setDrained(l, l.nodes[c.node].name, c.drained);
                expect(l.grants).toEqual(before.grants); // live grants untouched
              }
              break;
          }
          checkInvariants(l);
        });
      }),
      { numRuns: 300 },
    );
    const outcomes = ['reserve granted', 'reserve NoCapacity', 'reserve QuotaExceeded', 'gang granted', 'gang NoCapacity', 'gang QuotaExceeded', 'gang InvalidSpec'];
    expect(outcomes.filter((k) => !seen[k])).toEqual([]);
  });
});
