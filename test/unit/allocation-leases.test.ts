/** Pilot nodes and leases in the allocator's ledger (issue 7): pure rules, no Temporal. */
import { endLease, lease, reserve, reserveGang, useByLease, type Ledger, type NodeLease } from '../../src/domain/allocation';
import { nodeUses } from '../../src/domain/allocator-site';
import { poolAddresses } from '../../src/config/pools';

const NOW = '2026-12-01T12:00:00.000Z';
const UNTIL = '2026-12-01T13:00:00.000Z';

function ledger(): Ledger {
  return {
    nodes: [
      { name: 'vmm1', memoryMiB: 1024, cpus: 4, networks: ['public'] },
      { name: 'pilot1', memoryMiB: 1024, cpus: 4, networks: ['public'], pilot: true },
    ],
    pools: { public: poolAddresses({ subnet: '10.213.0.0/24', gateway: '10.213.0.1', dns: [], ranges: [{ first: '10.213.0.100', last: '10.213.0.109', hostnamePrefix: 'ws-' }], entries: [] }).map(({ origin: _o, ...a }) => a) },
    grants: {},
  };
}

const slot = (holder: string, memoryMiB = 256, vcpus = 1, node = 'pilot1'): NodeLease => ({ holder, node, memoryMiB, vcpus, until: UNTIL, jobId: '7' });

describe('pilot leases', () => {
  it('ordinary requests never land on a pilot node, even when the others are full', () => {
    const l = ledger();
    expect(reserve(l, { holder: 'a', memoryMiB: 1024, vcpus: 1 }, NOW)).toMatchObject({ ok: true, grant: { node: 'vmm1' } });
    const r = reserve(l, { holder: 'b', memoryMiB: 64, vcpus: 1 }, NOW);
    expect(r).toMatchObject({ ok: false, type: 'NoCapacity' });
    expect(reserveGang(l, { gang: 'g', members: [{ holder: 'c', memoryMiB: 64, vcpus: 1 }] }, NOW)).toMatchObject({ ok: false, type: 'NoCapacity' });
    expect(Object.keys(l.grants)).toEqual(['a']);
  });

  it('a grant inside a lease goes on the lease node and never exceeds what the lease lent', () => {
    const l = ledger();
    expect(lease(l, slot('s1', 256, 2), NOW)).toMatchObject({ ok: true, lease: { holder: 's1', node: 'pilot1', leasedAt: NOW } });
    expect(reserve(l, { holder: 'w1', memoryMiB: 200, vcpus: 1, lease: 's1' }, NOW)).toMatchObject({ ok: true, grant: { node: 'pilot1', lease: 's1' } });
    const over = reserve(l, { holder: 'w2', memoryMiB: 100, vcpus: 1, lease: 's1' }, NOW);
    expect(over).toMatchObject({ ok: false, type: 'NoCapacity' });
    expect(!over.ok && over.reason).toContain('has 56 MiB and 1 CPU free');
    expect(reserve(l, { holder: 'w3', memoryMiB: 56, vcpus: 1, lease: 's1' }, NOW)).toMatchObject({ ok: true });
    expect(useByLease(l)).toEqual({ s1: { memoryMiB: 256, vcpus: 2, grants: 2 } });
  });

  it('refuses a lease on an unknown, ordinary, drained or fully leased node, changing nothing', () => {
    const l = ledger();
    expect(lease(l, slot('x', 64, 1, 'nosuch'), NOW)).toMatchObject({ ok: false, type: 'NoCapacity' });
    expect(lease(l, slot('x', 64, 1, 'vmm1'), NOW)).toMatchObject({ ok: false, reason: expect.stringContaining('not a pilot node') });
    expect(lease(l, slot('big', 1000), NOW)).toMatchObject({ ok: true });
    expect(lease(l, slot('more', 100), NOW)).toMatchObject({ ok: false, reason: expect.stringContaining('24 MiB') });
    l.nodes[1].drained = true;
    expect(lease(l, slot('d', 8), NOW)).toMatchObject({ ok: false, reason: expect.stringContaining('drained') });
    expect(Object.keys(l.leases ?? {})).toEqual(['big']);
  });

  it('is idempotent per holder, and a request naming an ended lease is refused', () => {
    const l = ledger();
    const first = lease(l, slot('s1'), NOW);
    expect(lease(l, slot('s1', 999), '2026-12-01T12:05:00.000Z')).toEqual(first);
    expect(endLease(l, 's1')).toBe(true);
    expect(endLease(l, 's1')).toBe(false);
    expect(reserve(l, { holder: 'w', memoryMiB: 64, vcpus: 1, lease: 's1' }, NOW)).toMatchObject({ ok: false, reason: expect.stringContaining('no live pilot lease s1') });
    expect(l.grants).toEqual({});
  });

  it('admins see pilot nodes with what their leases lend', () => {
    const l = ledger();
    lease(l, slot('s1', 300), NOW);
    reserve(l, { holder: 'w', memoryMiB: 128, vcpus: 1, lease: 's1' }, NOW);
    expect(nodeUses(l).find((n) => n.name === 'pilot1')).toMatchObject({ pilot: true, leasedMemoryMiB: 300, usedMemoryMiB: 128, grants: 1 });
    expect(nodeUses(l).find((n) => n.name === 'vmm1')).not.toHaveProperty('pilot');
  });
});
