import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { hostLine, leasedIp } from '../../src/activities/network/dhcp';
import { nodePaths, workspaceDir } from '../../src/activities/node-paths';
import { qemuArgv, tapName } from '../../src/activities/qemu/driver';
import { SEARCH_ATTRIBUTES } from '../../src/domain/messages';
import { sampleVmSpec } from '../helpers/vm-spec';

const spec = sampleVmSpec;

describe('the qemu driver command line', () => {
  const argv = qemuArgv('qemu-system-x86_64', 'tcg', spec, { dir: '/d', qmp: '/d/qmp.sock', pid: '/d/qemu.pid', serial: '/d/serial.log' });

  it('is an argv array with TCG, the overlay, the tap and the bound MAC', () => {
    expect(argv[0]).toBe('qemu-system-x86_64');
    expect(argv.slice(argv.indexOf('-accel'), argv.indexOf('-accel') + 2)).toEqual(['-accel', 'tcg']);
    expect(argv).toContain('file=/n/workspaces/ws-0123456789ab/root.qcow2,if=virtio,format=qcow2');
    expect(argv).toContain('tap,id=n0,ifname=vw0123456789ab,script=no,downscript=no');
    expect(argv).toContain('virtio-net-pci,netdev=n0,mac=52:54:0a:d5:00:64');
    expect(argv).toContain('-daemonize');
  });

  it('uses tap names within IFNAMSIZ', () => {
    expect(tapName('ws-0123456789ab').length).toBeLessThanOrEqual(15);
  });
});

describe('node paths', () => {
  it('refuses to build a path from anything but a workspace id', () => {
    const p = nodePaths('/var/lib/vws/node');
    expect(workspaceDir(p, 'ws-0123456789ab')).toBe('/var/lib/vws/node/workspaces/ws-0123456789ab');
    expect(() => workspaceDir(p, '../../etc')).toThrow(/refusing/);
  });
});

describe('dnsmasq host entries and leases', () => {
  it('writes one dhcp-hostsdir line per VM', () => {
    expect(hostLine({ workspaceId: 'ws-0123456789ab', mac: '52:54:0a:d5:00:64', ip: '10.213.0.100', hostname: 'ws-a' })).toBe(
      '52:54:0a:d5:00:64,10.213.0.100,ws-a\n',
    );
  });

  it('finds the IP leased to a MAC', () => {
    const leases = '1790000000 52:54:0a:d5:00:65 10.213.0.101 ws-b *\n1790000000 52:54:0a:d5:00:64 10.213.0.100 ws-a 01:52:54\n';
    expect(leasedIp(leases, '52:54:0A:D5:00:64')).toBe('10.213.0.100');
    expect(leasedIp(leases, '52:54:0a:d5:00:99')).toBeNull();
  });
});

describe('search attributes', () => {
  it('are the same in temporal/search-attributes.txt and in the code', () => {
    const file = readFileSync(join(__dirname, '../../temporal/search-attributes.txt'), 'utf8')
      .split('\n')
      .filter((l) => l && !l.startsWith('#'));
    const types: Record<string, string> = { KEYWORD: 'Keyword' };
    expect(file.sort()).toEqual(SEARCH_ATTRIBUTES.map((k) => `${k.name}=${types[k.type]}`).sort());
  });
});
