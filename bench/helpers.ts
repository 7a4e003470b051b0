/**
 * Setup the orchestration benchmarks share (`ensemble.bench.ts`, `api.bench.ts`): node workers with the
 * `bench` driver, the bench stand-in for DHCP, and benchmark processes of their own (so a process's
 * memory can be measured alone). Benchmarks only; never a default.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { NativeConnection, Worker } from '@temporalio/worker';
import type { Client } from '@temporalio/client';
import { createNodeActivities } from '../src/activities/node';
import type { DhcpEntryInput, WaitForLeaseInput } from '../src/activities/network/dhcp';
import { nodeTaskQueue } from '../src/config/names';
import type { VwsConfig } from '../src/config/schema';
import { LocalExecutor } from '../src/exec/local';

/**
 * DHCP on a bench node: a bench VM has no guest to ask for a lease, so the entry activities record
 * entries and `waitForLease` answers the entry's address at once, as a guest's DHCP would.
 */
export function benchDhcp() {
  const entries = new Map<string, string>();
  return {
    async addDhcpEntry(input: DhcpEntryInput): Promise<void> {
      entries.set(input.entry.mac, input.entry.ip);
    },
    async removeDhcpEntry(input: DhcpEntryInput): Promise<void> {
      entries.delete(input.entry.mac);
    },
    async waitForLease(input: WaitForLeaseInput): Promise<string> {
      const ip = entries.get(input.mac);
      if (!ip) throw new Error(`no DHCP entry for ${input.mac}`);
      return ip;
    },
  };
}

/**
 * Creates (does not run) one worker per node of `nodes` (all `driver: bench` in `config`), each with its
 * own node directory under `dir` and the local repository, plus {@link benchDhcp}.
 */
export async function createBenchNodeWorkers(o: { config: VwsConfig; connection: NativeConnection; nodes: readonly string[]; dir: string }): Promise<Worker[]> {
  const workers: Worker[] = [];
  for (const node of o.nodes) {
    const nodeDir = join(o.dir, `node-${node}`);
    mkdirSync(nodeDir, { recursive: true });
    const nodeConfig = { ...o.config, node: { ...o.config.node, dir: nodeDir } };
    workers.push(
      await Worker.create({
        connection: o.connection,
        namespace: o.config.temporal.namespace,
        taskQueue: nodeTaskQueue(o.config, node),
        activities: createNodeActivities({ config: nodeConfig, node, exec: new LocalExecutor(), repositoryToken: () => '', localRepositoryDir: o.config.repository.dir, dhcp: benchDhcp() }),
        maxConcurrentActivityTaskExecutions: 16, // as src/workers/node.ts
      }),
    );
  }
  return workers;
}

/** A benchmark process started by {@link forkBenchProcess}. */
export interface BenchProcess<Ready> {
  child: ChildProcess;
  /** What the process sent when it was ready. */
  ready: Ready;
  /** Settles with the exit code when the process exits. */
  exited: Promise<number | null>;
  /** The process's `process.memoryUsage()`, asked over IPC. */
  memory(): Promise<NodeJS.MemoryUsage>;
}

/**
 * Forks `bench/<script>` (TypeScript, loaded through `ts-register.js`) with `args`, and waits for its
 * `{ ready: true, ... }` message. The script answers `'memory'` with `{ memory }` (see `node-workers.ts`).
 */
export async function forkBenchProcess<Ready extends { ready: true }>(script: string, args: string[], execArgv: string[] = []): Promise<BenchProcess<Ready>> {
  const child = fork(join(__dirname, script), args, {
    execArgv: [...execArgv, '-r', join(__dirname, 'ts-register.js')],
    env: process.env,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const ready = await new Promise<Ready>((resolve, reject) => {
    child.once('message', (m: Ready) => (m.ready ? resolve(m) : reject(new Error(`${script} said ${JSON.stringify(m)}`))));
    child.once('exit', (code) => reject(new Error(`${script} exited with ${code} before it was ready`)));
  });
  const memory = () =>
    new Promise<NodeJS.MemoryUsage>((resolve) => {
      const on = (m: { memory?: NodeJS.MemoryUsage }) => {
        if (m.memory) (child.off('message', on), resolve(m.memory));
      };
      child.on('message', on);
      child.send('memory');
    });
  return { child, ready, exited, memory };
}

/**
 * A benchmark's site: the head (worker and API, or the worker alone when `api` is set) and the bench
 * nodes, each in a process of its own.
 */
export interface BenchSite<HeadReady extends { ready: true; port: number } = { ready: true; port: number }> {
  head: BenchProcess<HeadReady>;
  nodes: BenchProcess<{ ready: true }>;
  /** The API in a process of its own, as production runs it (`separateApi`); its `ready.port` is the API's. */
  api?: BenchProcess<HeadReady>;
}

/**
 * Starts a benchmark's site from its resolved configuration: writes it and the workflow bundle (built
 * here, once, as the tests build it) into `dir`, then forks the bench nodes and the head (`headExecArgv`,
 * e.g. `--expose-gc` to measure its memory). The head's API accepts the token whose digest is given.
 * With `separateApi` the head process runs the head worker alone and the API runs in a third process
 * (`apiExecArgv`), as `./run.sh start` runs them.
 */
export async function startBenchSite<HeadReady extends { ready: true; port: number } = { ready: true; port: number }>(o: {
  config: VwsConfig;
  dir: string;
  nodes: readonly string[];
  bundleCode: string;
  tokenDigest: string;
  identity: string;
  headExecArgv?: string[];
  separateApi?: boolean;
  apiExecArgv?: string[];
}): Promise<BenchSite<HeadReady>> {
  const configPath = join(o.dir, 'config.json');
  writeFileSync(configPath, JSON.stringify(o.config));
  const bundlePath = join(o.dir, 'workflows.js');
  writeFileSync(bundlePath, o.bundleCode);
  const nodes = await forkBenchProcess<{ ready: true }>('node-workers.ts', [configPath, o.dir, ...o.nodes]);
  const args = [configPath, bundlePath, o.tokenDigest, o.identity];
  if (!o.separateApi) return { head: await forkBenchProcess<HeadReady>('head-process.ts', [...args, 'both'], o.headExecArgv ?? []), nodes };
  const head = await forkBenchProcess<HeadReady>('head-process.ts', [...args, 'worker'], o.headExecArgv ?? []);
  const api = await forkBenchProcess<HeadReady>('head-process.ts', [...args, 'api'], o.apiExecArgv ?? []);
  return { head, nodes, api };
}

/** Ends a benchmark: terminates whatever workflow of its prefix still runs (a failed step's), then stops its processes. */
export async function stopBenchSite(site: { head?: BenchProcess<unknown>; nodes?: BenchProcess<unknown>; api?: BenchProcess<unknown> }, client: Client | undefined, prefix: string, reason: string): Promise<void> {
  if (client) {
    const ends: Promise<unknown>[] = [];
    for await (const w of client.workflow.list({ query: `WorkflowId STARTS_WITH "${prefix}-" AND ExecutionStatus = "Running"` })) {
      ends.push(client.workflow.getHandle(w.workflowId).terminate(reason).catch(() => undefined));
    }
    await Promise.all(ends);
  }
  for (const p of [site.api, site.head, site.nodes]) {
    p?.child.kill('SIGTERM');
    await p?.exited;
  }
}
