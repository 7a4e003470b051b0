/** The anti-spoofing nft script: what it drops, that it replaces its table atomically, what it refuses. */
import { antiSpoofScript, createAntiSpoof } from '../../src/activities/network/antispoof';
import type { GuardedNic } from '../../src/activities/network/types';
import type { Executor, RunOptions } from '../../src/exec/executor';

const nic: GuardedNic = { iface: 'vw0123456789ab0', mac: '52:54:0A:D5:00:64', ip: '10.213.0.100' };

describe('the anti-spoofing script', () => {
  it('replaces the table in one transaction: create empty, delete, define', () => {
    const lines = antiSpoofScript(nic).split('\n');
    expect(lines.slice(0, 5)).toEqual([
      'table bridge vws_vw0123456789ab0 {}',
      'delete table bridge vws_vw0123456789ab0',
      'table bridge vws_vw0123456789ab0 {',
      '  chain guard {',
      '    type filter hook prerouting priority -200; policy accept;',
    ]);
  });

  it('drops foreign source MACs and IPs, other ether types, foreign ARP senders and DHCP replies, with counters', () => {
    const rules = antiSpoofScript(nic)
      .split('\n')
      .filter((l) => l.includes('drop'))
      .map((l) => l.trim());
    expect(rules).toEqual([
      'iifname "vw0123456789ab0" ether saddr != 52:54:0a:d5:00:64 counter drop comment "source MAC"',
      'iifname "vw0123456789ab0" ether type != { ip, arp } counter drop comment "not IPv4 or ARP"',
      'iifname "vw0123456789ab0" ip saddr != { 0.0.0.0, 10.213.0.100 } counter drop comment "source IP"',
      'iifname "vw0123456789ab0" arp saddr ip != { 0.0.0.0, 10.213.0.100 } counter drop comment "ARP sender IP"',
      'iifname "vw0123456789ab0" udp sport 67 counter drop comment "DHCP server"',
    ]);
  });

  it('isolates: IPv4 and ARP into the subnet only to allowed addresses, itself and broadcasts', () => {
    const script = antiSpoofScript({ ...nic, isolate: { subnet: '10.213.0.0/24', allowed: ['10.213.0.1', '10.213.0.1', '10.213.0.2'] } });
    expect(script).toContain(
      'iifname "vw0123456789ab0" ip daddr 10.213.0.0/24 ip daddr != { 10.213.0.1, 10.213.0.2, 10.213.0.100, 10.213.0.255, 255.255.255.255 } counter drop',
    );
    expect(script).toContain(
      'iifname "vw0123456789ab0" arp operation request arp daddr ip 10.213.0.0/24 arp daddr ip != { 10.213.0.1, 10.213.0.2, 10.213.0.100 } counter drop',
    );
    expect(antiSpoofScript(nic)).not.toContain('daddr');
  });

  it.each([
    ['an interface with a quote', { iface: 'vw0"; flush ruleset' }],
    ['an interface with a newline', { iface: 'vw0\nflush' }],
    ['a MAC with a brace', { mac: '52:54:0a:d5:00:64 }' }],
    ['an address with a brace', { ip: '10.213.0.100 }' }],
    ['0.0.0.0', { ip: '0.0.0.0' }],
    ['an allowed address that is not one', { isolate: { subnet: '10.213.0.0/24', allowed: ['10.213.0.1, 0.0.0.0/0'] } }],
    ['an isolated subnet that is not one', { isolate: { subnet: '10.213.0.0/24 }', allowed: [] } }],
  ])('refuses %s as InvalidSpec', (_what, over) => {
    expect(() => antiSpoofScript({ ...nic, ...over } as GuardedNic)).toThrow(expect.objectContaining({ type: 'InvalidSpec', nonRetryable: true }));
  });
});

describe('createAntiSpoof', () => {
  /** An executor that records commands and files and answers `nft list tables`. */
  function fake(tables: string) {
    const runs: string[][] = [];
    const files = new Map<string, string>();
    const exec = {
      where: 'fake',
      async run(argv: readonly string[], _o?: RunOptions) {
        runs.push([...argv, ...(argv[1] === '-f' ? [files.get(argv[2])!] : [])]);
        return { code: 0, stdout: argv[1] === 'list' ? tables : '', stderr: '' };
      },
      async createExclusive(path: string, content: string) {
        if (files.has(path)) return false;
        files.set(path, content);
        return true;
      },
      async remove(path: string) {
        files.delete(path);
      },
    } as unknown as Executor;
    return { exec, runs, files };
  }

  it('applies every NIC in one nft run from a file it removes afterwards', async () => {
    const { exec, runs, files } = fake('');
    await createAntiSpoof(exec).apply([nic, { ...nic, iface: 'vw0123456789ab1', ip: '10.213.0.101', mac: '52:54:0a:d5:00:65' }]);
    expect(runs).toHaveLength(1);
    expect(runs[0].slice(0, 2)).toEqual(['nft', '-f']);
    expect(runs[0][2]).toMatch(/^\/tmp\/vws-nft-[0-9a-f]{16}\.nft$/);
    expect(runs[0][3]).toContain('table bridge vws_vw0123456789ab0 {\n');
    expect(runs[0][3]).toContain('table bridge vws_vw0123456789ab1 {\n');
    expect(files.size).toBe(0);
  });

  it('writes nothing when one NIC is invalid', async () => {
    const { exec, runs, files } = fake('');
    await expect(createAntiSpoof(exec).apply([nic, { ...nic, iface: 'x y' }])).rejects.toMatchObject({ type: 'InvalidSpec' });
    expect(runs).toEqual([]);
    expect(files.size).toBe(0);
  });

  it("removes only the workspace's tables, each by create-then-delete", async () => {
    const { exec, runs } = fake(
      'table bridge vws_vw0123456789ab0\ntable bridge vws_vw0123456789ab1\ntable bridge vws_vwffffffffffff0\ntable bridge other\n',
    );
    const guard = createAntiSpoof(exec);
    expect(await guard.tables()).toEqual(['vws_vw0123456789ab0', 'vws_vw0123456789ab1', 'vws_vwffffffffffff0']);
    await guard.removeFor('ws-0123456789ab');
    expect(runs[runs.length - 1][3]).toBe(
      'table bridge vws_vw0123456789ab0 {}\ndelete table bridge vws_vw0123456789ab0\ntable bridge vws_vw0123456789ab1 {}\ndelete table bridge vws_vw0123456789ab1\n',
    );
    await expect(guard.removeFor('../x')).rejects.toMatchObject({ type: 'InvalidSpec' });
  });

  it('does not run nft to remove what is not there', async () => {
    const { exec, runs } = fake('table bridge other\n');
    await createAntiSpoof(exec).removeFor('ws-0123456789ab');
    expect(runs.map((r) => r.slice(0, 2))).toEqual([['nft', 'list']]);
  });
});
