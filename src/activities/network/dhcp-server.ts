/**
 * Starting and stopping one network's DHCP server process through the {@link Executor}.
 *
 * Neither server is reloaded in place; a change restarts it (a few tens of milliseconds; a client that
 * asks meanwhile retransmits):
 *  - dhcpd cannot reload at all.
 *  - dnsmasq re-reads `dhcp-hostsfile` and `dhcp-optsfile` on SIGHUP, but dnsmasq 2.90 (Debian bookworm)
 *    crashes (SIGSEGV or SIGABRT) on a SIGHUP once a client holding a lease matched a host line with a
 *    `set:<tag>`, and those tags are how each entry gets its own options. A restart re-reads everything,
 *    and while the server is down vws can drop stale leases from the lease file directly, so no
 *    `dhcp_release` round trip (which dnsmasq ignores for a MAC it no longer knows) is needed.
 */
import { ApplicationFailure } from '@temporalio/common';
import { FailureType } from '../../domain/errors';
import { CommandError, type Executor } from '../../exec/executor';
import type { DhcpFiles } from './dhcp-config';
import type { DhcpServerSpec } from './types';

/** How long a server may take to come up (pid file written) or to exit. */
const START_MS = 5_000;
const STOP_MS = 10_000;
const POLL_MS = 50;

/**
 * The `sh -c` script that starts dhcpd detached with its log appended to a file. Constant: the log file
 * and dhcpd's argv arrive as positional parameters (`$1`, then `"$@"`), which the shell expands inside
 * double quotes as single words and never parses again, so no path or name can become shell syntax.
 * `setsid -f` detaches it from the executor's session (and over SSH from the channel): once the
 * redirections replaced stdin/stdout/stderr, nothing of the command's pipes stays open.
 */
export const DHCPD_LAUNCH_SCRIPT = 'log=$1; shift; exec "$@" </dev/null >>"$log" 2>&1';

/** dhcpd's argv: foreground (`-f`) logging to stderr (`-d`), which the launch script appends to the log. */
export function dhcpdArgv(server: DhcpServerSpec, f: DhcpFiles): string[] {
  return ['dhcpd', '-4', '-f', '-d', '-cf', f.dhcpdConf, '-lf', f.leases, '-pf', f.pid, server.interface];
}

/** The full argv that starts dhcpd detached (see {@link DHCPD_LAUNCH_SCRIPT}). */
export function dhcpdLaunchArgv(server: DhcpServerSpec, f: DhcpFiles): string[] {
  return ['setsid', '-f', 'sh', '-c', DHCPD_LAUNCH_SCRIPT, 'vws-dhcpd', f.log, ...dhcpdArgv(server, f)];
}

/** A file's text from byte `start` on (`''` if it does not exist): a log's new part without reading all of it. */
export async function readFrom(exec: Executor, path: string, start: number): Promise<string> {
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of await exec.readStream(path, start)) chunks.push(Buffer.from(chunk as Buffer));
  } catch (e) {
    if (await exec.exists(path)) throw e;
    return ''; // no log yet
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Options of {@link serverControl}. */
export interface ServerControlOptions {
  sleep: (ms: number) => Promise<void>;
  now: () => number;
}

/** Start, stop and liveness of the DHCP server of one network. */
export function serverControl(exec: Executor, server: DhcpServerSpec, f: DhcpFiles, o: ServerControlOptions) {
  /** Polls `done` until true or `ms` passed; answers whether it became true. */
  async function until(ms: number, done: () => Promise<boolean>): Promise<boolean> {
    const deadline = o.now() + ms;
    for (;;) {
      if (await done()) return true;
      if (o.now() > deadline) return false;
      await o.sleep(POLL_MS);
    }
  }

  const control = {
    /**
     * The running server, only if that process is alive and really is this network's server: dnsmasq or
     * dhcpd with this directory's configuration on its command line (whichever backend started it, so a
     * switch of backend finds and stops the old one). A pid file outlives its process and pids are reused.
     */
    async live(): Promise<{ pid: number; server: DhcpServerSpec['server'] } | null> {
      const pid = Number((await exec.readFile(f.pid))?.trim());
      if (!Number.isInteger(pid) || pid <= 0) return null;
      const comm = (await exec.readFile(`/proc/${pid}/comm`))?.trim();
      const argv = (await exec.readFile(`/proc/${pid}/cmdline`))?.split('\0') ?? [];
      let kind: DhcpServerSpec['server'];
      if (comm === 'dnsmasq' && argv.includes(`--conf-file=${f.dnsmasqConf}`)) kind = 'dnsmasq';
      else if (comm === 'dhcpd' && argv.includes(f.dhcpdConf)) kind = 'isc-dhcpd';
      else return null;
      // A daemon is re-parented to init; where init is slow to reap, an exited server stays a zombie.
      const stat = await exec.readFile(`/proc/${pid}/stat`);
      if (stat === null || /^ [ZX]/.test(stat.slice(stat.lastIndexOf(')') + 1))) return null;
      return { pid, server: kind };
    },

    /** Stops the server if it runs (TERM, then KILL) and removes its pid file. Idempotent. */
    async stop(): Promise<void> {
      const pid = (await control.live())?.pid ?? null;
      if (pid !== null) {
        await exec.run(['kill', '-TERM', String(pid)], { okCodes: [0, 1] });
        if (!(await until(STOP_MS, async () => (await control.live()) === null))) {
          await exec.run(['kill', '-KILL', String(pid)], { okCodes: [0, 1] });
          if (!(await until(STOP_MS, async () => (await control.live()) === null))) {
            throw ApplicationFailure.retryable(`DHCP server ${pid} of network ${server.network} did not exit`, FailureType.CommandFailed);
          }
        }
      }
      // dhcpd refuses to start while its pid file names a live process (a zombie counts), so it goes.
      await exec.remove(f.pid);
    },

    /** Starts the server (it must not be running) and waits until it has written its pid file. */
    async start(): Promise<void> {
      await exec.remove(f.pid);
      try {
        if (server.server === 'dnsmasq') {
          // dnsmasq daemonizes itself and reports configuration and bind errors before it returns.
          await exec.run(['dnsmasq', `--conf-file=${f.dnsmasqConf}`], { timeoutMs: 30_000 });
        } else {
          // dhcpd's lease file must exist. Fixed-address hosts never land in it, but dhcpd insists.
          await exec.createExclusive(f.leases, '');
          await exec.run(dhcpdLaunchArgv(server, f), { timeoutMs: 30_000 });
        }
      } catch (e) {
        if (!(e instanceof CommandError)) throw e;
        throw ApplicationFailure.retryable(`${server.server} for network ${server.network} on ${exec.where} did not start: ${e.message}`, FailureType.CommandFailed);
      }
      if (!(await until(START_MS, async () => (await control.live()) !== null))) {
        const size = (await exec.fileSize(f.log)) ?? 0;
        const tail = await readFrom(exec, f.log, Math.max(0, size - 800));
        throw ApplicationFailure.retryable(
          `${server.server} for network ${server.network} on ${exec.where} did not come up; end of ${f.log}: ${tail}`,
          FailureType.CommandFailed,
        );
      }
    },
  };
  return control;
}
