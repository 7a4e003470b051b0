/**
 * The group workflow on the real dev server with real node workers (in this process, local commands):
 * members are propagated for real (the image copied from a repository over HTTP into each node's cache,
 * a qcow2 overlay made with qemu-img) and stop at Propagated, so no VM is booted here; groups of real
 * VMs are in test/e2e/ensemble.test.ts.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Worker } from '@temporalio/worker';
import { createHeadActivities } from '../../src/activities/head/allocator-client';
import { allocatorWorkflowId, headTaskQueue, workspaceRouting } from '../../src/config/names';
import type { VwsConfig } from '../../src/config/schema';
import { ensureToken } from '../../src/config/secrets';
import type { GroupDescription, GroupInput } from '../../src/domain/groups';
import { describeQuery, grantsQuery, groupDescribeQuery, groupOperateUpdate, VwsGroup, VwsOwner, VwsState } from '../../src/domain/messages';
import type { ResolvedImage, WorkspaceSpec } from '../../src/domain/workspace';
import { memberSpec } from '../helpers/member-spec';
import { stageLocalFile } from '../../src/repository';
import { createHeadWorker } from '../../src/workers/head';
import { createNodeWorker } from '../../src/workers/node';
import type { groupWorkflow } from '../../src/workflows/group';
import { fileServer, type FileServer } from '../helpers/file-server';
import { connect, testConfig, workflowBundle, type TestConnections } from '../helpers/temporal';

/** Polls `check` until it holds or `seconds` pass (then fails with `what()`). */
async function eventuallyTrue(seconds: number, check: () => Promise<boolean>, what: () => string): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${seconds} s waiting for ${what()}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

const ALICE = '/O=Grid/OU=test/CN=alice';
let conn: TestConnections;
beforeAll(async () => {
  conn = await connect();
});
afterAll(() => conn.close());

/** A site of two real nodes (in-process node workers over local commands), each with its own node directory. */
interface Site {
  config: VwsConfig;
  image: ResolvedImage;
  nodeDirs: string[];
  grants(): Promise<Array<{ holder: string; gang?: string }>>;
  /** Workspace directories the nodes still hold. */
  nodeFiles(): string[];
  stop(): Promise<void>;
}

async function startSite(nodeMemoryMiB = 512): Promise<Site> {
  const dir = mkdtempSync('/tmp/vws-group-');
  const files: FileServer = await fileServer(dir);
  const config = testConfig({
    stateDir: dir,
    repository: { dir: join(dir, 'repository'), url: `${files.url}/repository`, nodeTokenFile: join(dir, 'node.token') },
    clients: [{ name: 'alice', identity: ALICE, tokenFile: join(dir, 'alice.token') }],
    networks: [{ name: 'public', subnet: '10.213.0.0/24', gateway: '10.213.0.1', ranges: [{ first: '10.213.0.220', last: '10.213.0.229' }] }],
    nodes: ['n1', 'n2'].map((name) => ({ name, memoryMiB: nodeMemoryMiB, cpus: 4, bridges: { public: 'br0' }, antiSpoofing: false })),
  });
  ensureToken(config.repository.nodeTokenFile);
  const raw = join(dir, 'tiny.raw');
  writeFileSync(raw, randomBytes(1024 * 1024));
  const image = await stageLocalFile(config, 'tiny', raw);
  const nodeDirs = ['n1', 'n2'].map((n) => join(dir, `node-${n}`));
  nodeDirs.forEach((d) => mkdirSync(d));
  const workers: Worker[] = [
    await createHeadWorker({ config, connection: conn.native, client: conn.client, workflowBundle: await workflowBundle() }),
    ...(await Promise.all(
      ['n1', 'n2'].map((node, i) => createNodeWorker({ config: { ...config, node: { ...config.node, dir: nodeDirs[i] } }, node, connection: conn.native })),
    )),
  ];
  const runs = workers.map((w) => w.run());
  return {
    config,
    image,
    nodeDirs,
    grants: () => conn.client.workflow.getHandle(allocatorWorkflowId(config)).query(grantsQuery),
    nodeFiles: () => nodeDirs.flatMap((d) => (existsSync(join(d, 'workspaces')) ? readdirSync(join(d, 'workspaces')) : [])),
    async stop() {
      workers.forEach((w) => w.shutdown());
      await Promise.all(runs);
      await files.close();
    },
  };
}

