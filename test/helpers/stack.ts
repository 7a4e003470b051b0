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
import { nodePaths } from '../../src/activities/node-paths';
import { sshExecutorFor } from '../../src/exec/ssh';
import { createHeadWorker, createSshNodeWorkers } from '../../src/workers/head';
import { connect, temporalAddress, uniquePrefix, workflowBundle, type TestConnections } from './temporal';

const ROOT = join(__dirname, '../..');
/** The testbed's state directory (as testbed/testbed.sh uses it). */
export const TESTBED_DIR = process.env.VWS_TESTBED_DIR ?? '/var/lib/vws/testbed';
/** The guest image built by testbed/guest/build.sh. */
export const GUEST_DISK = join(process.env.VWS_CACHE_DIR ?? join(ROOT, '.cache'), 'guest', 'disk.raw');
export const exec = new LocalExecutor();

/** Fails with a clear message unless the testbed is up and `dist/` is built from the current sources. */
export async function requireTestbed(): Promise<void> {
  const r = await exec.run([join(ROOT, 'testbed/testbed.sh'), 'status'], { okCodes: [0, 1] });
  if (r.code !== 0) throw new Error(`the testbed is not up (testbed/testbed.sh status):\n${r.stdout}${r.stderr}\nrun the tests with ./run.sh test`);
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
  vmm1: { name: 'vmm1', memoryMiB: 1024, cpus: 4, agent: 'worker', driver: 'qemu', bridge: 'br0' },
  /** SSH mode from the head to vmm2, QEMU. */
  vmm2: { name: 'vmm2', memoryMiB: 1024, cpus: 4, agent: 'ssh', driver: 'qemu', bridge: 'br0', ssh: { host: '10.213.0.12' } },
  /** SSH mode to the nested Xen node's dom0, `xl`. */
  xen1: { name: 'xen1', memoryMiB: 1024, cpus: 2, agent: 'ssh', driver: 'xen', bridge: 'xenbr0', ssh: { host: '10.213.0.21' } },
} as const;

/** A testbed node name. */
export type TestNode = keyof typeof TEST_NODES;

/** A running stack. */
export interface Stack {
  config: VwsConfig;
  /** API base URL as seen from the head. */
  api: string;
  /** Bearer tokens of the two test clients. */
  tokens: { alice: string; bob: string };
  conn: TestConnections;
  /** The node this stack deploys on. */
  node: TestNode;
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
  /** kill -9 the head worker process (only with `headProcess`), and start it again. */
  killHead(): void;
  startHead(): Promise<void>;
  /** kill -9 the node worker (only for vmm1), and start it again. */
  killNodeWorker(): void;
  startNodeWorker(): Promise<void>;
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
  /** Run the head worker as a separate process (so a test can kill -9 it) instead of in this process. */
  headProcess?: boolean;
  /** Extra configuration merged over the stack's. */
  config?: Record<string, unknown>;
  /** URL prefixes alice may name as unpropagation targets (`clients[].stageOutTargets`). */
  aliceStageOutTargets?: string[];
  /** Another Temporal server than the shared one (a test that restarts its server). */
  temporalAddress?: string;
}

