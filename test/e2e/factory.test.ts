/**
 * The factory on the testbed (issue 6): ranges become exact values within the site policy, reservation
 * before anything starts (a refusal is the create's answer and holds nothing), idempotent creates under
 * concurrency, groups and ensembles through the API, the caller's list and status, and the admin routes.
 * Workspaces stop at Propagated: no VM boots here.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { groupWorkflowId, workspaceWorkflowId } from '../../src/config/names';
import { eventually, startStack, TEST_NODES, type Stack } from '../helpers/stack';
import { settled } from '../helpers/workspace';

jest.setTimeout(900_000);
let stack: Stack;
type Grant = { holder: string; node: string; memoryMiB: number; vcpus: number; owner?: string; gang?: string };
const grants = async () => (await stack.grants()) as Grant[];
const PROPAGATED = { image: 'sample', memoryMiB: 64, durationSeconds: 600, targetState: 'Propagated' };
const alice = '/O=Grid/OU=test/CN=alice';
/** Every workspace id alice created, destroyed at the end. */
const created = new Set<string>();

beforeAll(async () => {
  stack = await startStack({
    label: 'factory',
    first: '10.213.0.60',
    last: '10.213.0.79',
    config: {
      policies: { maxMemoryMiB: 256, maxVcpus: 2, maxDurationSeconds: 3600, maxNodesPerRequest: 3, ensembleDeadlineSeconds: 120 },
      // Room for every Propagated workspace below (no VM boots, so the slot is bookkeeping): 1280 MiB, 32 CPUs.
      nodes: [{ ...TEST_NODES.vmm1, bridges: { public: 'br0' }, memoryMiB: 1280, cpus: 32 }],
    },
    clients: { bob: { admin: true, quota: { maxWorkspaces: 1, maxReservedMinutes: 20 } } },
  });
});

afterAll(async () => {
  await stack?.stop();
});

const post = (who: 'alice' | 'bob', path: string, body: unknown, key?: string) =>
  fetch(`${stack.api}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${stack.tokens[who]}`, 'content-type': 'application/json', ...(key !== undefined ? { 'idempotency-key': key } : {}) },
    body: JSON.stringify(body),
  }).then(async (r) => ({ status: r.status, type: r.headers.get('content-type'), body: (await r.json()) as Record<string, unknown> }));

