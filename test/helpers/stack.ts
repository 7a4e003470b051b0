/**
 * The whole vws stack for an end-to-end test, on the testbed: the API (listening on the head bridge so
 * vmm1 can pull images), the head worker in this process, and a real node worker process inside vmm1's
 * namespaces. Each stack has its own prefix, state directory, tokens and address range.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { stringify } from 'yaml';
import type { Worker } from '@temporalio/worker';
import { createApp } from '../../src/api/app';
import { loadTokens } from '../../src/api/tokens';
import { historyToJSON } from '@temporalio/common/lib/proto-utils';
import { allocatorWorkflowId, workspaceWorkflowId } from '../../src/config/names';
import { parseConfig } from '../../src/config/load';
import type { VwsConfig } from '../../src/config/schema';
import { ensureToken } from '../../src/config/secrets';
import { grantsQuery } from '../../src/domain/messages';
import { LocalExecutor } from '../../src/exec/local';
import { stageLocalFile } from '../../src/repository';
import type { Executor } from '../../src/exec/executor';
import { createDriver } from '../../src/activities/drivers';
import { parseState } from '../../src/activities/network/dhcp-config';
import { nodePaths } from '../../src/activities/node-paths';
import { sshExecutorFor } from '../../src/exec/ssh';
import { createHeadWorker, createSshNodeWorkers } from '../../src/workers/head';
import { connect, temporalAddress, uniquePrefix, workflowBundle, type TestConnections } from './temporal';

/** The checkout's root. */
export const ROOT = join(__dirname, '../..');
/** The testbed's state directory (as testbed/testbed.sh uses it). */
export const TESTBED_DIR = process.env.VWS_TESTBED_DIR ?? '/var/lib/vws/testbed';
/** The guest image built by testbed/guest/build.sh. */
export const GUEST_DISK = join(process.env.VWS_CACHE_DIR ?? join(ROOT, '.cache'), 'guest', 'disk.raw');
export const exec = new LocalExecutor();

