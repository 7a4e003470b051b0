/**
 * The bench nodes in a process of their own, so that a benchmark measuring the head's memory
 * (`api.bench.ts`) counts the head alone. Started by the benchmark with `fork`:
 *
 *   node -r ./bench/ts-register.js bench/node-workers.ts <config.json> <dir> <node>...
 *
 * Sends `{ ready: true }` once its workers poll, answers `'memory'` with its `process.memoryUsage()`, and
 * stops its workers on SIGTERM (the SDK's runtime) or when the parent goes away.
 */
import { readFileSync } from 'node:fs';
import { NativeConnection } from '@temporalio/worker';
import type { VwsConfig } from '../src/config/schema';
import { installRuntime } from '../src/workers/runtime';
import { createBenchNodeWorkers } from './helpers';

async function main(): Promise<void> {
  const [configPath, dir, ...nodes] = process.argv.slice(2);
  if (!configPath || !dir || nodes.length === 0) throw new Error('usage: node-workers.ts <config.json> <dir> <node>...');
  installRuntime();
  const config = JSON.parse(readFileSync(configPath, 'utf8')) as VwsConfig;
  const connection = await NativeConnection.connect({ address: config.temporal.address });
  const workers = await createBenchNodeWorkers({ config, connection, nodes, dir });
  const runs = workers.map((w) => w.run());
  process.on('message', (m) => {
    if (m === 'memory') process.send?.({ memory: process.memoryUsage() });
  });
  // Without its parent nothing reads this process's answers: stop rather than linger.
  process.on('disconnect', () => workers.forEach((w) => w.getState() === 'RUNNING' && w.shutdown()));
  process.send?.({ ready: true });
  await Promise.all(runs);
  await connection.close();
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    console.error(e);
    process.exit(1);
  },
);