describe('the factory', () => {
  it('answers 10 rounds of 10 concurrent creates with one key each with one workspace and one grant per round', async () => {
    const answered: Array<{ key: string; body: Record<string, unknown> }> = [];
    for (let round = 0; round < 10; round++) {
      const key = `round-${round}-${Date.now()}`;
      const answers = await Promise.all(Array.from({ length: 10 }, () => post('alice', '/workspaces', PROPAGATED, key)));
      expect(answers.map((a) => a.status)).toEqual(Array(10).fill(202));
      const bodies = answers.map((a) => JSON.stringify(a.body));
      expect(new Set(bodies).size).toBe(1);
      const id = String(answers[0].body.id);
      expect(id).toMatch(/^ws-[0-9a-f]{12}$/);
      created.add(id);
      answered.push({ key, body: answers[0].body });
      expect(answers[0].body).toMatchObject({ kind: 'workspace', memoryMiB: 64, vcpus: 1, durationSeconds: 600, node: 'vmm1' });
      // One grant per round, held by the round's workspace.
      const held = await grants();
      expect(held).toHaveLength(round + 1);
      expect(held.filter((g) => g.holder === workspaceWorkflowId(stack.config, id))).toHaveLength(1);
    }
    // Exactly one workflow per round: ten in all.
    const prefix = stack.config.temporal.prefix;
    await eventually(10, async () => (await stack.conn.client.workflow.count(`WorkflowId STARTS_WITH "${prefix}-ws-"`)).count === 10, 'ten workflows in visibility');
    // A repeat later, after the workspace moved on, still answers the same and creates nothing.
    await settled(stack, String(answered[0].body.id), 'Propagated');
    expect(await post('alice', '/workspaces', PROPAGATED, answered[0].key)).toMatchObject({ status: 202, body: answered[0].body });
    expect(await grants()).toHaveLength(10);
  });

  it('refuses the same key with another body (422 naming the header), and creates nothing', async () => {
    const key = `reuse-${Date.now()}`;
    const one = await post('alice', '/workspaces', PROPAGATED, key);
    expect(one.status).toBe(202);
    created.add(String(one.body.id));
    const before = (await grants()).length;
    const again = await post('alice', '/workspaces', PROPAGATED, key);
    expect(again).toMatchObject({ status: 202, body: one.body });
    for (const other of [{ ...PROPAGATED, durationSeconds: 601 }, { ...PROPAGATED, count: 2 }]) {
      const r = await post('alice', '/workspaces', other, key);
      expect(r.status).toBe(422);
      expect(r.type).toMatch(/application\/problem\+json/);
      expect(r.body).toMatchObject({ type: 'urn:vws:problem:IdempotencyKeyReused', errors: [{ field: 'Idempotency-Key', message: expect.stringContaining(String(one.body.id)) }] });
    }
    // A bad key is a 400 naming the header.
    const bad = await post('alice', '/workspaces', PROPAGATED, 'x'.repeat(201));
    expect(bad).toMatchObject({ status: 400, body: { errors: [{ field: 'Idempotency-Key', message: 'must be at most 200 characters' }] } });
    expect((await grants()).length).toBe(before);
  });

  it('resolves ranges to the exact values within the site policy and answers them', async () => {
    const r = await post('alice', '/workspaces', { image: 'sample', targetState: 'Propagated', memoryMiB: { min: 64, max: 4096 }, vcpus: { min: 1, max: 8 }, durationSeconds: { min: 60, max: 100_000 } });
    expect(r.status).toBe(202);
    const id = String(r.body.id);
    created.add(id);
    expect(r.body).toMatchObject({ memoryMiB: 256, vcpus: 2, durationSeconds: 3600 });
    const ws = await settled(stack, id, 'Propagated');
    expect(ws).toMatchObject({ memoryMiB: 256, vcpus: 2, durationSeconds: 3600, allocation: { node: 'vmm1', memoryMiB: 256, vcpus: 2 } });
    expect((await grants()).find((g) => g.holder === workspaceWorkflowId(stack.config, id))).toMatchObject({ memoryMiB: 256, vcpus: 2, owner: alice });
  });

  it('refuses what the policy does not allow, naming the field and the limit, and holds nothing', async () => {
    const before = await grants();
    const over = await post('alice', '/workspaces', { ...PROPAGATED, memoryMiB: { min: 300, max: 400 }, vcpus: 3 });
    expect(over.status).toBe(400);
    expect(over.body).toMatchObject({ type: 'urn:vws:problem:PolicyViolation', limits: { memoryMiB: 256, vcpus: 2 } });
    expect(over.body.errors).toEqual([
      { field: 'memoryMiB', message: "the range's min, 300 MiB, is over the limit of 256 MiB (policies.maxMemoryMiB)" },
      { field: 'vcpus', message: '3 vCPUs is over the limit of 2 vCPUs (policies.maxVcpus)' },
    ]);
    const tooMany = await post('alice', '/workspaces', { ...PROPAGATED, count: 4 });
    expect(tooMany.body).toMatchObject({ status: 400, errors: [{ field: 'count', message: expect.stringContaining('policies.maxNodesPerRequest') }] });
    const noSuchPool = await post('alice', '/workspaces', { ...PROPAGATED, nodeProperties: ['gpu'] });
    expect(noSuchPool.body).toMatchObject({ status: 400, errors: [{ field: 'nodeProperties.0' }] });
    // No capacity: three members of 256 MiB do not fit in what the node has left; the gang holds nothing.
    const gang = await post('alice', '/workspaces', { ...PROPAGATED, memoryMiB: 256, count: 3 });
    expect(gang.status).toBe(409);
    expect(gang.body).toMatchObject({ type: 'urn:vws:problem:NoCapacity', title: 'No capacity', detail: expect.stringContaining('nothing is held') });
    expect(await grants()).toEqual(before);
  });

  it('refuses over a quota with 403 naming the quota, holding nothing', async () => {
    const minutes = await post('bob', '/workspaces', { ...PROPAGATED, durationSeconds: 1500 });
    expect(minutes).toMatchObject({ status: 403, body: { type: 'urn:vws:problem:QuotaExceeded', detail: expect.stringContaining('maxReservedMinutes'), quota: { maxWorkspaces: 1, maxReservedMinutes: 20 } } });
    const one = await post('bob', '/workspaces', PROPAGATED);
    expect(one.status).toBe(202);
    const two = await post('bob', '/workspaces', PROPAGATED);
    expect(two).toMatchObject({ status: 403, body: { type: 'urn:vws:problem:QuotaExceeded', detail: expect.stringContaining('maxWorkspaces') } });
    expect((await grants()).filter((g) => g.owner === '/O=Grid/OU=test/CN=bob')).toHaveLength(1);
    // Bob's status counts what he holds.
    const status = await stack.call('bob', 'GET', '/status');
    expect(status.body).toMatchObject({ liveGrants: 1, heldMinutes: 10, quota: { maxWorkspaces: 1 } });
    const id = String(one.body.id);
    expect((await stack.call('bob', 'DELETE', `/workspaces/${id}`)).status).toBe(202);
    await eventually(60, async () => (await stack.call('bob', 'GET', `/workspaces/${id}`)).body.state === 'Cancelled', 'bob’s workspace Cancelled');
    await eventually(30, async () => (await grants()).every((g) => g.owner !== '/O=Grid/OU=test/CN=bob'), 'bob’s grant released');
  });
});