/** Fails with a clear message unless the testbed is up and `dist/` is built from the current sources. */
export async function requireTestbed(): Promise<void> {
  // xen1's dom0 runs under TCG: its status check (two SSH sessions, 2-6 s) times out while a Xen test keeps
  // it busy. A stack on xen1 checks it itself (requireXen); the others do not need it.
  const r = await exec.run([join(ROOT, 'testbed/testbed.sh'), 'status', '--without-xen1'], { okCodes: [0, 1] });
  const lines = r.stdout.split('\n').filter(Boolean);
  if (r.code !== 0 || !lines.some((l) => /^nodes\s+up\b/.test(l))) throw new Error(`the testbed is not up (testbed/testbed.sh status):\n${r.stdout}${r.stderr}\nrun the tests with ./run.sh test`);
  const newest = (dir: string): number =>
    readdirSync(dir, { withFileTypes: true }).reduce((m, e) => {
      const p = join(dir, e.name);
      return Math.max(m, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
    }, 0);
  let built = 0;
  try {
    built = statSync(join(ROOT, 'dist/workers/node.js')).mtimeMs;
  } catch {
    /* not built */
  }
  if (built < newest(join(ROOT, 'src'))) throw new Error('dist/ is missing or older than src/: run npm run build (./run.sh test does)');
}

/** The testbed nodes a stack can use, and how vws reaches each. */
export const TEST_NODES = {
  /** A node worker inside vmm1's namespaces, QEMU. */
  vmm1: { name: 'vmm1', memoryMiB: 1024, cpus: 4, agent: 'worker', driver: 'qemu', bridges: { public: 'br0', private: 'br1' } },
  /** A node worker inside vmm3's namespaces, QEMU: the pilot tests' node (no other test runs VMs there). */
  vmm3: { name: 'vmm3', memoryMiB: 1024, cpus: 4, agent: 'worker', driver: 'qemu', bridges: { public: 'br0' } },
  /** SSH mode from the head to vmm2, QEMU. */
  vmm2: { name: 'vmm2', memoryMiB: 1024, cpus: 4, agent: 'ssh', driver: 'qemu', bridges: { public: 'br0', private: 'br1' }, ssh: { host: '10.213.0.12' } },
  /** SSH mode to the nested Xen node's dom0, `xl`; it carries only the public network. */
  xen1: { name: 'xen1', memoryMiB: 1024, cpus: 2, agent: 'ssh', driver: 'xen', bridges: { public: 'xenbr0' }, ssh: { host: '10.213.0.21' } },
} as const;

/**
 * The testbed's second network: `br1` in every vmm host (10.214.0.1x), joined to the head's `vwsbr1`
 * (10.214.0.1). A stack adds it with {@link StackOptions.networks}.
 */
export const PRIVATE_NET = { name: 'private', subnet: '10.214.0.0/24', gateway: '10.214.0.1', headInterface: 'vwsbr1' } as const;

/** A testbed node name. */
export type TestNode = keyof typeof TEST_NODES;

/** A running stack. */
export interface Stack {
  config: VwsConfig;
  /** The stack's configuration file (what its workers read as VWS_CONFIG). */
  configFile: string;
  /** API base URL as seen from the head. */
  api: string;
  /** Bearer tokens of the two test clients. */
  tokens: { alice: string; bob: string };
  conn: TestConnections;
  /** The (first) node this stack deploys on. */
  node: TestNode;
  /** Every node of the stack. */
  nodes: TestNode[];
  /** Host path of a namespace node's node directory (vmm1, vmm2). */
  nodeDir: string;
  /** An executor on the node (local on the head for namespace hosts' files; SSH for xen1). */
  nodeExec: Executor;
  /** Calls the API as `who`. */
  call(who: 'alice' | 'bob' | null, method: string, path: string, body?: unknown): Promise<{ status: number; body: Record<string, unknown> }>;
  /** Live allocator grants. */
  grants(): Promise<unknown[]>;
  /** What the node holds now that it did not hold when the stack started (VMs, taps, loops, DHCP, files). */
  leftovers(): Promise<string[]>;
  /** The hypervisor driver's own view of a VM, read on the node (not through vws's workflows). */
  vmStatus(workspaceId: string): Promise<string>;
  /** The guest's console output (serial log or Xen console log). */
  console(workspaceId: string): Promise<string>;
  /**
   * With VWS_RECORD_HISTORIES=DIR, saves a workspace's workflow history as DIR/workspace-NAME.json for
   * the replay test. The allocator's is saved once, at stop, as DIR/allocator-LABEL.json.
   */
  recordHistory(workspaceId: string, name: string): Promise<void>;
  /** With VWS_RECORD_HISTORIES=DIR, saves any workflow's history as DIR/FILE.json (groups, ensembles). */
  recordWorkflowHistory(workflowId: string, file: string): Promise<void>;
  /** kill -9 the head worker process (only with `headProcess`), and start it again. */
  killHead(): void;
  startHead(): Promise<void>;
  /**
   * Injects a failure into the SSH-mode nodes' real executors (in-process head only): while `fault`
   * returns a message for a command's argv, that command throws it instead of running. `null` clears it.
   */
  injectFault(fault: ((node: string, argv: string[]) => string | null) | null): void;
  /** kill -9 the node worker (only for vmm1), and start it again. */
  killNodeWorker(): void;
  startNodeWorker(): Promise<void>;
  /**
   * Starts again a head or node worker process that a test killed and did not restart (it failed half-way),
   * so the next test does not fail for want of it. For an `afterEach`.
   */
  restartKilledWorkers(): Promise<void>;
  stop(): Promise<void>;
}

/** Options of {@link startStack}. */
export interface StackOptions {
  /** Names the allocator history recording. */
  label: string;
  /** The stack's own address range. */
  first: string;
  last: string;
  /** The node to deploy on (default vmm1). */
  node?: TestNode;
  /** Several nodes (instead of `node`). */
  nodes?: TestNode[];
  /** Networks besides `public` (raw config); nodes get the bridges TEST_NODES names for them. */
  networks?: Array<Record<string, unknown>>;
  /** Run the head worker as a separate process (so a test can kill -9 it) instead of in this process. */
  headProcess?: boolean;
  /** Extra configuration merged over the stack's. */
  config?: Record<string, unknown>;
  /** Nodes the site's batch system lends (`nodes[].pilot`): VMs go there only in pilot mode. */
  pilotNodes?: TestNode[];
  /** Configuration that needs the stack's directory and API URL; each section is merged over `config`'s. */
  lateConfig?: (dir: string, api: string) => Record<string, Record<string, unknown>>;
  /** URL prefixes alice may name as unpropagation targets (`clients[].stageOutTargets`). */
  aliceStageOutTargets?: string[];
  /** More settings of the two test clients (raw `clients[]` fields: `quota`, `admin`, …). */
  clients?: { alice?: Record<string, unknown>; bob?: Record<string, unknown> };
  /** Another Temporal server than the shared one (a test that restarts its server). */
  temporalAddress?: string;
}

/** Starts a stack with one node, with addresses from `first` to `last`. */
export async function startStack(opts: StackOptions): Promise<Stack> {
  await requireTestbed();
  const nodeNames: TestNode[] = opts.nodes ?? [opts.node ?? 'vmm1'];
  const nodeName = nodeNames[0];
  if (nodeNames.includes('xen1')) await requireXen();
  const prefix = uniquePrefix();
  const dir = mkdtempSync(`/tmp/vws-e2e-${prefix}-`);
  const secrets = join(dir, 'secrets');
  mkdirSync(secrets, { mode: 0o700 });
  const temporal = opts.temporalAddress ?? temporalAddress();
  const conn = await connect(temporal);

  // Listen first: the repository URL handed to the node must name the real port.
  const server: Server = createServer();
  await new Promise<void>((ok) => server.listen(0, '10.213.0.1', ok));
  const port = (server.address() as AddressInfo).port;
  const raw = {
    stateDir: dir,
    temporal: { address: temporal, prefix },
    api: { host: '10.213.0.1', port },
    repository: { dir: join(dir, 'repo'), url: `http://10.213.0.1:${port}/repository`, nodeTokenFile: join(secrets, 'node.token') },
    clients: [
      { name: 'alice', identity: '/O=Grid/OU=test/CN=alice', tokenFile: join(secrets, 'alice.token'), stageOutTargets: opts.aliceStageOutTargets ?? [], ...opts.clients?.alice },
      { name: 'bob', identity: '/O=Grid/OU=test/CN=bob', tokenFile: join(secrets, 'bob.token'), ...opts.clients?.bob },
    ],
    networks: [{ name: 'public', subnet: '10.213.0.0/24', gateway: '10.213.0.1', ranges: [{ first: opts.first, last: opts.last }] }, ...(opts.networks ?? [])],
    nodes: nodeNames.map((n) => {
      const wanted = ['public', ...(opts.networks ?? []).map((net) => String(net.name))];
      const all: Record<string, string> = TEST_NODES[n].bridges;
      return {
        ...TEST_NODES[n],
        bridges: Object.fromEntries(Object.entries(all).filter(([net]) => wanted.includes(net))),
        ...(opts.pilotNodes?.includes(n) ? { pilot: true } : {}),
      };
    }),
    ssh: { keyFile: join(TESTBED_DIR, 'ssh/id_ed25519'), knownHostsFile: join(TESTBED_DIR, 'ssh/known_hosts') },
    // A guest on xen1 (Xen under TCG) was seen to need over 20 s to power off right after a reboot (its
    // PV control interface comes up late in the boot; CI: 'forced' instead of 'graceful'): a minute there.
    timeouts: { addressSeconds: 60, shutdownSeconds: nodeNames.includes('xen1') ? 60 : 20 },
    // No Schedule from a head process (headProcess): a test's reconciler would outlive it on the shared server.
    reconciler: { enabled: false },
    ...opts.config,
  };
  for (const [section, values] of Object.entries(opts.lateConfig?.(dir, `http://10.213.0.1:${port}`) ?? {})) {
    const r = raw as Record<string, unknown>;
    r[section] = { ...(r[section] as Record<string, unknown> | undefined), ...values };
  }
  const config = parseConfig(raw);
  const tokens = loadTokens(config);
  server.on('request', createApp({ config, client: conn.client, clientTokens: () => tokens.clients, nodeTokens: () => tokens.nodes }));
  const configFile = join(dir, 'vws.yaml');
  writeFileSync(configFile, stringify(raw));
  await stageLocalFile(config, 'sample', GUEST_DISK);

  let fault: ((node: string, argv: string[]) => string | null) | null = null;
  // The head: in this process (quick), or as a real process that a kill test can kill -9.
  let headChild: ChildProcess | undefined;
  let inProcess: { workers: Worker[]; runs: Promise<void>[]; close: () => void } | undefined;
  const startHead = async () => {
    if (opts.headProcess) {
      headChild = await spawnWorker('head', [process.execPath, join(ROOT, 'dist/workers/head.js')], configFile, temporal, join(dir, 'head.log'), 'head worker running');
      return;
    }
    const head = await createHeadWorker({ config, connection: conn.native, client: conn.client, workflowBundle: await workflowBundle() });
    const ssh = await createSshNodeWorkers({ config, connection: conn.native, wrapExecutor: (node, x) => withInjectedFaults(x, (argv) => fault?.(node, argv) ?? null) });
    const workers = [head, ...ssh.workers];
    inProcess = { workers, runs: workers.map((w) => w.run()), close: ssh.close };
  };
  await startHead();

  const nodeTemporal = temporal.replace(/^(127\.0\.0\.1|localhost)/, '10.213.0.1');
  let nodeWorker: ChildProcess | undefined;
  const workerNode = nodeNames.find((n) => TEST_NODES[n].agent === 'worker');
  const startNodeWorker = async () => {
    if (!workerNode) return;
    const argv = [join(ROOT, 'testbed/testbed.sh'), 'exec', workerNode, '--', process.execPath, join(ROOT, 'dist/workers/node.js')];
    nodeWorker = await spawnWorker(workerNode, argv, configFile, nodeTemporal, join(dir, `node-worker-${workerNode}.log`), 'node worker running');
  };
  await startNodeWorker();

  const sshExec = TEST_NODES[nodeName].agent === 'ssh' ? sshExecutorFor(config, config.nodes[0]) : undefined;
  const xenExec = nodeNames.includes('xen1') ? (nodeName === 'xen1' ? sshExec! : sshExecutorFor(config, config.nodes.find((n) => n.name === 'xen1')!)) : undefined;
  const nodeExec: Executor = nodeName === 'xen1' ? sshExec! : exec;
  const hostNodeDir = join(TESTBED_DIR, 'hosts', nodeName, 'node');
  const holdings = async () => [
    ...(await Promise.all(nodeNames.map((n) => (n === 'xen1' ? xenLeftovers(xenExec!) : nodeLeftovers(n, join(TESTBED_DIR, 'hosts', n, 'node')))))).flat(),
    // Central DHCP servers run on the head, under the stack's state directory.
    ...(await dhcpLeftovers(exec, join(dir, 'dhcp'), 'head')),
  ];
  // Whatever the node held before (e.g. a demo started by ./run.sh start) is not this test's leak.
  // Compared without the details in parentheses: a running server's line says when it was looked at.
  const key = (l: string) => l.replace(/ \(.*$/s, '');
  const baseline = new Set((await holdings()).map(key));

  const api = `http://10.213.0.1:${port}`;
  const record = async (workflowId: string, file: string) => {
    const out = process.env.VWS_RECORD_HISTORIES;
    if (!out) return;
    mkdirSync(out, { recursive: true });
    writeFileSync(join(out, `${file}.json`), historyToJSON(await conn.client.workflow.getHandle(workflowId).fetchHistory()));
  };
  const tokenOf = { alice: ensureToken(join(secrets, 'alice.token')), bob: ensureToken(join(secrets, 'bob.token')) };
  return {
    config,
    api,
    tokens: tokenOf,
    conn,
    node: nodeName,
    nodes: nodeNames,
    nodeDir: hostNodeDir,
    nodeExec,
    leftovers: async () => (await holdings()).filter((l) => !baseline.has(key(l))),
    async vmStatus(id) {
      if (sshExec) return createDriver(config, config.nodes[0], sshExec, nodePaths(config.node.dir)).status(id);
      // A node-worker node: ask the driver inside the host's namespaces, from dist/.
      const code = `
        const { createDriver } = require('./dist/activities/drivers');
        const { LocalExecutor } = require('./dist/exec/local');
        const { nodePaths } = require('./dist/activities/node-paths');
        const { parseConfig } = require('./dist/config/load');
        const config = parseConfig(JSON.parse(process.argv[2]));
        createDriver(config, config.nodes[0], new LocalExecutor(), nodePaths(config.node.dir)).status(process.argv[1]).then((s) => console.log(s));`;
      const r = await exec.run([join(ROOT, 'testbed/testbed.sh'), 'exec', nodeName, '--', process.execPath, '-e', code, id, JSON.stringify(raw)], { timeoutMs: 20_000 });
      return r.stdout.trim();
    },
    async console(id) {
      if (xenExec) {
        const xen = await xenExec.readFile(`/var/log/xen/console/guest-${id}.log`);
        if (xen !== null) return xen;
      }
      for (const n of nodeNames.filter((x) => x !== 'xen1')) {
        const log = await exec.readFile(join(TESTBED_DIR, 'hosts', n, 'node', 'workspaces', id, 'serial.log'));
        if (log !== null) return log;
      }
      return '';
    },
    async call(who, method, path, body) {
      const res = await fetch(`${api}${path}`, {
        method,
        headers: { ...(who ? { authorization: `Bearer ${tokenOf[who]}` } : {}), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
      });
      return { status: res.status, body: (await res.json().catch(() => ({}))) as Record<string, unknown> };
    },
    configFile,
    grants: () => conn.client.workflow.getHandle(allocatorWorkflowId(config)).query(grantsQuery),
    async recordHistory(workspaceId, name) {
      await record(workspaceWorkflowId(config, workspaceId), `workspace-${name}`);
    },
    recordWorkflowHistory: record,
    killHead() {
      if (!headChild) throw new Error('killHead needs a stack started with headProcess: true');
      headChild.kill('SIGKILL');
    },
    startHead,
    injectFault(f) {
      if (opts.headProcess) throw new Error('injectFault needs the head in this process');
      fault = f;
    },
    killNodeWorker() {
      if (!nodeWorker) throw new Error(`${nodeName} has no node worker process`);
      nodeWorker.kill('SIGKILL');
    },
    startNodeWorker,
    async restartKilledWorkers() {
      const dead = (c: ChildProcess | undefined) => c !== undefined && (c.exitCode !== null || c.signalCode !== null);
      if (dead(headChild)) await startHead();
      if (dead(nodeWorker)) await startNodeWorker();
    },
    async stop() {
      await record(allocatorWorkflowId(config), `allocator-${opts.label}`);
      if (nodeWorker) await stopChild(nodeWorker);
      if (headChild) await stopChild(headChild);
      if (inProcess) {
        inProcess.workers.forEach((w) => w.shutdown());
        await Promise.all(inProcess.runs);
        inProcess.close();
      }
      await sshExec?.close();
      if (xenExec !== sshExec) await xenExec?.close();
      await new Promise((ok) => server.close(ok));
      await conn.close();
    },
  };
}

/**
 * Why the testbed has no Xen node, when `testbed.sh up` went on without one because the Xen packages
 * could not be downloaded (then the xen tests skip, saying so); `null` otherwise, and then a xen1 that
 * is down is a failure, not a skip.
 */
export function xenSkipReason(): string | null {
  try {
    const why = readFileSync(join(TESTBED_DIR, 'xen1.skipped'), 'utf8').trim();
    return why ? `xen1 is not part of this testbed: ${why}` : null;
  } catch {
    return null;
  }
}

/** The testbed nodes for a suite: xen1 only when the testbed has it (see {@link xenSkipReason}). */
export function testNodes(wanted: TestNode[]): TestNode[] {
  const reason = xenSkipReason();
  if (reason && wanted.includes('xen1')) console.warn(`skipping the xen1 cases: ${reason}`);
  return wanted.filter((n) => n !== 'xen1' || !reason);
}

/** Fails with a clear message unless the testbed's Xen node is up. */
export async function requireXen(): Promise<void> {
  const r = await exec.run([join(ROOT, 'testbed/xen/xen1.sh'), 'status'], { okCodes: [0, 1, 2, 3] }).catch((e: Error) => ({ code: 1, stdout: '', stderr: e.message }));
  if (r.code !== 0) throw new Error(`the testbed's Xen node xen1 is not up (testbed/xen/xen1.sh status):\n${r.stdout}${r.stderr}`);
}

/** What the Xen node still holds: domains, loop devices, DHCP entries and leases, workspace dirs, partial copies. */
export async function xenLeftovers(x: Executor): Promise<string[]> {
  const ls = async (p: string) => (await x.run(['ls', '-1', p], { okCodes: [0, 1, 2] })).stdout.split('\n').filter(Boolean);
  // At once, not one after the other: each is an SSH round trip to a dom0 under TCG.
  const [domains, loops, dhcp, nft, workspaces, cache] = await Promise.all([
    x.run(['xl', 'list']).then((r) => r.stdout.split('\n').slice(1)),
    x.run(['losetup', '-a']).then((r) => r.stdout.split('\n').filter(Boolean)),
    dhcpLeftovers(x, '/var/lib/vws/node/dhcp', 'xen1'),
    nftLeftovers(x, [], 'xen1'),
    ls('/var/lib/vws/node/workspaces'),
    ls('/var/lib/vws/node/cache'),
  ]);
  const left: string[] = [];
  for (const line of domains) {
    const name = line.trim().split(/\s+/)[0];
    if (name && name !== 'Domain-0') left.push(`domain ${name}`);
  }
  for (const l of loops) left.push(`loop ${l}`);
  left.push(...dhcp, ...nft);
  for (const w of workspaces) left.push(`workspace directory ${w}`);
  for (const c of cache) if (/\.(part|lock)$/.test(c)) left.push(`cache ${c}`);
  return left;
}

/**
 * What vws's DHCP servers under `dir` (one directory per network) still hold: a running server (vws stops
 * it with its last entry), host entries, leases.
 */
export async function dhcpLeftovers(x: Executor, dir: string, where: string): Promise<string[]> {
  const left: string[] = [];
  // Directories only (`-p` marks them with a slash): one per network.
  const nets = (await x.run(['ls', '-1', '-p', dir], { okCodes: [0, 1, 2] })).stdout.split('\n').filter((n) => n.endsWith('/')).map((n) => n.slice(0, -1));
  for (const net of nets) {
    const pid = (await x.readFile(join(dir, net, 'server.pid')))?.trim();
    if (pid && (await x.run(['kill', '-0', pid], { okCodes: [0, 1] })).code === 0) {
      // no pid: a restart is not a new leak. When and how it started tells which activity left it.
      // Busybox in xen1's dom0: no pgrep, no `ps -p`; /proc and `date -r` work everywhere.
      const ps = ((await x.readFile(`/proc/${pid}/cmdline`)) ?? '').split('\0').join(' ').trim();
      const written = (await x.run(['date', '-u', '-r', join(dir, net, 'server.pid'), '+%FT%TZ'], { okCodes: [0, 1] })).stdout.trim();
      const tail = async (f: string) => (await x.run(['tail', '-n', '3', join(dir, net, f)], { okCodes: [0, 1] })).stdout.trim().replace(/\n/g, ' | ');
      left.push(`${where} DHCP server of ${net} running (pid ${pid}: ${ps || 'no cmdline'}; pid file written ${written}; now ${new Date().toISOString()}; server.log: ${await tail('server.log')}; server.log.1: ${await tail('server.log.1')})`);
    }
    for (const e of parseState(await x.readFile(join(dir, net, 'entries.json'))).entries) left.push(`${where} DHCP host entry ${net}: ${e.mac} ${e.ip} ${e.hostname}`);
    for (const l of ((await x.readFile(join(dir, net, 'leases'))) ?? '').split('\n').filter((l) => /^\d+ /.test(l))) left.push(`${where} DHCP lease ${net}: ${l}`);
  }
  return left;
}

/** Anti-spoofing tables (`bridge vws_*`) still in the kernel of a host; `prefix` runs nft there. */
export async function nftLeftovers(x: Executor, prefix: string[], where: string): Promise<string[]> {
  const r = await x.run([...prefix, 'nft', 'list', 'tables', 'bridge'], { okCodes: [0, 1] });
  return [...r.stdout.matchAll(/^table bridge (vws_\S+)/gm)].map((m) => `${where} nft table ${m[1]}`);
}

/**
 * FAULT INJECTION for tests: an executor that runs every command on the real one, except that while
 * `fault(argv)` returns a message the command fails with it (the node never sees it).
 */
function withInjectedFaults(x: Executor, fault: (argv: string[]) => string | null): Executor {
  return new Proxy(x, {
    get(target, prop, receiver) {
      if (prop !== 'run') return Reflect.get(target, prop, receiver);
      return async (argv: string[], options?: unknown) => {
        const message = fault(argv);
        if (message) throw new Error(`injected failure: ${message} (${argv.join(' ')})`);
        return (target.run as (a: string[], o?: unknown) => Promise<unknown>).call(target, argv, options);
      };
    },
  });
}

/** Starts a worker process (`argv`) and waits until it logs `ready`. */
async function spawnWorker(host: string, argv: string[], configFile: string, temporal: string, logFile: string, ready: string): Promise<ChildProcess> {
  const child = spawn(argv[0], argv.slice(1), {
    cwd: ROOT,
    // info: the test waits for the worker's ready line.
    env: { ...process.env, VWS_CONFIG: configFile, VWS_NODE: host, VWS_TEMPORAL_ADDRESS: temporal, VWS_LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const collect = (b: Buffer) => {
    output += b.toString();
    writeFileSync(logFile, output);
  };
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);
  await new Promise<void>((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`${host} worker did not start in 30 s:\n${output}`)), 30_000);
    const check = () => {
      if (output.includes(ready)) {
        clearTimeout(timer);
        ok();
      }
    };
    child.stdout!.on('data', check);
    child.once('exit', (code) => {
      clearTimeout(timer);
      fail(new Error(`${host} worker exited with ${code}:\n${output}`));
    });
  });
  return child;
}

async function stopChild(child: ChildProcess): Promise<void> {
  // One killed by a signal (killHead, killNodeWorker) has no exit code but a signal code; its 'exit' is past.
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((ok) => child.once('exit', ok));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/** Polls `fn` until it returns a truthy value or `seconds` pass. */
export async function eventually<T>(seconds: number, fn: () => Promise<T | undefined | null | false>, what: string, intervalMs = 250): Promise<T> {
  const deadline = Date.now() + seconds * 1000;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${seconds} s waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** What a node still holds: VMs (qemu processes in its namespace), taps, DHCP entries and leases, workspace dirs, partial copies. */
export async function nodeLeftovers(host: string, nodeDir: string): Promise<string[]> {
  const left: string[] = [];
  const pids = (await exec.run(['ip', 'netns', 'pids', host])).stdout.split('\n').filter(Boolean);
  for (const pid of pids) {
    // Not /proc/PID/comm: qemu's `-name ...,process=` renames it.
    const argv0 = ((await exec.readFile(`/proc/${pid}/cmdline`)) ?? '').split('\0')[0];
    if (/qemu-system/.test(argv0)) left.push(`qemu process ${pid}`);
  }
  const links = (await exec.run(['ip', '-n', host, '-o', 'link', 'show'])).stdout;
  for (const m of links.matchAll(/^\d+: (vw[0-9a-f]{12,13})[:@]/gm)) left.push(`tap ${m[1]}`);
  left.push(...(await dhcpLeftovers(exec, join(nodeDir, 'dhcp'), host)));
  left.push(...(await nftLeftovers(exec, ['ip', 'netns', 'exec', host], host)));
  const wsDirs = (await exec.run(['ls', '-1', join(nodeDir, 'workspaces')], { okCodes: [0, 2] })).stdout.split('\n').filter(Boolean);
  for (const w of wsDirs) left.push(`workspace directory ${w}`);
  // A partial copy or a copy lock in the image cache outlives nothing that ended cleanly.
  const cached = (await exec.run(['ls', '-1', join(nodeDir, 'cache')], { okCodes: [0, 2] })).stdout.split('\n').filter(Boolean);
  for (const c of cached) if (/\.(part|lock)$/.test(c)) left.push(`cache ${c}`);
  return left;
}