const specOf = (image: ResolvedImage, memoryMiB = 128): WorkspaceSpec => memberSpec(image, { memoryMiB, targetState: 'Propagated' });

/** Starts a group workflow the way the API does (workflow id `<prefix>-<group id>`). */
async function startGroup(site: Site, count: number, spec: WorkspaceSpec, extra: Partial<GroupInput> = {}) {
  const id = `grp-${randomBytes(6).toString('hex')}`;
  const input: GroupInput = { id, owner: ALICE, spec, count, routing: workspaceRouting(site.config), createdAt: new Date().toISOString(), ...extra };
  const handle = await conn.client.workflow.start<typeof groupWorkflow>('groupWorkflow', {
    workflowId: `${site.config.temporal.prefix}-${id}`,
    taskQueue: headTaskQueue(site.config),
    args: [input],
    typedSearchAttributes: [{ key: VwsOwner, value: ALICE }],
  });
  return { id, handle, describe: () => handle.query(groupDescribeQuery) };
}

/** Polls the group until `check` holds. */
async function until(describe: () => Promise<GroupDescription>, check: (g: GroupDescription) => boolean, what: string, seconds = 60): Promise<GroupDescription> {
  let last: GroupDescription | undefined;
  await eventuallyTrue(seconds, async () => check((last = await describe())), () => `${what}; last: ${JSON.stringify(last)}`);
  return last!;
}