describe('lists, status and admin', () => {
  it("lists only the caller's workspaces, with filters, and reports its usage", async () => {
    await eventually(20, async () => {
      const all = await stack.call('alice', 'GET', '/workspaces');
      return (all.body.workspaces as Array<{ id: string }>).length === created.size;
    }, 'the listing to show every workspace');
    const all = (await stack.call('alice', 'GET', '/workspaces')).body.workspaces as Array<{ id: string; owner: string }>;
    expect(new Set(all.map((w) => w.id))).toEqual(created);
    expect(all.every((w) => w.owner === alice)).toBe(true);
    const propagated = await eventually(30, async () => {
      const r = (await stack.call('alice', 'GET', '/workspaces?state=Propagated')).body.workspaces as unknown[];
      return r.length === created.size ? r : null;
    }, 'every workspace Propagated in the listing');
    expect(propagated).toHaveLength(created.size);
    expect((await stack.call('alice', 'GET', '/workspaces?state=Running')).body.workspaces).toEqual([]);
    expect((await stack.call('alice', 'GET', '/workspaces?state=Sleeping')).body).toMatchObject({ status: 400, errors: [{ field: 'state' }] });

    const status = await stack.call('alice', 'GET', '/status');
    expect(status.status).toBe(200);
    expect(status.body).toMatchObject({ owner: alice, usedMinutes: 0, liveGrants: created.size, chargeGranularitySeconds: 60 });
    expect((status.body.workspaces as unknown[]).length).toBe(created.size);
  });

  it('lets admins, and only admins, list nodes and leases and drain a node', async () => {
    expect((await stack.call('alice', 'GET', '/admin/nodes')).status).toBe(403);
    expect((await stack.call('alice', 'POST', '/admin/nodes/vmm1/drain', {})).status).toBe(403);
    const nodes = await stack.call('bob', 'GET', '/admin/nodes');
    expect(nodes.body.nodes).toEqual([expect.objectContaining({ name: 'vmm1', drained: false, grants: created.size })]);
    const leases = await stack.call('bob', 'GET', '/admin/leases');
    expect(leases.body.count).toBe(created.size);

    expect((await stack.call('bob', 'POST', '/admin/nodes/vmm9/drain', {})).status).toBe(404);
    const drained = await stack.call('bob', 'POST', '/admin/nodes/vmm1/drain', {});
    expect(drained.body).toMatchObject({ node: 'vmm1', drained: true });
    const refused = await post('alice', '/workspaces', PROPAGATED);
    expect(refused).toMatchObject({ status: 409, body: { type: 'urn:vws:problem:NoCapacity', detail: expect.stringContaining('drained') } });
    expect((await stack.call('bob', 'POST', '/admin/nodes/vmm1/undrain', {})).body).toMatchObject({ drained: false });
    expect((await grants()).length).toBe(created.size);
  });
});