/** Starts a stack with one node, with addresses from `first` to `last`. */
export async function startStack(opts: StackOptions): Promise<Stack> {
  await requireTestbed();
  const nodeName: TestNode = opts.node ?? 'vmm1';
  if (nodeName === 'xen1') await requireXen();
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
      { name: 'alice', identity: '/O=Grid/OU=test/CN=alice', tokenFile: join(secrets, 'alice.token'), stageOutTargets: opts.aliceStageOutTargets ?? [] },
      { name: 'bob', identity: '/O=Grid/OU=test/CN=bob', tokenFile: join(secrets, 'bob.token') },
    ],
    network: { name: 'public', subnet: '10.213.0.0/24', gateway: '10.213.0.1', first: opts.first, last: opts.last },
    nodes: [TEST_NODES[nodeName]],
    ssh: { keyFile: join(TESTBED_DIR, 'ssh/id_ed25519'), knownHostsFile: join(TESTBED_DIR, 'ssh/known_hosts') },
    timeouts: { addressSeconds: 60, shutdownSeconds: 20 },
    ...opts.config,
  };
  const config = parseConfig(raw);
  const tokens = loadTokens(config);
  server.on('request', createApp({ config, client: conn.client, clientTokens: () => tokens.clients, nodeTokens: () => tokens.nodes }));
  const configFile = join(dir, 'vws.yaml');
  writeFileSync(configFile, stringify(raw));
  await stageLocalFile(config, 'sample', GUEST_DISK);

  // The head: in this process (quick), or as a real process that a kill test can kill -9.
  let headChild: ChildProcess | undefined;
  let inProcess: { workers: Worker[]; runs: Promise<void>[]; close: () => void } | undefined;
  const startHead = async () => {
    if (opts.headProcess) {
      headChild = await spawnWorker('head', [process.execPath, join(ROOT, 'dist/workers/head.js')], configFile, temporal, join(dir, 'head.log'), 'head worker running');
      return;
    }
    const head = await createHeadWorker({ config, connection: conn.native, client: conn.client, workflowBundle: await workflowBundle() });
    const ssh = await createSshNodeWorkers({ config, connection: conn.native });
    const workers = [head, ...ssh.workers];
    inProcess = { workers, runs: workers.map((w) => w.run()), close: ssh.close };
  };
  await startHead();

  const nodeTemporal = temporal.replace(/^(127\.0\.0\.1|localhost)/, '10.213.0.1');
  let nodeWorker: ChildProcess | undefined;
  const startNodeWorker = async () => {
    if (TEST_NODES[nodeName].agent !== 'worker') return;
    const argv = [join(ROOT, 'testbed/testbed.sh'), 'exec', nodeName, '--', process.execPath, join(ROOT, 'dist/workers/node.js')];
    nodeWorker = await spawnWorker(nodeName, argv, configFile, nodeTemporal, join(dir, `node-worker-${nodeName}.log`), 'node worker running');
  };
  await startNodeWorker();

  const sshExec = TEST_NODES[nodeName].agent === 'ssh' ? sshExecutorFor(config, config.nodes[0]) : undefined;
  const nodeExec: Executor = nodeName === 'xen1' ? sshExec! : exec;
  const hostNodeDir = join(TESTBED_DIR, 'hosts', nodeName, 'node');
  const holdings = () => (nodeName === 'xen1' ? xenLeftovers(nodeExec) : nodeLeftovers(nodeName, hostNodeDir));
  // Whatever the node held before (e.g. a demo started by ./run.sh start) is not this test's leak.
  const baseline = new Set(await holdings());

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
    nodeDir: hostNodeDir,
    nodeExec,
    leftovers: async () => (await holdings()).filter((l) => !baseline.has(l)),
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
      if (nodeName === 'xen1') return (await nodeExec.readFile(`/var/log/xen/console/guest-${id}.log`)) ?? '';
      return (await exec.readFile(join(hostNodeDir, 'workspaces', id, 'serial.log'))) ?? '';
    },
    async call(who, method, path, body) {
      const res = await fetch(`${api}${path}`, {
        method,
        headers: { ...(who ? { authorization: `Bearer ${tokenOf[who]}` } : {}), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
      });
      return { status: res.status, body: (await res.json().catch(() => ({}))) as Record<string, unknown> };
    },
    grants: () => conn.client.workflow.getHandle(allocatorWorkflowId(config)).query(grantsQuery),
    async recordHistory(workspaceId, name) {
      await record(workspaceWorkflowId(config, workspaceId), `workspace-${name}`);
    },
    killHead() {
      if (!headChild) throw new Error('killHead needs a stack started with headProcess: true');
      headChild.kill('SIGKILL');
    },
    startHead,
    killNodeWorker() {
      if (!nodeWorker) throw new Error(`${nodeName} has no node worker process`);
      nodeWorker.kill('SIGKILL');
    },
    startNodeWorker,
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
  const left: string[] = [];
  const domains = (await x.run(['xl', 'list'])).stdout.split('\n').slice(1);
  for (const line of domains) {
    const name = line.trim().split(/\s+/)[0];
    if (name && name !== 'Domain-0') left.push(`domain ${name}`);
  }
  for (const l of (await x.run(['losetup', '-a'])).stdout.split('\n').filter(Boolean)) left.push(`loop ${l}`);
  const ls = async (p: string) => (await x.run(['ls', '-1', p], { okCodes: [0, 1, 2] })).stdout.split('\n').filter(Boolean);
  for (const e of await ls('/var/lib/vws/node/dhcp/hosts.d')) left.push(`DHCP host entry ${e}`);
  for (const l of ((await x.readFile('/var/lib/vws/node/dhcp/leases')) ?? '').split('\n').filter(Boolean)) left.push(`DHCP lease ${l}`);
  for (const w of await ls('/var/lib/vws/node/workspaces')) left.push(`workspace directory ${w}`);
  for (const c of await ls('/var/lib/vws/node/cache')) if (/\.(part|lock)$/.test(c)) left.push(`cache ${c}`);
  return left;
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
  if (child.exitCode !== null) return;
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
  for (const m of links.matchAll(/^\d+: (vw[0-9a-f]{12})[:@]/gm)) left.push(`tap ${m[1]}`);
  const entries = (await exec.run(['ls', '-1', join(nodeDir, 'dhcp/hosts.d')], { okCodes: [0, 2] })).stdout.split('\n').filter(Boolean);
  for (const e of entries) left.push(`DHCP host entry ${e}`);
  const leases = ((await exec.readFile(join(nodeDir, 'dhcp/leases'))) ?? '').split('\n').filter(Boolean);
  for (const l of leases) left.push(`DHCP lease ${l}`);
  const wsDirs = (await exec.run(['ls', '-1', join(nodeDir, 'workspaces')], { okCodes: [0, 2] })).stdout.split('\n').filter(Boolean);
  for (const w of wsDirs) left.push(`workspace directory ${w}`);
  // A partial copy or a copy lock in the image cache outlives nothing that ended cleanly.
  const cached = (await exec.run(['ls', '-1', join(nodeDir, 'cache')], { okCodes: [0, 2] })).stdout.split('\n').filter(Boolean);
  for (const c of cached) if (/\.(part|lock)$/.test(c)) left.push(`cache ${c}`);
  return left;
}
