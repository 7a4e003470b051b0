/**
 * The allocator under heavy Update traffic while it continues as new: many callers reserve and release
 * at once against one allocator that is told to continue as new every few hundred events (the
 * `continueAsNewAfterEvents` option), so dozens of runs hand over while Updates are in flight. Every
 * call must complete (none lost or stuck behind a closing run), and the ledger must end empty.
 *
 * It prints the callers' figures (calls/s, latency percentiles, every failed gRPC attempt inside the
 * SDK's retries by status); the fix for issue 6 was judged by them. For experiments: CAN_CALLERS,
 * CAN_ROUNDS and CAN_EVENTS change the load and the run length, CAN_WATCH=1 prints the allocator's
 * run and pending workflow task every 15 s (how a stall was found).
 */
import { InterceptingCall, status as grpcStatus, type Interceptor } from '@grpc/grpc-js';
import { Client, Connection, defaultGrpcRetryOptions, makeGrpcRetryInterceptor } from '@temporalio/client';
import type { Worker } from '@temporalio/worker';
import { AllocatorClient, initialLedger } from '../../src/clients/allocator';
import { allocatorWorkflowId, headTaskQueue } from '../../src/config/names';
import type { VwsConfig } from '../../src/config/schema';
import { createHeadWorker } from '../../src/workers/head';
import type { AllocatorOptions } from '../../src/workflows/allocator';
import { connect, temporalAddress, testConfig, workflowBundle, type TestConnections } from '../helpers/temporal';

const CALLERS = Number(process.env.CAN_CALLERS ?? 40);
const ROUNDS = Number(process.env.CAN_ROUNDS ?? 5);
const EVENTS_PER_RUN = Number(process.env.CAN_EVENTS ?? 120);

let conn: TestConnections;
beforeAll(async () => {
  conn = await connect();
});
afterAll(() => conn.close());

/** Every failed gRPC attempt the callers' connection saw (inside the SDK's own retries), by status and message. */
const failedAttempts = new Map<string, number>();
const countFailures: Interceptor = (options, next) =>
  new InterceptingCall(next(options), {
    start(metadata, listener, start) {
      start(metadata, {
        onReceiveStatus(s, pass) {
          if (s.code !== grpcStatus.OK) {
            const key = `${grpcStatus[s.code]}: ${s.details}`;
            failedAttempts.set(key, (failedAttempts.get(key) ?? 0) + 1);
          }
          pass(s);
        },
      });
    },
  });

/** One node with room for every caller and enough addresses for all of them at once. */
function bigSite(): VwsConfig {
  return testConfig({
    nodes: [{ name: 'vmm1', memoryMiB: 64 * 1024, cpus: 256 }],
    networks: [{ name: 'public', subnet: '10.213.0.0/24', gateway: '10.213.0.1', ranges: [{ first: '10.213.0.10', last: '10.213.0.250' }] }],
  });
}

/** The allocator's runs so far (one per continue-as-new, plus the first). */
async function runs(config: VwsConfig): Promise<number> {
  let n = 0;
  for await (const _ of conn.client.workflow.list({ query: `WorkflowId = "${allocatorWorkflowId(config)}"` })) n++;
  return n;
}

describe('the allocator under load while it continues as new', () => {
  it('completes every reserve and release and ends with an empty ledger', async () => {
    const config = bigSite();
    // The callers' own connection, with the SDK's default retries and a counter inside them.
    const connection = await Connection.connect({
      address: temporalAddress(),
      interceptors: [makeGrpcRetryInterceptor(defaultGrpcRetryOptions()), countFailures],
    });
    const allocator = new AllocatorClient(new Client({ connection }), config);
    const options: AllocatorOptions = { continueAsNewAfterEvents: EVENTS_PER_RUN };
    await conn.client.workflow.start('allocatorWorkflow', {
      workflowId: allocatorWorkflowId(config),
      taskQueue: headTaskQueue(config),
      args: [initialLedger(config), options],
    });
    const worker: Worker = await createHeadWorker({ config, connection: conn.native, client: conn.client, workflowBundle: await workflowBundle() });

    const latencies: number[] = [];
    const timed = async <T>(call: () => Promise<T>): Promise<T> => {
      const t0 = Date.now();
      try {
        return await call();
      } finally {
        latencies.push(Date.now() - t0);
      }
    };
    const started = Date.now();
    const watchdog = process.env.CAN_WATCH
      ? setInterval(() => {
          void conn.client.workflow
            .getHandle(allocatorWorkflowId(config))
            .describe()
            .then((d) => console.log(`t+${((Date.now() - started) / 1000).toFixed(0)} s: ${latencies.length} calls done; run ${d.runId} history ${d.historyLength}; pending WFT ${JSON.stringify(d.raw.pendingWorkflowTask)}`));
        }, 15_000)
      : undefined;
    /** Prints what the callers saw (the figures the fix is judged by). */
    const report = () => {
      const elapsed = (Date.now() - started) / 1000;
      const sorted = [...latencies].sort((a, b) => a - b);
      const pct = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
      console.log(
        `${latencies.length} calls by ${CALLERS} callers in ${elapsed.toFixed(1)} s (${(latencies.length / elapsed).toFixed(0)}/s); ` +
          `latency p50 ${pct(50)} ms, p99 ${pct(99)} ms, max ${sorted[sorted.length - 1]} ms; failed attempts: ${JSON.stringify(Object.fromEntries(failedAttempts))}`,
      );
    };
    try {
      await worker.runUntil(async () => {
        const results = await Promise.allSettled(
          Array.from({ length: CALLERS }, async (_, c) => {
            for (let r = 0; r < ROUNDS; r++) {
              const holder = `wf-${c}-${r}`;
              const grant = await timed(() => allocator.reserve({ holder, memoryMiB: 64, vcpus: 1 }));
              expect(grant.holder).toBe(holder);
              // true, or false if a resent release found the grant already gone: the empty ledger below decides.
              expect(typeof (await timed(() => allocator.release(holder, { usedSeconds: 1 })))).toBe('boolean');
            }
          }),
        );
        const failures = results
          .filter((r): r is PromiseRejectedResult => r.status === 'rejected')
          .map((r) => `${String(r.reason)}${(r.reason as { cause?: unknown }).cause ? ` (cause: ${String((r.reason as { cause?: unknown }).cause)})` : ''}`);
        report();
        expect(failures).toEqual([]);
        expect(await allocator.grants()).toEqual([]);
      });
    } finally {
      if (watchdog) clearInterval(watchdog);
      await connection.close();
    }
    const runCount = await runs(config);
    // The test is only worth something if the allocator really handed over many times mid-traffic.
    expect(latencies).toHaveLength(2 * CALLERS * ROUNDS);
    expect(runCount).toBeGreaterThanOrEqual(5);
    await conn.client.workflow.getHandle(allocatorWorkflowId(config)).terminate('test over');
  });
});
