/**
 * `POST /pilot/notifications` against the real dev server: a correctly signed message (no bearer token)
 * is delivered as the `pilotNotification` Signal to `<prefix>-pilot-<slotId>`; forged (401), stale and
 * replayed (409) and malformed (400, naming the fields) messages are refused and deliver nothing; a
 * slot without a running workflow is 404, and the same message is accepted once the slot runs. The slot
 * workflow is a recorder from test/fixtures (the real one comes with issue 7's slot workflow).
 */
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import request from 'supertest';
import { Worker } from '@temporalio/worker';
import type express from 'express';
import { createApp } from '../../src/api/app';
import { ApiMetrics } from '../../src/api/metrics';
import { AllocatorClient } from '../../src/clients/allocator';
import { pilotSlotWorkflowId } from '../../src/config/names';
import type { VwsConfig } from '../../src/config/schema';
import type { PilotNotification } from '../../src/domain/messages';
import type { SignedPilotMessage } from '../../src/domain/pilot-message';
import { newSignedPilotMessage, signPilotMessage } from '../../src/pilot/message';
import { receivedQuery, stopSignal } from '../fixtures/pilot-recorder-workflows';
import { connect, testConfig, type TestConnections } from '../helpers/temporal';

jest.setTimeout(120_000);

let conn: TestConnections;
let config: VwsConfig;
let dir: string;
let worker: Worker;
let running: Promise<void>;
let app: express.Express;
let secret: string;
const SLOT = 'slot-0123456789ab';
const LATE_SLOT = 'slot-late';
const taskQueue = () => `${config.temporal.prefix}-pilot-recorder`;

function appFor(c: VwsConfig): express.Express {
  const metrics = new ApiMetrics({ config: c, client: conn.client, allocator: new AllocatorClient(conn.client, c), cacheMs: 60_000 });
  return createApp({ config: c, client: conn.client, clientTokens: () => [], nodeTokens: () => [], metrics });
}

async function startRecorder(slotId: string): Promise<void> {
  await conn.client.workflow.start('pilotRecorderWorkflow', { taskQueue: taskQueue(), workflowId: pilotSlotWorkflowId(config, slotId) });
}

async function received(slotId: string): Promise<PilotNotification[]> {
  return conn.client.workflow.getHandle(pilotSlotWorkflowId(config, slotId)).query(receivedQuery);
}

const post = (body: unknown) => request(app).post('/pilot/notifications').send(body as object);
const message = (fields: Partial<SignedPilotMessage> = {}, key = secret) =>
  newSignedPilotMessage({ slotId: SLOT, node: 'vmm1', event: 'reserved', memoryMiB: 1024, ...fields }, key);

beforeAll(async () => {
  conn = await connect();
  dir = mkdtempSync(join(tmpdir(), 'vws-pilot-notify-'));
  config = testConfig({ stateDir: dir, pilot: { secretFile: join(dir, 'secrets', 'pilot.secret') }, reconciler: { enabled: false } });
  worker = await Worker.create({
    connection: conn.native,
    namespace: config.temporal.namespace,
    taskQueue: taskQueue(),
    workflowsPath: require.resolve('../fixtures/pilot-recorder-workflows'),
  });
  running = worker.run();
  app = appFor(config);
  // The app created the secret file (mode 0600) at start.
  secret = readFileSync(join(dir, 'secrets', 'pilot.secret'), 'utf8').trim();
  await startRecorder(SLOT);
});

