/**
 * The head worker and the API in a process of their own, so that `api.bench.ts` measures the memory and
 * the read latency of the head alone (not of jest, nor of the bench nodes). Started by the benchmark with
 * `fork` and `--expose-gc`:
 *
 *   node --expose-gc -r ./bench/ts-register.js bench/head-process.ts <config.json> <workflow-bundle.js> <client token digest> <identity>
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
import { NativeConnection } from '@temporalio/worker';
import type { createApp as CreateApp } from '../src/api/app';
import type { VwsConfig } from '../src/config/schema';
import type { createHeadWorker as CreateHeadWorker, HeadWorkerOptions } from '../src/workers/head';
import type { installRuntime as InstallRuntime } from '../src/workers/runtime';

/** Where the head's modules are loaded from: a compiled `dist/`, or this tree's `src/` (transpiled on load). */
const base = process.env.VWS_BENCH_HEAD_DIST ? resolve(process.env.VWS_BENCH_HEAD_DIST) : join(__dirname, '..', 'src');
const { createApp } = require(join(base, 'api', 'app')) as { createApp: typeof CreateApp };
const { createHeadWorker } = require(join(base, 'workers', 'head')) as { createHeadWorker: typeof CreateHeadWorker };
const { installRuntime } = require(join(base, 'workers', 'runtime')) as { installRuntime: typeof InstallRuntime };

async function main(): Promise<void> {
  const [configPath, bundlePath, digest, identity] = process.argv.slice(2);
  if (!configPath || !bundlePath || !digest || !identity) throw new Error('usage: head-process.ts <config.json> <workflow-bundle.js> <token digest> <identity>');
  installRuntime();
  const config = JSON.parse(readFileSync(configPath, 'utf8')) as VwsConfig;
  const tuning = JSON.parse(process.env.VWS_BENCH_HEAD_WORKER || '{}') as NonNullable<HeadWorkerOptions['tuning']>;
  const native = await NativeConnection.connect({ address: config.temporal.address });
  const connection = await Connection.connect({ address: config.temporal.address });
  const client = new Client({ connection, namespace: config.temporal.namespace });
  const worker = await createHeadWorker({ config, connection: native, client, workflowBundle: { codePath: bundlePath }, tuning });
  const run = worker.run();
  const clientTokens = [{ digest, principal: { name: 'bench', identity, admin: false } }];
  const server = createApp({ config, client, clientTokens: () => clientTokens, nodeTokens: () => [] }).listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  // The TypeScript compiler was needed only to load this process's modules: let it be collected.
  for (const key of Object.keys(require.cache)) if (key.includes('/node_modules/typescript/')) delete require.cache[key];
  process.on('message', (m) => {
    if (m !== 'memory') return;
    (globalThis as { gc?: () => void }).gc?.();
    process.send?.({ memory: process.memoryUsage() });
  });
  process.on('disconnect', () => worker.getState() === 'RUNNING' && worker.shutdown());
  const o = worker.options;
  const wftSlots = o.tuner && 'workflowTaskSlotSupplier' in o.tuner && o.tuner.workflowTaskSlotSupplier.type === 'fixed-size' ? o.tuner.workflowTaskSlotSupplier.numSlots : undefined;
  const settings = {
    from: process.env.VWS_BENCH_HEAD_DIST ? `compiled ${base}` : 'src (transpiled on load)',
    maxCachedWorkflows: o.maxCachedWorkflows,
    maxConcurrentWorkflowTaskExecutions: wftSlots,
    workflowThreadPoolSize: o.workflowThreadPoolSize,
    reuseV8Context: o.reuseV8Context,
    execArgv: process.execArgv.filter((a) => !a.includes('ts-register')).join(' '),
  };
  process.send?.({ ready: true, port: (server.address() as AddressInfo).port, maxCachedWorkflows: o.maxCachedWorkflows, settings });
  await run;
  server.close();
  await connection.close();
  await native.close();
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    console.error(e);
    process.exit(1);
  },
);
