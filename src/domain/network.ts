/** IPv4 and MAC helpers for address pools. Pure. */
import type { PoolAddress } from './allocation';

/** Dotted quad → 32-bit unsigned integer; throws on anything that is not an IPv4 address. */
export function ipToInt(ip: string): number {
  const parts = ip.split('.');
  if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) {
    throw new Error(`not an IPv4 address: ${JSON.stringify(ip)}`);
  }
  return parts.reduce((acc, p) => acc * 256 + Number(p), 0);
}

/** 32-bit unsigned integer → dotted quad. */
export function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');
}

/** True when `ip` lies in `cidr` (e.g. `10.213.0.0/24`). */
export function inSubnet(ip: string, cidr: string): boolean {
  const [base, bitsText] = cidr.split('/');
  const bits = Number(bitsText);
  const size = 2 ** (32 - bits);
  const start = Math.floor(ipToInt(base) / size) * size;
  const n = ipToInt(ip);
  return n >= start && n < start + size;
}

/**
 * The MAC bound to an IP: locally administered prefix `52:54` followed by the four octets. Deterministic,
 * so an address keeps its MAC for good and a DHCP lease left by an earlier VM can never name another MAC.
 */
export function macForIp(ip: string): string {
  const n = ipToInt(ip);
  const octets = [0x52, 0x54, ...[24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256)];
  return octets.map((o) => o.toString(16).padStart(2, '0')).join(':');
}

/** Every address from `first` to `last` inclusive, with its bound MAC and a hostname `<prefix><last octet>`. */
export function expandRange(first: string, last: string, hostnamePrefix: string): PoolAddress[] {
  const a = ipToInt(first);
  const b = ipToInt(last);
  const out: PoolAddress[] = [];
  for (let n = a; n <= b; n++) {
    const ip = intToIp(n);
    out.push({ ip, mac: macForIp(ip), hostname: `${hostnamePrefix}${ip.split('.').join('-')}` });
  }
  return out;
}
