/**
 * Strict checks of what the network activities write into configuration files and nft scripts. The
 * values come from the workflow (so from the site configuration and the allocator), but they end up in
 * files that a daemon or nft parses line by line: one newline, quote or brace in a hostname would add a
 * directive of its choosing. So every value is checked against a narrow shape before anything is
 * written, and normalized (lowercase MACs) so comparisons are exact. Failures are `InvalidSpec`:
 * retrying cannot fix them.
 */
import { ApplicationFailure } from '@temporalio/common';
import { FailureType } from '../../domain/errors';
import { intToIp, ipToInt } from '../../domain/network';
import type { DhcpEntry, DhcpServerSpec, GuardedNic } from './types';

/** A parsed IPv4 subnet. */
export interface Subnet {
  /** The network address (`10.213.0.0`), also for a CIDR written with host bits set. */
  base: string;
  /** Prefix length. */
  bits: number;
  /** Dotted netmask (`255.255.255.0`). */
  netmask: string;
  /** The subnet's broadcast address. */
  broadcast: string;
  /** The CIDR as nft and humans read it (`10.213.0.0/24`). */
  cidr: string;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
/** One DNS label: what every hostname vws hands out is (`<prefix><ip with dashes>`). */
const HOSTNAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i;
/** Interface names: the kernel allows almost anything up to 15 bytes; vws's own are far narrower. */
const IFACE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;
/** Network names as the configuration allows them. */
const NETWORK = /^[a-z][a-z0-9-]{0,30}$/;

/** The failure every check throws. */
export function invalid(message: string): ApplicationFailure {
  return ApplicationFailure.nonRetryable(message, FailureType.InvalidSpec);
}

/** A MAC address, lowercased; unicast only (a multicast source MAC is never a NIC's). */
export function checkMac(mac: string, what = 'MAC'): string {
  const m = typeof mac === 'string' ? mac.toLowerCase() : '';
  if (!MAC.test(m)) throw invalid(`${what} ${JSON.stringify(mac)} is not a MAC address like 52:54:0a:d5:00:64`);
  if (parseInt(m.slice(0, 2), 16) & 1) throw invalid(`${what} ${mac} is a multicast address`);
  return m;
}

/** An IPv4 address in canonical dotted form (`010.1.1.1` is refused, not reinterpreted). */
export function checkIp(ip: string, what = 'address'): string {
  try {
    if (typeof ip === 'string' && intToIp(ipToInt(ip)) === ip) return ip;
  } catch {
    // falls through to the typed failure
  }
  throw invalid(`${what} ${JSON.stringify(ip)} is not an IPv4 address`);
}

/** A subnet in CIDR form; host bits are allowed and dropped (`10.213.0.1/24` is `10.213.0.0/24`). */
export function parseSubnet(cidr: string, what = 'subnet'): Subnet {
  const m = typeof cidr === 'string' ? /^([0-9.]+)\/(\d{1,2})$/.exec(cidr) : null;
  const bits = m ? Number(m[2]) : NaN;
  if (!m || !(bits >= 1 && bits <= 30)) throw invalid(`${what} ${JSON.stringify(cidr)} is not an IPv4 CIDR with a prefix of 1 to 30 bits`);
  const size = 2 ** (32 - bits);
  const start = Math.floor(ipToInt(checkIp(m[1], what)) / size) * size;
  const base = intToIp(start);
  return { base, bits, netmask: intToIp(2 ** 32 - size), broadcast: intToIp(start + size - 1), cidr: `${base}/${bits}` };
}

/** True when `ip` is inside `subnet`. */
export function within(ip: string, subnet: Subnet): boolean {
  const n = ipToInt(ip);
  const start = ipToInt(subnet.base);
  return n >= start && n <= ipToInt(subnet.broadcast);
}

/** An interface name that is safe in a file name, a config line and an nft identifier. */
export function checkInterface(name: string, what = 'interface'): string {
  if (typeof name !== 'string' || !IFACE.test(name)) throw invalid(`${what} ${JSON.stringify(name)} is not an interface name (letters, digits, _ . -; at most 15)`);
  return name;
}

/** A DHCP server spec, with its subnet parsed. */
export function checkServer(server: DhcpServerSpec): DhcpServerSpec & { net: Subnet } {
  if (typeof server?.network !== 'string' || !NETWORK.test(server.network)) throw invalid(`network name ${JSON.stringify(server?.network)} is not valid`);
  if (server.server !== 'dnsmasq' && server.server !== 'isc-dhcpd') throw invalid(`unknown DHCP server ${JSON.stringify(server.server)}`);
  const net = parseSubnet(server.subnet, `subnet of network ${server.network}`);
  return { network: server.network, subnet: net.cidr, interface: checkInterface(server.interface), server: server.server, net };
}

/** A DHCP entry of `net`: every field checked, the MAC lowercased, the address a host of the subnet. */
export function checkEntry(entry: DhcpEntry, net: Subnet): DhcpEntry {
  const mac = checkMac(entry?.mac);
  const ip = checkIp(entry.ip, 'entry address');
  if (!within(ip, net) || ip === net.base || ip === net.broadcast) throw invalid(`${ip} is not a host address of ${net.cidr}`);
  if (typeof entry.hostname !== 'string' || !HOSTNAME.test(entry.hostname)) {
    throw invalid(`hostname ${JSON.stringify(entry.hostname)} is not a single DNS label (letters, digits and -)`);
  }
  if (!Array.isArray(entry.dns) || entry.dns.length > 8) throw invalid('dns must be a list of at most 8 addresses');
  return {
    mac,
    ip,
    hostname: entry.hostname,
    gateway: checkIp(entry.gateway, 'gateway'),
    netmask: checkIp(entry.netmask, 'netmask'),
    broadcast: checkIp(entry.broadcast, 'broadcast'),
    dns: entry.dns.map((d) => checkIp(d, 'DNS server')),
  };
}

/** A NIC to guard, normalized. */
export function checkNic(nic: GuardedNic): GuardedNic {
  const out: GuardedNic = { iface: checkInterface(nic?.iface, 'NIC interface'), mac: checkMac(nic.mac), ip: checkIp(nic.ip, 'NIC address') };
  if (out.ip === '0.0.0.0') throw invalid('a NIC cannot be guarded for 0.0.0.0');
  if (nic.isolate) {
    if (!Array.isArray(nic.isolate.allowed)) throw invalid('isolate.allowed must be a list of addresses');
    out.isolate = { subnet: parseSubnet(nic.isolate.subnet, 'isolated subnet').cidr, allowed: nic.isolate.allowed.map((a) => checkIp(a, 'allowed address')) };
  }
  return out;
}

/** A directory path that may appear in a daemon's configuration file: absolute, no spaces or quotes. */
export function checkDir(dir: string, what = 'directory'): string {
  if (typeof dir !== 'string' || !/^\/[A-Za-z0-9._/-]*$/.test(dir) || dir.split('/').includes('..')) {
    throw invalid(`${what} ${JSON.stringify(dir)} must be an absolute path of letters, digits, . _ - and /`);
  }
  return dir.replace(/\/+$/, '') || '/';
}