describe('groups and ensembles through the API', () => {
  it('creates a group with count > 1, lists its members, and destroys it', async () => {
    const key = `group-${Date.now()}`;
    const r = await post('alice', '/workspaces', { ...PROPAGATED, count: 2 }, key);
    expect(r.status).toBe(202);
    expect(r.body).toMatchObject({ kind: 'group', count: 2, memoryMiB: 64 });
    const id = String(r.body.id);
    const members = (r.body.members as Array<{ id: string }>).map((m) => m.id);
    expect(id).toMatch(/^grp-[0-9a-f]{12}$/);
    expect(members).toHaveLength(2);
    expect(await post('alice', '/workspaces', { ...PROPAGATED, count: 2 }, key)).toMatchObject({ status: 202, body: r.body });
    const gangGrants = (await grants()).filter((g) => g.gang);
    expect(gangGrants.map((g) => g.holder).sort()).toEqual(members.map((m) => workspaceWorkflowId(stack.config, m)).sort());

    const ready = await eventually(120, async () => {
      const g = await stack.call('alice', 'GET', `/groups/${id}`);
      if (g.body.state === 'Ended') throw new Error(`group ended: ${String(g.body.reason)}`);
      return g.body.state === 'Ready' ? g.body : null;
    }, 'the group Ready');
    expect((ready.members as Array<{ id: string; state: string }>).map((m) => [m.id, m.state])).toEqual(members.map((m) => [m, 'Propagated']));
    expect((await stack.call('bob', 'GET', `/groups/${id}`)).status).toBe(200); // bob is an admin
    const listed = await eventually(20, async () => {
      const l = (await stack.call('alice', 'GET', `/workspaces?group=${id}`)).body.workspaces as Array<{ id: string }>;
      return l.length === 2 ? l : null;
    }, 'the group filter');
    expect(listed.map((w) => w.id).sort()).toEqual([...members].sort());
    expect((await stack.call('alice', 'POST', `/groups/${id}/explode`, {})).status).toBe(404);

    const destroyed = await stack.call('alice', 'DELETE', `/groups/${id}`);
    expect(destroyed.status).toBe(202);
    await eventually(120, async () => (await stack.call('alice', 'GET', `/groups/${id}`)).body.state === 'Ended', 'the group Ended');
    expect((await grants()).filter((g) => g.gang)).toEqual([]);
    await stack.recordWorkflowHistory(groupWorkflowId(stack.config, id), 'group-created-and-destroyed');
  });

  it('creates an ensemble, registers members idempotently, reports them, and destroys all', async () => {
    const key = `ens-${Date.now()}`;
    const e = await post('alice', '/ensembles', {}, key);
    expect(e.status).toBe(202);
    expect(e.body).toMatchObject({ kind: 'ensemble', state: 'Registering', deadlineSeconds: 120 });
    const id = String(e.body.id);
    expect(await post('alice', '/ensembles', {}, key)).toMatchObject({ status: 202, body: e.body });

    const member = { image: 'sample', memoryMiB: { min: 64, max: 1024 }, count: 2 };
    const reg = await post('alice', `/ensembles/${id}/members`, member, 'member-1');
    expect(reg.status).toBe(202);
    expect(reg.body).toMatchObject({ ensemble: id, count: 2, memoryMiB: 256 });
    expect(await post('alice', `/ensembles/${id}/members`, member, 'member-1')).toMatchObject({ status: 202, body: reg.body });
    const other = await post('alice', `/ensembles/${id}/members`, { ...member, count: 3 }, 'member-1');
    expect(other).toMatchObject({ status: 422, body: { errors: [{ field: 'Idempotency-Key' }] } });
    expect((await post('alice', `/ensembles/${id}/members`, { ...member, count: 4 })).body).toMatchObject({ status: 400, errors: [{ field: 'count' }] });

    const report = await stack.call('alice', 'GET', `/ensembles/${id}`);
    expect(report.body).toMatchObject({ id, state: 'Registering', members: [expect.objectContaining({ memberId: reg.body.memberId, count: 2 })] });
    expect((await stack.call('alice', 'GET', `/ensembles/ens-000000000000`)).status).toBe(404);

    expect((await stack.call('alice', 'DELETE', `/ensembles/${id}`)).status).toBe(202);
    await eventually(60, async () => (await stack.call('alice', 'GET', `/ensembles/${id}`)).body.state === 'Ended', 'the ensemble Ended');
  });
});

describe('the CLI', () => {
  it('deploys with a range and an idempotency key, twice with one answer, and shows status', async () => {
    const cli = (...args: string[]) =>
      promisify(execFile)(process.execPath, [join(__dirname, '../../dist/cli/vws.js'), '--api', stack.api, '--token-file', stack.config.clients[0].tokenFile!, '--json', ...args]);
    const argv = ['deploy', '--image', 'sample', '--memory', '64-100000', '--duration', '60-600', '--target-state', 'Propagated', '--idempotency-key', `cli-${Date.now()}`];
    const one = JSON.parse((await cli(...argv)).stdout) as Record<string, unknown>;
    const two = JSON.parse((await cli(...argv)).stdout) as Record<string, unknown>;
    expect(two).toEqual(one);
    expect(one).toMatchObject({ memoryMiB: 256, durationSeconds: 600 });
    created.add(String(one.id));
    await expect(cli('deploy', '--image', 'sample', '--memory', '300-400')).rejects.toMatchObject({ code: 8 });
    await expect(cli('show', 'ws-000000000000')).rejects.toMatchObject({ code: 4 });
    const status = JSON.parse((await cli('status')).stdout) as { workspaces: unknown[] };
    expect(status.workspaces.length).toBeGreaterThan(0);
  });
});

describe('cleanup', () => {
  it('destroys everything and leaves no grant and nothing on the node', async () => {
    for (const id of created) {
      const r = await stack.call('alice', 'DELETE', `/workspaces/${id}`);
      expect([202, 409]).toContain(r.status);
    }
    for (const id of created) await settled(stack, id, 'Cancelled', 120);
    await eventually(30, async () => (await grants()).length === 0, 'no grants');
    expect(await stack.leftovers()).toEqual([]);
  });
});
