/**
 * The anti-spoofing rules with real nft and real traffic, in throwaway namespaces: a bridge namespace
 * (where the rules live, as on a node) and three "hosts" on veths to its bridge: the guarded VM, a
 * gateway and another VM. Shows that the VM's own MAC and IP pass while a spoofed source IP, a spoofed
 * MAC and IPv6 are dropped (and counted), that isolation keeps it from the other VM but not from the
 * gateway, that applying twice changes nothing, and that removeFor leaves no table. Root only.
 */
import { randomBytes } from 'node:crypto';
import { createAntiSpoof, antiSpoofTable } from '../../src/activities/network/antispoof';
import { nicInterfaceName, type GuardedNic } from '../../src/activities/network/types';
import { addBridge, addNamespace, addVeth, host, NetnsExecutor, removeNamespaces, tag } from '../helpers/netns';

jest.setTimeout(60_000);

const t = tag();
const bridgeNs = `vwsas-${t}`;
const vmNs = `vwsas-${t}-vm`;
const gwNs = `vwsas-${t}-gw`;
const otherNs = `vwsas-${t}-o`;
const workspaceId = `ws-${randomBytes(6).toString('hex')}`;
const port = nicInterfaceName(workspaceId, 0);
const vmMac = '52:54:0a:58:00:0a';
const nic: GuardedNic = { iface: port, mac: vmMac, ip: '10.88.0.10' };
const exec = new NetnsExecutor(bridgeNs);
const guard = createAntiSpoof(exec);

/** True if one ping from the VM namespace to `ip` is answered. */
async function ping(ip: string, ...extra: string[]): Promise<boolean> {
  return host(['ip', 'netns', 'exec', vmNs, 'ping', '-n', '-q', '-c', '1', '-W', '1', ...extra, ip]).then(
    () => true,
    () => false,
  );
}

/** True if one IPv6 ping from the VM to the gateway's link-local address is answered. */
async function ping6Gateway(): Promise<boolean> {
  const out = await host(['ip', '-n', gwNs, '-6', '-o', 'addr', 'show', 'dev', 'eth0', 'scope', 'link']);
  const ll = /inet6 (fe80::[0-9a-f:]+)\//.exec(out)?.[1];
  if (!ll) throw new Error(`no link-local address on the gateway: ${out}`);
  return ping(`${ll}%eth0`, '-6');
}

/** Packets dropped so far by each rule of the VM's table, by rule comment. */
async function drops(): Promise<Record<string, number>> {
  const out = JSON.parse(await host(['ip', 'netns', 'exec', bridgeNs, 'nft', '-j', 'list', 'table', 'bridge', antiSpoofTable(port)])) as {
    nftables: { rule?: { comment?: string; expr: { counter?: { packets: number } }[] } }[];
  };
  const counts: Record<string, number> = {};
  for (const item of out.nftables) {
    if (!item.rule?.comment) continue;
    counts[item.rule.comment] = item.rule.expr.find((e) => e.counter)?.counter?.packets ?? 0;
  }
  return counts;
}

/** Forgets neighbours everywhere: a blocked ARP leaves a FAILED entry that would fail the next ping. */
async function flushNeighbours(): Promise<void> {
  for (const ns of [vmNs, gwNs, otherNs]) await host(['ip', '-n', ns, 'neigh', 'flush', 'all']);
}

beforeAll(async () => {
  for (const ns of [bridgeNs, vmNs, gwNs, otherNs]) await addNamespace(ns);
  await addBridge(bridgeNs, 'br0', '10.88.0.254/24');
  await addVeth({ bridgeNs, bridge: 'br0', port, innerNs: vmNs, inner: 'eth0', mac: vmMac, cidr: '10.88.0.10/24' });
  await addVeth({ bridgeNs, bridge: 'br0', port: `vwas${t}g`, innerNs: gwNs, inner: 'eth0', mac: '52:54:0a:58:00:01', cidr: '10.88.0.1/24' });
  await addVeth({ bridgeNs, bridge: 'br0', port: `vwas${t}o`, innerNs: otherNs, inner: 'eth0', mac: '52:54:0a:58:00:14', cidr: '10.88.0.20/24' });
});

afterAll(async () => {
  await removeNamespaces([bridgeNs, vmNs, gwNs, otherNs]);
});