describe('the group workflow', () => {
  let site: Site;
  beforeAll(async () => {
    site = await startSite();
  });
  afterAll(() => site?.stop());

  it('grants every member in one allocation, fans operations out, and ends holding nothing when destroyed', async () => {
    const g = await startGroup(site, 3, specOf(site.image));
    const ready = await until(g.describe, (d) => d.state === 'Ready', 'the group Ready');
    expect(ready.members.map((m) => m.state)).toEqual(['Propagated', 'Propagated', 'Propagated']);
    expect(ready.members.map((m) => m.index)).toEqual([0, 1, 2]);
    for (const m of ready.members) expect(m.id).toMatch(/^ws-[0-9a-f]{12}$/);
    expect(new Set(ready.members.map((m) => m.id)).size).toBe(3);

    // One gang: every member's grant is held by its own workflow and recorded under the group's.
    const prefix = site.config.temporal.prefix;
    const grants = await site.grants();
    expect(grants.map((x) => x.holder).sort()).toEqual(ready.members.map((m) => `${prefix}-${m.id}`).sort());
    expect(new Set(grants.map((x) => x.gang))).toEqual(new Set([`${prefix}-${g.id}`]));

    // Each member is a workspace of its own, with the group in its search attributes and its index in its spec.
    const member = conn.client.workflow.getHandle(`${prefix}-${ready.members[1].id}`);
    const info = await member.describe();
    expect(info.typedSearchAttributes.get(VwsGroup)).toBe(g.id);
    expect(info.typedSearchAttributes.get(VwsState)).toBe('Propagated');
    expect((await member.query(describeQuery)).state).toBe('Propagated');

    // A fanned-out operation answers per member: shutdown is refused by every Propagated member, naming its state.
    const refused = await g.handle.executeUpdate(groupOperateUpdate, { args: [{ op: 'shutdown' }] });
    expect(refused.members).toHaveLength(3);
    for (const r of refused.members) expect(r).toMatchObject({ ok: false, state: 'Propagated', error: expect.stringContaining('Propagated') });

    const destroyed = await g.handle.executeUpdate(groupOperateUpdate, { args: [{ op: 'destroy' }] });
    expect(destroyed.members.map((r) => r.ok)).toEqual([true, true, true]);
    const final = await g.handle.result();
    expect(final.state).toBe('Ended');
    expect(final.reason).toBeUndefined();
    expect(final.members.map((m) => m.state)).toEqual(['Cancelled', 'Cancelled', 'Cancelled']);
    expect(await site.grants()).toEqual([]);
    expect(site.nodeFiles()).toEqual([]);
    // After the end only destroy-like questions are refused, not answered twice.
    await expect(g.handle.executeUpdate(groupOperateUpdate, { args: [{ op: 'destroy' }] })).rejects.toThrow();
  });

  it('backs every member out when members fail during creation, and reports why', async () => {
    // Another digest, so no node cache can answer for it.
    const missing: ResolvedImage = { ...site.image, name: 'missing', url: site.image.url.replace(/tiny$/, 'missing'), sha256: 'f'.repeat(64) };
    const g = await startGroup(site, 2, specOf(missing));
    const final = await g.handle.result();
    expect(final.state).toBe('Ended');
    expect(final.reason).toMatch(/^backed out: member ws-[0-9a-f]{12} became Corrupted: image missing is not in the repository/);
    expect(final.members.map((m) => m.state)).toEqual(['Cancelled', 'Cancelled']);
    expect(await site.grants()).toEqual([]);
    expect(site.nodeFiles()).toEqual([]);
  });

  it('ends refused, holding nothing and starting nothing, when the site cannot hold every member', async () => {
    const g = await startGroup(site, 4, specOf(site.image, 300));
    const final = await g.handle.result();
    expect(final).toMatchObject({ state: 'Ended', reason: expect.stringMatching(/^refused: .*300 MiB/) });
    expect(final.members.map((m) => m.state)).toEqual(['Cancelled', 'Cancelled', 'Cancelled', 'Cancelled']);
    expect(await site.grants()).toEqual([]);
    // No member workflow was started.
    await expect(conn.client.workflow.getHandle(`${site.config.temporal.prefix}-${final.members[0].id}`).describe()).rejects.toThrow(/not found/i);
  });

  it('uses grants the factory reserved, with the members the grants name', async () => {
    const prefix = site.config.temporal.prefix;
    const gangId = `grp-${randomBytes(6).toString('hex')}`;
    const holders = [0, 1].map(() => `${prefix}-ws-${randomBytes(6).toString('hex')}`);
    const head = createHeadActivities({ client: conn.client, config: site.config });
    const grants = await head.reserveGang({ gang: `${prefix}-${gangId}`, members: holders.map((holder) => ({ holder, memoryMiB: 128, vcpus: 1, networks: ['public'] })) });
    const id = gangId;
    const input: GroupInput = { id, owner: ALICE, spec: specOf(site.image), count: 2, routing: workspaceRouting(site.config), createdAt: new Date().toISOString(), grants };
    const handle = await conn.client.workflow.start<typeof groupWorkflow>('groupWorkflow', { workflowId: `${prefix}-${id}`, taskQueue: headTaskQueue(site.config), args: [input] });
    const ready = await until(() => handle.query(groupDescribeQuery), (d) => d.state === 'Ready', 'the group Ready');
    expect(ready.members.map((m) => `${prefix}-${m.id}`)).toEqual(holders);
    // No second allocation: the grants are the factory's.
    expect((await site.grants()).map((x) => x.holder).sort()).toEqual([...holders].sort());
    await handle.executeUpdate(groupOperateUpdate, { args: [{ op: 'destroy' }] });
    expect((await handle.result()).state).toBe('Ended');
    expect(await site.grants()).toEqual([]);
    expect(site.nodeFiles()).toEqual([]);
  });
});
