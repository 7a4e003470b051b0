/**
 * The allocator workflow on the real dev server, reached the way workspaces reach it: through the head
 * activities (Update-with-Start). Each test has its own prefix, so its own allocator and task queue.
 */
import type { Worker } from '@temporalio/worker';
import { createHeadActivities } from '../../src/activities/head/allocator-client';
import { allocatorWorkflowId } from '../../src/config/names';
import type { VwsConfig } from '../../src/config/schema';
import type { Grant } from '../../src/domain/allocation';
import { grantsQuery } from '../../src/domain/messages';
import { createHeadWorker } from '../../src/workers/head';
import { AllocatorClient } from '../../src/clients/allocator';
import { connect, testConfig, workflowBundle, type TestConnections } from '../helpers/temporal';

let conn: TestConnections;
beforeAll(async () => {
  conn = await connect();
});
afterAll(() => conn.close());

/** Runs `fn` with a head worker for `config`, then stops the worker. */
async function withHeadWorker<T>(config: VwsConfig, fn: () => Promise<T>): Promise<T> {
  const worker: Worker = await createHeadWorker({ config, connection: conn.native, client: conn.client, workflowBundle: await workflowBundle() });
  return worker.runUntil(fn);
}

function smallSite(): VwsConfig {
  return testConfig({
    nodes: [
      { name: 'vmm1', memoryMiB: 256, cpus: 2 },
      { name: 'vmm2', memoryMiB: 256, cpus: 2 },
    ],
    networks: [{ name: 'public', subnet: '10.213.0.0/24', gateway: '10.213.0.1', ranges: [{ first: '10.213.0.100', last: '10.213.0.102' }] }],
  });
}

const grants = (config: VwsConfig) => conn.client.workflow.getHandle(allocatorWorkflowId(config)).query(grantsQuery);

