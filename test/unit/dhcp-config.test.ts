/**
 * The DHCP servers' files as vws renders them, what it parses back (dnsmasq leases, dhcpd's log), the
 * no-duplicate rule for entries, and the validation that keeps foreign text out of those files.
 */
import {
  ackedIp,
  dhcpdConf,
  dhcpFiles,
  dnsmasqConf,
  dnsmasqHosts,
  dnsmasqOptions,
  leasedIp,
  parseState,
  withEntry,
  withoutLeases,
} from '../../src/activities/network/dhcp-config';
import { DHCPD_LAUNCH_SCRIPT, dhcpdLaunchArgv } from '../../src/activities/network/dhcp-server';
import { createDhcpActivities } from '../../src/activities/network/dhcp';
import type { DhcpEntry, DhcpServerSpec } from '../../src/activities/network/types';
import { checkEntry, checkServer, parseSubnet } from '../../src/activities/network/validate';
import type { Executor } from '../../src/exec/executor';

const server: DhcpServerSpec = { network: 'default', subnet: '10.213.0.0/24', interface: 'br0', server: 'dnsmasq' };
const net = parseSubnet(server.subnet);
const files = dhcpFiles('/var/lib/vws/node/dhcp', 'default');
const entry = (n: number, over: Partial<DhcpEntry> = {}): DhcpEntry => ({
  mac: `52:54:0a:d5:00:${n.toString(16).padStart(2, '0')}`,
  ip: `10.213.0.${n}`,
  hostname: `ws-10-213-0-${n}`,
  gateway: '10.213.0.1',
  netmask: '255.255.255.0',
  broadcast: '10.213.0.255',
  dns: ['10.213.0.1', '192.0.2.53'],
  ...over,
});

describe('dnsmasq files', () => {
  it('serve only the interface, static addresses only, silent for unknown MACs, not authoritative', () => {
    const conf = dnsmasqConf(server, net, files);
    expect(conf.split('\n')).toEqual(
      expect.arrayContaining([
        'port=0',
        'interface=br0',
        'bind-interfaces',
        'dhcp-range=10.213.0.0,static,255.255.255.0,12h',
        'dhcp-ignore=tag:!known',
        'dhcp-hostsfile=/var/lib/vws/node/dhcp/default/hosts',
        'dhcp-optsfile=/var/lib/vws/node/dhcp/default/options',
        'dhcp-leasefile=/var/lib/vws/node/dhcp/default/leases',
        'pid-file=/var/lib/vws/node/dhcp/default/server.pid',
        'log-facility=/var/lib/vws/node/dhcp/default/server.log',
        'user=root',
      ]),
    );
    expect(conf).not.toMatch(/authoritative/);
  });

  it('tag each host line so its options apply to it alone', () => {
    expect(dnsmasqHosts([entry(100), entry(101)])).toBe(
      '52:54:0a:d5:00:64,set:m52540ad50064,10.213.0.100,ws-10-213-0-100\n52:54:0a:d5:00:65,set:m52540ad50065,10.213.0.101,ws-10-213-0-101\n',
    );
    expect(dnsmasqOptions([entry(100, { dns: [] })])).toBe(
      'tag:m52540ad50064,option:router,10.213.0.1\ntag:m52540ad50064,option:netmask,255.255.255.0\ntag:m52540ad50064,28,10.213.0.255\n',
    );
    expect(dnsmasqOptions([entry(100)])).toContain('tag:m52540ad50064,option:dns-server,10.213.0.1,192.0.2.53\n');
    expect(dnsmasqHosts([])).toBe('');
  });
});

