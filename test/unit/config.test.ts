import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, loadConfig, parseConfig } from '../../src/config/load';

describe('the configuration', () => {
  it('has embedded defaults: one qemu node vmm1 and the testbed network', () => {
    const c = parseConfig({});
    expect(c.nodes).toEqual([{ name: 'vmm1', memoryMiB: 2048, cpus: 4, driver: 'qemu', bridges: { public: 'br0' }, antiSpoofing: true, properties: [], agent: 'worker' }]);
    // Site policy, placement, accounting and the reconciler have defaults a site can override.
    expect(c.allocator).toEqual({ placement: 'greedy' });
    expect(c.policies).toMatchObject({ maxDurationSeconds: 7 * 24 * 3600, maxNodesPerRequest: 64 });
    expect(c.accounting).toEqual({ chargeGranularitySeconds: 60 });
    expect(c.reconciler).toEqual({ enabled: true, periodSeconds: 60, graceSeconds: 120 });
    expect(c.networks).toEqual([
      expect.objectContaining({ name: 'public', subnet: '10.213.0.0/24', ranges: [{ first: '10.213.0.100', last: '10.213.0.199', hostnamePrefix: 'ws-' }], dhcp: { server: 'dnsmasq', on: 'node' } }),
    ]);
    expect(c.nics).toEqual({ max: 4, defaultNetworks: ['public'] });
    expect(c.temporal.prefix).toBe('vws');
    expect(c.node.accel).toBe('tcg');
    expect(c.timeouts.shutdownSeconds).toBe(30);
  });

  it('names every bad field with its path', () => {
    const bad = () =>
      parseConfig({
        networks: [{ name: 'public', subnet: '10.213.0.0/24', gateway: '10.213.0.1', ranges: [{ first: '10.9.0.1', last: '10.213.0.5' }] }],
        nodes: [
          { name: 'vmm1', memoryMiB: 1024, cpus: 1 },
          { name: 'vmm1', memoryMiB: 1024, cpus: 1 },
        ],
        api: { port: 'eighty' },
      });
    expect(bad).toThrow(ConfigError);
    expect(bad).toThrow(/networks\.0\.ranges\.0\.first: 10\.9\.0\.1 is outside subnet 10\.213\.0\.0\/24/);
    expect(bad).toThrow(/nodes\.1\.name: duplicate node name vmm1/);
    expect(bad).toThrow(/api\.port:/);
    const sshWithoutHost = () => parseConfig({ nodes: [{ name: 'vmm2', memoryMiB: 1024, cpus: 2, agent: 'ssh' }] });
    expect(sshWithoutHost).toThrow(/nodes\.0\.ssh: node vmm2 has agent ssh but no ssh\.host/);
    const badDriver = () => parseConfig({ nodes: [{ name: 'vmm2', memoryMiB: 1024, cpus: 2, driver: 'kvmtool' }] });
    expect(badDriver).toThrow(/nodes\.0\.driver:/);
  });

  describe('network pools', () => {
    const node = (name: string, bridges: Record<string, string>) => ({ name, memoryMiB: 1024, cpus: 2, bridges });
    const net = (name: string, subnet: string, extra: Record<string, unknown>) => ({ name, subnet, gateway: subnet.replace(/0\/\d+$/, '1'), ...extra });
    const problems = (raw: Record<string, unknown>): string => {
      try {
        parseConfig(raw);
        return '';
      } catch (e) {
        return (e as Error).message;
      }
    };

    it('accepts two networks with ranges and entries, each node bridged to what it carries', () => {
      const c = parseConfig({
        networks: [
          net('public', '10.213.0.0/24', { ranges: [{ first: '10.213.0.100', last: '10.213.0.101' }], dns: ['10.213.0.1'] }),
          net('private', '10.214.0.0/24', { entries: [{ hostname: 'db', ip: '10.214.0.5', mac: '02:00:00:00:00:05' }], nodes: ['vmm1'], dhcp: { on: 'head', interface: 'vwsbr1', server: 'isc-dhcpd' } }),
        ],
        nodes: [node('vmm1', { public: 'br0', private: 'br1' }), node('vmm2', { public: 'br0' })],
      });
      expect(c.networks.map((n) => n.name)).toEqual(['public', 'private']);
    });

    it('refuses duplicate IPs, hostnames and MACs across pools, naming both places', () => {
      const msg = problems({
        networks: [
          net('public', '10.213.0.0/24', { ranges: [{ first: '10.213.0.100', last: '10.213.0.102' }] }),
          net('other', '10.213.0.0/24', {
            entries: [
              { hostname: 'a', ip: '10.213.0.101' },
              { hostname: 'ws-10-213-0-100', ip: '10.213.0.150' },
              { hostname: 'c', ip: '10.213.0.151', mac: '52:54:0a:d5:00:66' },
            ],
          }),
        ],
        nodes: [node('vmm1', { public: 'br0', other: 'br0' })],
      });
      expect(msg).toMatch(/networks\.1\.entries\.0\.ip: duplicate ip 10\.213\.0\.101: also at networks\.0 \(public\) ranges\.0/);
      expect(msg).toMatch(/networks\.1\.entries\.1\.hostname: duplicate hostname ws-10-213-0-100/);
      expect(msg).toMatch(/networks\.1\.entries\.2\.mac: duplicate mac 52:54:0a:d5:00:66: also at .*generated for 10\.213\.0\.102/);
    });

    it('refuses an IP outside its subnet and a node without the bridge a network needs', () => {
      const msg = problems({
        networks: [net('public', '10.213.0.0/24', { ranges: [{ first: '10.213.0.100', last: '10.213.0.101' }], entries: [{ hostname: 'x', ip: '10.9.9.9' }] }), net('private', '10.214.0.0/24', { ranges: [{ first: '10.214.0.10', last: '10.214.0.10' }] })],
        nodes: [node('vmm1', { public: 'br0', private: 'br1' }), node('vmm2', { public: 'br0' })],
      });
      expect(msg).toMatch(/networks\.0\.entries\.0\.ip: 10\.9\.9\.9 is outside subnet 10\.213\.0\.0\/24/);
      expect(msg).toMatch(/nodes\.1\.bridges: node vmm2 has no bridge for network private: add bridges: \{ private: <bridge> \}/);
    });

    it('refuses central DHCP without the head interface, unknown networks, and bad MACs', () => {
      const msg = problems({
        networks: [net('public', '10.213.0.0/24', { ranges: [{ first: '10.213.0.100', last: '10.213.0.101' }], dhcp: { on: 'head' }, entries: [{ hostname: 'm', ip: '10.213.0.9', mac: '01:00:00:00:00:01' }] })],
        nodes: [node('vmm1', { public: 'br0', dmz: 'br2' })],
        nics: { defaultNetworks: ['dmz'] },
      });
      expect(msg).toMatch(/networks\.0\.dhcp\.interface: network public has DHCP on the head: name the head's interface/);
      expect(msg).toMatch(/nodes\.0\.bridges\.dmz: network dmz is not in networks/);
      expect(msg).toMatch(/nics\.defaultNetworks\.0: network dmz is not in networks/);
      expect(msg).toMatch(/networks\.0\.entries\.0\.mac: must be a unicast MAC/);
    });
  });

  it('refuses bad quotas, policies, placement and reconciler settings by path', () => {
    const msg = (() => {
      try {
        parseConfig({
          clients: [{ name: 'a', identity: '/CN=a', tokenFile: '/t', quota: { maxWorkspaces: -1 } }],
          policies: { maxNodesPerRequest: 0 },
          allocator: { placement: 'random' },
          reconciler: { periodSeconds: 1 },
        });
      } catch (e) {
        return (e as Error).message;
      }
      return '';
    })();
    expect(msg).toMatch(/clients\.0\.quota\.maxWorkspaces/);
    expect(msg).toMatch(/policies\.maxNodesPerRequest/);
    expect(msg).toMatch(/allocator\.placement/);
    expect(msg).toMatch(/reconciler\.periodSeconds/);
  });

  it('refuses unknown settings by name', () => {
    expect(() => parseConfig({ temporal: { adress: 'x:1' } })).toThrow(/temporal.*unknown: adress/);
  });

  it('reads YAML from VWS_CONFIG and applies environment overrides', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vws-config-'));
    const file = join(dir, 'vws.yaml');
    writeFileSync(file, 'temporal:\n  namespace: site\nnodes:\n  - name: vmm7\n    memoryMiB: 4096\n    cpus: 8\n');
    const c = loadConfig({ VWS_CONFIG: file, VWS_TEMPORAL_ADDRESS: '10.213.0.1:7233', VWS_API_PORT: '9090' });
    expect(c.temporal).toMatchObject({ namespace: 'site', address: '10.213.0.1:7233' });
    expect(c.api.port).toBe(9090);
    expect(c.nodes.map((n) => n.name)).toEqual(['vmm7']);
  });

  it('says which file it could not read', () => {
    expect(() => loadConfig({ VWS_CONFIG: '/nonexistent/vws.yaml' })).toThrow(/cannot read VWS_CONFIG=\/nonexistent\/vws.yaml/);
  });
});

