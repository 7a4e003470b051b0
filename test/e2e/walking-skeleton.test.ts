/**
 * The walking skeleton through real parts only: POST /workspaces → workspace workflow → allocator →
 * node worker inside vmm1 → image pulled from the head and overlaid → dnsmasq entry → QEMU boots the
 * guest → the VM obtains its address by DHCP and answers ping from the head → DELETE destroys it and
 * nothing is left: no qemu process, no tap, no DHCP entry or lease, no files, no grant.
 */
import { join } from 'node:path';
import { workspaceWorkflowId } from '../../src/config/names';
import { eventually, exec, startStack, type Stack } from '../helpers/stack';

let stack: Stack;
const VMM1 = '10.213.0.11';
const METRICS_PORT = 9465;
beforeAll(async () => {
  // The node worker serves its Temporal SDK metrics (and vws's activity counters) inside vmm1.
  stack = await startStack({ label: 'walking-skeleton', first: '10.213.0.200', last: '10.213.0.209', config: { telemetry: { nodeWorkerMetrics: `${VMM1}:${METRICS_PORT}` } } });
});
afterAll(async () => {
  await stack?.stop();
});

/** The QEMU driver's own view of vmm1 (status of one VM, and its list), run inside vmm1 from dist/. */
async function driverView(id: string): Promise<{ status: string; list: string[] }> {
  const code = `
    const { QemuDriver } = require('./dist/activities/qemu/driver');
    const { LocalExecutor } = require('./dist/exec/local');
    const { nodePaths } = require('./dist/activities/node-paths');
    const d = new QemuDriver({ exec: new LocalExecutor(), paths: nodePaths('/var/lib/vws/node'), binary: 'qemu-system-x86_64', accel: 'tcg' });
    Promise.all([d.status(process.argv[1]), d.list()]).then(([status, list]) => console.log(JSON.stringify({ status, list })));`;
  const r = await exec.run([join(__dirname, '../../testbed/testbed.sh'), 'exec', 'vmm1', '--', process.execPath, '-e', code, id]);
  return JSON.parse(r.stdout) as { status: string; list: string[] };
}

type Ws = Record<string, unknown> & { state: string; network?: { ip: string; mac: string; hostname: string } };

