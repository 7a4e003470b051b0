/** Client-side steps the end-to-end tests share: deploy, operate, wait, and read a workspace. */
import { eventually, type Stack } from './stack';

/** A workspace as the API shows it. */
export type Ws = Record<string, unknown> & {
  id: string;
  state: string;
  task: string | null;
  node?: string;
  reason?: string;
  obtainedIp?: string;
  network?: { ip: string; mac: string; hostname: string };
  saved?: { disk: string; state?: string };
  lastShutdown?: string;
  runningTimeLeftSeconds: number;
  notices: string[];
};

/** Reads a workspace as alice. */
export async function show(stack: Stack, id: string): Promise<Ws> {
  return (await stack.call('alice', 'GET', `/workspaces/${id}`)).body as Ws;
}

/** Waits until the workspace is in `state` with nothing in flight (Running also needs its DHCP address). */
export async function settled(stack: Stack, id: string, state: string, seconds = 120): Promise<Ws> {
  return eventually(
    seconds,
    async () => {
      const ws = await show(stack, id);
      if (ws.state === 'Corrupted' && state !== 'Corrupted') throw new Error(`workspace Corrupted heading ${String(ws.heading)}: ${ws.reason}`);
      if (ws.state !== state || ws.task !== null) return null;
      return state === 'Running' && !ws.obtainedIp ? null : ws;
    },
    `${id} ${state}`,
  );
}

/** Deploys a workspace as alice; returns its id. */
export async function deploy(stack: Stack, body: Record<string, unknown> = {}): Promise<string> {
  const r = await stack.call('alice', 'POST', '/workspaces', { image: 'sample', memoryMiB: 128, ...body });
  if (r.status !== 202) throw new Error(`deploy answered ${r.status}: ${JSON.stringify(r.body)}`);
  return String(r.body.id);
}

/** Asks for an operation and waits until the workspace settles in `expect`; returns it and the elapsed seconds. */
export async function operate(stack: Stack, id: string, op: string, expect: string, body: unknown = {}): Promise<{ ws: Ws; seconds: number }> {
  const t0 = Date.now();
  const r = await stack.call('alice', 'POST', `/workspaces/${id}/${op}`, body);
  if (r.status !== 202) throw new Error(`${op} answered ${r.status}: ${JSON.stringify(r.body)}`);
  const ws = await settled(stack, id, expect);
  return { ws, seconds: (Date.now() - t0) / 1000 };
}

/** Asks for an operation that must be refused: 409 naming the current state; returns the problem body. */
export async function refused(stack: Stack, id: string, op: string, state: string): Promise<Record<string, unknown>> {
  const r = op === 'destroy' ? await stack.call('alice', 'DELETE', `/workspaces/${id}`) : await stack.call('alice', 'POST', `/workspaces/${id}/${op}`, {});
  expect(r.status).toBe(409);
  expect(r.body.state).toBe(state);
  expect(String(r.body.detail)).toContain(state);
  return r.body;
}

/** Destroys a workspace and waits for Cancelled; then the node holds nothing of it and no grant is left. */
export async function destroyAndCheck(stack: Stack, id: string): Promise<void> {
  const r = await stack.call('alice', 'DELETE', `/workspaces/${id}`);
  expect(r.status).toBe(202);
  await settled(stack, id, 'Cancelled', 120);
  expect(await stack.leftovers()).toEqual([]);
  expect(await stack.grants()).toEqual([]);
}
