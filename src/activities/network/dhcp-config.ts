/**
 * What vws writes for a network's DHCP server, and what it reads back: pure functions over validated
 * values (see ./validate). Both servers are told to stay silent for every MAC they have no entry for,
 * because the servers of several nodes share one L2 segment and each must answer only its own VMs.
 */
import type { DhcpEntry, DhcpServerSpec } from './types';
import type { Subnet } from './validate';

/** Files of one network's DHCP server, all under `<dhcp dir>/<network>/`. */
export interface DhcpFiles {
  dir: string;
  /** The per-network lock every change takes. */
  lock: string;
  /** vws's own record: the entries and, for dhcpd, where each entry's part of the log starts. */
  state: string;
  /** dnsmasq's configuration. */
  dnsmasqConf: string;
  /** dnsmasq's host entries (`dhcp-hostsfile`). */
  hosts: string;
  /** dnsmasq's per-entry options (`dhcp-optsfile`). */
  options: string;
  /** dhcpd's configuration (its host entries included). */
  dhcpdConf: string;
  leases: string;
  pid: string;
  /**
   * `<pid> <digest>`: the server process that was started on files with that digest. A worker killed
   * between writing new files and restarting the server leaves a server running on the old ones; the
   * digest tells the next change (or its retry) to restart it.
   */
  served: string;
  /** The server's log (dnsmasq `log-facility`, dhcpd's stderr); rotated to `.1` when the server stops for good. */
  log: string;
}

/** The files of `network` under `dir` (both already validated). */
export function dhcpFiles(dir: string, network: string): DhcpFiles {
  const d = `${dir}/${network}`;
  return {
    dir: d,
    lock: `${d}/lock`,
    state: `${d}/entries.json`,
    dnsmasqConf: `${d}/server.conf`,
    hosts: `${d}/hosts`,
    options: `${d}/options`,
    dhcpdConf: `${d}/dhcpd.conf`,
    leases: `${d}/leases`,
    pid: `${d}/server.pid`,
    served: `${d}/served`,
    log: `${d}/server.log`,
  };
}

/** vws's record of a network's server. */
export interface DhcpState {
  entries: DhcpEntry[];
  /** dhcpd only: the log size when each MAC's entry was added; its ACKs are looked for after that. */
  marks: Record<string, number>;
}

/** Parses the state file; a missing or unreadable one is empty (it is rewritten on the next change). */
export function parseState(text: string | null): DhcpState {
  if (text === null) return { entries: [], marks: {} };
  try {
    const v = JSON.parse(text) as Partial<DhcpState>;
    return { entries: Array.isArray(v.entries) ? v.entries : [], marks: v.marks && typeof v.marks === 'object' ? v.marks : {} };
  } catch {
    return { entries: [], marks: {} };
  }
}

/**
 * The entries with `entry` in place of every entry that shares its MAC, IP or hostname (any of the three
 * would make the server hand out one thing twice), and the entries it replaced.
 */
export function withEntry(entries: DhcpEntry[], entry: DhcpEntry): { entries: DhcpEntry[]; replaced: DhcpEntry[] } {
  const clash = (e: DhcpEntry) => e.mac === entry.mac || e.ip === entry.ip || e.hostname.toLowerCase() === entry.hostname.toLowerCase();
  return { entries: [...entries.filter((e) => !clash(e)), entry], replaced: entries.filter(clash) };
}

/** The dnsmasq tag of an entry: per MAC, so each entry gets its own options. */
export function entryTag(mac: string): string {
  return `m${mac.replace(/:/g, '')}`;
}

/**
 * dnsmasq's configuration: DHCP only (`port=0`), on the network's interface only, static addresses only
 * (`static` range: no pool), and `dhcp-ignore=tag:!known` so a MAC without an entry gets no answer at
 * all. Not `dhcp-authoritative`: an authoritative server NAKs requests it does not know, which would
 * fight the other nodes' servers on the same segment.
 */
export function dnsmasqConf(server: DhcpServerSpec, net: Subnet, f: DhcpFiles): string {
  return [
    `# Written by vws for network ${server.network}; rewritten on every change.`,
    'port=0',
    `interface=${server.interface}`,
    'bind-interfaces',
    `dhcp-range=${net.base},static,${net.netmask},12h`,
    'dhcp-ignore=tag:!known',
    `dhcp-hostsfile=${f.hosts}`,
    `dhcp-optsfile=${f.options}`,
    `dhcp-leasefile=${f.leases}`,
    `pid-file=${f.pid}`,
    'log-dhcp',
    `log-facility=${f.log}`,
    // Stay root: as nobody, dnsmasq could not rewrite a lease file in vws's directory.
    'user=root',
    '',
  ].join('\n');
}