describe('client authentication settings', () => {
  const problems = (raw: Record<string, unknown>): string => {
    try {
      parseConfig(raw);
      return '';
    } catch (e) {
      return (e as Error).message;
    }
  };
  const DIGEST = 'A'.repeat(8) + '0123456789abcdef'.repeat(3) + 'b'.repeat(8);

  it('takes a token as tokenSha256 (64 hex digits, kept lowercase) instead of tokenFile', () => {
    const c = parseConfig({ clients: [{ name: 'alice', identity: '/O=Grid/CN=alice', tokenSha256: DIGEST }] });
    expect(c.clients[0]).toMatchObject({ name: 'alice', tokenSha256: DIGEST.toLowerCase() });
    expect(c.clients[0].tokenFile).toBeUndefined();
  });

  it('wants exactly one of tokenFile and tokenSha256, naming the field', () => {
    expect(problems({ clients: [{ name: 'alice', identity: '/CN=a' }] })).toMatch(/clients\.0\.tokenFile: client alice has no token: give tokenFile .* or tokenSha256/);
    expect(problems({ clients: [{ name: 'alice', identity: '/CN=a', tokenFile: '/t', tokenSha256: DIGEST }] })).toMatch(/clients\.0\.tokenSha256: client alice has both tokenFile and tokenSha256/);
    expect(problems({ clients: [{ name: 'alice', identity: '/CN=a', tokenSha256: 'secret-token' }] })).toMatch(/clients\.0\.tokenSha256: must be the sha256 of the token as 64 hex digits; make it with: node dist\/config\/hash-token\.js/);
    expect(problems({ clients: [{ name: 'alice', identity: '/CN=a', tokenSha256: DIGEST.slice(1) + 'g' }] })).toMatch(/clients\.0\.tokenSha256: must be the sha256/);
  });

  it('takes api.tls with its files, and checks client certificates have a CA and one client per identity', () => {
    expect(parseConfig({}).api.tls).toBeUndefined();
    const tls = { certFile: '/etc/vws/api.crt', keyFile: '/etc/vws/api.key', clientCaFile: '/etc/vws/ca.crt' };
    expect(parseConfig({ api: { tls } }).api.tls).toEqual({ ...tls, requireClientCert: false });
    expect(problems({ api: { tls: { certFile: '/c', keyFile: '/k', requireClientCert: true } } })).toMatch(/api\.tls\.clientCaFile: requireClientCert needs clientCaFile/);
    expect(problems({ api: { tls: { certFile: 'api.crt', keyFile: '/k' } } })).toMatch(/api\.tls\.certFile:/);
    expect(problems({ api: { tls: { keyFile: '/k' } } })).toMatch(/api\.tls\.certFile:/);
    const twins = [
      { name: 'alice', identity: '/O=Grid/CN=alice', tokenFile: '/a' },
      { name: 'alice2', identity: '/O=Grid/CN=alice', tokenFile: '/b', admin: true },
    ];
    expect(problems({ api: { tls }, clients: twins })).toMatch(/clients\.1\.identity: identity \/O=Grid\/CN=alice is also clients\.0's/);
    // Without client certificates, two tokens may share one identity (as before).
    expect(problems({ clients: twins })).toBe('');
  });
});
