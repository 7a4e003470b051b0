/**
 * The ensemble workflow's registration and co-scheduling admission on the real dev server: members
 * register without anything being allocated, `done` asks for one atomic allocation of every member,
 * capacity shortage is retried with bounded backoff until the deadline and ends holding nothing, a quota
 * refusal ends at once, destroy-all ends a waiting ensemble. Propagating and starting real members (and
 * two competing gangs) are in test/e2e/ensemble.test.ts.
 */
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { WorkflowNotFoundError } from '@temporalio/client';
import type { Worker } from '@temporalio/worker';
import { createHeadActivities } from '../../src/activities/head/allocator-client';
import { allocatorWorkflowId, headTaskQueue, workspaceRouting } from '../../src/config/names';
import type { VwsConfig } from '../../src/config/schema';
import type { EnsembleDescription, EnsembleInput } from '../../src/domain/groups';
import { ensembleDescribeQuery, ensembleDestroyUpdate, ensembleDoneUpdate, ensembleRegisterUpdate, grantsQuery } from '../../src/domain/messages';
import type { WorkspaceSpec } from '../../src/domain/workspace';
import { memberSpec } from '../helpers/member-spec';
import { createHeadWorker } from '../../src/workers/head';
import type { ensembleWorkflow } from '../../src/workflows/ensemble';
import { connect, testConfig, workflowBundle, type TestConnections } from '../helpers/temporal';

const ALICE = '/O=Grid/OU=test/CN=alice';
let conn: TestConnections;
let config: VwsConfig;
let worker: Worker;
let running: Promise<void>;
beforeAll(async () => {
  conn = await connect();
  const dir = mkdtempSync('/tmp/vws-ensemble-');
  // Two nodes of 512 MiB; alice may hold at most 4 workspaces. Nothing here reaches a node.
  config = testConfig({
    stateDir: dir,
    clients: [{ name: 'alice', identity: ALICE, tokenFile: join(dir, 'alice.token'), quota: { maxWorkspaces: 4 } }],
    networks: [{ name: 'public', subnet: '10.213.0.0/24', gateway: '10.213.0.1', ranges: [{ first: '10.213.0.220', last: '10.213.0.229' }] }],
    nodes: ['n1', 'n2'].map((name) => ({ name, memoryMiB: 512, cpus: 4, bridges: { public: 'br0' }, antiSpoofing: false })),
  });
  worker = await createHeadWorker({ config, connection: conn.native, client: conn.client, workflowBundle: await workflowBundle() });
  running = worker.run();
});
afterAll(async () => {
  worker?.shutdown();
  await running;
  await conn.close();
});

/** Live grants; none while the allocator has not been started (nothing has asked it yet). */
const grants = () =>
  conn.client.workflow
    .getHandle(allocatorWorkflowId(config))
    .query(grantsQuery)
    .catch((e: Error) => {
      if (e instanceof WorkflowNotFoundError) return [];
      throw e;
    });

const spec = (memoryMiB: number): WorkspaceSpec =>
  memberSpec({ name: 'sample', url: 'http://127.0.0.1:9/repository/sample', sha256: '0'.repeat(64), sizeBytes: 1 }, { memoryMiB, durationSeconds: 600 });

async function startEnsemble(deadlineSeconds: number) {
  const id = `ens-${randomBytes(6).toString('hex')}`;
  const input: EnsembleInput = { id, owner: ALICE, routing: workspaceRouting(config), createdAt: new Date().toISOString(), deadlineSeconds };
  const handle = await conn.client.workflow.start<typeof ensembleWorkflow>('ensembleWorkflow', {
    workflowId: `${config.temporal.prefix}-${id}`,
    taskQueue: headTaskQueue(config),
    args: [input],
  });
  return { id, handle, describe: () => handle.query(ensembleDescribeQuery) };
}

