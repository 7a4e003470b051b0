import { fitRequest, grantNics, normalizeLedger, type Ledger } from '../../src/domain/allocation';
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
