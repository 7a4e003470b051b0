/**
 * The pilot's SSH fallback through the whole pilot mode (issue 7: notifications over HTTP, "SSH as
 * fallback"), on the testbed's real Slurm and vmm3 with a real VM: vws's HTTP endpoint is unreachable
 * from the pilots (their API URL is a closed port), so every notification goes over SSH to vmm2, where
 * `vws-pilot receive` checks it with the same code as the HTTP route and signals the slot's workflow
 * (vmm2 stands in for the head's SSH receiver: the testbed's head runs no sshd; see
 * test/helpers/pilot-stack.ts). `reserved` over SSH lets the workspace boot; after scancel,
 * `early-unreserving` over SSH evacuates it within the grace, and the node is handed back with nothing
 * left. test/integration/pilot-ssh-fallback.test.ts covers the refusals (forged, replayed, stale) over SSH.
 */
import { pilotSlotQuery } from '../../src/domain/pilot-slot';
import { testbedReservationProbe, usePilotStack } from '../helpers/pilot-stack';
import { eventually, TEST_NODES } from '../helpers/stack';
import { settled } from '../helpers/workspace';

jest.setTimeout(600_000);

const NODE = 'vmm3';
const memory = testbedReservationProbe(NODE);

const f = usePilotStack({ label: 'pilot-ssh-fallback', first: '10.213.0.76', last: '10.213.0.77', node: NODE, sshFallback: true, pilot: { pollSeconds: 3 } });

const slot = f.slot;

describe('pilot mode with vws unreachable over HTTP from the node', () => {
  it('reserved and early-unreserving arrive over SSH: the workspace runs, is evacuated on scancel, nothing left', async () => {
    expect(f.stack.config.pilot?.apiUrl).toBe('http://10.213.0.1:9');
    const r = await f.stack.call('alice', 'POST', '/workspaces', { image: 'sample', memoryMiB: 128, durationSeconds: 600, pilot: true });
    expect(r.status).toBe(202);
    const id = String(r.body.id);
    await settled(f.stack, id, 'Running', 240);
    expect(await memory.read()).toBe(TEST_NODES[NODE].memoryMiB - 192);
    const reserved = await slot(id).query(pilotSlotQuery);
    expect(reserved.state).toBe('reserved');
    expect(reserved.notices).toEqual([expect.stringMatching(new RegExp(`^reserved from ${NODE} over ssh at .*: acted on$`))]);

    await f.slurm.cancel(reserved.jobId!);
    const ws = await settled(f.stack, id, 'Cancelled', 120);
    expect(ws.reason).toMatch(/preempted: the batch system is taking node vmm3 back \(early-unreserving/);
    await eventually(120, async () => (await slot(id).describe()).status.name !== 'RUNNING', `slot of ${id} ended`);
    const ended = await slot(id).query(pilotSlotQuery);
    expect(ended.notices.some((n) => new RegExp(`^early-unreserving from ${NODE} over ssh at .*: acted on: evacuating$`).test(n))).toBe(true);
    expect(ended.notices.some((n) => / over http /.test(n))).toBe(false);
    expect(await f.slurm.listByPrefix(`${f.stack.config.temporal.prefix}-pilot`)).toEqual([]);
    expect(await f.allocator.leases()).toEqual([]);
    expect(await f.stack.grants()).toEqual([]);
    expect(await f.stack.leftovers()).toEqual([]);
    expect(await f.stack.vmStatus(id)).toBe('absent');
    expect(await memory.read()).toBe(TEST_NODES[NODE].memoryMiB);
  });
});
