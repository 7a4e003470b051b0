/**
 * Throwaway network namespaces for integration tests that need real bridges, veths, DHCP servers and
 * nft rules without touching the host's network: an executor whose commands run inside a namespace,
 * and setup/teardown that leaves nothing behind (it kills only processes inside its own namespaces).
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import type { CommandResult, RunOptions } from '../../src/exec/executor';
import { LocalExecutor } from '../../src/exec/local';

const run = promisify(execFile);

/** Runs `argv` on the host; rejects with its stderr on failure. */
export async function host(argv: string[]): Promise<string> {
  try {
    return (await run(argv[0], argv.slice(1), { encoding: 'utf8' })).stdout;
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`${argv.join(' ')}: ${err.stderr?.trim() || err.message}`);
  }
}

/** A LocalExecutor whose commands run in network namespace `ns` (files are the host's: one filesystem). */
export class NetnsExecutor extends LocalExecutor {
  constructor(readonly ns: string) {
    super();
  }

  override run(argv: readonly string[], options?: RunOptions): Promise<CommandResult> {
    return super.run(['ip', 'netns', 'exec', this.ns, ...argv], options);
  }
}

/** A short random tag, so parallel or leftover runs never collide (names stay under IFNAMSIZ). */
export function tag(): string {
  return randomBytes(3).toString('hex');
}

/** Creates namespace `ns` with its loopback up. */
export async function addNamespace(ns: string): Promise<void> {
  await host(['ip', 'netns', 'add', ns]);
  await host(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
}

/** Creates a bridge in `ns` with `cidr` (e.g. `10.77.0.1/24`) on it, up. */
export async function addBridge(ns: string, name: string, cidr: string): Promise<void> {
  await host(['ip', '-n', ns, 'link', 'add', name, 'type', 'bridge']);
  await host(['ip', '-n', ns, 'addr', 'add', cidr, 'dev', name]);
  await host(['ip', '-n', ns, 'link', 'set', name, 'up']);
}

/**
 * A veth from `bridge` in `bridgeNs` (port `port`) to `inner` in `innerNs`, both up; `mac` set on the
 * inner end, `cidr` on it if given.
 */
export async function addVeth(o: { bridgeNs: string; bridge: string; port: string; innerNs: string; inner: string; mac: string; cidr?: string }): Promise<void> {
  await host(['ip', 'link', 'add', o.port, 'netns', o.bridgeNs, 'type', 'veth', 'peer', 'name', o.inner, 'netns', o.innerNs]);
  await host(['ip', '-n', o.bridgeNs, 'link', 'set', o.port, 'master', o.bridge, 'up']);
  await host(['ip', '-n', o.innerNs, 'link', 'set', o.inner, 'address', o.mac]);
  if (o.cidr) await host(['ip', '-n', o.innerNs, 'addr', 'add', o.cidr, 'dev', o.inner]);
  await host(['ip', '-n', o.innerNs, 'link', 'set', o.inner, 'up']);
}

/** Pids of the processes inside `ns`. */
export async function pidsIn(ns: string): Promise<number[]> {
  const out = await host(['ip', 'netns', 'pids', ns]).catch(() => '');
  return out.split('\n').filter(Boolean).map(Number);
}

/** Kills every process inside the namespaces (they were all started by the test) and deletes them. */
export async function removeNamespaces(names: string[]): Promise<void> {
  for (const ns of names) {
    for (const pid of await pidsIn(ns)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await host(['ip', 'netns', 'del', ns]).catch(() => undefined);
  }
}
