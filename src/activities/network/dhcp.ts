/**
 * DHCP delivery: the activities that give a VM its address from the DHCP server of its network on one
 * host (a node, or the head for central delivery). vws owns that server: per network it keeps the
 * entries in `<dir>/<network>/entries.json`, renders the server's files from them, starts the server
 * with its first entry, restarts it on every change (see ./dhcp-server for why not a reload) and stops it
 * with its last, so a clean host runs no DHCP server. Backends: dnsmasq and ISC dhcpd.
 *
 * Every change runs under the network's lock file (`<dir>/<network>/lock`): the activities of several
 * VMs on one host run concurrently, and read-modify-write of the entries must not interleave. Only
 * executor operations are used, so the same code runs locally and over SSH.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Context, heartbeat } from '@temporalio/activity';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { FailureType } from '../../domain/errors';
import type { Executor } from '../../exec/executor';
import { LockWaitAbandoned, withFileLock } from '../file-lock';
import { withHeartbeat } from '../heartbeat';
import { log } from '../../log';
import {
  ackedIp,
  dhcpdConf,
  dhcpFiles,
  dnsmasqConf,
  dnsmasqHosts,
  dnsmasqOptions,
  leasedIp,
  parseLeases,
  parseState,
  withEntry,
  withoutLeases,
  type DhcpFiles,
  type DhcpState,
  type DnsmasqLease,
} from './dhcp-config';
import { readFrom, serverControl } from './dhcp-server';
import type { DhcpEntry, DhcpServerSpec } from './types';
import { checkDir, checkEntry, checkMac, checkServer, invalid, type Subnet } from './validate';

/** Dependencies of the DHCP activities. */
export interface DhcpDeps {
  exec: Executor;
  /** The DHCP root: `<node.dir>/dhcp` on a node, `<stateDir>/dhcp` on the head. */
  dir: string;
  sleep?: (ms: number) => Promise<void>;
  /** Heartbeat (the Temporal heartbeat inside an activity). */
  beat?: (details: unknown) => void;
  /** Clock (ms since the epoch). */
  now?: () => number;
  /** Lock owner of one call; every call needs its own (default: random). */
  owner?: () => string;
  /** True once the running activity attempt is cancelled (timed out); default: the activity's own signal. */
  cancelled?: () => boolean;
  /** How long waitForLease lets dnsmasq stay silent before it restarts it, ms (default 20 s; tests shorten it). */
  leaseKickMs?: number;
}

/** Whether the current activity attempt was cancelled; false outside an activity. */
function attemptCancelled(): boolean {
  try {
    return Context.current().cancellationSignal.aborted;
  } catch {
    return false;
  }
}

/** Input of {@link createDhcpActivities}' add and remove. */
export interface DhcpEntryInput {
  server: DhcpServerSpec;
  entry: DhcpEntry;
}

/** Input of `waitForLease`. */
export interface WaitForLeaseInput {
  server: DhcpServerSpec;
  mac: string;
  timeoutSeconds: number;
}

/** How often `waitForLease` looks. */
const LEASE_POLL_MS = 500;
/**
 * How long `waitForLease` waits before it restarts a dnsmasq that has the entry but gave no lease. On the
 * testbed, dnsmasq 2.90 was seen to stop answering right after an offer (its log ends mid-transaction, the
 * guest keeps asking, nothing more is logged) until it was restarted; a restart loses nothing (the lease
 * file stays) and the guest's client retries every second.
 */
const LEASE_KICK_MS = 20_000;
/** dnsmasq's log (`log-dhcp` is verbose) is rotated at a restart once it is this big. */
const LOG_ROTATE_BYTES = 8 * 1024 * 1024;
/**
 * The network lock: changes take a second or two (a server restart), but on a loaded node one SSH round
 * trip was seen to take 20 s (xen1's emulated dom0 in CI), so only a holder that stopped refreshing for
 * 30 s is taken for dead. Not longer, because a retried activity's fresh attempt has to wait that long
 * for the lock its dead attempt left (attempts do not share an owner: a timed-out attempt may still be
 * running; it gives up waiting once cancelled).
 */
const LOCK = { staleMs: 30_000, refreshMs: 3_000, pollMs: 200 };

