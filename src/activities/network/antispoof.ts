/**
 * Anti-spoofing for VM interfaces: nftables `bridge` rules on the host side of each NIC (tap or vif), so
 * a VM can only send frames with its own MAC, its own IPv4 address (or 0.0.0.0 while it asks DHCP) and
 * ARP about itself; no IPv6 or other ether types (it must not use addresses it was not given); no DHCP
 * server replies; and, on isolated networks, nothing to other VMs of the subnet.
 *
 * One table per NIC, `bridge vws_<iface>`, with one base chain at `prerouting` priority -200 (before
 * anything else on the bridge). Plain `ebtables` (legacy) does not work on these hosts; nft does.
 * Each script first creates the table empty, then deletes it, then defines it: `nft -f` runs a file as
 * one transaction, so applying replaces the rules atomically and applying twice is a no-op.
 */
import { randomBytes } from 'node:crypto';
import { ApplicationFailure } from '@temporalio/common';
import { FailureType } from '../../domain/errors';
import { CommandError, type Executor } from '../../exec/executor';
import type { GuardedNic } from './types';
import { checkDir, checkNic, invalid, parseSubnet } from './validate';

/** Prefix of every table vws creates; anything else in nft is not vws's. */
export const TABLE_PREFIX = 'vws_';

/** The nft table of a NIC's rules. */
export function antiSpoofTable(iface: string): string {
  return `${TABLE_PREFIX}${iface}`;
}

/** The lines that replace `table` atomically (or remove it, with no definition after them). */
function resetTable(table: string): string[] {
  return [`table bridge ${table} {}`, `delete table bridge ${table}`];
}

const set = (items: string[]) => `{ ${[...new Set(items)].join(', ')} }`;

/**
 * The nft script that (re)defines the rules of one NIC. Every value is validated first (it ends up in a
 * script nft parses); an invalid NIC fails with `InvalidSpec`. Each drop rule counts what it dropped and
 * carries a comment naming what it guards, so `nft list table bridge vws_<iface>` explains itself.
 */
export function antiSpoofScript(nic: GuardedNic): string {
  const n = checkNic(nic);
  const table = antiSpoofTable(n.iface);
  const from = `iifname "${n.iface}"`;
  const rules = [
    `${from} ether saddr != ${n.mac} counter drop comment "source MAC"`,
    `${from} ether type != { ip, arp } counter drop comment "not IPv4 or ARP"`,
    // 0.0.0.0: DHCP discovers and requests before the VM has its address; ARP probes (RFC 5227) too.
    `${from} ip saddr != ${set(['0.0.0.0', n.ip])} counter drop comment "source IP"`,
    `${from} arp saddr ip != ${set(['0.0.0.0', n.ip])} counter drop comment "ARP sender IP"`,
    `${from} udp sport 67 counter drop comment "DHCP server"`,
  ];
  if (n.isolate) {
    const sub = parseSubnet(n.isolate.subnet);
    // Its own address stays reachable for ARP probes and gratuitous ARP; broadcasts for DHCP and ARP.
    const ipOk = set([...n.isolate.allowed, n.ip, sub.broadcast, '255.255.255.255']);
    const arpOk = set([...n.isolate.allowed, n.ip]);
    rules.push(
      `${from} ip daddr ${sub.cidr} ip daddr != ${ipOk} counter drop comment "isolated: IPv4 to another VM"`,
      `${from} arp operation request arp daddr ip ${sub.cidr} arp daddr ip != ${arpOk} counter drop comment "isolated: ARP for another VM"`,
    );
  }
  return [
    ...resetTable(table),
    `table bridge ${table} {`,
    '  chain guard {',
    '    type filter hook prerouting priority -200; policy accept;',
    ...rules.map((r) => `    ${r}`),
    '  }',
    '}',
    '',
  ].join('\n');
}

/** Options of {@link createAntiSpoof}. */
export interface AntiSpoofOptions {
  /** Where the script file is written before `nft -f` reads it (default `/tmp`). */
  tmpDir?: string;
}

/** Applies and removes the anti-spoofing rules of VM NICs on one host, through its executor. */
export function createAntiSpoof(exec: Executor, options: AntiSpoofOptions = {}) {
  const tmpDir = checkDir(options.tmpDir ?? '/tmp', 'nft script directory');

  /** Runs a script with `nft -f` from a file of its own (created O_EXCL under a random name). */
  async function runScript(script: string): Promise<void> {
    const file = `${tmpDir}/vws-nft-${randomBytes(8).toString('hex')}.nft`;
    if (!(await exec.createExclusive(file, script))) throw new Error(`${file} exists`);
    try {
      await exec.run(['nft', '-f', file]);
    } catch (e) {
      if (!(e instanceof CommandError)) throw e;
      throw ApplicationFailure.retryable(`nft on ${exec.where} refused the anti-spoofing rules: ${e.message}`, FailureType.CommandFailed);
    } finally {
      await exec.remove(file);
    }
  }

  const antiSpoof = {
    /** Installs (or replaces) the rules of every NIC in one transaction. Idempotent. */
    async apply(nics: GuardedNic[]): Promise<void> {
      // Every NIC is validated before anything is written or run.
      const script = nics.map(antiSpoofScript).join('');
      if (script) await runScript(script);
    },

    /** Deletes the tables of a workspace's NICs (`vws_vw<12 hex of the id><index>`). Idempotent. */
    async removeFor(workspaceId: string): Promise<void> {
      if (!/^ws-[0-9a-f]{12}$/.test(workspaceId)) throw invalid(`bad workspace id ${JSON.stringify(workspaceId)}`);
      const prefix = antiSpoofTable(`vw${workspaceId.slice(3)}`);
      const mine = (await antiSpoof.tables()).filter((t) => t.startsWith(prefix));
      // Create-then-delete: a table another call removed meanwhile is no error.
      if (mine.length) await runScript(mine.flatMap(resetTable).join('\n') + '\n');
    },

    /** Names of the vws tables on the host (for leak checks: a clean host has none). */
    async tables(): Promise<string[]> {
      const { stdout } = await exec.run(['nft', 'list', 'tables', 'bridge']);
      return stdout
        .split('\n')
        .map((l) => /^table bridge (\S+)$/.exec(l.trim())?.[1])
        .filter((t): t is string => t !== undefined && t.startsWith(TABLE_PREFIX));
    },
  };
  return antiSpoof;
}

/** The anti-spoofing operations' type. */
export type AntiSpoof = ReturnType<typeof createAntiSpoof>;
