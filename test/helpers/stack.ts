/**
 * The whole vws stack for an end-to-end test, on the testbed: the API (listening on the head bridge so
 * vmm1 can pull images), the head worker in this process, and a real node worker process inside vmm1's
 * namespaces. Each stack has its own prefix, state directory, tokens and address range.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, statSync, writeFileSync } from 'node:fs';
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
import { createHeadWorker } from '../../src/workers/head';
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

/** A running stack. */
export interface Stack {
  config: VwsConfig;
  /** API base URL as seen from the head. */
  api: string;
  /** Bearer tokens of the two test clients. */
  tokens: { alice: string; bob: string };
  conn: TestConnections;
  /** Host path of vmm1's node directory. */
  nodeDir: string;
  /** Calls the API as `who`. */
  call(who: 'alice' | 'bob' | null, method: string, path: string, body?: unknown): Promise<{ status: number; body: Record<string, unknown> }>;
  /** Live allocator grants. */
  grants(): Promise<unknown[]>;
  /** What vmm1 holds now that it did not hold when the stack started (VMs, taps, DHCP, files). */
  leftovers(): Promise<string[]>;
  /**
   * With VWS_RECORD_HISTORIES=DIR, saves a workspace's workflow history as DIR/workspace-NAME.json for
   * the replay test. The allocator's is saved once, at stop, as DIR/allocator-LABEL.json.
   */
  recordHistory(workspaceId: string, name: string): Promise<void>;
  stop(): Promise<void>;
}

/** Starts a stack whose only node is vmm1, with addresses from `first` to `last`; `label` names its recordings. */
export async function startStack(opts: { label: string; first: string; last: string }): Promise<Stack> {
  await requireTestbed();
  const prefix = uniquePrefix();
  const dir = mkdtempSync(`/tmp/vws-e2e-${prefix}-`);
  const secrets = join(dir, 'secrets');
  mkdirSync(secrets, { mode: 0o700 });
  const conn = await connect();

  // Listen first: the repository URL handed to the node must name the real port.
  const server: Server = createServer();
  await new Promise<void>((ok) => server.listen(0, '10.213.0.1', ok));
  const port = (server.address() as AddressInfo).port;
  const raw = {
    stateDir: dir,
    temporal: { address: temporalAddress(), prefix },
    api: { host: '10.213.0.1', port },
    repository: { dir: join(dir, 'repo'), url: `http://10.213.0.1:${port}/repository`, nodeTokenFile: join(secrets, 'node.token') },
    clients: [
      { name: 'alice', identity: '/O=Grid/OU=test/CN=alice', tokenFile: join(secrets, 'alice.token') },
      { name: 'bob', identity: '/O=Grid/OU=test/CN=bob', tokenFile: join(secrets, 'bob.token') },
    ],
    network: { name: 'public', subnet: '10.213.0.0/24', gateway: '10.213.0.1', first: opts.first, last: opts.last },
    nodes: [{ name: 'vmm1', memoryMiB: 1024, cpus: 4 }],
    timeouts: { addressSeconds: 60 },
  };
  const config = parseConfig(raw);
  const tokens = loadTokens(config);
  server.on('request', createApp({ config, client: conn.client, clientTokens: () => tokens.clients, nodeTokens: () => tokens.nodes }));
  const configFile = join(dir, 'vws.yaml');
  writeFileSync(configFile, stringify(raw));
  await stageLocalFile(config, 'sample', GUEST_DISK);

  const headWorker: Worker = await createHeadWorker({ config, connection: conn.native, client: conn.client, workflowBundle: await workflowBundle() });
  const headRun = headWorker.run();

  const nodeWorker = await spawnNodeWorker('vmm1', configFile, temporalAddress().replace(/^(127\.0\.0\.1|localhost)/, '10.213.0.1'), join(dir, 'node-worker-vmm1.log'));

  const api = `http://10.213.0.1:${port}`;
  const record = async (workflowId: string, file: string) => {
    const out = process.env.VWS_RECORD_HISTORIES;
    if (!out) return;
    mkdirSync(out, { recursive: true });
    writeFileSync(join(out, `${file}.json`), historyToJSON(await conn.client.workflow.getHandle(workflowId).fetchHistory()));
  };
  const nodeDir = join(TESTBED_DIR, 'hosts/vmm1/node');
  // Whatever vmm1 held before (e.g. a demo started by ./run.sh start) is not this test's leak.
  const baseline = new Set(await nodeLeftovers('vmm1', nodeDir));
  const tokenOf = { alice: ensureToken(join(secrets, 'alice.token')), bob: ensureToken(join(secrets, 'bob.token')) };
  return {
    config,
    api,
    tokens: tokenOf,
    conn,
    nodeDir,
    leftovers: async () => (await nodeLeftovers('vmm1', nodeDir)).filter((l) => !baseline.has(l)),
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
    async stop() {
      await record(allocatorWorkflowId(config), `allocator-${opts.label}`);
      await stopChild(nodeWorker);
      headWorker.shutdown();
      await headRun;
      await new Promise((ok) => server.close(ok));
      await conn.close();
    },
  };
}

/** Starts `node dist/workers/node.js` inside a testbed host and waits until it polls its queue. */
async function spawnNodeWorker(host: string, configFile: string, temporal: string, logFile: string): Promise<ChildProcess> {
  const child = spawn(join(ROOT, 'testbed/testbed.sh'), ['exec', host, '--', process.execPath, join(ROOT, 'dist/workers/node.js')], {
    cwd: ROOT,
    // info: the test waits for the worker's 'node worker running' line.
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
    const timer = setTimeout(() => fail(new Error(`node worker on ${host} did not start in 30 s:\n${output}`)), 30_000);
    const check = () => {
      if (output.includes('node worker running')) {
        clearTimeout(timer);
        ok();
      }
    };
    child.stdout!.on('data', check);
    child.once('exit', (code) => {
      clearTimeout(timer);
      fail(new Error(`node worker on ${host} exited with ${code}:\n${output}`));
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

/** What a node still holds: VMs (qemu processes in its namespace), taps, DHCP entries and leases, workspace dirs. */
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
  return left;
}