afterAll(async () => {
  for (const slot of [SLOT, LATE_SLOT]) await conn.client.workflow.getHandle(pilotSlotWorkflowId(config, slot)).signal(stopSignal).catch(() => undefined);
  worker?.shutdown();
  await running;
  await conn.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('POST /pilot/notifications', () => {
  it('creates the secret file, 0600, with a 256-bit secret', () => {
    expect(secret).toMatch(/^[0-9a-f]{64}$/);
    expect(statSync(join(dir, 'secrets', 'pilot.secret')).mode & 0o777).toBe(0o600);
  });

  it('delivers a correctly signed message, without any bearer token, to <prefix>-pilot-<slotId>', async () => {
    const m = message();
    const res = await post(m);
    expect(res.status).toBe(202);
    expect(res.body).toEqual({ delivered: true, slotId: SLOT, event: 'reserved', receivedAt: expect.any(String) });
    const got = await received(SLOT);
    const { signature: _s, ...unsigned } = m;
    expect(got).toEqual([{ ...unsigned, receivedAt: res.body.receivedAt, via: 'http' }]);
    expect(pilotSlotWorkflowId(config, SLOT)).toBe(`${config.temporal.prefix}-pilot-${SLOT}`);
  });

  it('refuses a replay of a delivered message (409 PilotMessageReplayed) and delivers nothing', async () => {
    const m = message({ event: 'unreserving' });
    expect((await post(m)).status).toBe(202);
    const before = (await received(SLOT)).length;
    const res = await post(m);
    expect(res.status).toBe(409);
    expect(res.type).toBe('application/problem+json');
    expect(res.body).toMatchObject({ type: 'urn:vws:problem:PilotMessageReplayed', status: 409, errors: [{ field: 'nonce' }] });
    expect((await received(SLOT)).length).toBe(before);
  });

  it('refuses forged messages (401 PilotMessageForged): another secret, a changed field, a bearer token instead of a signature', async () => {
    const before = (await received(SLOT)).length;
    const other = message({}, `${secret}-not-it`);
    const changed = { ...message(), memoryMiB: 4096 };
    const early = message({ event: 'early-unreserving' });
    const swapped = { ...early, slotId: 'slot-someone-else' };
    for (const body of [other, changed, swapped]) {
      const res = await post(body);
      expect({ status: res.status, type: res.body.type, field: res.body.errors?.[0]?.field }).toEqual({ status: 401, type: 'urn:vws:problem:PilotMessageForged', field: 'signature' });
    }
    const withToken = await request(app).post('/pilot/notifications').set('authorization', `Bearer ${secret}`).send({ ...early, signature: '0'.repeat(64) });
    expect(withToken.status).toBe(401);
    expect((await received(SLOT)).length).toBe(before);
  });

  it('refuses a correctly signed message outside the 60 s window (409 PilotMessageStale), either way', async () => {
    const before = (await received(SLOT)).length;
    for (const skew of [-120_000, 120_000]) {
      const res = await post(message({ at: new Date(Date.now() + skew).toISOString() }));
      expect({ status: res.status, type: res.body.type, field: res.body.errors?.[0]?.field }).toEqual({ status: 409, type: 'urn:vws:problem:PilotMessageStale', field: 'at' });
    }
    expect((await received(SLOT)).length).toBe(before);
  });

  it('refuses malformed bodies with 400 naming every bad field', async () => {
    const before = (await received(SLOT)).length;
    const m = message();
    const bad = await post({ ...m, event: 'exploded', nonce: undefined, memoryMiB: -1 });
    expect(bad.status).toBe(400);
    expect(bad.body.errors.map((e: { field: string }) => e.field).sort()).toEqual(['event', 'memoryMiB', 'nonce']);
    const extra = await post({ ...m, admin: true });
    expect(extra.status).toBe(400);
    expect(extra.body.detail).toMatch(/unknown fields: admin/);
    const notJson = await request(app).post('/pilot/notifications').set('content-type', 'application/json').send('{"slotId":');
    expect(notJson.status).toBe(400);
    expect((await post([])).status).toBe(400);
    expect((await received(SLOT)).length).toBe(before);
  });

  it('answers 404 for a slot without a running workflow, and takes the same message once the slot runs', async () => {
    const m = message({ slotId: LATE_SLOT });
    const missing = await post(m);
    expect(missing.status).toBe(404);
    expect(missing.body.detail).toBe(`no running slot ${LATE_SLOT}`);
    await startRecorder(LATE_SLOT);
    // Not delivered before, so its nonce was not kept: the pilot's retry of the same message goes through.
    expect((await post(m)).status).toBe(202);
    expect((await received(LATE_SLOT)).map((n) => n.nonce)).toEqual([m.nonce]);
    expect((await post(m)).status).toBe(409);
  });

  it('in the end, the slot received exactly the two accepted messages, in order', async () => {
    expect((await received(SLOT)).map((n) => n.event)).toEqual(['reserved', 'unreserving']);
  });

  it('answers 503 where the site has not configured pilots', async () => {
    const plain = appFor(testConfig({ reconciler: { enabled: false } }));
    const res = await request(plain).post('/pilot/notifications').send(signPilotMessage({ slotId: SLOT, node: 'vmm1', event: 'reserved', at: new Date().toISOString(), nonce: 'n'.repeat(16) }, secret));
    expect(res.status).toBe(503);
    expect(res.body.detail).toMatch(/pilot\.secretFile/);
  });
});
