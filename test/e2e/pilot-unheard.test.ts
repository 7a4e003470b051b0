/**
 * A pilot vws never heard from (issue 7's kill matrix, the reserving state as vws sees it), on the
 * testbed's real Slurm and vmm3: the pilots' API URL is a closed port and there is no SSH fallback, so
 * the pilot's `reserved` never arrives. The pilot reserves the node's memory and is killed with SIGKILL
 * (it never hands back). vws learnt no node from the pilot; the slot ends as one that never reserved, and
 * it still has the node the batch system ran the job on checked: memory exactly configured, nothing held.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { pilotJobName } from '../../src/activities/head/pilot-slot';
import { pilotSlotWorkflowId } from '../../src/config/names';
import { pilotSlotQuery } from '../../src/domain/pilot-slot';
import { testbedReservationProbe, usePilotStack } from '../helpers/pilot-stack';
import { eventually, TEST_NODES } from '../helpers/stack';
import { settled } from '../helpers/workspace';

jest.setTimeout(600_000);

const NODE = 'vmm3';
const memory = testbedReservationProbe(NODE);

const f = usePilotStack({ label: 'pilot-unheard', first: '10.213.0.94', last: '10.213.0.95', node: NODE, unreachableApi: true, pilot: { pollSeconds: 3 } });

const slot = f.slot;

describe('a pilot whose reserved never reaches vws', () => {
  it('killed after it reserved: the slot ends unreserved and vws resets the node the job ran on', async () => {
    expect(f.stack.config.pilot?.apiUrl).toBe('http://10.213.0.1:9');
    expect(f.stack.config.pilot?.sshFallback).toBeUndefined();
    const r = await f.stack.call('alice', 'POST', '/workspaces', { image: 'sample', memoryMiB: 128, durationSeconds: 600, pilot: true });
    expect(r.status).toBe(202);
    const id = String(r.body.id);
    const out = `/tmp/${pilotJobName(f.stack.config, id)}.out`;
    await eventually(120, async () => readFileSync(out, 'utf8').includes('"to":"reserved"'), 'the pilot reserved');
    expect(await memory.read()).toBe(TEST_NODES[NODE].memoryMiB - 192);
    const before = await slot(id).query(pilotSlotQuery);
    expect(before).toMatchObject({ state: 'queued', notices: [] });
    expect(before.node).toBeUndefined();

    await promisify(execFile)('pkill', ['-KILL', '-f', `pilot/main.js run --slot ${id}`]);
    const ws = await settled(f.stack, id, 'Cancelled', 120);
    expect(ws.reason).toMatch(new RegExp(`pilot mode: the pilot job ${before.jobId} ended .*before its pilot reserved the node`));
    await eventually(120, async () => (await slot(id).describe()).status.name !== 'RUNNING', `slot of ${id} ended`);
    const ended = await slot(id).query(pilotSlotQuery);
    expect(ended.node).toBe(NODE);
    expect(ended.notices).toContain(`node ${NODE} checked after the job: 0 VMs left, memory at ${TEST_NODES[NODE].memoryMiB} MiB`);
    expect(await memory.read()).toBe(TEST_NODES[NODE].memoryMiB);
    expect(await f.slurm.listByPrefix(`${f.stack.config.temporal.prefix}-pilot`)).toEqual([]);
    expect(await f.allocator.leases()).toEqual([]);
    expect(await f.stack.grants()).toEqual([]);
    expect(await f.stack.leftovers()).toEqual([]);
    await f.stack.recordWorkflowHistory(pilotSlotWorkflowId(f.stack.config, id), 'pilot-slot-unheard-killed-after-reserve');
  });
});
