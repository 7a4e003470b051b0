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

/** The netmask of a CIDR, dotted (`/24` → `255.255.255.0`). */
export function netmaskOf(cidr: string): string {
  const bits = Number(cidr.split('/')[1]);
  return intToIp(bits === 0 ? 0 : (2 ** 32 - 2 ** (32 - bits)));
}

/** The first address of a CIDR (the network address). */
export function networkAddressOf(cidr: string): string {
  const [base, bits] = cidr.split('/');
  const size = 2 ** (32 - Number(bits));
  return intToIp(Math.floor(ipToInt(base) / size) * size);
}

/** The broadcast address of a CIDR. */
export function broadcastOf(cidr: string): string {
  const size = 2 ** (32 - Number(cidr.split('/')[1]));
  return intToIp(ipToInt(networkAddressOf(cidr)) + size - 1);
}
