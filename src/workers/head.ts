/**
 * The head worker: hosts every workflow and the head-side activities (allocator calls) on the head
 * task queue. Run as `node dist/workers/head.js`; tests call {@link createHeadWorker} in-process.
 */
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker, type WorkerOptions } from '@temporalio/worker';
import { createHeadActivities } from '../activities/head/allocator-client';
import { join } from 'node:path';
import { createHeadImageActivities } from '../activities/head/images';
import { createReconcileActivities } from '../activities/head/reconcile';
import { ensureReconcilerSchedule } from '../clients/reconciler';
import { createMemberActivities } from '../activities/head/members';
import { createPilotSlotActivities } from '../activities/head/pilot-slot';
import { createDhcpActivities } from '../activities/network/dhcp';
import { LocalExecutor } from '../exec/local';
import { headTaskQueue } from '../config/names';
import { loadConfig } from '../config/load';
import type { VwsConfig } from '../config/schema';
import type { Executor } from '../exec/executor';
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
  /**
   * Benchmarks only: worker settings to measure against the defaults (bench/api.bench.ts,
   * `VWS_BENCH_HEAD_WORKER`); a site sets what matters through `workers.head` in its configuration.
   */
  tuning?: Pick<WorkerOptions, 'maxConcurrentWorkflowTaskExecutions' | 'maxConcurrentActivityTaskExecutions' | 'reuseV8Context' | 'workflowThreadPoolSize'>;
}

/**
 * Creates (does not run) the workers of every SSH-mode node: each serves its node's task queue from the
 * head, running the same node activities over a pooled SSH connection. Workflows never know the mode.
 */
export async function createSshNodeWorkers(o: {
  config: VwsConfig;
  connection: NativeConnection;
  /** Tests only: wraps a node's executor (to inject a failure into a real node's commands). */
  wrapExecutor?: (node: string, exec: Executor) => Executor;
}): Promise<{ workers: Worker[]; close: () => void }> {
  const executors: SshExecutor[] = [];
  const workers: Worker[] = [];
  for (const node of o.config.nodes.filter((n) => n.agent === 'ssh')) {
    const ssh = sshExecutorFor(o.config, node);
    executors.push(ssh);
    const exec = o.wrapExecutor ? o.wrapExecutor(node.name, ssh) : ssh;
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
    // The SDK's default (thousands) lets the head grow by ~0.3 MB per live workspace without bound.
    maxCachedWorkflows: o.config.workers.head.maxCachedWorkflows,
    stickyQueueScheduleToStartTimeout: o.config.workers.head.stickyTaskSeconds * 1000,
    ...(o.workflowBundle ? { workflowBundle: o.workflowBundle } : { workflowsPath: require.resolve('../workflows') }),
    ...o.tuning,
    activities: {
      ...createHeadActivities({ client: o.client, config: o.config }),
      ...createHeadImageActivities({ config: o.config }),
      ...createReconcileActivities({ client: o.client, config: o.config }),
      // Group and ensemble fan-outs to their member workspaces.
      ...createMemberActivities({ client: o.client }),
      ...createPilotSlotActivities({ client: o.client, config: o.config }),
      // Central DHCP delivery (networks with `dhcp.on: head`) runs these on the head itself.
      ...createDhcpActivities({ exec: new LocalExecutor(), dir: join(o.config.stateDir, 'dhcp') }),
    },
  });
}

async function main(): Promise<void> {
  const config = loadConfig();
  installRuntime({ metricsAddress: config.telemetry.headWorkerMetrics });
  const connection = await NativeConnection.connect({ address: config.temporal.address });
  const clientConnection = await Connection.connect({ address: config.temporal.address });
  const client = new Client({ connection: clientConnection, namespace: config.temporal.namespace });
  const bundleFile = config.workers.head.workflowBundleFile;
  const worker = await createHeadWorker({ config, connection, client, ...(bundleFile ? { workflowBundle: { codePath: bundleFile } } : {}) });
  const ssh = await createSshNodeWorkers({ config, connection });
  log.info(
    { taskQueue: headTaskQueue(config), sshNodes: config.nodes.filter((n) => n.agent === 'ssh').map((n) => n.name), temporal: config.temporal.address },
    'head worker running',
  );
  // The SDK shuts the workers down on SIGTERM/SIGINT; then close the connections, or they keep the process alive.
  try {
    const runs = [worker.run(), ...ssh.workers.map((w) => w.run())];
    // The allocator learns this configuration's nodes and pools (it needs the running worker to answer).
    createHeadActivities({ client, config })
      .configureAllocator()
      .then(() => log.info({ networks: config.networks.map((n) => n.name) }, 'allocator configured'))
      .catch((e: Error) => log.error({ err: e }, 'could not configure the allocator'));
    // The reconciler's Schedule follows this configuration (created, updated, or deleted when disabled).
    ensureReconcilerSchedule(client, config)
      .then((outcome) => log.info({ outcome, reconciler: config.reconciler }, 'reconciler schedule'))
      .catch((e: Error) => log.error({ err: e }, 'could not set up the reconciler schedule'));
    await Promise.all(runs);
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
