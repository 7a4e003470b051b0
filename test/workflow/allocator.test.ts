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
