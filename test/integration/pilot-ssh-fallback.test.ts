/**
 * The pilot's SSH fallback for real: vws's HTTP endpoint is unreachable (a closed port), so the pilot's
 * notifier carries the signed message over SSH (ssh2, the testbed's key, vmm2's host key pinned) to
 * vmm2, where `vws-pilot receive` (this tree's dist/) checks it with the same code as the HTTP route and
 * signals the slot's workflow on the Temporal dev server at the head's bridge address (10.213.0.1, the
 * port of TEMPORAL_ADDRESS: 7234 under ./run.sh test).
 * The slot workflow is the recorder from test/fixtures, so the test sees exactly what was delivered.
 * Also: forged, replayed (across receiver processes), stale and malformed messages over SSH are refused
 * and deliver nothing; and the pilot program itself (`vws-pilot run --ssh-fallback …`, a QEMU-mode node
 * directory of the test's own) tells vws `reserved` and `unreserving` over SSH.
 *
 * Needs the testbed (vmm2's sshd) and a fresh dist/ in the working directory (`npx tsc -p tsconfig.build.json`).
 */
import { spawn } from 'node:child_process';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Worker } from '@temporalio/worker';
import { pilotSshFallbackSchema, type PilotSshFallback } from '../../src/config/pilot-fallback-schema';
import { pilotSlotWorkflowId } from '../../src/config/names';
import type { VwsConfig } from '../../src/config/schema';
import type { PilotNotification } from '../../src/domain/messages';
import { newSignedPilotMessage } from '../../src/pilot/message';
import { PilotNotifier } from '../../src/pilot/notifier';
import { SshNotificationChannel } from '../../src/pilot/ssh-notify';
import { receivedQuery, stopSignal } from '../fixtures/pilot-recorder-workflows';
import { connect, temporalAddress, testConfig, type TestConnections } from '../helpers/temporal';

jest.setTimeout(180_000);

const TB = process.env.VWS_TESTBED_DIR ?? '/var/lib/vws/testbed';
const MAIN = resolve('dist/pilot/main.js');
/** Vws's API as the pilots would reach it: nothing listens there (a port just closed), it answers 503, or it never answers. */
let deadApi: string;
let brokenApi: string;
let silentApi: string;
const servers: Server[] = [];

/** An HTTP server on a free port of 127.0.0.1 doing `handler`; answers its URL. */
async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  const server = createServer(handler);
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}
const SLOT = 'sshfb-1';
const RUN_SLOT = 'sshfb-run';

let conn: TestConnections;
let config: VwsConfig;
let dir: string;
let worker: Worker;
let running: Promise<void>;
let secret: string;
let fallback: PilotSshFallback;

const taskQueue = () => `${config.temporal.prefix}-pilot-recorder`;
const received = (slotId: string): Promise<PilotNotification[]> => conn.client.workflow.getHandle(pilotSlotWorkflowId(config, slotId)).query(receivedQuery);
const message = (fields: Record<string, unknown> = {}, key = secret) => newSignedPilotMessage({ slotId: SLOT, node: 'vmm2', event: 'reserved', memoryMiB: 512, ...fields }, key);

beforeAll(async () => {
  if (!existsSync(MAIN)) throw new Error(`${MAIN} is missing: build with npx tsc -p tsconfig.build.json first`);
  conn = await connect();
  brokenApi = await serve((_req, res) => res.writeHead(503, { 'content-type': 'application/json' }).end('{}'));
  silentApi = await serve(() => undefined);
  deadApi = await serve(() => undefined);
  const closing = servers.pop()!;
  closing.closeAllConnections();
  await new Promise((r) => closing.close(r));
  // Under /tmp: vmm2's mount namespace shares it, so the receiver there reads the same files.
  dir = mkdtempSync(join(tmpdir(), 'vws-pilot-sshfb-'));
  chmodSync(dir, 0o755);
  // The receiver runs in vmm2: it reaches the test's dev server over the bridge, on the port the tests use.
  const raw = { temporal: { address: `10.213.0.1:${temporalAddress().split(':').pop()}` }, stateDir: join(dir, 'state'), pilot: { secretFile: join(dir, 'pilot.secret') } };
  config = testConfig(raw);
  secret = 'an-ssh-fallback-test-secret-0123456789';
  writeFileSync(config.pilot!.secretFile, `${secret}\n`, { mode: 0o600 });
  // The receiver's configuration: what the head's vws.yaml would hold (JSON is YAML).
  const configFile = join(dir, 'vws.json');
  writeFileSync(configFile, JSON.stringify({ ...raw, temporal: { ...raw.temporal, prefix: config.temporal.prefix, namespace: config.temporal.namespace } }));
  fallback = pilotSshFallbackSchema.parse({
    host: '10.213.0.12',
    hostAlias: 'vmm2',
    keyFile: join(TB, 'ssh/id_ed25519'),
    knownHostsFile: join(TB, 'ssh/known_hosts'),
    command: [process.execPath, MAIN, 'receive', '--config', configFile],
  });
  worker = await Worker.create({ connection: conn.native, namespace: config.temporal.namespace, taskQueue: taskQueue(), workflowsPath: require.resolve('../fixtures/pilot-recorder-workflows') });
  running = worker.run();
  for (const slot of [SLOT, RUN_SLOT]) await conn.client.workflow.start('pilotRecorderWorkflow', { taskQueue: taskQueue(), workflowId: pilotSlotWorkflowId(config, slot) });
});

