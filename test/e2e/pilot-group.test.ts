/**
 * A group in pilot mode on the testbed's real Slurm, with two pilot nodes (vmm3 with a node worker, vmm2
 * over SSH; the jobs select them by the feature `pilot`): each member's pilot job has a node to itself,
 * the group is Ready once both members run, one on each node, and destroying the group hands both nodes
 * back with nothing held. A group bigger than the site's pilot nodes is refused at create, naming `count`.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { groupWorkflowId } from '../../src/config/names';
import { pilotSlotQuery } from '../../src/domain/pilot-slot';
import { expectPilotStackClean, testbedReservationProbe, usePilotStack } from '../helpers/pilot-stack';
import { eventually, TESTBED_DIR, TEST_NODES } from '../helpers/stack';
import { show } from '../helpers/workspace';

jest.setTimeout(600_000);

const NODES = ['vmm3', 'vmm2'] as const;
const memory = Object.fromEntries(NODES.map((n) => [n, testbedReservationProbe(n)]));

// A short reserve timeout: the back-out scenario waits it out (a pilot reserves within ~5 s here).
const f = usePilotStack({ label: 'pilot-group', first: '10.213.0.70', last: '10.213.0.72', nodes: [...NODES], lrm: { constraints: ['pilot'] }, pilot: { pollSeconds: 3, reserveTimeoutSeconds: 20 } });

/** Nothing held anywhere, both nodes' memory exactly configured, no lock or reset intent left. */
async function expectClean(memberIds: string[]): Promise<void> {
  await expectPilotStackClean(f, memberIds, NODES.map((n) => ({ probe: memory[n], configuredMiB: TEST_NODES[n].memoryMiB })));
  for (const n of NODES) {
    for (const file of ['pilot.lock', 'reset.intent']) expect(existsSync(join(TESTBED_DIR, 'hosts', n, 'node', 'pilot', file))).toBe(false);
  }
}

describe('a group in pilot mode on two pilot nodes', () => {
  it('more members than pilot nodes: refused at create, naming count; nothing submitted', async () => {
    const r = await f.stack.call('alice', 'POST', '/workspaces', { image: 'sample', memoryMiB: 128, pilot: true, count: 3 });
    expect(r.status).toBe(400);
    expect(r.body).toMatchObject({ errors: [{ field: 'count', message: expect.stringMatching(/each member on a node of its own: 3 members, but this site has 2 pilot node\(s\)/) }] });
    expect(await f.slurm.listByPrefix(`${f.stack.config.temporal.prefix}-pilot`)).toEqual([]);
  });

  it('count 2: one pilot job per member, each on its own node; Ready once both run; destroy hands both nodes back', async () => {
    const t0 = Date.now();
    const r = await f.stack.call('alice', 'POST', '/workspaces', { image: 'sample', memoryMiB: 128, durationSeconds: 600, pilot: true, count: 2 });
    expect(r.status).toBe(202);
    expect(r.body).toMatchObject({ kind: 'group', count: 2, members: [{ task: 'queued-in-batch' }, { task: 'queued-in-batch' }] });
    const group = String(r.body.id);
    const ids = (r.body.members as Array<{ id: string }>).map((m) => m.id);

    const ready = await eventually(240, async () => {
      const g = await f.stack.call('alice', 'GET', `/groups/${group}`);
      if (g.body.state === 'Ended' || g.body.state === 'BackingOut') throw new Error(`group ${group} ${g.body.state}: ${g.body.reason}`);
      return g.body.state === 'Ready' ? g.body : undefined;
    }, `group ${group} Ready`);
    const readyMs = Date.now() - t0;
    const members = ready.members as Array<{ id: string; state: string; node: string; ip?: string }>;
    expect(members.map((m) => m.state)).toEqual(['Running', 'Running']);
    // One member per node: each pilot job had its node to itself.
    expect(members.map((m) => m.node).sort()).toEqual([...NODES].sort());
    for (const m of members) {
      const slot = await f.slot(m.id).query(pilotSlotQuery);
      expect(slot).toMatchObject({ state: 'reserved', node: m.node, memoryMiB: 128 + 64 });
      expect(await f.slurm.status(slot.jobId!)).toMatchObject({ state: 'running', nodes: m.node });
      expect(await show(f.stack, m.id)).toMatchObject({ node: m.node, pilot: { slotId: m.id, node: m.node } });
      expect(await memory[m.node].read()).toBe(TEST_NODES[m.node as (typeof NODES)[number]].memoryMiB - 192);
    }
    expect((await f.allocator.leases()).map((l) => l.node).sort()).toEqual([...NODES].sort());

    expect((await f.stack.call('alice', 'DELETE', `/groups/${group}`)).status).toBe(202);
    await eventually(180, async () => (await f.stack.call('alice', 'GET', `/groups/${group}`)).body.state === 'Ended', `group ${group} Ended`);
    for (const id of ids) expect((await show(f.stack, id)).state).toBe('Cancelled');
    await expectClean(ids);
    await f.stack.recordWorkflowHistory(groupWorkflowId(f.stack.config, group), 'group-pilot-two-nodes');
    await f.stack.recordHistory(ids[0], 'pilot-group-member');
    console.log(`pilot group of 2: POST → Ready in ${readyMs} ms; destroy → clean in ${Date.now() - t0 - readyMs} ms`);
  });

  it('a member whose pilot job cannot start (its node busy with another job): after the reserve timeout (20 s) the group backs out, holding nothing', async () => {
    // Another user's job takes every CPU of vmm2: the second member's pilot job stays pending.
    const { jobId: blocker } = await f.slurm.submit({ name: `${f.stack.config.temporal.prefix}-blocker`, command: { kind: 'argv', argv: ['/bin/sleep', '600'] }, node: 'vmm2', cpus: 4, walltimeSeconds: 600, workDir: '/tmp' });
    try {
      await eventually(30, async () => (await f.slurm.status(blocker)).state === 'running', 'the blocker running');
      const r = await f.stack.call('alice', 'POST', '/workspaces', { image: 'sample', memoryMiB: 128, durationSeconds: 600, pilot: true, count: 2 });
      expect(r.status).toBe(202);
      const group = String(r.body.id);
      const ids = (r.body.members as Array<{ id: string }>).map((m) => m.id);
      const ended = await eventually(180, async () => {
        const g = await f.stack.call('alice', 'GET', `/groups/${group}`);
        return g.body.state === 'Ended' ? g.body : undefined;
      }, `group ${group} Ended`);
      expect(ended.reason).toMatch(/^backed out: .*did not start pilot job \d+ within 20 s \(reserveTimeoutSeconds\)/);
      for (const id of ids) expect((await show(f.stack, id)).state).toBe('Cancelled');
      // The blocker, another user's job, was left alone.
      expect((await f.slurm.status(blocker)).state).toBe('running');
      await f.slurm.cancel(blocker);
      await expectClean(ids);
      await f.stack.recordWorkflowHistory(groupWorkflowId(f.stack.config, group), 'group-pilot-backed-out');
    } finally {
      await f.slurm.cancel(blocker);
    }
  });
});
