/**
 * DHCP delivery with dnsmasq on the node: one host entry file per workspace in dnsmasq's
 * `dhcp-hostsdir` (read by inotify when added), removed with a SIGHUP (dnsmasq forgets removed entries
 * only on reload) and a `dhcp_release` of the lease, so nothing of the VM stays in the DHCP server.
 */
import { join } from 'node:path';
import { heartbeat } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { FailureType } from '../../domain/errors';
import type { Executor } from '../../exec/executor';
import type { NodePaths } from '../node-paths';

/** Dependencies of the DHCP activities. */
export interface DhcpDeps {
  exec: Executor;
  paths: NodePaths;
  /** Interface dnsmasq serves (the node bridge), for `dhcp_release`. */
  interface: string;
  sleep?: (ms: number) => Promise<void>;
  beat?: (details: unknown) => void;
}

/** A DHCP host entry: the MAC that may have the IP, and the hostname sent with it. */
export interface DhcpEntry {
  workspaceId: string;
  mac: string;
  ip: string;
  hostname: string;
}

/** The dnsmasq host line for an entry (`dhcp-hostsdir` file format). */
export function hostLine(e: DhcpEntry): string {
  return `${e.mac},${e.ip},${e.hostname}\n`;
}

/** The IP leased to `mac` in a dnsmasq lease file (`expiry mac ip hostname client-id` per line). */
export function leasedIp(leases: string, mac: string): string | null {
  for (const line of leases.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 3 && f[1].toLowerCase() === mac.toLowerCase()) return f[2];
  }
  return null;
}

/** Creates the DHCP activities. */
export function createDhcpActivities(deps: DhcpDeps) {
  const sleep = deps.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const beat = deps.beat ?? ((d: unknown) => heartbeat(d));
  const entryFile = (id: string) => {
    if (!/^ws-[0-9a-f]{12}$/.test(id)) throw new Error(`bad workspace id ${JSON.stringify(id)}`);
    return join(deps.paths.dhcp.hostsDir, id);
  };

  const currentLease = async (mac: string) => leasedIp((await deps.exec.readFile(deps.paths.dhcp.leaseFile)) ?? '', mac);

  /** Releases the MAC's lease if dnsmasq has one on file; answers whether it had. */
  async function releaseLease(e: DhcpEntry): Promise<boolean> {
    const ip = await currentLease(e.mac);
    if (ip === null) return false;
    // dhcp_release sends a DHCPRELEASE on the client's behalf; dnsmasq then drops the lease.
    await deps.exec.run(['dhcp_release', deps.interface, ip, e.mac]);
    return true;
  }

  async function reloadDnsmasq(): Promise<void> {
    const pid = Number((await deps.exec.readFile(deps.paths.dhcp.pidFile))?.trim());
    if (!Number.isInteger(pid) || pid <= 0) throw new Error(`dnsmasq pid file ${deps.paths.dhcp.pidFile} missing: is dnsmasq running on this node?`);
    await deps.exec.run(['kill', '-HUP', String(pid)]);
  }

  return {
    /**
     * Adds the host entry before the VM boots. Idempotent (rewrites the same line). A lease for the MAC
     * still on file (a VM that vanished without its cleanup: a crash, a kill) is released first, so
     * `waitForLease` waits for this boot's own lease rather than return a stale one at once.
     */
    async addDhcpEntry(e: DhcpEntry): Promise<void> {
      await deps.exec.writeFileAtomic(entryFile(e.workspaceId), hostLine(e));
      if (await releaseLease(e)) {
        for (let i = 0; i < 40 && (await currentLease(e.mac)) !== null; i++) await sleep(250);
      }
    },

    /** Removes the host entry and the lease. Idempotent. */
    async removeDhcpEntry(e: DhcpEntry): Promise<void> {
      const file = entryFile(e.workspaceId);
      const existed = await deps.exec.exists(file);
      await deps.exec.remove(file);
      await releaseLease(e);
      if (existed) await reloadDnsmasq();
    },

    /** Waits until the VM has a lease; returns the IP it actually obtained. */
    async waitForLease(input: { mac: string; timeoutSeconds: number }): Promise<string> {
      const deadline = Date.now() + input.timeoutSeconds * 1000;
      for (;;) {
        const ip = await currentLease(input.mac);
        if (ip) return ip;
        if (Date.now() > deadline) {
          throw ApplicationFailure.nonRetryable(
            `no DHCP lease for ${input.mac} after ${input.timeoutSeconds} s`,
            FailureType.AddressTimeout,
          );
        }
        beat({ waitingFor: input.mac });
        await sleep(250);
      }
    },
  };
}
