/**
 * Integration helpers: one shared dev server (address from TEMPORAL_ADDRESS, started by
 * `./run.sh test`), and per-test isolation by a unique prefix for every task queue and workflow id.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { bundleWorkflowCode, NativeConnection, type Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { parseConfig } from '../../src/config/load';
import { installRuntime } from '../../src/workers/runtime';
import type { VwsConfig } from '../../src/config/schema';

// Workers in the test process log through pino at VWS_LOG_LEVEL (warn under ./run.sh test).
try {
  installRuntime();
} catch {
  // Already installed by an earlier test file in this process.
}

/** Address of the shared dev server. */
export function temporalAddress(): string {
  const a = process.env.TEMPORAL_ADDRESS;
  if (!a) throw new Error('TEMPORAL_ADDRESS is not set: run the tests with ./run.sh test (it starts the dev server)');
  return a;
}

/** A prefix no other test uses: `t` + 10 hex digits. */
export function uniquePrefix(): string {
  return `t${randomBytes(5).toString('hex')}`;
}

/** A configuration for one test: defaults, the shared server, a unique prefix, plus overrides. */
export function testConfig(overrides: Record<string, unknown> = {}): VwsConfig {
  const base = parseConfig({});
  return parseConfig({
    ...overrides,
    temporal: { ...base.temporal, address: temporalAddress(), prefix: uniquePrefix(), ...(overrides.temporal as object) },
  });
}

/** Connections to the shared server for a test file; close them in afterAll. */
export interface TestConnections {
  client: Client;
  native: NativeConnection;
  close(): Promise<void>;
}

/** Opens a client and a worker connection (to the shared server unless `address` names another). */
export async function connect(address = temporalAddress()): Promise<TestConnections> {
  const connection = await Connection.connect({ address });
  const native = await NativeConnection.connect({ address });
  return {
    client: new Client({ connection }),
    native,
    async close() {
      await connection.close();
      await native.close();
    },
  };
}

let bundle: Promise<WorkflowBundleWithSourceMap> | undefined;
/**
 * The workflow bundle, built once per jest run: webpack takes 1–3 s, and each test file has its own module
 * registry, so a bundle kept in memory was rebuilt by every file (~30 in the suite). The first file to ask
 * writes it to the run's directory (`VWS_TEST_RUN_DIR`, test/global-setup.js); the others read it. The
 * sources cannot change during a run. Without that directory (outside jest), once per file.
 */
export function workflowBundle(): Promise<WorkflowBundleWithSourceMap> {
  bundle ??= runBundle();
  return bundle;
}

async function runBundle(): Promise<WorkflowBundleWithSourceMap> {
  const dir = process.env.VWS_TEST_RUN_DIR;
  const file = dir ? join(dir, 'workflow-bundle.json') : undefined;
  if (file && existsSync(file)) return JSON.parse(readFileSync(file, 'utf8')) as WorkflowBundleWithSourceMap;
  const built = await bundleWorkflowCode({ workflowsPath: require.resolve('../../src/workflows'), logger: quietLogger });
  if (file) {
    // Renamed into place: a file run in another jest worker meanwhile reads a whole bundle or none.
    writeFileSync(`${file}.${process.pid}`, JSON.stringify(built));
    renameSync(`${file}.${process.pid}`, file);
  }
  return built;
}

const noop = () => undefined;
const quietLogger = { trace: noop, debug: noop, info: noop, warn: noop, error: console.error, log: noop };

/**
 * Ends a workflow-level test that ran a head worker without node workers: terminates every workflow it
 * started (none can finish without a node), lets the head activities still in flight notice (their next
 * heartbeat learns the workflow is gone) while the worker still answers queries, stops the worker, and
 * closes the connection after a pause: a group's fan-out can leave member Updates retrying in the
 * background, and closing the connection under them would throw from the client's retry timer.
 */
export async function endWorkflowTest(o: { conn: TestConnections; config: VwsConfig; worker: Worker; running: Promise<void>; reason: string }): Promise<void> {
  const ends: Promise<unknown>[] = [];
  for await (const w of o.conn.client.workflow.list({ query: `WorkflowId STARTS_WITH "${o.config.temporal.prefix}-" AND ExecutionStatus = "Running"` })) {
    ends.push(o.conn.client.workflow.getHandle(w.workflowId).terminate(o.reason).catch(() => undefined));
  }
  await Promise.all(ends);
  for (let i = 0; i < 100 && o.worker.getStatus().numInFlightActivities > 0; i++) await new Promise((r) => setTimeout(r, 200));
  o.worker.shutdown();
  await o.running;
  await new Promise((r) => setTimeout(r, 2000));
  await o.conn.close();
}
