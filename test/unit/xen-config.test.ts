/**
 * The Xen driver's pure parts: the xl domain config and the parsers of `xl list` / `losetup` output.
 * The samples in test/fixtures/xen were recorded on the testbed's Xen node xen1 (Xen 4.17, util-linux 2.38),
 * while XenDriver was creating ws-0000000000e1 (hence its transient `--p---` state, and `xl list -l`
 * leaving it out).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FailureType } from '../../src/domain/errors';
import type { VmSpec } from '../../src/activities/hypervisor';
import {
  checkXenDisks,
  loopsUnder,
  parseLosetupAssociations,
  parseXlList,
  powerStateFromFlags,
  renderDomainConfig,
  xenVdev,
  xlString,
} from '../../src/activities/xen/config';

const fixture = (f: string) => readFileSync(join(__dirname, '..', 'fixtures', 'xen', f), 'utf8');

const spec: VmSpec = {
  name: 'ws-0000000000e1',
  hostname: 'xen-e1',
  memoryMiB: 128,
  vcpus: 2,
  rootDisk: '/var/lib/vws/node/workspaces/ws-0000000000e1/root.raw',
  kernel: { vmlinuz: '/var/lib/vws/node/kernels/default/vmlinuz', initrd: '/var/lib/vws/node/kernels/default/initrd.gz' },
  nics: [{ mac: '52:54:00:e1:00:01', bridge: 'xenbr0', iface: 'vw0000000000e10' }],
};

describe('renderDomainConfig', () => {
  test('a PV domain with the loop device as phy: disk and the vif on the bridge', () => {
    expect(renderDomainConfig(spec, '/dev/loop3')).toBe(
      [
        '# Written by vws (XenDriver); root disk "/var/lib/vws/node/workspaces/ws-0000000000e1/root.raw" as /dev/loop3',
        'name = "ws-0000000000e1"',
        'type = "pv"',
        'memory = 128',
        'vcpus = 2',
        'kernel = "/var/lib/vws/node/kernels/default/vmlinuz"',
        'ramdisk = "/var/lib/vws/node/kernels/default/initrd.gz"',
        'extra = "console=hvc0 quiet vmname=xen-e1"',
        `vif = [ "mac=52:54:00:e1:00:01,bridge=xenbr0,vifname=vw0000000000e10" ]`,
        'disk = [ "phy:/dev/loop3,xvda,w" ]',
        'on_poweroff = "destroy"',
        'on_reboot = "restart"',
        'on_crash = "destroy"',
        '',
      ].join('\n'),
    );
  });

  test('extra disks: one loop device each, as xvdb, xvdc… after the root, named in the header', () => {
    const dir = '/var/lib/vws/node/workspaces/ws-0000000000e1';
    const withDisks: VmSpec = {
      ...spec,
      disks: [
        { path: `${dir}/part1.raw`, format: 'raw' },
        { path: `${dir}/part2.raw`, format: 'raw' },
      ],
    };
    const cfg = renderDomainConfig(withDisks, '/dev/loop3', ['/dev/loop4', '/dev/loop7']).split('\n');
    expect(cfg.slice(0, 3)).toEqual([
      `# Written by vws (XenDriver); root disk "${dir}/root.raw" as /dev/loop3`,
      `# xvdb: "${dir}/part1.raw" as /dev/loop4`,
      `# xvdc: "${dir}/part2.raw" as /dev/loop7`,
    ]);
    expect(cfg).toContain('disk = [ "phy:/dev/loop3,xvda,w", "phy:/dev/loop4,xvdb,w", "phy:/dev/loop7,xvdc,w" ]');
    expect(() => checkXenDisks(withDisks, dir)).not.toThrow();
    // An empty list renders exactly the config of a root-only spec.
    expect(renderDomainConfig({ ...spec, disks: [] }, '/dev/loop3', [])).toBe(renderDomainConfig(spec, '/dev/loop3'));
  });

  test('a qcow2 extra disk is refused, naming the disk', () => {
    const dir = '/var/lib/vws/node/workspaces/ws-0000000000e1';
    const withQcow2: VmSpec = { ...spec, disks: [{ path: `${dir}/part1.raw`, format: 'raw' }, { path: `${dir}/part2.qcow2`, format: 'qcow2' }] };
    const named = expect.objectContaining({ type: FailureType.InvalidSpec, nonRetryable: true, message: expect.stringContaining(`disks[1] "${dir}/part2.qcow2" (xvdc) is qcow2`) });
    expect(() => checkXenDisks(withQcow2, dir)).toThrow(named);
    expect(() => renderDomainConfig(withQcow2, '/dev/loop3', ['/dev/loop4', '/dev/loop5'])).toThrow(named);
  });

  test.each([
    ['a disk outside the workspace dir (its loop would survive a crash unseen)', { disks: [{ path: '/var/lib/vws/node/cache/x.raw', format: 'raw' as const }] }, /disks\[0\].*not a file in the workspace directory/],
    ['a sibling workspace sharing the prefix', { disks: [{ path: '/var/lib/vws/node/workspaces/ws-0000000000e10/p.raw', format: 'raw' as const }] }, /not a file in the workspace/],
    ['a path escaping with ..', { disks: [{ path: '/var/lib/vws/node/workspaces/ws-0000000000e1/../x/p.raw', format: 'raw' as const }] }, /not a file in the workspace/],
    ['the root disk outside', { rootDisk: '/tmp/root.raw' }, /rootDisk.*not a file in the workspace/],
    ['the root again as an extra disk', { disks: [{ path: spec.rootDisk, format: 'raw' as const }] }, /disks\[0\].*attached twice/],
  ])('checkXenDisks refuses %s', (_what, patch, message) => {
    expect(() => checkXenDisks({ ...spec, ...patch }, '/var/lib/vws/node/workspaces/ws-0000000000e1')).toThrow(
      expect.objectContaining({ type: FailureType.InvalidSpec, message: expect.stringMatching(message) }),
    );
  });

  test('xvd names: xvda for the root, then one letter per disk, at most xvdz', () => {
    expect([0, 1, 2, 25].map(xenVdev)).toEqual(['xvda', 'xvdb', 'xvdc', 'xvdz']);
    expect(() => xenVdev(26)).toThrow(/at most 26 disks/);
  });

  test('refuses a loop list that does not match the disks', () => {
    expect(() => renderDomainConfig({ ...spec, disks: [{ path: '/p.raw', format: 'raw' }] }, '/dev/loop3', [])).toThrow(/1 extra disks but 0 loop devices/);
    expect(() => renderDomainConfig({ ...spec, disks: [{ path: '/p.raw', format: 'raw' }] }, '/dev/loop3', ['/dev/sda'])).toThrow(/does not match/);
  });

  const bad: Array<[string, Partial<VmSpec>]> = [
    ['a quote in a path', { kernel: { ...spec.kernel, vmlinuz: '/k"; on_crash="preserve' } }],
    ['a newline in the root disk', { rootDisk: '/x\nmemory=9999' }],
    ['a backslash', { kernel: { ...spec.kernel, initrd: '/i\\"' } }],
    ['a space in the hostname (extra kernel args)', { hostname: 'h init=/bin/sh' }],
    ['a comma in the bridge (extra vif keys)', { nics: [{ ...spec.nics[0], bridge: 'br0,script=/evil' }] }],
    ['a malformed MAC', { nics: [{ ...spec.nics[0], mac: '52:54:00:e1:00' }] }],
    ['a quote in the name', { name: 'ws-"x' }],
    ['zero memory', { memoryMiB: 0 }],
    ['fractional vcpus', { vcpus: 1.5 }],
  ];
  test.each(bad)('refuses %s with InvalidSpec', (_what, patch) => {
    expect(() => renderDomainConfig({ ...spec, ...patch }, '/dev/loop0')).toThrow(expect.objectContaining({ type: FailureType.InvalidSpec, nonRetryable: true }));
  });

  test('refuses a loop device that is not /dev/loopN', () => {
    expect(() => renderDomainConfig(spec, '/dev/sda,xvdb,w')).toThrow(/does not match/);
  });

  test('xlString quotes plain values and refuses control characters', () => {
    expect(xlString('f', 'a b/c-d')).toBe('"a b/c-d"');
    expect(() => xlString('f', 'tab\there')).toThrow(/control characters/);
  });
});

describe('xl list parsing (recorded on xen1)', () => {
  test('rows with name, domid, memory, vcpus and state; the header and the tab-separated columns', () => {
    expect(parseXlList(fixture('xl-list-during-create.txt'))).toEqual([
      { name: 'Domain-0', domid: 0, memMiB: 512, vcpus: 2, state: 'r-----' },
      { name: 'ws-0000000000e1', domid: 8, memMiB: 128, vcpus: 1, state: '--p---' },
    ]);
  });

  test('xl list -l leaves a domain under construction out (why list() uses plain xl list)', () => {
    const names = (JSON.parse(fixture('xl-list-l-during-create.json')) as Array<{ config: { c_info: { name: string } } }>).map((d) => d.config.c_info.name);
    expect(names).toEqual(['Domain-0']);
  });

  test.each([
    ['r-----', 'running'],
    ['-b----', 'running'],
    ['------', 'running'],
    ['--p---', 'paused'],
    ['-bp---', 'paused'],
    ['--ps--', 'shutoff'],
    ['---s--', 'shutoff'],
    ['---sr-', 'shutoff'], // shut down to reboot (seen on xen1 when nothing restarted it)
    ['---sc-', 'shutoff'], // crashed
    ['---ss-', 'shutoff'], // suspended (xl save)
    ['-----d', 'shutoff'],
  ])('state %s is %s', (flags, state) => {
    expect(powerStateFromFlags(flags)).toBe(state);
  });

  test('an unknown state string is an error, not a guess', () => {
    expect(() => powerStateFromFlags('r---')).toThrow(/unexpected xl state/);
    expect(() => powerStateFromFlags('-x----')).toThrow(/unexpected xl state/);
  });
});

describe('losetup parsing (recorded on xen1)', () => {
  test('losetup -j names the loop devices of a file', () => {
    expect(parseLosetupAssociations(fixture('losetup-j.txt'))).toEqual(['/dev/loop0']);
    expect(parseLosetupAssociations('')).toEqual([]);
  });

  test('losetup -J -l: loops whose backing file is below the workspace dir', () => {
    const json = fixture('losetup-list.json');
    expect(loopsUnder(json, '/var/lib/vws/node/workspaces/ws-0000000000e1')).toEqual(['/dev/loop0']);
    // A sibling whose id shares a prefix is not ours.
    expect(loopsUnder(json, '/var/lib/vws/node/workspaces/ws-0000000000e')).toEqual([]);
    expect(loopsUnder('{"loopdevices": []}', '/x')).toEqual([]);
    expect(loopsUnder('', '/x')).toEqual([]);
  });
});
