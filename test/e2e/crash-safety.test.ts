/**
 * Crash safety with real processes: kill -9 the node worker or the head worker in the middle of a boot
 * and of a destroy; after a restart every workspace ends where it should, with exactly one VM while
 * it runs and nothing orphaned after destroy. Also: a Signal sent while no head worker runs is
 * recorded, and acted on once one runs again.
 */
import { preemptSignal, shutdownSaveSignal, VwsState } from '../../src/domain/messages';
import { workspaceWorkflowId } from '../../src/config/names';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { eventually, startStack, type Stack } from '../helpers/stack';
import { workflowBundle } from '../helpers/temporal';
import { deploy, destroyAndCheck, settled, show } from '../helpers/workspace';

let stack: Stack;
let bundleDir: string;
beforeAll(async () => {
  // The head process is started five times here: bundled once, not at every start (seconds each on a loaded machine).
  bundleDir = mkdtempSync('/tmp/vws-crash-bundle-');
  const workflowBundleFile = join(bundleDir, 'workflows.js');
  writeFileSync(workflowBundleFile, (await workflowBundle()).code);
  stack = await startStack({
    label: 'crash-safety',
    first: '10.213.0.245',
    last: '10.213.0.249',
    headProcess: true,
    // A killed head's cached workflows wait this long for it before the restarted head replays them.
    config: { workers: { head: { workflowBundleFile, stickyTaskSeconds: 1 } } },
    // A node step whose worker was killed is retried when its start-to-close runs out: 10 s here (vmm1's
    // steps take a few seconds), not the default 30.
    lateConfig: () => ({ timeouts: { nodeStepSeconds: 10 } }),
  });
});
afterAll(async () => {
  await stack?.stop();
  if (bundleDir) rmSync(bundleDir, { recursive: true, force: true });
});

/** Waits until the workspace shows `task` in flight. */
const inFlight = (id: string, tasks: string[]) =>
  eventually(60, async () => tasks.includes(String((await show(stack, id)).task)), `${id} ${tasks.join('/')}`, 50);

/** qemu processes on the node (the VM count, whatever the workflow believes). */
const qemus = async () => (await stack.leftovers()).filter((l) => l.startsWith('qemu process')).length;

describe('crash safety', () => {
  it('kill -9 of the node worker during a boot: the boot completes once, after a restart', async () => {
    const id = await deploy(stack);
    await inFlight(id, ['starting']);
    stack.killNodeWorker();
    await stack.startNodeWorker();
    await settled(stack, id, 'Running', 180);
    expect(await qemus()).toBe(1);
    await destroyAndCheck(stack, id);
    await stack.recordHistory(id, 'crash-node-during-boot');
  });

  it('kill -9 of the node worker during a destroy: the destroy completes, nothing orphaned', async () => {
    const id = await deploy(stack);
    await settled(stack, id, 'Running');
    expect((await stack.call('alice', 'DELETE', `/workspaces/${id}`)).status).toBe(202);
    stack.killNodeWorker();
    await stack.startNodeWorker();
    await settled(stack, id, 'Cancelled', 180);
    expect(await stack.leftovers()).toEqual([]);
    expect(await stack.grants()).toEqual([]);
  });

  it('kill -9 of the head worker during a boot: the workflow carries on after a restart', async () => {
    const id = await deploy(stack);
    await inFlight(id, ['propagating', 'starting']);
    stack.killHead();
    await stack.startHead();
    await settled(stack, id, 'Running', 180);
    expect(await qemus()).toBe(1);
    await destroyAndCheck(stack, id);
  });

  it('kill -9 of the head worker during a destroy: cleanup still runs to the end', async () => {
    const id = await deploy(stack);
    await settled(stack, id, 'Running');
    expect((await stack.call('alice', 'DELETE', `/workspaces/${id}`)).status).toBe(202);
    stack.killHead();
    await stack.startHead();
    await settled(stack, id, 'Cancelled', 180);
    expect(await stack.leftovers()).toEqual([]);
    expect(await stack.grants()).toEqual([]);
  });

  it('records an early shutdown-save Signal while no head worker runs, and acts on it when one does', async () => {
    const id = await deploy(stack);
    await settled(stack, id, 'Running');
    stack.killHead();
    await stack.conn.client.workflow.getHandle(workspaceWorkflowId(stack.config, id)).signal(shutdownSaveSignal, { target: `early-${id}` });
    await new Promise((r) => setTimeout(r, 2000));
    // Nothing can act on it yet (queries need a worker, so read the search attribute the server keeps).
    const described = await stack.conn.client.workflow.getHandle(workspaceWorkflowId(stack.config, id)).describe();
    expect(described.typedSearchAttributes.get(VwsState)).toBe('Running');
    await stack.startHead();
    const ws = await settled(stack, id, 'StagedOut', 120);
    expect(ws.saved).toMatchObject({ disk: `early-${id}`, sha256: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect(ws.notices).toContain('early shutdown-save signal acted on');
    await destroyAndCheck(stack, id);
    await stack.recordHistory(id, 'early-shutdown-save-signal');
  });

  it('records a preemption notice while no head worker runs, and evicts the VM when one does', async () => {
    const id = await deploy(stack);
    await settled(stack, id, 'Running');
    stack.killHead();
    await stack.conn.client.workflow.getHandle(workspaceWorkflowId(stack.config, id)).signal(preemptSignal, { reason: 'pilot job 42 cancelled' });
    await stack.startHead();
    const ws = await settled(stack, id, 'Cancelled', 120);
    expect(ws.reason).toBe('preempted: pilot job 42 cancelled');
    expect(ws.notices).toContain('preempted: pilot job 42 cancelled');
    expect(await stack.leftovers()).toEqual([]);
    expect(await stack.grants()).toEqual([]);
    await stack.recordHistory(id, 'preempted');
  });
});
