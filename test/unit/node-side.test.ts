import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { nodePaths, workspaceDir } from '../../src/activities/node-paths';
import { qemuArgv } from '../../src/activities/qemu/driver';
import { nicInterfaceName } from '../../src/activities/network/types';
import { SEARCH_ATTRIBUTES } from '../../src/domain/messages';
import { sampleVmSpec } from '../helpers/vm-spec';

const spec = sampleVmSpec;

describe('the qemu driver command line', () => {
  const argv = qemuArgv('qemu-system-x86_64', 'tcg', spec, { dir: '/d', qmp: '/d/qmp.sock', pid: '/d/qemu.pid', serial: '/d/serial.log' });

  it('is an argv array with TCG, the overlay, the tap and the bound MAC', () => {
    expect(argv[0]).toBe('qemu-system-x86_64');
    expect(argv.slice(argv.indexOf('-accel'), argv.indexOf('-accel') + 2)).toEqual(['-accel', 'tcg']);
    expect(argv).toContain('file=/n/workspaces/ws-0123456789ab/root.qcow2,if=virtio,format=qcow2');
    expect(argv).toContain('tap,id=n0,ifname=vw0123456789ab0,script=no,downscript=no');
    expect(argv).toContain('virtio-net-pci,netdev=n0,mac=52:54:0a:d5:00:64');
    expect(argv).toContain('-daemonize');
  });

  it('uses interface names within IFNAMSIZ, one per NIC', () => {
    expect(nicInterfaceName('ws-0123456789ab', 9)).toBe('vw0123456789ab9');
    expect(() => nicInterfaceName('ws-0123456789ab', 10)).toThrow(/NIC index/);
    const two = qemuArgv('q', 'tcg', { ...spec, nics: [...spec.nics, { mac: '52:54:0a:d6:00:64', bridge: 'br1', iface: 'vw0123456789ab1' }] }, { dir: '/d', qmp: '/d/q', pid: '/d/p', serial: '/d/s' });
    expect(two).toContain('tap,id=n1,ifname=vw0123456789ab1,script=no,downscript=no');
    expect(two).toContain('virtio-net-pci,netdev=n1,mac=52:54:0a:d6:00:64');
  });
});

describe('node paths', () => {
  it('refuses to build a path from anything but a workspace id', () => {
    const p = nodePaths('/var/lib/vws/node');
    expect(workspaceDir(p, 'ws-0123456789ab')).toBe('/var/lib/vws/node/workspaces/ws-0123456789ab');
    expect(() => workspaceDir(p, '../../etc')).toThrow(/refusing/);
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
