/**
 * The head worker: hosts every workflow and the head-side activities (allocator calls) on the head
 * task queue. Run as `node dist/workers/head.js`; tests call {@link createHeadWorker} in-process.
 */
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker, type WorkerOptions } from '@temporalio/worker';
import { createHeadActivities } from '../activities/head/allocator-client';
import { headTaskQueue } from '../config/names';
import { loadConfig } from '../config/load';
import type { VwsConfig } from '../config/schema';
import { log } from '../log';
import { installRuntime } from './runtime';

/** Options of {@link createHeadWorker}. */
export interface HeadWorkerOptions {
  config: VwsConfig;
  connection: NativeConnection;
  client: Client;
  /** A prebuilt workflow bundle (tests bundle once per file); otherwise the worker bundles `src/workflows`. */
  workflowBundle?: WorkerOptions['workflowBundle'];
}

/** Creates (does not run) the head worker. */
export function createHeadWorker(o: HeadWorkerOptions): Promise<Worker> {
  return Worker.create({
    connection: o.connection,
    namespace: o.config.temporal.namespace,
    taskQueue: headTaskQueue(o.config),
    ...(o.workflowBundle ? { workflowBundle: o.workflowBundle } : { workflowsPath: require.resolve('../workflows') }),
    activities: createHeadActivities({ client: o.client, config: o.config }),
  });
}

async function main(): Promise<void> {
  installRuntime();
  const config = loadConfig();
  const connection = await NativeConnection.connect({ address: config.temporal.address });
  const clientConnection = await Connection.connect({ address: config.temporal.address });
  const client = new Client({ connection: clientConnection, namespace: config.temporal.namespace });
  const worker = await createHeadWorker({ config, connection, client });
  log.info({ taskQueue: headTaskQueue(config), temporal: config.temporal.address }, 'head worker running');
  // The SDK shuts the worker down on SIGTERM/SIGINT; then close the connections, or they keep the process alive.
  try {
    await worker.run();
  } finally {
    await clientConnection.close();
    await connection.close();
  }
}

if (require.main === module) {
  main().catch((e) => {
    log.fatal({ err: e }, 'head worker failed');
    process.exit(1);
  });
}
