/**
 * The node worker: runs on a VMM node and serves that node's task queue with local commands. Run as
 * `VWS_NODE=vmm1 node dist/workers/node.js` on the node (in the testbed: inside the host's namespaces).
 */
import { NativeConnection, Worker } from '@temporalio/worker';
import { createNodeActivities } from '../activities/node';
import { nodeTaskQueue } from '../config/names';
import { loadConfig } from '../config/load';
import type { VwsConfig } from '../config/schema';
import { readToken } from '../config/secrets';
import type { Executor } from '../exec/executor';
import { LocalExecutor } from '../exec/local';
import { log } from '../log';
import { installRuntime } from './runtime';

/**
 * Creates (does not run) the worker of node `node`. By default its activities run commands locally (a
 * node worker on its node); SSH mode passes an SSH executor and runs this on the head.
 */
export function createNodeWorker(o: {
  config: VwsConfig;
  node: string;
  connection: NativeConnection;
  exec?: Executor;
  /** SSH mode: the head reads images from its own repository directory instead of over HTTP from itself. */
  localRepository?: boolean;
}): Promise<Worker> {
  return Worker.create({
    connection: o.connection,
    namespace: o.config.temporal.namespace,
    taskQueue: nodeTaskQueue(o.config, o.node),
    activities: createNodeActivities({
      config: o.config,
      node: o.node,
      exec: o.exec ?? new LocalExecutor(),
      repositoryToken: () => readToken(o.config.repository.nodeTokenFile),
      ...(o.localRepository ? { localRepositoryDir: o.config.repository.dir } : {}),
    }),
    // A node boots a handful of VMs at once, but an ensemble's members wait in bootVm for their common
    // start instant, each holding a slot: enough slots that a node's share of a large ensemble all waits.
    maxConcurrentActivityTaskExecutions: 16,
  });
}

async function main(): Promise<void> {
  const config = loadConfig();
  installRuntime({ metricsAddress: config.telemetry.nodeWorkerMetrics });
  const node = process.env.VWS_NODE;
  if (!node) throw new Error('set VWS_NODE to this node\'s name (one of: ' + config.nodes.map((n) => n.name).join(', ') + ')');
  const connection = await NativeConnection.connect({ address: config.temporal.address });
  const worker = await createNodeWorker({ config, node, connection });
  log.info({ node, taskQueue: nodeTaskQueue(config, node), temporal: config.temporal.address }, 'node worker running');
  // The SDK shuts the worker down on SIGTERM/SIGINT; then close the connection, or it keeps the process alive.
  try {
    await worker.run();
  } finally {
    await connection.close();
  }
}

if (require.main === module) {
  main().catch((e) => {
    log.fatal({ err: e }, 'node worker failed');
    process.exit(1);
  });
}
