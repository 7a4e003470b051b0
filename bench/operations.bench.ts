/**
 * Benchmark: each workspace operation's time through the whole stack (API → Update → workflow →
 * activity on the node → driver), median of N runs per node, split into the time inside the driver's
 * commands (measured by the node activity around the driver call, read back from the workflow
 * history) and the time vws adds around them (the rest). Start also waits for the guest to boot and
 * obtain its DHCP lease, shown apart.
 *
 *   VWS_BENCH=1 VWS_BENCH_RUNS=10 VWS_BENCH_NODES=vmm1,vmm2,xen1 ./run.sh test --selectProjects bench
 */
import { eventually, startStack, type Stack, type TestNode } from '../test/helpers/stack';
import { deploy, operate, settled } from '../test/helpers/workspace';
import { workspaceWorkflowId } from '../src/config/names';

const RUNS = Number(process.env.VWS_BENCH_RUNS ?? 10);
const NODES = (process.env.VWS_BENCH_NODES ?? 'vmm1,vmm2,xen1').split(',') as TestNode[];
const RANGE: Partial<Record<TestNode, string>> = { vmm1: '10.213.0.150', vmm2: '10.213.0.160', xen1: '10.213.0.170' };

/** Each operation and the activities whose driver time it contains. */
const OPS: Array<{ op: string; expect: string; activity: string; body?: object }> = [
  { op: 'pause', expect: 'Paused', activity: 'pauseVm' },
  { op: 'unpause', expect: 'Running', activity: 'unpauseVm' },
  { op: 'reboot', expect: 'Running', activity: 'rebootVm' },
  { op: 'shutdown', expect: 'Propagated', activity: 'shutdownVm' },
  { op: 'start', expect: 'Running', activity: 'bootVm' },
];

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** Milliseconds of a history event's timestamp. */
const ms = (t: { seconds?: unknown; nanos?: number | null } | null | undefined) => Number(t?.seconds ?? 0) * 1000 + (t?.nanos ?? 0) / 1e6;

/**
 * From a workspace's history: the driver time (ms) of every completed activity of type `activity`, and
 * the server-side duration (ms) of every Update named `update`, from its acceptance to its completion.
 */
async function fromHistory(stack: Stack, id: string, activity: string, update: string): Promise<{ driver: number[]; update: number[] }> {
  const history = await stack.conn.client.workflow.getHandle(workspaceWorkflowId(stack.config, id)).fetchHistory();
  const scheduled = new Map<string, string>();
  const accepted = new Map<string, number>();
  const out = { driver: [] as number[], update: [] as number[] };
  for (const e of history.events ?? []) {
    if (e.activityTaskScheduledEventAttributes) scheduled.set(String(e.eventId), String(e.activityTaskScheduledEventAttributes.activityType?.name));
    const done = e.activityTaskCompletedEventAttributes;
    if (done && scheduled.get(String(done.scheduledEventId)) === activity) {
      const payload = done.result?.payloads?.[0]?.data;
      if (payload) out.driver.push((JSON.parse(Buffer.from(payload).toString('utf8')) as { driverMs: number }).driverMs);
    }
    const acc = e.workflowExecutionUpdateAcceptedEventAttributes;
    if (acc?.acceptedRequest?.input?.name === update) accepted.set(String(acc.protocolInstanceId), ms(e.eventTime));
    const completed = e.workflowExecutionUpdateCompletedEventAttributes;
    const started = accepted.get(String(completed?.meta?.updateId));
    if (completed && started !== undefined) out.update.push(ms(e.eventTime) - started);
  }
  return out;
}

describe.each(NODES)('operation times on %s', (node) => {
  let stack: Stack;
  beforeAll(async () => {
    const first = RANGE[node]!;
    const last = first.replace(/\d+$/, (n) => String(Number(n) + 4));
    stack = await startStack({ label: `bench-${node}`, first, last, node });
  });
  afterAll(async () => {
    await stack?.stop();
  });

  it(`runs every operation ${RUNS} times and prints the split`, async () => {
    const id = await deploy(stack, { durationSeconds: 24 * 3600 });
    await settled(stack, id, 'Running');
    const totals: Record<string, number[]> = Object.fromEntries(OPS.map((o) => [o.op, []]));
    const ready = async () => (await stack.console(id)).split('VWS-GUEST-READY').length;
    const shutdowns: string[] = [];
    for (let i = 0; i < RUNS; i++) {
      for (const o of OPS) {
        const before = await ready();
        const { ws, seconds } = await operate(stack, id, o.op, o.expect, o.body ?? {});
        totals[o.op].push(seconds * 1000);
        if (o.op === 'shutdown') shutdowns.push(String(ws.lastShutdown));
        // A guest that is still booting ignores the power button: let a reboot finish before going on.
        if (o.op === 'reboot') await eventually(120, async () => (await ready()) > before, 'the guest ready again after reboot');
      }
    }
    const rows = [];
    for (const o of OPS) {
      const h = await fromHistory(stack, id, o.activity, o.op);
      // The first boot is the deploy's (not an Update): skip it so runs line up with the timed starts.
      const driver = median(h.driver.slice(o.op === 'start' ? 1 : 0));
      const update = median(h.update);
      rows.push(`| ${node} | ${o.op} | ${RUNS} | ${median(totals[o.op]).toFixed(0)} | ${update.toFixed(0)} | ${driver.toFixed(0)} | ${(update - driver).toFixed(0)} |`);
    }
    console.log(
      [
        `operation times on ${node} (ms, medians of ${RUNS}; "API → settled" is seen by a client polling GET every 250 ms;`,
        `"Update" is accepted → completed in the server's history; "vws" = Update − driver; start's includes the guest's boot and DHCP)`,
        '| node | operation | runs | API → settled | Update | in driver | vws (+ guest) |',
        '| --- | --- | --- | --- | --- | --- | --- |',
        ...rows,
      ].join('\n'),
    );
    console.log(`shutdowns on ${node}: ${shutdowns.filter((x) => x === 'graceful').length} of ${RUNS} graceful`);
    expect(totals.pause).toHaveLength(RUNS);
    const r = await stack.call('alice', 'DELETE', `/workspaces/${id}`);
    expect(r.status).toBe(202);
    await settled(stack, id, 'Cancelled');
  }, 40 * 60_000); // xen1's ten rounds take several minutes under TCG
});