/** Creates the DHCP activities over one host's DHCP root. */
export function createDhcpActivities(deps: DhcpDeps) {
  const { exec } = deps;
  const dir = checkDir(deps.dir, 'DHCP directory');
  const sleep = deps.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const beat = deps.beat ?? ((d: unknown) => heartbeat(d));
  const now = deps.now ?? Date.now;
  const owner = deps.owner ?? (() => `pid-${process.pid}-${randomBytes(6).toString('hex')}`);
  const cancelled = deps.cancelled ?? attemptCancelled;
  const leaseKickMs = deps.leaseKickMs ?? LEASE_KICK_MS;

  type Server = DhcpServerSpec & { net: Subnet };

  const readState = async (f: DhcpFiles): Promise<DhcpState> => parseState(await exec.readFile(f.state));

  /** Runs `fn` under the network's lock, with its directory in place. */
  async function locked<T>(f: DhcpFiles, fn: () => Promise<T>): Promise<T> {
    await exec.mkdir(f.dir);
    try {
      return await withFileLock(exec, f.lock, owner(), { ...LOCK, now, sleep, waiting: () => beat({ waitingForLock: f.lock }), abandoned: cancelled }, fn);
    } catch (e) {
      if (e instanceof LockWaitAbandoned) throw new CancelledFailure(e.message);
      throw e;
    }
  }

  /** Writes `content` unless the file already holds it; answers whether it wrote. */
  async function writeIfChanged(path: string, content: string): Promise<boolean> {
    if ((await exec.readFile(path)) === content) return false;
    await exec.writeFileAtomic(path, content);
    return true;
  }

  /** Writes the backend's files for `entries`; answers whether any of them changed, and their digest. */
  async function writeServerFiles(s: Server, f: DhcpFiles, entries: DhcpEntry[]): Promise<{ changed: boolean; digest: string }> {
    // Sorted, so the same entries always render the same files whatever order they were added in.
    const sorted = [...entries].sort((a, b) => a.mac.localeCompare(b.mac));
    const files: Array<[string, string]> =
      s.server === 'isc-dhcpd'
        ? [[f.dhcpdConf, dhcpdConf(s, s.net, sorted)]]
        : [
            [f.hosts, dnsmasqHosts(sorted)],
            [f.options, dnsmasqOptions(sorted)],
            [f.dnsmasqConf, dnsmasqConf(s, s.net, f)],
          ];
    const digest = createHash('sha256');
    let changed = false;
    for (const [path, content] of files) {
      digest.update(`${path}\0${content}\0`);
      if (await writeIfChanged(path, content)) changed = true;
    }
    return { changed, digest: digest.digest('hex') };
  }

  async function rotateLog(f: DhcpFiles): Promise<void> {
    if (await exec.exists(f.log)) await exec.rename(f.log, `${f.log}.1`);
  }

  /**
   * Records `after` and brings the server in line with it: stopped and its files removed when it has no
   * entries; otherwise (re)started when one of its files changed, when a lease `staleLease` selects is on
   * file (dropped while the server is down) or when it is not running; else left alone, so an
   * idempotent re-run costs no restart.
   */
  async function commit(s: Server, f: DhcpFiles, after: DhcpState, staleLease: (l: DnsmasqLease) => boolean): Promise<void> {
    const ctl = serverControl(exec, s, f, { sleep, now });
    await exec.writeFileAtomic(f.state, JSON.stringify(after, null, 1) + '\n');
    if (after.entries.length === 0) {
      await ctl.stop();
      // Nothing of the server stays but its last log (and vws's empty record).
      for (const p of [f.leases, `${f.leases}~`, f.hosts, f.options, f.dnsmasqConf, f.dhcpdConf, f.served]) await exec.remove(p);
      await rotateLog(f);
      return;
    }
    const { changed, digest } = await writeServerFiles(s, f, after.entries);
    const stale = s.server === 'dnsmasq' && parseLeases((await exec.readFile(f.leases)) ?? '').some(staleLease);
    const live = await ctl.live();
    // The running server must be the one started on these very files (see DhcpFiles.served).
    const current = live?.server === s.server && (await exec.readFile(f.served))?.trim() === `${live.pid} ${digest}`;
    if (!changed && !stale && current) return;
    await ctl.stop();
    if (s.server === 'dnsmasq') {
      // Read again now that it is down: dnsmasq may have written the file until it exited.
      const text = await exec.readFile(f.leases);
      if (text !== null && parseLeases(text).some(staleLease)) await exec.writeFileAtomic(f.leases, withoutLeases(text, staleLease));
      // Its log has no offsets to keep (waitForLease reads the lease file), so it may rotate at any restart.
      if (((await exec.fileSize(f.log)) ?? 0) > LOG_ROTATE_BYTES) await rotateLog(f);
    }
    await ctl.start();
    const started = await ctl.live();
    if (started) await exec.writeFileAtomic(f.served, `${started.pid} ${digest}\n`);
    await stopIfUnwanted(f, ctl);
  }

  /**
   * Stops a server just started if, meanwhile, its last entry went. The network lock should make that
   * impossible, but a holder stalled past `LOCK.staleMs` (a loaded node's SSH) loses the lock to a waiter
   * while it still works; a removal that ran in that gap has already stopped the server, so the start
   * that follows it would otherwise leave a server with nothing to serve (CI, xen1: "DHCP server of
   * public running" after the last destroy). Removals write the entries before they stop the server, so
   * whichever of the two runs last stops it.
   */
  async function stopIfUnwanted(f: DhcpFiles, ctl: ReturnType<typeof serverControl>): Promise<void> {
    if ((await readState(f)).entries.length > 0) return;
    log.warn({ dir: f.dir, where: exec.where }, 'DHCP server started while its last entry was removed: stopped again');
    await ctl.stop();
  }

  /** The IP `mac` obtained from the server, or null. */
  async function obtained(s: Server, f: DhcpFiles, mac: string): Promise<string | null> {
    const state = await readState(f);
    if (!state.entries.some((e) => e.mac === mac)) return null;
    if (s.server === 'dnsmasq') return leasedIp((await exec.readFile(f.leases)) ?? '', mac);
    // dhcpd: only ACKs logged after the entry was added count (an earlier VM may have had this MAC).
    const mark = state.marks[mac] ?? 0;
    const size = (await exec.fileSize(f.log)) ?? 0;
    return ackedIp(await readFrom(exec, f.log, size < mark ? 0 : mark), mac);
  }

  return {
    /**
     * Adds (or replaces) a VM's host entry on its network's server and makes the server serve it: any
     * entry with the same MAC, IP or hostname is dropped first, so no duplicate can arise. A lease on file
     * for this MAC or IP (an earlier VM that vanished without its cleanup) is dropped, so `waitForLease`
     * waits for this boot's own lease. Idempotent.
     */
    async addDhcpEntry(input: DhcpEntryInput): Promise<void> {
      const s = checkServer(input.server);
      const entry = checkEntry(input.entry, s.net);
      const f = dhcpFiles(dir, s.network);
      await locked(f, async () => {
        const before = await readState(f);
        const { entries, replaced } = withEntry(before.entries, entry);
        const marks = { ...before.marks };
        for (const r of replaced) delete marks[r.mac];
        if (s.server === 'isc-dhcpd') marks[entry.mac] = (await exec.fileSize(f.log)) ?? 0;
        const stale = (l: DnsmasqLease) => l.mac === entry.mac || l.ip === entry.ip || replaced.some((r) => r.mac === l.mac);
        await commit(s, f, { entries, marks }, stale);
      });
    },

    /**
     * Removes a VM's host entry (by MAC) and its lease; the server stops with its last entry. Idempotent:
     * removing an absent entry succeeds (and still makes sure the server matches the entries).
     */
    async removeDhcpEntry(input: DhcpEntryInput): Promise<void> {
      const s = checkServer(input.server);
      const entry = checkEntry(input.entry, s.net);
      const f = dhcpFiles(dir, s.network);
      await locked(f, async () => {
        const before = await readState(f);
        const gone = before.entries.filter((e) => e.mac === entry.mac);
        const entries = before.entries.filter((e) => e.mac !== entry.mac);
        const marks = { ...before.marks };
        delete marks[entry.mac];
        const stale = (l: DnsmasqLease) => l.mac === entry.mac || gone.some((g) => g.ip === l.ip);
        await commit(s, f, { entries, marks }, stale);
      });
    },

    /**
     * Waits until the VM with `mac` has obtained its address and returns the IP it actually got
     * (dnsmasq: its lease; dhcpd: the newest `DHCPACK` logged since its entry was added). Heartbeats
     * while waiting; a timeout fails with `AddressTimeout`, non-retryable.
     */
    async waitForLease(input: WaitForLeaseInput): Promise<string> {
      const s = checkServer(input.server);
      const mac = checkMac(input.mac);
      if (!(Number.isFinite(input.timeoutSeconds) && input.timeoutSeconds >= 0)) throw invalid(`timeoutSeconds ${input.timeoutSeconds} is not a duration`);
      const f = dhcpFiles(dir, s.network);
      const deadline = now() + input.timeoutSeconds * 1000;
      let kickAt = s.server === 'dnsmasq' ? now() + leaseKickMs : Infinity;
      // Beats on a timer as well as per poll: on a loaded node one look at the files, or the restart below,
      // was seen to take 20 s over SSH (xen1's emulated dom0), and the attempt was taken for dead while it
      // worked; its retry then raced it for the server.
      return withHeartbeat(beat, `DHCP lease for ${mac}`, async () => {
        for (;;) {
          const ip = await obtained(s, f, mac);
          if (ip) return ip;
          if (now() >= kickAt && now() < deadline) {
            kickAt = Infinity; // once per wait: a server that does not help after a restart is not hung
            await locked(f, async () => {
              if (!(await readState(f)).entries.some((e) => e.mac === mac)) return;
              const ctl = serverControl(exec, s, f, { sleep, now });
              await ctl.stop();
              await ctl.start();
              await stopIfUnwanted(f, ctl);
            });
            log.warn({ network: s.network, mac, where: exec.where }, 'no DHCP lease after 20 s: restarted dnsmasq');
            continue;
          }
          if (now() >= deadline) {
            const known = (await readState(f)).entries.some((e) => e.mac === mac);
            throw ApplicationFailure.nonRetryable(
              `no DHCP lease for ${mac} from ${s.server} of network ${s.network} on ${exec.where} after ${input.timeoutSeconds} s` +
                (known ? '' : ' (the server has no entry for it)'),
              FailureType.AddressTimeout,
            );
          }
          beat({ waitingForLease: mac });
          await sleep(LEASE_POLL_MS);
        }
      });
    },

    /** The entries of a network's server (for leak checks: a clean host has none). */
    async dhcpEntries(input: { server: DhcpServerSpec }): Promise<DhcpEntry[]> {
      const s = checkServer(input.server);
      return (await readState(dhcpFiles(dir, s.network))).entries;
    },
  };
}

/** The DHCP activities' type. */
export type DhcpActivities = ReturnType<typeof createDhcpActivities>;
