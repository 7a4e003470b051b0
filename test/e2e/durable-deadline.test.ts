/**
 * Long DeploymentTimes work because the deadline is a durable timer, not a process's sleep: this test
 * runs a real workspace on its own Temporal dev server, stops that server in the middle of the
 * deadline (workers keep running and reconnect), starts it again on the same database, and sees the
 * ShutdownMechanism apply at the deadline all the same.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { startStack, type Stack } from '../helpers/stack';
import { deploy, settled, show } from '../helpers/workspace';

const ROOT = join(__dirname, '../..');
const PORT = Number(process.env.VWS_TEST_RESTART_PORT ?? 7236);
const dir = mkdtempSync('/tmp/vws-durable-');
const env = { ...process.env, VWS_TEMPORAL_PORT: String(PORT), VWS_TEMPORAL_UI_PORT: 'off', VWS_TEMPORAL_DB: join(dir, 'temporal.sqlite'), VWS_RUN_DIR: dir };
const server = async (action: 'start' | 'stop') => {
  const r = spawnSync(join(ROOT, `temporal/${action}.sh`), { env, encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) throw new Error(`temporal/${action}.sh failed (${r.status}): ${r.stderr}`);
};

let stack: Stack;
beforeAll(async () => {
  await server('start');
  stack = await startStack({ label: 'durable-deadline', first: '10.213.0.195', last: '10.213.0.199', temporalAddress: `127.0.0.1:${PORT}` });
}, 180_000);
afterAll(async () => {
  await stack?.stop();
  await server('stop');
  rmSync(dir, { recursive: true, force: true });
});

it('keeps the deadline across a restart of the Temporal server', async () => {
  // Long enough that the server's stop, 5 s away and start (8-10 s) land inside it (checked below).
  const duration = 25;
  const id = await deploy(stack, { durationSeconds: duration, shutdownMechanism: 'Trash' });
  const running = await settled(stack, id, 'Running');
  const startedAt = Date.parse(String(running.firstStartedAt));

  await server('stop');
  await new Promise((r) => setTimeout(r, 5000)); // the server is gone for a while; the VM keeps running
  await server('start');
  // Else the test would not show what it claims: the server was away and back in the middle of the deadline.
  expect(Date.now() - startedAt).toBeLessThan(duration * 1000);

  const ws = await settled(stack, id, 'Cancelled', 120);
  expect(ws.reason).toBe(`DeploymentTime of ${duration} s ran out; trashed`);
  const ranFor = (Date.parse(String(ws.endedAt)) - startedAt) / 1000;
  console.log(`durable deadline: ${duration} s DeploymentTime, server down 5 s in the middle, workspace ended after ${ranFor.toFixed(1)} s`);
  expect(ranFor).toBeGreaterThanOrEqual(duration);
  expect((await show(stack, id)).state).toBe('Cancelled');
  expect(await stack.leftovers()).toEqual([]);
  expect(await stack.grants()).toEqual([]);
}, 300_000);
