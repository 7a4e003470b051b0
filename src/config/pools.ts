/**
 * A network's address pool as the allocator holds it, expanded from the configuration: every range
 * address and every explicit entry, each with its options and a MAC bound to it for good.
 */
import type { PoolAddress } from '../domain/allocation';
import { broadcastOf, intToIp, ipToInt, macForIp, netmaskOf } from '../domain/network';
import type { VwsConfig } from './schema';

/** One network's configuration (input shape: defaults may still be missing). */
type NetworkConfig = Pick<VwsConfig['networks'][number], 'subnet' | 'gateway' | 'broadcast' | 'dns' | 'ranges' | 'entries'>;

/** A pool address and where in the configuration it came from (for error messages). */
export type ConfiguredAddress = PoolAddress & { origin: { kind: 'range' | 'entry'; index: number } };

/**
 * Every address of a network's pool, ranges first, then entries. A MAC absent from the configuration is
 * generated from the IP (`macForIp`): the same IP always has the same MAC, with nothing to store or lose.
 */
export function poolAddresses(n: NetworkConfig): ConfiguredAddress[] {
  const netmask = netmaskOf(n.subnet);
  const broadcast = n.broadcast ?? broadcastOf(n.subnet);
  const dns = n.dns ?? [];
  const out: ConfiguredAddress[] = [];
  (n.ranges ?? []).forEach((r, index) => {
    for (let v = ipToInt(r.first); v <= ipToInt(r.last); v++) {
      const ip = intToIp(v);
      out.push({ ip, mac: macForIp(ip), hostname: `${r.hostnamePrefix ?? 'ws-'}${ip.split('.').join('-')}`, gateway: n.gateway, netmask, broadcast, dns, origin: { kind: 'range', index } });
    }
  });
  (n.entries ?? []).forEach((e, index) => {
    out.push({
      ip: e.ip,
      mac: e.mac ?? macForIp(e.ip),
      hostname: e.hostname,
      gateway: e.gateway ?? n.gateway,
      netmask: e.netmask ?? netmask,
      broadcast: e.broadcast ?? broadcast,
      dns: e.dns ?? dns,
      origin: { kind: 'entry', index },
    });
  });
  return out;
}

/** The pools of every configured network, as the allocator's ledger holds them (plain data). */
export function configuredPools(config: VwsConfig): Record<string, PoolAddress[]> {
  return Object.fromEntries(config.networks.map((n) => [n.name, poolAddresses(n).map(({ origin: _origin, ...a }) => a)]));
}