afterAll(async () => {
  for (const slot of [SLOT, RUN_SLOT]) await conn?.client.workflow.getHandle(pilotSlotWorkflowId(config, slot)).signal(stopSignal).catch(() => undefined);
  for (const server of servers) {
    server.closeAllConnections();
    server.close();
  }
  worker?.shutdown();
  await running;
  await conn?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('pilot notifications: SSH as the fallback of HTTP', () => {
  it.each([
    ['refused', () => deadApi, /ECONNREFUSED/],
    ['answering 503', () => brokenApi, /^HTTP 503$/],
    ['not answering (timeout)', () => silentApi, /aborted due to timeout/],
  ])('delivers over SSH when HTTP is %s, after the configured HTTP attempts', async (_what, api, httpError) => {
    const retries: Array<{ via: string; last: string }> = [];
    const before = (await received(SLOT)).length;
    const notifier = new PilotNotifier({
      api: api(),
      secret,
      slotId: SLOT,
      node: 'vmm2',
      attemptTimeoutMs: 1_000,
      fallback: { channel: new SshNotificationChannel(fallback), afterHttpAttempts: 2 },
      onRetry: (i) => retries.push({ via: i.via, last: i.last }),
    });
    const outcome = await notifier.notify('reserved', Date.now() + 60_000, { memoryMiB: 512 });
    expect(outcome).toMatchObject({ event: 'reserved', result: 'delivered', via: 'ssh', attempts: 3, last: 'SSH 202' });
    expect(retries.map((r) => r.via)).toEqual(['http', 'http']);
    for (const r of retries) expect(r.last).toMatch(httpError);
    const got = (await received(SLOT)).slice(before);
    expect(got).toHaveLength(1);
    expect(got[0]).toMatchObject({ slotId: SLOT, node: 'vmm2', event: 'reserved', memoryMiB: 512, at: outcome.at, via: 'ssh' });
    expect(got[0]).not.toHaveProperty('signature');
  });

  it('refuses forged, replayed, stale and malformed messages over SSH and delivers none of them', async () => {
    const channel = new SshNotificationChannel(fallback);
    const before = (await received(SLOT)).length;

    const forged = message({ event: 'early-unreserving' }, 'not-the-site-secret-but-long-enough');
    expect(await channel.send(forged, 30_000)).toMatchObject({ status: 401, type: 'urn:vws:problem:PilotMessageForged' });
    // Changed after signing: the same refusal.
    expect(await channel.send({ ...message({ event: 'unreserving' }), event: 'early-unreserving' }, 30_000)).toMatchObject({ status: 401 });

    const good = message({ event: 'unreserving' });
    expect(await channel.send(good, 30_000)).toMatchObject({ status: 202 });
    // The second receiver is a new process: the nonce is remembered on disk all the same.
    expect(await channel.send(good, 30_000)).toMatchObject({ status: 409, type: 'urn:vws:problem:PilotMessageReplayed' });
    expect(readdirSync(join(config.stateDir, 'pilot-nonces'))).toContain(good.nonce);

    const stale = message({ at: new Date(Date.now() - 5 * 60_000).toISOString() });
    expect(await channel.send(stale, 30_000)).toMatchObject({ status: 409, type: 'urn:vws:problem:PilotMessageStale' });
    expect(await channel.send({ ...message(), slotId: 'Not A Slot' }, 30_000)).toMatchObject({ status: 400 });

    const got = await received(SLOT);
    expect(got.slice(before).map((n) => [n.event, n.nonce, n.via])).toEqual([['unreserving', good.nonce, 'ssh']]);
  });

  it('vws-pilot run tells vws reserved and unreserving over SSH when its --api is unreachable', async () => {
    const nodeDir = join(dir, 'node');
    mkdirSync(nodeDir, { recursive: true });
    const argv = [
      MAIN, 'run',
      '--slot', RUN_SLOT, '--node', 'vmm9', '--api', deadApi, '--secret-file', config.pilot!.secretFile,
      '--reserve-mib', '256', '--memory', 'host', '--configured-mib', '2048',
      '--hold-seconds', '20', '--margin-seconds', '12', '--grace-seconds', '10', '--node-dir', nodeDir,
      '--ssh-fallback', JSON.stringify(fallback),
    ];
    const child = spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VWS_CONFIG: '' } });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    const code = await new Promise<number | null>((r) => child.on('exit', r));
    const lines = out.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const notifies = lines.filter((l) => l.step === 'notify');
    expect({ code, notifies: notifies.map((l) => [l.event, l.result, l.via]) }).toEqual({
      code: 0,
      notifies: [
        ['reserved', 'delivered', 'ssh'],
        ['unreserving', 'delivered', 'ssh'],
      ],
    });
    expect(lines.find((l) => l.step === 'exit')).toMatchObject({ endReason: 'completed', exitCode: 0 });
    expect(out).not.toContain(secret);
    const got = await received(RUN_SLOT);
    expect(got.map((n) => [n.event, n.via, n.node])).toEqual([
      ['reserved', 'ssh', 'vmm9'],
      ['unreserving', 'ssh', 'vmm9'],
    ]);
    expect(got[0].memoryMiB).toBe(256);
    // The node is handed back: no reservation file left.
    expect(existsSync(join(nodeDir, 'pilot', 'reserved-memory.json'))).toBe(false);
  });
});
