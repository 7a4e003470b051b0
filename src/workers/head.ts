/**
 * The head worker: hosts every workflow and the head-side activities (allocator calls) on the head
 * task queue. Run as `node dist/workers/head.js`; tests call {@link createHeadWorker} in-process.
 */
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker, type WorkerOptions } from '@temporalio/worker';
import { createHeadActivities } from '../activities/head/allocator-client';
import { createHeadImageActivities } from '../activities/head/images';
import { headTaskQueue } from '../config/names';
import { loadConfig } from '../config/load';
import type { VwsConfig } from '../config/schema';
import { sshExecutorFor, type SshExecutor } from '../exec/ssh';
import { log } from '../log';
import { createNodeWorker } from './node';
import { installRuntime } from './runtime';

/** Options of {@link createHeadWorker}. */
export interface HeadWorkerOptions {
  config: VwsConfig;
  connection: NativeConnection;
  client: Client;
  /** A prebuilt workflow bundle (tests bundle once per file); otherwise the worker bundles `src/workflows`. */
  workflowBundle?: WorkerOptions['workflowBundle'];
}

/**
 * Creates (does not run) the workers of every SSH-mode node: each serves its node's task queue from the
 * head, running the same node activities over a pooled SSH connection. Workflows never know the mode.
 */
export async function createSshNodeWorkers(o: { config: VwsConfig; connection: NativeConnection }): Promise<{ workers: Worker[]; close: () => void }> {
  const executors: SshExecutor[] = [];
  const workers: Worker[] = [];
  for (const node of o.config.nodes.filter((n) => n.agent === 'ssh')) {
    const exec = sshExecutorFor(o.config, node);
    executors.push(exec);
    workers.push(await createNodeWorker({ config: o.config, node: node.name, connection: o.connection, exec, localRepository: true }));
  }
  return { workers, close: () => executors.forEach((e) => e.close()) };
}

/** Creates (does not run) the head worker. */
export function createHeadWorker(o: HeadWorkerOptions): Promise<Worker> {
  return Worker.create({
    connection: o.connection,
    namespace: o.config.temporal.namespace,
    taskQueue: headTaskQueue(o.config),
    ...(o.workflowBundle ? { workflowBundle: o.workflowBundle } : { workflowsPath: require.resolve('../workflows') }),
    activities: { ...createHeadActivities({ client: o.client, config: o.config }), ...createHeadImageActivities({ config: o.config }) },
  });
}

async function main(): Promise<void> {
  installRuntime();
  const config = loadConfig();
  const connection = await NativeConnection.connect({ address: config.temporal.address });
  const clientConnection = await Connection.connect({ address: config.temporal.address });
  const client = new Client({ connection: clientConnection, namespace: config.temporal.namespace });
  const worker = await createHeadWorker({ config, connection, client });
  const ssh = await createSshNodeWorkers({ config, connection });
  log.info(
    { taskQueue: headTaskQueue(config), sshNodes: config.nodes.filter((n) => n.agent === 'ssh').map((n) => n.name), temporal: config.temporal.address },
    'head worker running',
  );
  // The SDK shuts the workers down on SIGTERM/SIGINT; then close the connections, or they keep the process alive.
  try {
    await Promise.all([worker.run(), ...ssh.workers.map((w) => w.run())]);
  } finally {
    ssh.close();
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
