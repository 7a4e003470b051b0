/**
 * `vws-pilot kill-all`: the admin's emergency stop (seed 003's one-command "kill 9"; Nimbus's
 * `workspacepilot.py --killnine`). For every node of the site configuration, at once: destroy every vws
 * VM and set the node's memory back to exactly its configured value, and report per node. It does not
 * stop running pilots or touch their locks: a pilot that later unreserves sets the same absolute value
 * again, which changes nothing.
 *
 * How a node is reached: over SSH (ssh2, the site's key and pinned host keys) when the configuration
 * gives it an `ssh` address or `--ssh NODE=HOST` does; otherwise with local commands, which is right
 * only for a node that is this machine (run kill-all on such a node, or give its SSH address).
 */
import { nodePaths } from '../activities/node-paths';
import type { NodeConfig, VwsConfig } from '../config/schema';
import type { Executor } from '../exec/executor';
import { LocalExecutor } from '../exec/local';
import { KnownHosts, sshExecutorFor } from '../exec/ssh';
import { nodeControl, nodeMemorySettings, resetNodeState, type ResetReport } from './node-control';

/** One node's outcome. */
export interface KillAllNodeReport {
  node: string;
  /** How it was reached (`local`, `ssh root@10.213.0.21`). */
  where: string;
  ok: boolean;
  /** VMs destroyed. */
  destroyed: string[];
  /** Host memory before and after (MiB) and the configured value. */
  memoryBeforeMiB?: number | null;
  memoryAfterMiB?: number;
  configuredMiB?: number;
  ms: number;
  error?: string;
}

/** Options of {@link killAll}. */
export interface KillAllOptions {
  /** SSH addresses that override (or add to) the configuration's, by node name. */
  sshHosts?: Record<string, string>;
  /** Only these nodes (default: every configured node). */
  only?: string[];
  /** Per node, the longest the whole reset may take (default 90 s). */
  nodeTimeoutMs?: number;
  /** Executor for a node (tests, or a site with its own transport); default: SSH or local as above. */
  executorFor?: (node: NodeConfig) => Executor;
}

/** The executor kill-all uses for `node` (see the file's comment). */
export function killAllExecutor(config: VwsConfig, node: NodeConfig, sshHosts: Record<string, string> = {}, knownHosts?: () => KnownHosts): Executor {
  const host = sshHosts[node.name];
  const withSsh: NodeConfig = host ? { ...node, ssh: { host, port: node.ssh?.port ?? 22, user: node.ssh?.user ?? 'root' } } : node;
  if (withSsh.ssh) return sshExecutorFor(config, withSsh, knownHosts?.());
  return new LocalExecutor();
}

/** Resets every selected node in parallel; never throws for a node (its report says what failed). */
export async function killAll(config: VwsConfig, options: KillAllOptions = {}): Promise<KillAllNodeReport[]> {
  const { sshHosts = {}, nodeTimeoutMs = 90_000 } = options;
  for (const name of options.only ?? []) {
    if (!config.nodes.some((n) => n.name === name)) throw new Error(`--node ${name}: no such node in the configuration (nodes: ${config.nodes.map((n) => n.name).join(', ')})`);
  }
  for (const name of Object.keys(sshHosts)) {
    if (!config.nodes.some((n) => n.name === name)) throw new Error(`--ssh ${name}=…: no such node in the configuration`);
  }
  const nodes = config.nodes.filter((n) => !options.only || options.only.includes(n.name));
  let known: KnownHosts | undefined;
  const knownHosts = () => (known ??= KnownHosts.fromFile(config.ssh.knownHostsFile));
  return Promise.all(
    nodes.map(async (node): Promise<KillAllNodeReport> => {
      const started = Date.now();
      let exec: Executor | undefined;
      try {
        exec = options.executorFor ? options.executorFor(node) : killAllExecutor(config, node, sshHosts, knownHosts);
        const reachedVia = exec.where;
        if (node.driver === 'bench') return { node: node.name, where: reachedVia, ok: true, destroyed: [], ms: Date.now() - started, error: 'bench driver: nothing to do' };
        const work = (async (): Promise<ResetReport> => {
          const control = await nodeControl({
            exec: exec!,
            node: node.name,
            nodeDir: nodePaths(config.node.dir).dir,
            ...nodeMemorySettings(node),
            config,
          });
          return resetNodeState(control, { timeoutMs: Math.min(60_000, nodeTimeoutMs) });
        })();
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${nodeTimeoutMs} ms`)), nodeTimeoutMs)));
        const r = await Promise.race([work, timeout]).finally(() => clearTimeout(timer));
        const failed = r.vms.failed;
        return {
          node: node.name,
          where: reachedVia,
          ok: failed.length === 0,
          destroyed: r.vms.destroyed,
          memoryBeforeMiB: r.memoryBeforeMiB,
          memoryAfterMiB: r.memory.reachedMiB,
          configuredMiB: r.configuredMiB,
          ms: Date.now() - started,
          ...(failed.length ? { error: failed.map((f) => `${f.name}: ${f.error}`).join('; ') } : {}),
        };
      } catch (e) {
        return { node: node.name, where: exec?.where ?? '(not reached)', ok: false, destroyed: [], ms: Date.now() - started, error: (e as Error).message };
      } finally {
        const closable = exec as (Executor & { close?: () => Promise<void> }) | undefined;
        await closable?.close?.().catch(() => undefined);
      }
    }),
  );
}
