/**
 * `GET /workspaces/:id` from the view the workspace workflow keeps in its memo (issue 8: read latency
 * and the head's memory): against the real dev server and a real head worker in this process, the
 * answer equals what the workflow's describe query answers, follows a change of task, keeps others'
 * workspaces 404, and a history with the memo replays. No node worker runs, so the workspace waits at
 * propagation and then, destroyed, at the node's cleanup; the test terminates it.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import request from 'supertest';
import { Worker } from '@temporalio/worker';
import { createApp } from '../../src/api/app';
import type { TokenEntry } from '../../src/api/auth';
import { workspaceWorkflowId } from '../../src/config/names';
import type { VwsConfig } from '../../src/config/schema';
import { tokenDigest } from '../../src/config/secrets';
import { describeQuery } from '../../src/domain/messages';
import { VIEW_MEMO_KEY } from '../../src/domain/view-memo';
import type { WorkspaceDescription } from '../../src/domain/workspace';
import { stageLocalFile } from '../../src/repository';
import { createHeadWorker } from '../../src/workers/head';
import { connect, endWorkflowTest, testConfig, workflowBundle, type TestConnections } from '../helpers/temporal';

jest.setTimeout(120_000);

const WHO = {
  alice: { identity: '/O=Grid/OU=test/CN=alice', admin: false },
  bob: { identity: '/O=Grid/OU=test/CN=bob', admin: false },
  root: { identity: '/O=Grid/OU=test/CN=root', admin: true },
} as const;
type Who = keyof typeof WHO;
const tokens = Object.fromEntries(Object.keys(WHO).map((w) => [w, `tok-${w}-${randomBytes(16).toString('hex')}`])) as Record<Who, string>;

let conn: TestConnections;
let config: VwsConfig;
let worker: Worker;
let running: Promise<void>;
let app: ReturnType<typeof createApp>;

beforeAll(async () => {
  conn = await connect();
  const dir = mkdtempSync('/tmp/vws-view-memo-');
  config = testConfig({
    stateDir: dir,
    repository: { dir: join(dir, 'repository'), url: 'http://127.0.0.1:9/repository', nodeTokenFile: join(dir, 'node.token') },
    clients: (Object.keys(WHO) as Who[]).map((w) => ({ name: w, identity: WHO[w].identity, tokenFile: join(dir, `${w}.token`), ...(WHO[w].admin ? { admin: true } : {}) })),
    networks: [{ name: 'public', subnet: '10.213.0.0/24', gateway: '10.213.0.1', ranges: [{ first: '10.213.0.100', last: '10.213.0.199' }] }],
    nodes: [{ name: 'vmm1', memoryMiB: 2048, cpus: 64, bridges: { public: 'br0' } }],
    reconciler: { enabled: false },
  });
  const raw = join(dir, 'sample.raw');
  writeFileSync(raw, randomBytes(64 * 1024));
  await stageLocalFile(config, 'sample', raw);
  worker = await createHeadWorker({ config, connection: conn.native, client: conn.client, workflowBundle: await workflowBundle() });
  running = worker.run();
  const clientTokens: TokenEntry[] = (Object.keys(WHO) as Who[]).map((w) => ({ digest: tokenDigest(tokens[w]), principal: { name: w, ...WHO[w] } }));
  app = createApp({ config, client: conn.client, clientTokens: () => clientTokens, nodeTokens: () => [] });
});

afterAll(async () => {
  await endWorkflowTest({ conn, config, worker, running, reason: 'view-memo test done' });
});

const call = (who: Who, method: 'get' | 'post' | 'delete', path: string, body?: object) => {
  const r = request(app)[method](path).set('authorization', `Bearer ${tokens[who]}`);
  return body ? r.send(body) : r;
};

/** Waits until the workflow's memo holds a view matching `pred`; answers the view. */
async function memoView(id: string, pred: (v: WorkspaceDescription) => boolean): Promise<WorkspaceDescription> {
  const handle = conn.client.workflow.getHandle(workspaceWorkflowId(config, id));
  for (let i = 0; i < 100; i++) {
    const m = (await handle.describe()).memo?.[VIEW_MEMO_KEY] as { view?: WorkspaceDescription } | undefined;
    if (m?.view && pred(m.view)) return m.view;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`no view in the memo of ${id} as expected`);
}

it('answers GET from the memo as the query does, follows the task, and keeps 404 for others', async () => {
  const created = await call('alice', 'post', '/workspaces', { image: 'sample', memoryMiB: 64, durationSeconds: 600 });
  expect(created.status).toBe(202);
  const id = created.body.id as string;
  const handle = conn.client.workflow.getHandle(workspaceWorkflowId(config, id));

  // No node worker: the workspace waits at propagation, its node and address granted.
  await memoView(id, (v) => v.task === 'propagating');
  const res = await call('alice', 'get', `/workspaces/${id}`);
  expect(res.status).toBe(200);
  const { links, ...answered } = res.body as WorkspaceDescription & { links: object };
  expect(answered).toEqual(JSON.parse(JSON.stringify(await handle.query(describeQuery))));
  expect(answered).toMatchObject({ id, owner: WHO.alice.identity, state: 'Unpropagated', task: 'propagating', node: 'vmm1', runningTimeLeftSeconds: 600 });
  expect(links).toEqual({ self: `/workspaces/${id}`, temporalUi: expect.any(String) });
  expect((await call('root', 'get', `/workspaces/${id}`)).status).toBe(200);
  const other = await call('bob', 'get', `/workspaces/${id}`);
  expect({ status: other.status, detail: other.body.detail }).toEqual({ status: 404, detail: `no workspace ${id}` });

  // Destroy: the memo follows (cleanup waits for the node, task destroying).
  expect((await call('alice', 'delete', `/workspaces/${id}`)).status).toBe(202);
  await memoView(id, (v) => v.task === 'destroying');
  const after = await call('alice', 'get', `/workspaces/${id}`);
  expect(after.body).toMatchObject({ state: 'Unpropagated', task: 'destroying' });
  const { links: _l, ...afterAnswered } = after.body as WorkspaceDescription & { links: object };
  expect(afterAnswered).toEqual(JSON.parse(JSON.stringify(await handle.query(describeQuery))));

  // The history with the patch marker and the memo upserts replays against the same code.
  const history = await handle.fetchHistory();
  expect(history.events?.some((e) => e.workflowPropertiesModifiedEventAttributes)).toBe(true);
  await Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, history, workspaceWorkflowId(config, id));
});