async function until(describe: () => Promise<EnsembleDescription>, check: (e: EnsembleDescription) => boolean, what: string, seconds = 30): Promise<EnsembleDescription> {
  const deadline = Date.now() + seconds * 1000;
  let last: EnsembleDescription | undefined;
  for (;;) {
    last = await describe();
    if (check(last)) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Holds memory on both nodes directly at the allocator, as other workspaces would. */
async function block(memoryMiB: number): Promise<() => Promise<void>> {
  const head = createHeadActivities({ client: conn.client, config });
  const holders = [`blocker-${randomBytes(4).toString('hex')}`, `blocker-${randomBytes(4).toString('hex')}`];
  for (const holder of holders) await head.reserve({ holder, memoryMiB, vcpus: 1 });
  return async () => {
    for (const holder of holders) await head.release(holder);
  };
}

const memberWorkflowExists = (wsId: string) =>
  conn.client.workflow
    .getHandle(`${config.temporal.prefix}-${wsId}`)
    .describe()
    .then(
      () => true,
      () => false,
    );

describe('the ensemble workflow', () => {
  it('registers workspaces and groups without allocating or launching anything, and refuses bad registrations', async () => {
    const e = await startEnsemble(60);
    const single = await e.handle.executeUpdate(ensembleRegisterUpdate, { args: [{ spec: spec(64), count: 1 }] });
    expect(single.memberId).toMatch(/^ws-[0-9a-f]{12}$/);
    expect(single.workspaceIds).toEqual([single.memberId]);
    const group = await e.handle.executeUpdate(ensembleRegisterUpdate, { args: [{ spec: spec(64), count: 3 }] });
    expect(group.memberId).toMatch(/^grp-[0-9a-f]{12}$/);
    expect(group.workspaceIds).toHaveLength(3);
    for (const w of group.workspaceIds) expect(w).toMatch(/^ws-[0-9a-f]{12}$/);

    await expect(e.handle.executeUpdate(ensembleRegisterUpdate, { args: [{ spec: spec(64), count: 0 }] })).rejects.toMatchObject({
      cause: { type: 'InvalidSpec', message: 'count: must be a positive integer' },
    });
    const d = await e.describe();
    expect(d).toMatchObject({ state: 'Registering', attempts: 0 });
    expect(d.members.map((m) => [m.memberId, m.count, m.workspaces.length])).toEqual([
      [single.memberId, 1, 1],
      [group.memberId, 3, 3],
    ]);
    // Registered, not launched: nothing held, no workspace workflow exists.
    expect(await grants()).toEqual([]);
    expect(await memberWorkflowExists(single.memberId)).toBe(false);

    const ended = await e.handle.executeUpdate(ensembleDestroyUpdate);
    expect(ended.members).toHaveLength(2);
    const final = await e.handle.result();
    expect(final.state).toBe('Ended');
    expect(final.members.flatMap((m) => m.workspaces.map((w) => w.state))).toEqual(Array(4).fill('Cancelled'));
    expect(await grants()).toEqual([]);
  });

  it('refuses done without members, and done twice', async () => {
    const e = await startEnsemble(60);
    await expect(e.handle.executeUpdate(ensembleDoneUpdate)).rejects.toMatchObject({ cause: { type: 'OperationNotAllowed', message: expect.stringContaining('no members') } });
    const release = await block(500); // keep it waiting, so the second done meets a Waiting ensemble
    try {
      await e.handle.executeUpdate(ensembleRegisterUpdate, { args: [{ spec: spec(64), count: 1 }] });
      expect((await e.handle.executeUpdate(ensembleDoneUpdate)).state).toBe('Waiting');
      await expect(e.handle.executeUpdate(ensembleDoneUpdate)).rejects.toMatchObject({ cause: { type: 'OperationNotAllowed', message: expect.stringContaining('already') } });
      await expect(e.handle.executeUpdate(ensembleRegisterUpdate, { args: [{ spec: spec(64), count: 1 }] })).rejects.toMatchObject({
        cause: { message: expect.stringContaining('before done') },
      });
      await e.handle.executeUpdate(ensembleDestroyUpdate);
      expect((await e.handle.result()).state).toBe('Ended');
    } finally {
      await release();
    }
  });

  it('waits with bounded backoff while the site is short, holds nothing meanwhile, and ends at its deadline', async () => {
    const release = await block(400);
    try {
      const e = await startEnsemble(7);
      const reg = await e.handle.executeUpdate(ensembleRegisterUpdate, { args: [{ spec: spec(200), count: 2, done: true }] });
      const waiting = await until(e.describe, (d) => d.state === 'Waiting' && d.attempts >= 2, 'a second attempt');
      expect(waiting.lastRefusal).toMatch(/200 MiB/);
      expect(waiting.doneAt).toBeDefined();
      // Never a partial hold: only the blockers hold anything while the ensemble waits.
      expect((await grants()).every((g) => g.holder.startsWith('blocker-'))).toBe(true);
      const final = await e.handle.result();
      expect(final.state).toBe('Ended');
      expect(final.reason).toMatch(/^no capacity within 7 s after done \(4 attempt\(s\)\); last refusal: .*200 MiB/);
      expect(final.attempts).toBe(4); // at 0, 2, 6 and 7 s: 2 s doubling, the last cut short by the deadline
      expect((await grants()).filter((g) => !g.holder.startsWith('blocker-'))).toEqual([]);
      expect(await memberWorkflowExists(reg.workspaceIds[0])).toBe(false);
    } finally {
      await release();
    }
  });

  it('ends a waiting ensemble at once on destroy-all', async () => {
    const release = await block(400);
    try {
      const e = await startEnsemble(600);
      await e.handle.executeUpdate(ensembleRegisterUpdate, { args: [{ spec: spec(200), count: 2, done: true }] });
      await until(e.describe, (d) => d.state === 'Waiting' && d.attempts >= 1, 'the first attempt');
      const t0 = Date.now();
      await e.handle.executeUpdate(ensembleDestroyUpdate);
      const final = await e.handle.result();
      expect(Date.now() - t0).toBeLessThan(10_000);
      expect(final.state).toBe('Ended');
      expect(final.reason).toBeUndefined();
      expect((await grants()).filter((g) => !g.holder.startsWith('blocker-'))).toEqual([]);
    } finally {
      await release();
    }
  });

  it('ends at once, holding nothing, when the gang would exceed the client quota', async () => {
    const e = await startEnsemble(600);
    await e.handle.executeUpdate(ensembleRegisterUpdate, { args: [{ spec: spec(32), count: 3 }] });
    await e.handle.executeUpdate(ensembleRegisterUpdate, { args: [{ spec: spec(32), count: 2, done: true }] });
    const final = await e.handle.result();
    expect(final).toMatchObject({ state: 'Ended', attempts: 1, reason: expect.stringMatching(/^refused: /) });
    expect(final.lastRefusal).toMatch(/4/);
    expect(await grants()).toEqual([]);
  });
});