/** dnsmasq host lines (`dhcp-hostsfile`): `mac,set:<tag>,ip,hostname`, one per entry. */
export function dnsmasqHosts(entries: DhcpEntry[]): string {
  return entries.map((e) => `${e.mac},set:${entryTag(e.mac)},${e.ip},${e.hostname}\n`).join('');
}

/** dnsmasq option lines (`dhcp-optsfile`), tagged per entry. Option 28 (broadcast) has no name in dnsmasq. */
export function dnsmasqOptions(entries: DhcpEntry[]): string {
  return entries
    .flatMap((e) => {
      const t = `tag:${entryTag(e.mac)}`;
      return [
        `${t},option:router,${e.gateway}`,
        `${t},option:netmask,${e.netmask}`,
        `${t},28,${e.broadcast}`,
        ...(e.dns.length ? [`${t},option:dns-server,${e.dns.join(',')}`] : []),
      ];
    })
    .map((l) => `${l}\n`)
    .join('');
}

/**
 * dhcpd's configuration: the subnet declared without a range (so no address is ever handed out
 * dynamically), one `host` per entry with a fixed address and its options, `not authoritative` for the
 * same reason as dnsmasq, and `deny unknown-clients` in case a range is ever added.
 */
export function dhcpdConf(server: DhcpServerSpec, net: Subnet, entries: DhcpEntry[]): string {
  const hosts = entries.map((e) =>
    [
      `host ${entryTag(e.mac)} {`,
      `  hardware ethernet ${e.mac};`,
      `  fixed-address ${e.ip};`,
      `  option host-name "${e.hostname}";`,
      `  option routers ${e.gateway};`,
      `  option subnet-mask ${e.netmask};`,
      `  option broadcast-address ${e.broadcast};`,
      ...(e.dns.length ? [`  option domain-name-servers ${e.dns.join(', ')};`] : []),
      '}',
    ].join('\n'),
  );
  return [
    `# Written by vws for network ${server.network}; rewritten on every change.`,
    'not authoritative;',
    'deny unknown-clients;',
    'ddns-update-style none;',
    'default-lease-time 43200;',
    'max-lease-time 43200;',
    `subnet ${net.base} netmask ${net.netmask} {`,
    '}',
    ...hosts,
    '',
  ].join('\n');
}

/** One lease line of a dnsmasq lease file (`expiry mac ip hostname client-id`). */
export interface DnsmasqLease {
  mac: string;
  ip: string;
}

/** The leases in a dnsmasq lease file. */
export function parseLeases(leases: string): DnsmasqLease[] {
  return leases
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 3)
    .map((f) => ({ mac: f[1].toLowerCase(), ip: f[2] }));
}

/** The IP leased to `mac` in a dnsmasq lease file, or null. */
export function leasedIp(leases: string, mac: string): string | null {
  return parseLeases(leases).find((l) => l.mac === mac.toLowerCase())?.ip ?? null;
}

/** The lease file without the lines `drop` selects (dnsmasq must not be running while it is rewritten). */
export function withoutLeases(leases: string, drop: (l: DnsmasqLease) => boolean): string {
  return leases
    .split('\n')
    .filter((line) => {
      const f = line.trim().split(/\s+/);
      return line.trim() !== '' && !(f.length >= 3 && drop({ mac: f[1].toLowerCase(), ip: f[2] }));
    })
    .map((l) => `${l}\n`)
    .join('');
}

/**
 * The IP of the newest `DHCPACK on <ip> to <mac>` line for `mac` in a dhcpd log, or null. Fixed-address
 * hosts never appear in dhcpd's lease file, so its log is the only record that a VM got its address.
 */
export function ackedIp(log: string, mac: string): string | null {
  let ip: string | null = null;
  for (const m of log.matchAll(/DHCPACK on (\d{1,3}(?:\.\d{1,3}){3}) to ([0-9a-fA-F:]{17})\b/g)) {
    if (m[2].toLowerCase() === mac.toLowerCase()) ip = m[1];
  }
  return ip;
}
