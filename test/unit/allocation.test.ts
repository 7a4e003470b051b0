import { fitRequest, type Ledger } from '../../src/domain/allocation';
import { expandRange, inSubnet, macForIp } from '../../src/domain/network';

function ledger(): Ledger {
  return {
    network: 'public',
    nodes: [
      { name: 'vmm1', memoryMiB: 256, cpus: 2 },
      { name: 'vmm2', memoryMiB: 512, cpus: 4 },
    ],
    addresses: expandRange('10.213.0.100', '10.213.0.102', 'ws-'),
    grants: {},
  };
}

function grant(l: Ledger, holder: string, memoryMiB: number, vcpus = 1) {
  const r = fitRequest(l, { holder, memoryMiB, vcpus }, '2026-01-01T00:00:00Z');
  if (r.ok) l.grants[holder] = r.grant;
  return r;
}

describe('slot fitting', () => {
  it('fills the first node that fits, and never overcommits memory', () => {
    const l = ledger();
    expect(grant(l, 'a', 200)).toMatchObject({ ok: true, grant: { node: 'vmm1', address: { ip: '10.213.0.100' } } });
    expect(grant(l, 'b', 100)).toMatchObject({ ok: true, grant: { node: 'vmm2', address: { ip: '10.213.0.101' } } });
    expect(grant(l, 'c', 56)).toMatchObject({ ok: true, grant: { node: 'vmm1' } });
  });

  it('refuses with a reason when no node has room, holding nothing', () => {
    const l = ledger();
    const r = grant(l, 'big', 1024);
    expect(r).toEqual({ ok: false, reason: expect.stringContaining('no node has 1024 MiB') });
    expect(l.grants).toEqual({});
  });

  it('refuses when the pool is out of addresses', () => {
    const l = ledger();
    for (const h of ['a', 'b', 'c']) expect(grant(l, h, 64).ok).toBe(true);
    expect(grant(l, 'd', 64)).toEqual({ ok: false, reason: 'network public has no free address (3 in pool)' });
  });

  it('hands an address out again only after its grant is gone', () => {
    const l = ledger();
    grant(l, 'a', 64);
    delete l.grants.a;
    expect(grant(l, 'b', 64)).toMatchObject({ ok: true, grant: { address: { ip: '10.213.0.100' } } });
  });

  it('counts CPUs as well as memory', () => {
    const l = ledger();
    expect(grant(l, 'a', 64, 2).ok).toBe(true);
    expect(grant(l, 'b', 64, 2)).toMatchObject({ ok: true, grant: { node: 'vmm2' } });
  });
});

describe('address helpers', () => {
  it('binds a MAC to each IP for good', () => {
    expect(macForIp('10.213.0.100')).toBe('52:54:0a:d5:00:64');
    expect(expandRange('10.213.0.254', '10.213.1.1', 'h-').map((a) => a.ip)).toEqual(['10.213.0.254', '10.213.0.255', '10.213.1.0', '10.213.1.1']);
  });

  it('knows subnets', () => {
    expect(inSubnet('10.213.0.199', '10.213.0.0/24')).toBe(true);
    expect(inSubnet('10.213.1.1', '10.213.0.0/24')).toBe(false);
    expect(() => inSubnet('10.213.0.300', '10.213.0.0/24')).toThrow(/not an IPv4 address/);
  });
});
