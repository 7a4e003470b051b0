/**
 * What the network activities exchange with the workflow: a DHCP host entry, the DHCP server that
 * delivers it, and a VM interface to guard against spoofing. Plain data (it travels in workflow history).
 */

/** One DHCP host entry: the only MAC that may obtain the IP, and the options sent with it. */
export interface DhcpEntry {
  mac: string;
  ip: string;
  hostname: string;
  gateway: string;
  netmask: string;
  broadcast: string;
  dns: string[];
}

/**
 * The DHCP server of one network on one host (a node, or the head for central delivery). vws owns it:
 * it writes its configuration and host entries under `<dhcp dir>/<network>/`, starts it when it gets
 * its first entry, reloads it on every change and stops it when its last entry is gone.
 */
export interface DhcpServerSpec {
  /** Network (pool) name; also the name of the server's directory. */
  network: string;
  /** The network's subnet, CIDR (`10.213.0.0/24`). */
  subnet: string;
  /** Interface the server listens on: the network's bridge on that host. It must hold an address in the subnet. */
  interface: string;
  server: 'dnsmasq' | 'isc-dhcpd';
}

/** A VM interface as the anti-spoofing rules see it. */
export interface GuardedNic {
  /** Host-side interface name (tap or vif), see {@link nicInterfaceName}. */
  iface: string;
  mac: string;
  ip: string;
  /**
   * Set on isolated networks: IPv4 and ARP from the VM to addresses inside `subnet` are dropped unless
   * the address is in `allowed` (the gateway, the DHCP server), so VMs on the network cannot reach each other.
   */
  isolate?: { subnet: string; allowed: string[] };
}

/**
 * The host-side interface name of a workspace's NIC `index`: `vw` + the id's 12 hex digits + the index
 * (15 characters, the kernel's IFNAMSIZ limit). Deterministic, so cleanup finds it from the id alone.
 */
export function nicInterfaceName(workspaceId: string, index: number): string {
  if (!/^ws-[0-9a-f]{12}$/.test(workspaceId)) throw new Error(`bad workspace id ${JSON.stringify(workspaceId)}`);
  if (!Number.isInteger(index) || index < 0 || index > 9) throw new Error(`bad NIC index ${index}`);
  return `vw${workspaceId.slice(3)}${index}`;
}