describe('the allocator workflow', () => {
  it('grants whole requests, refuses with a reason, and releases idempotently', async () => {
    const config = smallSite();
    const head = createHeadActivities({ client: conn.client, config });
    await withHeadWorker(config, async () => {
      const a = await head.reserve({ holder: 'wf-a', memoryMiB: 200, vcpus: 1 });
      expect(a).toMatchObject({ holder: 'wf-a', node: 'vmm1', memoryMiB: 200, nics: [{ network: 'public', address: { ip: '10.213.0.100', mac: '52:54:0a:d5:00:64', gateway: '10.213.0.1' } }] });
      // A retried reserve by the same holder gets the same grant, not a second one.
      expect(await head.reserve({ holder: 'wf-a', memoryMiB: 200, vcpus: 1 })).toEqual(a);
      expect(await head.reserve({ holder: 'wf-b', memoryMiB: 200, vcpus: 1 })).toMatchObject({ node: 'vmm2', nics: [{ address: { ip: '10.213.0.101' } }] });

      await expect(head.reserve({ holder: 'wf-c', memoryMiB: 200, vcpus: 1 })).rejects.toMatchObject({
        type: 'NoCapacity',
        nonRetryable: true,
        message: expect.stringContaining('no node has 200 MiB'),
      });
      // The refusal held nothing.
      expect((await grants(config)).map((g) => g.holder).sort()).toEqual(['wf-a', 'wf-b']);

      expect(await head.release('wf-a')).toBe(true);
      expect(await head.release('wf-a')).toBe(false);
      expect(await head.release('never-held')).toBe(false);
      expect((await grants(config)).map((g) => g.holder)).toEqual(['wf-b']);
      await head.release('wf-b');
      expect(await grants(config)).toEqual([]);
    });
  });

  it('never hands one address or one slot out twice under concurrent requests', async () => {
    const config = smallSite();
    const head = createHeadActivities({ client: conn.client, config });
    await withHeadWorker(config, async () => {
      const results = await Promise.allSettled(
        Array.from({ length: 10 }, (_, i) => head.reserve({ holder: `wf-${i}`, memoryMiB: 64, vcpus: 1 })),
      );
      const granted = results.filter((r) => r.status === 'fulfilled').map((r) => (r as PromiseFulfilledResult<Grant>).value);
      const refused = results.filter((r) => r.status === 'rejected');
      // Three addresses in the pool: exactly three grants, all distinct; the rest refused for addresses.
      expect(granted).toHaveLength(3);
      expect(new Set(granted.map((g) => g.nics![0].address.ip)).size).toBe(3);
      expect(refused).toHaveLength(7);
      for (const r of refused) expect((r as PromiseRejectedResult).reason).toMatchObject({ type: 'NoCapacity', message: expect.stringContaining('no free address') });
      expect(await grants(config)).toHaveLength(3);
      for (let i = 0; i < 10; i++) await head.release(`wf-${i}`);
      expect(await grants(config)).toEqual([]);
    });
  });

  it('takes a changed configuration for new grants and keeps live ones', async () => {
    const config = smallSite();
    const head = createHeadActivities({ client: conn.client, config });
    await withHeadWorker(config, async () => {
      await head.reserve({ holder: 'wf-live', memoryMiB: 64, vcpus: 1 });
      const bigger = testConfig({
        temporal: config.temporal,
        nodes: [{ name: 'vmm1', memoryMiB: 256, cpus: 2 }],
        networks: [{ name: 'public', subnet: '10.213.0.0/24', gateway: '10.213.0.1', ranges: [{ first: '10.213.0.120', last: '10.213.0.121' }] }],
      });
      await createHeadActivities({ client: conn.client, config: bigger }).configureAllocator();
      // The live grant keeps its old address; a new one comes from the new pool.
      expect((await grants(config)).map((g) => g.nics![0].address.ip)).toEqual(['10.213.0.100']);
      expect((await head.reserve({ holder: 'wf-new', memoryMiB: 64, vcpus: 1 })).nics![0].address.ip).toBe('10.213.0.120');
      await head.release('wf-live');
      await head.release('wf-new');
    });
  });

  it('refuses a malformed request in its validator, naming the field', async () => {
    const config = smallSite();
    const head = createHeadActivities({ client: conn.client, config });
    await withHeadWorker(config, async () => {
      await expect(head.reserve({ holder: 'wf-x', memoryMiB: -5, vcpus: 1 })).rejects.toMatchObject({
        type: 'InvalidSpec',
        message: 'memoryMiB: must be a positive integer',
      });
      expect(await grants(config)).toEqual([]);
    });
  });
});

/** Two 256 MiB nodes and ten addresses: 512 MiB in all, so a 300 MiB gang needs more than half the site. */
function gangSite(overrides: Record<string, unknown> = {}): VwsConfig {
  return testConfig({
    nodes: [
      { name: 'vmm1', memoryMiB: 256, cpus: 4 },
      { name: 'vmm2', memoryMiB: 256, cpus: 4, properties: ['bigmem'] },
    ],
    networks: [{ name: 'public', subnet: '10.213.0.0/24', gateway: '10.213.0.1', ranges: [{ first: '10.213.0.100', last: '10.213.0.109' }] }],
    ...overrides,
  });
}

const member = (holder: string, memoryMiB = 100, extra: object = {}) => ({ holder, memoryMiB, vcpus: 1, ...extra });