describe('dhcpd.conf', () => {
  it('declares the subnet without a range and one fixed-address host per entry', () => {
    const conf = dhcpdConf({ ...server, server: 'isc-dhcpd' }, net, [entry(100)]);
    expect(conf).toContain('not authoritative;\ndeny unknown-clients;\n');
    expect(conf).toContain('subnet 10.213.0.0 netmask 255.255.255.0 {\n}\n');
    expect(conf).not.toMatch(/\brange\b/);
    expect(conf).toContain(
      [
        'host m52540ad50064 {',
        '  hardware ethernet 52:54:0a:d5:00:64;',
        '  fixed-address 10.213.0.100;',
        '  option host-name "ws-10-213-0-100";',
        '  option routers 10.213.0.1;',
        '  option subnet-mask 255.255.255.0;',
        '  option broadcast-address 10.213.0.255;',
        '  option domain-name-servers 10.213.0.1, 192.0.2.53;',
        '}',
      ].join('\n'),
    );
    expect(dhcpdConf({ ...server, server: 'isc-dhcpd' }, net, [entry(100, { dns: [] })])).not.toContain('domain-name-servers');
  });

  it('is launched detached with a constant script; paths travel as arguments', () => {
    const argv = dhcpdLaunchArgv({ ...server, server: 'isc-dhcpd' }, files);
    expect(argv.slice(0, 6)).toEqual(['setsid', '-f', 'sh', '-c', DHCPD_LAUNCH_SCRIPT, 'vws-dhcpd']);
    expect(argv[6]).toBe(files.log);
    expect(argv.slice(7)).toEqual(['dhcpd', '-4', '-f', '-d', '-cf', files.dhcpdConf, '-lf', files.leases, '-pf', files.pid, 'br0']);
    expect(DHCPD_LAUNCH_SCRIPT).not.toMatch(/\/var|br0/);
  });
});

describe('entries', () => {
  it('never hold two entries with one MAC, IP or hostname: the new one replaces them', () => {
    const a = entry(100);
    const b = entry(101);
    expect(withEntry([a, b], a)).toEqual({ entries: [b, a], replaced: [a] });
    const sameIp = { ...entry(102), ip: a.ip };
    expect(withEntry([a, b], sameIp)).toEqual({ entries: [b, sameIp], replaced: [a] });
    const sameName = { ...entry(103), hostname: b.hostname.toUpperCase() };
    expect(withEntry([a, b], sameName)).toEqual({ entries: [a, sameName], replaced: [b] });
    const sameMacOfA = { ...entry(104), mac: a.mac, hostname: b.hostname };
    expect(withEntry([a, b], sameMacOfA).entries).toEqual([sameMacOfA]);
  });

  it('come back from a state file, an absent or broken one being empty', () => {
    expect(parseState(null)).toEqual({ entries: [], marks: {} });
    expect(parseState('{"entries":[')).toEqual({ entries: [], marks: {} });
    expect(parseState(JSON.stringify({ entries: [entry(100)], marks: { x: 3 } }))).toEqual({ entries: [entry(100)], marks: { x: 3 } });
  });
});

describe('leases and ACKs', () => {
  const leases = '1790000000 52:54:0a:d5:00:65 10.213.0.101 ws-b *\n1790000000 52:54:0a:d5:00:64 10.213.0.100 ws-a 01:52:54\n';

  it('finds the IP dnsmasq leased to a MAC', () => {
    expect(leasedIp(leases, '52:54:0A:D5:00:64')).toBe('10.213.0.100');
    expect(leasedIp(leases, '52:54:0a:d5:00:99')).toBeNull();
    expect(leasedIp('', '52:54:0a:d5:00:64')).toBeNull();
  });

  it('drops leases by MAC or IP', () => {
    expect(withoutLeases(leases, (l) => l.mac === '52:54:0a:d5:00:64')).toBe('1790000000 52:54:0a:d5:00:65 10.213.0.101 ws-b *\n');
    expect(withoutLeases(leases, (l) => l.ip === '10.213.0.101')).toBe('1790000000 52:54:0a:d5:00:64 10.213.0.100 ws-a 01:52:54\n');
  });

  it("reads the newest DHCPACK for a MAC from dhcpd's log", () => {
    const log = [
      'DHCPDISCOVER from 52:54:0a:d5:00:64 via br0',
      'DHCPOFFER on 10.213.0.100 to 52:54:0a:d5:00:64 via br0',
      'DHCPACK on 10.213.0.100 to 52:54:0a:d5:00:64 via br0',
      'DHCPACK on 10.213.0.101 to 52:54:0a:d5:00:65 (ws-b) via br0',
      'DHCPACK on 10.213.0.102 to 52:54:0a:d5:00:64 (ws-a) via br0',
      '',
    ].join('\n');
    expect(ackedIp(log, '52:54:0A:D5:00:64')).toBe('10.213.0.102');
    expect(ackedIp(log, '52:54:0a:d5:00:65')).toBe('10.213.0.101');
    expect(ackedIp('DHCPOFFER on 10.213.0.100 to 52:54:0a:d5:00:66 via br0\n', '52:54:0a:d5:00:66')).toBeNull();
  });
});