test('the VM reaches the gateway with its own MAC and IP, under the rules too', async () => {
  expect(await ping('10.88.0.1')).toBe(true);
  // IPv6 works before the rules (retried: link-local addresses are usable once duplicate detection ends).
  let v6 = false;
  for (let i = 0; i < 5 && !v6; i++) v6 = await ping6Gateway();
  expect(v6).toBe(true);
  await guard.apply([nic]);
  expect(await guard.tables()).toEqual([antiSpoofTable(port)]);
  expect(await ping('10.88.0.1')).toBe(true);
  expect(await ping('10.88.0.20')).toBe(true);
});

test('a spoofed source IP is dropped and counted', async () => {
  const before = await drops();
  await host(['ip', '-n', vmNs, 'addr', 'add', '10.88.0.99/24', 'dev', 'eth0']);
  try {
    expect(await ping('10.88.0.1', '-I', '10.88.0.99')).toBe(false);
  } finally {
    await host(['ip', '-n', vmNs, 'addr', 'del', '10.88.0.99/24', 'dev', 'eth0']);
  }
  const after = await drops();
  // Depending on the neighbour cache, the ARP for the gateway or the ping itself carries the spoofed IP.
  expect(after['source IP'] + after['ARP sender IP']).toBeGreaterThan(before['source IP'] + before['ARP sender IP']);
  await flushNeighbours();
  expect(await ping('10.88.0.1')).toBe(true);
});

test('a spoofed source MAC is dropped and counted', async () => {
  const before = await drops();
  await host(['ip', '-n', vmNs, 'link', 'set', 'eth0', 'address', '52:54:0a:58:00:99']);
  try {
    await flushNeighbours();
    expect(await ping('10.88.0.1')).toBe(false);
  } finally {
    await host(['ip', '-n', vmNs, 'link', 'set', 'eth0', 'address', vmMac]);
  }
  expect((await drops())['source MAC']).toBeGreaterThan(before['source MAC']);
  await flushNeighbours();
  expect(await ping('10.88.0.1')).toBe(true);
});

test('IPv6 from the VM is dropped and counted', async () => {
  const before = await drops();
  expect(await ping6Gateway()).toBe(false);
  expect((await drops())['not IPv4 or ARP']).toBeGreaterThan(before['not IPv4 or ARP']);
});

test('a DHCP server reply from the VM is dropped and counted', async () => {
  const before = await drops();
  await host(['ip', 'netns', 'exec', vmNs, 'socat', '-u', 'OPEN:/proc/version', 'UDP4-SENDTO:10.88.0.1:68,sourceport=67']);
  expect((await drops())['DHCP server']).toBeGreaterThan(before['DHCP server']);
});

test('isolation keeps the VM from the other VM but not from the gateway', async () => {
  await guard.apply([{ ...nic, isolate: { subnet: '10.88.0.0/24', allowed: ['10.88.0.1'] } }]);
  await flushNeighbours();
  expect(await ping('10.88.0.1')).toBe(true);
  expect(await ping('10.88.0.20')).toBe(false);
  const d = await drops();
  expect(d['isolated: ARP for another VM'] + d['isolated: IPv4 to another VM']).toBeGreaterThan(0);
});

test('applying twice leaves the same single table', async () => {
  const list = async () =>
    (await host(['ip', 'netns', 'exec', bridgeNs, 'nft', 'list', 'table', 'bridge', antiSpoofTable(port)])).replace(/counter packets \d+ bytes \d+/g, 'counter');
  await guard.apply([nic]);
  const once = await list();
  await guard.apply([nic]);
  expect(await list()).toBe(once);
  expect(await guard.tables()).toEqual([antiSpoofTable(port)]);
  expect(once.match(/ drop /g)).toHaveLength(5);
});

test('removeFor deletes every table of the workspace and nothing else, idempotently', async () => {
  const other = { iface: `vwffffffffffff0`, mac: '52:54:0a:58:00:20', ip: '10.88.0.30' };
  await guard.apply([{ ...nic, iface: nicInterfaceName(workspaceId, 1), ip: '10.88.0.11' }, other]);
  expect((await guard.tables()).sort()).toEqual([antiSpoofTable(port), antiSpoofTable(nicInterfaceName(workspaceId, 1)), antiSpoofTable(other.iface)].sort());
  await guard.removeFor(workspaceId);
  expect(await guard.tables()).toEqual([antiSpoofTable(other.iface)]);
  await guard.removeFor(workspaceId);
  await guard.removeFor('ws-ffffffffffff');
  expect(await guard.tables()).toEqual([]);
  // Without any rules, the VM reaches the other VM again.
  await flushNeighbours();
  expect(await ping('10.88.0.20')).toBe(true);
});