describe('the allocator workflow: gangs, quotas, drain and accounting', () => {
  it('grants a gang whole or refuses it holding nothing, and releases it at once', async () => {
    const config = gangSite();
    const head = createHeadActivities({ client: conn.client, config });
    await withHeadWorker(config, async () => {
      const granted = await head.reserveGang({ gang: 'grp-1', members: [member('m1', 200), member('m2', 200), member('m3', 50)] });
      expect(granted.map((g) => [g.holder, g.gang, g.nics![0].address.ip])).toEqual([
        ['m1', 'grp-1', '10.213.0.100'],
        ['m2', 'grp-1', '10.213.0.101'],
        ['m3', 'grp-1', '10.213.0.102'],
      ]);
      expect(new Set(granted.slice(0, 2).map((g) => g.node)).size).toBe(2);
      // A repeat (a retried activity) gets the same grants and holds nothing more.
      expect(await head.reserveGang({ gang: 'grp-1', members: [member('m1', 200), member('m2', 200), member('m3', 50)] })).toEqual(granted);
      // 56 and 6 MiB are left: x2 fits nowhere, so x1 (which would fit) is not held either.
      await expect(head.reserveGang({ gang: 'grp-2', members: [member('x1', 50), member('x2', 100)] })).rejects.toMatchObject({
        type: 'NoCapacity',
        nonRetryable: true,
        message: expect.stringMatching(/^gang grp-2: member x2 \(2 of 2, 100 MiB, 1 CPU\) does not fit: no node has 100 MiB .*nothing is held$/),
      });
      expect((await grants(config)).map((g) => g.holder).sort()).toEqual(['m1', 'm2', 'm3']);
      // A member's own release frees its grant; the gang's release frees the rest.
      expect(await head.release('m3')).toBe(true);
      expect(await head.releaseGang('grp-1')).toBe(2);
      expect(await head.releaseGang('grp-1')).toBe(0);
      expect(await grants(config)).toEqual([]);
      await expect(head.reserveGang({ gang: 'grp-3', members: [member('d', 10), member('d', 10)] })).rejects.toMatchObject({
        type: 'InvalidSpec',
        message: 'members[1].holder: d appears more than once',
      });
    });
  });

  it('grants exactly one of two gangs that each need more than half the site, submitted together; the other holds nothing', async () => {
    const config = gangSite();
    const head = createHeadActivities({ client: conn.client, config });
    await withHeadWorker(config, async () => {
      const gang = (g: string) => ({ gang: g, members: [member(`${g}-a`), member(`${g}-b`), member(`${g}-c`)] });
      const [a, b] = await Promise.allSettled([head.reserveGang(gang('A')), head.reserveGang(gang('B'))]);
      const outcomes = [a, b].map((r) => r.status);
      expect(outcomes.sort()).toEqual(['fulfilled', 'rejected']);
      const winner = a.status === 'fulfilled' ? 'A' : 'B';
      const loser = (a.status === 'rejected' ? a : b) as PromiseRejectedResult;
      expect(loser.reason).toMatchObject({ type: 'NoCapacity', message: expect.stringContaining('nothing is held') });
      const held = await grants(config);
      expect(held.map((g) => g.holder).sort()).toEqual([`${winner}-a`, `${winner}-b`, `${winner}-c`]);
      expect(held.every((g) => g.gang === winner)).toBe(true);
      // Once the winner is gone, the loser fits.
      await head.releaseGang(winner);
      expect(await head.reserveGang(gang(winner === 'A' ? 'B' : 'A'))).toHaveLength(3);
    });
  });

  it('refuses past a client quota with QuotaExceeded, naming the quota, the limit and what is held', async () => {
    const alice = '/O=Grid/OU=vws/CN=alice';
    const config = gangSite({
      clients: [{ name: 'alice', identity: alice, tokenFile: '/tmp/vws-alice.token', quota: { maxWorkspaces: 2, maxReservedMinutes: 30 } }],
    });
    const head = createHeadActivities({ client: conn.client, config });
    await withHeadWorker(config, async () => {
      await head.reserve(member('a1', 10, { owner: alice, reservedSeconds: 600 }));
      await expect(head.reserve(member('a2', 10, { owner: alice, reservedSeconds: 1500 }))).rejects.toMatchObject({
        type: 'QuotaExceeded',
        nonRetryable: true,
        message: `${alice} may hold at most 30 reserved minutes (quota maxReservedMinutes) and holds 10 minutes; this request asks for 25 minutes more`,
      });
      await expect(head.reserveGang({ gang: 'g', members: [member('a2', 10, { owner: alice }), member('a3', 10, { owner: alice })] })).rejects.toMatchObject({
        type: 'QuotaExceeded',
        message: `gang g: ${alice} may hold at most 2 workspaces (quota maxWorkspaces) and holds 1; this request asks for 2 more`,
      });
      expect((await grants(config)).map((g) => g.holder)).toEqual(['a1']);
      // A client without a quota is limited only by capacity.
      await head.reserveGang({ gang: 'g2', members: [member('b1', 10, { owner: '/CN=bob' }), member('b2', 10, { owner: '/CN=bob' })] });
      expect(await grants(config)).toHaveLength(3);
    });
  });

  it('drains and undrains a node: no new grants there, live ones untouched, kept across configure', async () => {
    const config = gangSite();
    const head = createHeadActivities({ client: conn.client, config });
    const allocator = new AllocatorClient(conn.client, config);
    await withHeadWorker(config, async () => {
      expect((await head.reserve(member('live', 100))).node).toBe('vmm1');
      const nodes = await allocator.drain('vmm1', true);
      expect(nodes).toEqual([
        { name: 'vmm1', memoryMiB: 256, cpus: 4, usedMemoryMiB: 100, usedVcpus: 1, grants: 1, drained: true, properties: [] },
        { name: 'vmm2', memoryMiB: 256, cpus: 4, usedMemoryMiB: 0, usedVcpus: 0, grants: 0, drained: false, properties: ['bigmem'] },
      ]);
      expect((await head.reserve(member('next', 100))).node).toBe('vmm2');
      await expect(head.reserve(member('more', 200))).rejects.toMatchObject({
        type: 'NoCapacity',
        message: 'no node has 200 MiB and 1 CPU free (free: vmm2 156 MiB and 3 CPUs); drained: vmm1',
      });
      // A head restart reconfigures the allocator: the admin's drain stays.
      await head.configureAllocator();
      expect((await allocator.nodes()).map((n) => [n.name, n.drained])).toEqual([
        ['vmm1', true],
        ['vmm2', false],
      ]);
      await expect(allocator.drain('vmm9', true)).rejects.toMatchObject({ type: 'InvalidSpec', message: 'node: no such node: vmm9 (nodes: vmm1, vmm2)' });
      await allocator.drain('vmm1', false);
      expect((await head.reserve(member('more', 100))).node).toBe('vmm1');
      expect((await allocator.grants()).map((g) => g.holder).sort()).toEqual(['live', 'more', 'next']);
    });
  });

  it('reports usage per owner: reserved from grant to release, used as the workspace reported, charged in whole minutes', async () => {
    const alice = '/CN=alice';
    const config = gangSite();
    const head = createHeadActivities({ client: conn.client, config });
    const allocator = new AllocatorClient(conn.client, config);
    await withHeadWorker(config, async () => {
      await head.reserve(member('w1', 64, { owner: alice, reservedSeconds: 3600 }));
      await head.reserve(member('w2', 64, { owner: alice, reservedSeconds: 1800 }));
      await new Promise((r) => setTimeout(r, 2000));
      // Live time counts up to the caller's clock, not the allocator's last workflow task.
      const [live] = await allocator.usage(alice);
      expect(live).toMatchObject({ owner: alice, liveGrants: 2, usedMinutes: 0, heldMinutes: 90 });
      expect(live.reservedMinutes).toBeGreaterThanOrEqual(3 / 60);
      expect(await head.release('w1', { usedSeconds: 61 })).toBe(true);
      await expect(head.release('w2', { usedSeconds: -1 })).rejects.toMatchObject({ message: expect.stringContaining('info.usedSeconds: must be a non-negative number') });
      const [after] = await allocator.usage(alice);
      // w1: about 2 s reserved and 61 s used, each rounded up to whole minutes: 1 and 2.
      expect(after).toMatchObject({ owner: alice, liveGrants: 1, usedMinutes: 2, heldMinutes: 30 });
      expect(after.reservedMinutes).toBeGreaterThanOrEqual(1);
      expect(after.reservedMinutes).toBeLessThan(1.5);
      await head.release('w2', { usedSeconds: 0 });
      expect(await allocator.usage()).toEqual([{ owner: alice, liveGrants: 0, reservedMinutes: 2, usedMinutes: 2, heldMinutes: 0 }]);
    });
  });
});
