/**
 * The head worker and the API in a process of their own, so that `api.bench.ts` measures the memory and
 * the read latency of the head alone (not of jest, nor of the bench nodes). Started by the benchmark with
 * `fork` and `--expose-gc`:
 *
 *   node --expose-gc -r ./bench/ts-register.js bench/head-process.ts <config.json> <workflow-bundle.js> <client token digest> <identity> [worker|api|both]
 *
 * The last argument says what runs here: `worker` the head worker alone and `api` the API alone, as
 * production runs them (`./run.sh start`: `dist/workers/head.js` and `dist/api/server.js`, two processes),
 * or `both` (the default) in one process.
 *
 * The workflow bundle is built once by the benchmark (as the tests do) rather than by webpack in here.
 * With `VWS_BENCH_HEAD_DIST` (the `dist/` of a compiled tree, e.g. `/tmp/tree/dist`) the head worker and
 * the API are loaded from that compiled JavaScript, as production runs them (`node dist/workers/head.js`),
 * rather than transpiled from `src/` at load time; only this file goes through the TypeScript loader.
 * `VWS_BENCH_HEAD_WORKER` (JSON) passes worker settings to measure (`maxConcurrentWorkflowTaskExecutions`,
 * `maxConcurrentActivityTaskExecutions`, `reuseV8Context`, `workflowThreadPoolSize`).
 * Sends `{ ready, port, settings }` once the worker polls and the API listens on 127.0.0.1;
 * answers `'memory'` with its `process.memoryUsage()` after a full collection (so garbage not yet
 * collected does not count); stops on SIGTERM (the SDK's runtime stops the worker) or when the parent goes away.
 */
import type { AddressInfo } from 'node:net';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import type { NativeConnection as NativeConnectionType } from '@temporalio/worker';
import type { createApp as CreateApp } from '../src/api/app';
import type { VwsConfig } from '../src/config/schema';
import type { createHeadWorker as CreateHeadWorker, HeadWorkerOptions } from '../src/workers/head';
import type { installRuntime as InstallRuntime } from '../src/workers/runtime';

/** Where the head's modules are loaded from: a compiled `dist/`, or this tree's `src/` (transpiled on load). */
const base = process.env.VWS_BENCH_HEAD_DIST ? resolve(process.env.VWS_BENCH_HEAD_DIST) : join(__dirname, '..', 'src');
// Loaded only in the role that uses it, so each process's memory holds what production's would.
const loadApp = () => (require(join(base, 'api', 'app')) as { createApp: typeof CreateApp }).createApp;
const loadHeadWorker = () => (require(join(base, 'workers', 'head')) as { createHeadWorker: typeof CreateHeadWorker }).createHeadWorker;
const loadRuntime = () => (require(join(base, 'workers', 'runtime')) as { installRuntime: typeof InstallRuntime }).installRuntime;

async function main(): Promise<void> {
  const [configPath, bundlePath, digest, identity, role = 'both'] = process.argv.slice(2);
  if (!configPath || !bundlePath || !digest || !identity || !['worker', 'api', 'both'].includes(role)) {
    throw new Error('usage: head-process.ts <config.json> <workflow-bundle.js> <token digest> <identity> [worker|api|both]');
  }
  // The API process of production (dist/api/server.js) has no worker runtime; the head's has.
  if (role !== 'api') loadRuntime()();
  const config = JSON.parse(readFileSync(configPath, 'utf8')) as VwsConfig;
  const tuning = JSON.parse(process.env.VWS_BENCH_HEAD_WORKER || '{}') as NonNullable<HeadWorkerOptions['tuning']>;
  const connection = await Connection.connect({ address: config.temporal.address });
  const client = new Client({ connection, namespace: config.temporal.namespace });
  const native = role === 'api' ? undefined : await (require('@temporalio/worker') as { NativeConnection: typeof NativeConnectionType }).NativeConnection.connect({ address: config.temporal.address });
  const worker = native ? await loadHeadWorker()({ config, connection: native, client, workflowBundle: { codePath: bundlePath }, tuning }) : undefined;
  const run = worker ? worker.run() : new Promise<void>((resolve) => process.once('SIGTERM', () => resolve()));
  const clientTokens = [{ digest, principal: { name: 'bench', identity, admin: false } }];
  const server = role === 'worker' ? undefined : loadApp()({ config, client, clientTokens: () => clientTokens, nodeTokens: () => [] }).listen(0, '127.0.0.1');
  if (server) await new Promise((r) => server.once('listening', r));
  // The TypeScript compiler was needed only to load this process's modules: let it be collected.
  for (const key of Object.keys(require.cache)) if (key.includes('/node_modules/typescript/')) delete require.cache[key];
  process.on('message', (m) => {
    if (m !== 'memory') return;
    (globalThis as { gc?: () => void }).gc?.();
    process.send?.({ memory: process.memoryUsage() });
  });
  process.on('disconnect', () => (worker ? worker.getState() === 'RUNNING' && worker.shutdown() : process.kill(process.pid, 'SIGTERM')));
  const o = worker?.options;
  const wftSlots = o?.tuner && 'workflowTaskSlotSupplier' in o.tuner && o.tuner.workflowTaskSlotSupplier.type === 'fixed-size' ? o.tuner.workflowTaskSlotSupplier.numSlots : undefined;
  const settings = {
    role,
    from: process.env.VWS_BENCH_HEAD_DIST ? `compiled ${base}` : 'src (transpiled on load)',
    maxCachedWorkflows: o?.maxCachedWorkflows,
    maxConcurrentWorkflowTaskExecutions: wftSlots,
    workflowThreadPoolSize: o?.workflowThreadPoolSize,
    reuseV8Context: o?.reuseV8Context,
    execArgv: process.execArgv.filter((a) => !a.includes('ts-register')).join(' '),
    MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX,
  };
  process.send?.({ ready: true, port: server ? (server.address() as AddressInfo).port : 0, maxCachedWorkflows: o?.maxCachedWorkflows, settings });
  await run;
  server?.close();
  await connection.close();
  await native?.close();
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    console.error(e);
    process.exit(1);
  },
);
