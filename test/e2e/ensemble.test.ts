/**
 * Co-scheduled ensembles of real VMs on the testbed (vmm1 with a node worker, vmm2 over SSH): every
 * member allocated at once, propagated, then started together, with the spread of their starts
 * measured; backout when a member's image vanished from the repository after it registered (nothing
 * runs, nothing is held); two gangs that each need more than half the site, submitted together: one
 * runs, the other waits without holding anything, then runs when the first is destroyed.
 */
import { copyFileSync, appendFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { headTaskQueue, workspaceRouting } from '../../src/config/names';
import type { EnsembleDescription, EnsembleInput } from '../../src/domain/groups';
import { describeQuery, ensembleDescribeQuery, ensembleDestroyUpdate, ensembleDoneUpdate, ensembleRegisterUpdate, VwsOwner } from '../../src/domain/messages';
import type { ResolvedImage, WorkspaceSpec } from '../../src/domain/workspace';
import { memberSpec } from '../helpers/member-spec';
import { resolveImage, stageLocalFile } from '../../src/repository';
import type { ensembleWorkflow } from '../../src/workflows/ensemble';
import { eventually, GUEST_DISK, startStack, type Stack } from '../helpers/stack';

let stack: Stack;
let sample: ResolvedImage;
beforeAll(async () => {
  stack = await startStack({ label: 'ensemble', first: '10.213.0.130', last: '10.213.0.139', nodes: ['vmm1', 'vmm2'] });
  sample = (await resolveImage(stack.config, 'sample'))!;
});
afterAll(async () => {
  await stack?.stop();
});

const alice = () => stack.config.clients[0].identity;
const wfId = (id: string) => `${stack.config.temporal.prefix}-${id}`;

const specOf = (image: ResolvedImage, memoryMiB = 128): WorkspaceSpec => memberSpec(image, { memoryMiB });

/** Starts an ensemble workflow as the API would (workflow id `<prefix>-<ensemble id>`). */
async function startEnsemble(deadlineSeconds: number) {
  const id = `ens-${randomBytes(6).toString('hex')}`;
  const input: EnsembleInput = { id, owner: alice(), routing: workspaceRouting(stack.config), createdAt: new Date().toISOString(), deadlineSeconds };
  const handle = await stack.conn.client.workflow.start<typeof ensembleWorkflow>('ensembleWorkflow', {
    workflowId: wfId(id),
    taskQueue: headTaskQueue(stack.config),
    args: [input],
    typedSearchAttributes: [{ key: VwsOwner, value: alice() }],
  });
  return { id, handle, describe: () => handle.query(ensembleDescribeQuery) };
}

type Ens = Awaited<ReturnType<typeof startEnsemble>>;

/** Waits until the ensemble is Ready (every member Running); fails at once if it ended. */
async function ready(e: Ens, seconds = 300): Promise<EnsembleDescription> {
  return eventually(
    seconds,
    async () => {
      const d = await e.describe();
      if (d.state === 'Ended') throw new Error(`ensemble ended: ${d.reason}`);
      return d.state === 'Ready' ? d : null;
    },
    `${e.id} Ready`,
    500,
  );
}

const workspaceIds = (d: EnsembleDescription) => d.members.flatMap((m) => m.workspaces.map((w) => w.id));

/** Milliseconds of a history event's time. */
const ms = (t: { seconds?: unknown; nanos?: number | null } | null | undefined) => Number(t?.seconds ?? 0) * 1000 + (t?.nanos ?? 0) / 1e6;

/**
 * From each member's history: when its propagation finished and when its start Update was accepted.
 * Co-scheduling means no member was asked to start before every member was propagated.
 */
async function propagatedAndStartAsked(ids: string[]): Promise<{ lastPropagated: number; firstStartAsked: number }> {
  let lastPropagated = 0;
  let firstStartAsked = Infinity;
  for (const id of ids) {
    const history = await stack.conn.client.workflow.getHandle(wfId(id)).fetchHistory();
    const scheduled = new Map<string, string>();
    for (const e of history.events ?? []) {
      if (e.activityTaskScheduledEventAttributes) scheduled.set(String(e.eventId), String(e.activityTaskScheduledEventAttributes.activityType?.name));
      const done = e.activityTaskCompletedEventAttributes;
      if (done && scheduled.get(String(done.scheduledEventId)) === 'propagateImage') lastPropagated = Math.max(lastPropagated, ms(e.eventTime));
      if (e.workflowExecutionUpdateAcceptedEventAttributes?.acceptedRequest?.input?.name === 'start') firstStartAsked = Math.min(firstStartAsked, ms(e.eventTime));
    }
  }
  return { lastPropagated, firstStartAsked };
}

/** Destroys every member and checks that nothing runs and nothing is held afterwards. */
async function destroyAllAndCheck(e: Ens): Promise<EnsembleDescription> {
  await e.handle.executeUpdate(ensembleDestroyUpdate);
  const final = await e.handle.result();
  expect(final.state).toBe('Ended');
  for (const w of final.members.flatMap((m) => m.workspaces)) expect(w.state).toBe('Cancelled');
  return final;
}

async function nothingLeft(): Promise<void> {
  expect(await stack.grants()).toEqual([]);
  expect(await stack.leftovers()).toEqual([]);
}

describe('co-scheduled ensembles on vmm1 + vmm2', () => {
  it('starts an ensemble of two groups (2 + 3 real VMs) together, after all are propagated, and measures the spread', async () => {
    const e = await startEnsemble(120);
    const a = await e.handle.executeUpdate(ensembleRegisterUpdate, { args: [{ spec: specOf(sample), count: 2 }] });
    // Registered, not launched: nothing is allocated before done.
    expect(await stack.grants().catch(() => [])).toEqual([]);
    const b = await e.handle.executeUpdate(ensembleRegisterUpdate, { args: [{ spec: specOf(sample), count: 3, done: true }] });
    expect([a.workspaceIds.length, b.workspaceIds.length]).toEqual([2, 3]);

    const d = await ready(e);
    const ids = workspaceIds(d);
    expect(ids).toHaveLength(5);
    const nodes = new Set<string>();
    for (const id of ids) {
      const ws = await stack.conn.client.workflow.getHandle(wfId(id)).query(describeQuery);
      expect(ws).toMatchObject({ state: 'Running', task: null });
      expect(ws.obtainedIp).toBe(ws.network?.ip); // each VM got its own address by DHCP
      nodes.add(ws.node!);
    }
    expect([...nodes].sort()).toEqual(['vmm1', 'vmm2']);
    const { lastPropagated, firstStartAsked } = await propagatedAndStartAsked(ids);
    expect(firstStartAsked).toBeGreaterThanOrEqual(lastPropagated);
    expect(d.started).toBeDefined();
    const { first, last, skewMs } = d.started!;
    expect(skewMs).toBe(Date.parse(last) - Date.parse(first));
    expect(skewMs).toBeGreaterThanOrEqual(0);
    console.log(`ensemble of 2 + 3 real VMs on vmm1 + vmm2: start skew ${skewMs} ms (first ${first}, last ${last}); all propagated ${Math.round(firstStartAsked - lastPropagated)} ms before the first start was asked`);
    // Every one of them was granted in one gang, the ensemble's.
    expect(new Set((await stack.grants()).map((g) => (g as { gang?: string }).gang))).toEqual(new Set([wfId(e.id)]));

    await destroyAllAndCheck(e);
    await nothingLeft();
    await stack.recordWorkflowHistory(wfId(e.id), 'ensemble-two-groups-real-vms');
    await stack.recordHistory(ids[0], 'ensemble-member');
  }, 600_000);

  it('backs out every member, none started and nothing held, when one member\'s image is gone at done time', async () => {
    // An image of its own digest (so no node cache answers for it), removed after its member registered.
    const src = join(stack.config.stateDir, 'gone.raw');
    copyFileSync(GUEST_DISK, src);
    appendFileSync(src, randomBytes(4096));
    const gone = await stageLocalFile(stack.config, 'ens-gone', src);
    const e = await startEnsemble(120);
    await e.handle.executeUpdate(ensembleRegisterUpdate, { args: [{ spec: specOf(sample), count: 2 }] });
    await e.handle.executeUpdate(ensembleRegisterUpdate, { args: [{ spec: specOf(gone), count: 1 }] });
    rmSync(join(stack.config.repository.dir, 'ens-gone'));
    rmSync(join(stack.config.repository.dir, 'ens-gone.sha256'));
    await e.handle.executeUpdate(ensembleDoneUpdate);

    const final = await e.handle.result();
    expect(final.state).toBe('Ended');
    expect(final.reason).toMatch(/^backed out before start: member ws-[0-9a-f]{12} became Corrupted: image ens-gone is not in the repository/);
    expect(final.started).toBeUndefined();
    for (const w of final.members.flatMap((m) => m.workspaces)) {
      expect(w.state).toBe('Cancelled');
      expect(w.firstStartedAt).toBeUndefined(); // none ran
    }
    await nothingLeft();
    await stack.recordWorkflowHistory(wfId(e.id), 'ensemble-backed-out-image-gone');
  }, 600_000);

  it('runs one of two gangs that each need more than half the site, keeps the other waiting holding nothing, then runs it', async () => {
    // 3 × 400 MiB: more than one node (1024 MiB), so more than half the site; the site holds 4 such members.
    const gangs = [await startEnsemble(300), await startEnsemble(300)];
    for (const g of gangs) await g.handle.executeUpdate(ensembleRegisterUpdate, { args: [{ spec: specOf(sample, 400), count: 3 }] });
    await Promise.all(gangs.map((g) => g.handle.executeUpdate(ensembleDoneUpdate)));

    const first = await eventually(
      300,
      async () => {
        const ds = await Promise.all(gangs.map((g) => g.describe()));
        for (const d of ds) if (d.state === 'Ended') throw new Error(`${d.id} ended: ${d.reason}`);
        const i = ds.findIndex((d) => d.state === 'Ready');
        return i >= 0 ? { i, ds } : null;
      },
      'one gang Ready',
      500,
    );
    const winner = gangs[first.i];
    const loser = gangs[1 - first.i];
    const waiting = await loser.describe();
    expect(waiting.state).toBe('Waiting');
    expect(waiting.attempts).toBeGreaterThanOrEqual(1);
    expect(waiting.lastRefusal).toMatch(/400 MiB/);
    // No partial hold: every live grant is the winner's.
    const held = (await stack.grants()) as Array<{ gang?: string }>;
    expect(held).toHaveLength(3);
    expect(new Set(held.map((g) => g.gang))).toEqual(new Set([wfId(winner.id)]));
    console.log(`competing gangs: ${winner.id} runs (skew ${first.ds[first.i].started?.skewMs} ms), ${loser.id} waits after ${waiting.attempts} attempt(s): ${waiting.lastRefusal}`);

    await destroyAllAndCheck(winner);
    const second = await ready(loser, 300);
    expect(second.attempts).toBeGreaterThan(1);
    console.log(`competing gangs: ${loser.id} ran after ${second.attempts} attempts (skew ${second.started?.skewMs} ms)`);
    await destroyAllAndCheck(loser);
    await nothingLeft();
  }, 900_000);
});