describe('the walking skeleton', () => {
  it('deploys a real VM on vmm1 with its DHCP address, answers ping, and destroys it leaving nothing', async () => {
    expect(await stack.leftovers()).toEqual([]);

    const t0 = Date.now();
    const created = await stack.call('alice', 'POST', '/workspaces', { image: 'sample', memoryMiB: 128 });
    expect(created.status).toBe(202);
    const id = String(created.body.id);
    expect(id).toMatch(/^ws-[0-9a-f]{12}$/);

    const running = await eventually(
      120,
      async () => {
        const r = await stack.call('alice', 'GET', `/workspaces/${id}`);
        const ws = r.body as Ws;
        if (ws.state === 'Corrupted') throw new Error(`workspace Corrupted: ${String(ws.reason)}`);
        return ws.state === 'Running' && ws.obtainedIp ? ws : null;
      },
      'Running with a DHCP address',
    );
    const postToRunning = (Date.now() - t0) / 1000;
    console.log(`walking skeleton: POST → Running with DHCP address in ${postToRunning.toFixed(2)} s`);

    expect(running).toMatchObject({ id, node: 'vmm1', owner: '/O=Grid/OU=test/CN=alice', image: 'sample', task: null });
    expect(running.network!.ip).toBe('10.213.0.200');
    expect(running.obtainedIp).toBe(running.network!.ip);
    expect((running.links as { temporalUi: string }).temporalUi).toContain(encodeURIComponent(workspaceWorkflowId(stack.config, id)));

    // The node worker's metrics: the SDK's own (activities it ran), and the bytes it propagated if any.
    const metrics = await (await fetch(`http://${VMM1}:${METRICS_PORT}/metrics`)).text();
    expect(metrics).toMatch(/^temporal_activity_execution_latency_count\{[^}]*activity_type="bootVm"[^}]*task_queue="[^"]*-node\.vmm1"[^}]*\} 1$/m);
    const copied = (running.propagation as { bytesCopied: number } | undefined)?.bytesCopied ?? 0;
    const counted = /^vws_propagation_bytes_total\{[^}]*\} (\d+)/m.exec(metrics);
    expect(counted ? Number(counted[1]) : 0).toBe(copied);

    // The VM answers from the head, through the head bridge and vmm1's br0.
    const ping = await exec.run(['ping', '-c', '1', '-W', '3', running.network!.ip], { okCodes: [0, 1] });
    expect(ping.stdout).toContain('1 received');

    // It really is our guest: a qemu process in vmm1, booted from the overlay of the staged image.
    // The serial log is a QEMU file chardev: its last lines may reach the file a moment after the lease.
    const serial = await eventually(15, async () => {
      const text = await exec.readFile(join(stack.nodeDir, 'workspaces', id, 'serial.log'));
      return text?.includes('VWS-GUEST-READY') ? text : null;
    }, 'the guest banner in the serial log');
    expect(serial).toContain('VWS-GUEST: image=vws-sample-image v1');
    expect(serial).toContain(`VWS-GUEST-READY host=${running.network!.hostname} ip=${running.network!.ip}`);
    const left = await stack.leftovers();
    expect(left.filter((l) => l.startsWith('qemu process'))).toHaveLength(1);
    const net = running.network!;
    expect(left).toContain(`tap vw${id.slice(3)}0`);
    expect(left).toContain(`vmm1 DHCP host entry public: ${net.mac} ${net.ip} ${net.hostname}`);
    expect(left).toContain(`vmm1 nft table vws_vw${id.slice(3)}0`);
    expect(await stack.grants()).toHaveLength(1);
    const view = await driverView(id);
    expect(view.status).toBe('running');
    expect(view.list).toContain(id); // (VMs of other runs may share vmm1; the leftovers check is baseline-aware)

    // Another client cannot see or destroy it.
    expect((await stack.call('bob', 'GET', `/workspaces/${id}`)).status).toBe(404);
    expect((await stack.call('bob', 'DELETE', `/workspaces/${id}`)).status).toBe(404);
    expect((await stack.call(null, 'GET', `/workspaces/${id}`)).status).toBe(401);

    const del = await stack.call('alice', 'DELETE', `/workspaces/${id}`);
    expect(del.status).toBe(202);
    await eventually(60, async () => (await stack.call('alice', 'GET', `/workspaces/${id}`)).body.state === 'Cancelled', 'Cancelled');

    expect(await stack.leftovers()).toEqual([]);
    expect(await stack.grants()).toEqual([]);
    const after = await driverView(id);
    expect(after.status).toBe('absent');
    expect(after.list).not.toContain(id);
    const gone = await exec.run(['ping', '-c', '1', '-W', '1', running.network!.ip], { okCodes: [0, 1] });
    expect(gone.code).toBe(1);

    // A second destroy is refused, naming the state.
    const again = await stack.call('alice', 'DELETE', `/workspaces/${id}`);
    expect(again.status).toBe(409);
    expect(again.body).toMatchObject({ state: 'Cancelled', detail: 'cannot destroy a workspace in state Cancelled' });

    await stack.recordHistory(id, 'walking-skeleton');
  });

  it('refuses bad input with 400 naming the field, and starts nothing', async () => {
    const cases: Array<[unknown, string]> = [
      [{ image: 'sample', memoryMiB: 'lots' }, 'memoryMiB'],
      [{ image: 'no-such-image' }, 'image'],
      [{ image: 'sample', memoryMiB: 4096 }, 'memoryMiB'],
      [{ image: 'sample', color: 'blue' }, 'color'],
      [{}, 'image'],
    ];
    for (const [body, field] of cases) {
      const r = await stack.call('alice', 'POST', '/workspaces', body);
      expect(r.status).toBe(400);
      expect(r.body).toMatchObject({ status: 400, title: 'Invalid request', errors: [expect.objectContaining({ field })] });
    }
    const notJson = await stack.call('alice', 'POST', '/workspaces', '{"image": ');
    expect(notJson).toMatchObject({ status: 400, body: { detail: 'the body is not valid JSON' } });

    const open = await stack.conn.client.workflow.count(`WorkflowId STARTS_WITH "${stack.config.temporal.prefix}-ws-"`);
    expect(open.count).toBe(1); // only the walking skeleton's workspace, now Cancelled
    expect(await stack.grants()).toEqual([]);
    expect(await stack.leftovers()).toEqual([]);
  });
});