describe('validation', () => {
  it('normalizes MACs and subnets', () => {
    expect(checkEntry(entry(100, { mac: '52:54:0A:D5:00:64' }), net).mac).toBe('52:54:0a:d5:00:64');
    expect(checkServer({ ...server, subnet: '10.213.0.7/24' }).subnet).toBe('10.213.0.0/24');
    expect(parseSubnet('10.0.0.0/8')).toMatchObject({ netmask: '255.0.0.0', broadcast: '10.255.255.255' });
  });

  it.each([
    ['a hostname with a newline', { hostname: 'ws\ndhcp-range=0.0.0.0' }],
    ['a hostname with a quote', { hostname: 'ws";' }],
    ['a hostname with a dot', { hostname: 'ws.example.org' }],
    ['a MAC with a comma', { mac: '52:54:0a:d5:00:64,set:x' }],
    ['a multicast MAC', { mac: '01:00:5e:00:00:01' }],
    ['an address outside the subnet', { ip: '10.214.0.5' }],
    ['the broadcast address', { ip: '10.213.0.255' }],
    ['an address with leading zeros', { ip: '10.213.0.010' }],
    ['a gateway with text', { gateway: '10.213.0.1;' }],
    ['a DNS server with a space', { dns: ['10.213.0.1 1.1.1.1'] }],
  ])('refuses %s as InvalidSpec', (_what, over) => {
    expect(() => checkEntry(entry(100, over as Partial<DhcpEntry>), net)).toThrow(expect.objectContaining({ type: 'InvalidSpec', nonRetryable: true }));
  });

  it.each([
    ['a network name with a slash', { network: '../etc' }],
    ['an interface with a space', { interface: 'br0 up' }],
    ['a long interface name', { interface: 'a23456789012345x' }],
    ['a subnet without a prefix', { subnet: '10.213.0.0' }],
    ['an unknown server', { server: 'kea' }],
  ])('refuses a server spec with %s', (_what, over) => {
    expect(() => checkServer({ ...server, ...over } as DhcpServerSpec)).toThrow(expect.objectContaining({ type: 'InvalidSpec' }));
  });

  it('fails before touching the host when an entry is invalid', async () => {
    const touched: string[] = [];
    const exec = new Proxy({} as Executor, {
      get: (_t, prop) => (prop === 'where' ? 'fake' : async () => void touched.push(String(prop))),
    });
    const acts = createDhcpActivities({ exec, dir: '/var/lib/vws/node/dhcp', beat: () => undefined });
    await expect(acts.addDhcpEntry({ server, entry: entry(100, { hostname: 'x\ny' }) })).rejects.toMatchObject({ type: 'InvalidSpec' });
    await expect(acts.removeDhcpEntry({ server: { ...server, interface: 'br0;' }, entry: entry(100) })).rejects.toMatchObject({ type: 'InvalidSpec' });
    expect(touched).toEqual([]);
    expect(() => createDhcpActivities({ exec, dir: 'relative/dir' })).toThrow(/absolute/);
  });
});
