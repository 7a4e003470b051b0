/**
 * The reconciler's pilot-mode decisions (src/domain/reconcile-pilot.ts): given the allocator's pilot
 * leases, which slot workflows are open, the batch system's vws jobs, first-seen times and now, which
 * leases end (after which jobs), which jobs are reported and which cancelled.
 */
import type { NodeLease } from '../../src/domain/allocation';
import { addCounts, zeroCounts } from '../../src/domain/reconcile';
import { isPilotJobName, pilotJobPrefix, planPilotReconcile, slotIdsToLookUp, type PilotJobSighting, type PilotObservation } from '../../src/domain/reconcile-pilot';

const NOW = '2025-01-01T12:00:00.000Z';
const ago = (s: number) => new Date(Date.parse(NOW) - s * 1000).toISOString();
const P = 'tabc';
const slot = (id: string) => `${P}-pilot-${id}`;

function lease(id: string, over: Partial<NodeLease> = {}): NodeLease {
  return { holder: slot(id), node: 'vmm3', memoryMiB: 256, vcpus: 1, until: ago(-3600), leasedAt: ago(600), ...over };
}
function job(jobId: string, id: string, over: Partial<PilotJobSighting> = {}): PilotJobSighting {
  return { jobId, name: slot(id), state: 'running', nodes: 'vmm3', ...over };
}
function observe(over: Partial<PilotObservation> = {}): PilotObservation {
  return { prefix: P, now: NOW, graceSeconds: 60, leases: [], slots: {}, jobs: { batch: 'ok', jobs: [] }, jobsFirstSeen: {}, ...over };
}

describe('names', () => {
  it('knows this installation pilot jobs by name only', () => {
    expect(pilotJobPrefix(P)).toBe('tabc-pilot');
    expect(isPilotJobName(P, 'tabc-pilot-ws-00000000000a')).toBe(true);
    expect(isPilotJobName(P, 'tabc-pilot-')).toBe(false);
    expect(isPilotJobName(P, 'tabc-pilotx-a')).toBe(false);
    expect(isPilotJobName(P, 'tother-pilot-a')).toBe(false);
    expect(isPilotJobName(P, 'tabc-pilot-A_b')).toBe(false);
  });
  it('looks up every lease holder and every job owner once', () => {
    expect(slotIdsToLookUp(P, [lease('a'), lease('b')], [job('1', 'a'), job('2', 'c'), { jobId: '3', name: 'other', state: 'running' }])).toEqual([slot('a'), slot('b'), slot('c')]);
  });
});

describe('leases', () => {
  it('keeps a lease whose slot workflow is open', () => {
    const plan = planPilotReconcile(observe({ leases: [lease('a', { jobId: '7' })], slots: { [slot('a')]: 'open' }, jobs: { batch: 'ok', jobs: [job('7', 'a')] } }));
    expect(plan.endLeases).toEqual([]);
    expect(plan.unowned).toEqual([]);
    expect(plan.counts).toEqual(zeroCounts());
  });

  it('ends the lease of a closed or missing slot after its jobs: its own job id and any live job named like it', () => {
    const plan = planPilotReconcile(
      observe({
        leases: [lease('a', { jobId: '7' }), lease('b')],
        slots: { [slot('a')]: 'closed', [slot('b')]: 'missing' },
        jobs: { batch: 'ok', jobs: [job('8', 'a', { state: 'completing' }), job('9', 'b')] },
      }),
    );
    expect(plan.endLeases.map((e) => [e.lease.holder, e.jobIds])).toEqual([
      [slot('a'), ['7', '8']],
      [slot('b'), ['9']],
    ]);
    expect(plan.endLeases[0].detail).toContain(`slot workflow ${slot('a')} is closed`);
    expect(plan.endLeases[1].detail).toContain('is not found');
    // The lease's jobs go with the lease, at once: never reported as unowned beside it.
    expect(plan.unowned).toEqual([]);
    expect(plan.counts['unowned-job-reported']).toBe(0);
  });

  it('ends a lease with no job left at once', () => {
    const plan = planPilotReconcile(observe({ leases: [lease('a')], slots: { [slot('a')]: 'closed' } }));
    expect(plan.endLeases).toEqual([expect.objectContaining({ jobIds: [], detail: expect.stringContaining('no job of it is left') })]);
  });

  it('while the batch system does not answer: still cancels a known job id, but waits with a lease that has none', () => {
    const plan = planPilotReconcile(
      observe({ leases: [lease('a', { jobId: '7' }), lease('b')], slots: { [slot('a')]: 'closed', [slot('b')]: 'closed' }, jobs: { batch: 'unavailable', error: 'squeue: timeout' } }),
    );
    expect(plan.endLeases.map((e) => [e.lease.holder, e.jobIds])).toEqual([[slot('a'), ['7']]]);
    expect(plan.waitingLeases).toEqual([{ holder: slot('b'), detail: expect.stringContaining('did not answer') }]);
  });

  it('on a site without a batch system, ends an orphan lease without asking about jobs', () => {
    const plan = planPilotReconcile(observe({ leases: [lease('a', { jobId: '7' })], slots: { [slot('a')]: 'closed' }, jobs: { batch: 'none' } }));
    expect(plan.endLeases).toEqual([expect.objectContaining({ jobIds: [], detail: expect.stringContaining('no batch system') })]);
  });
});

describe('jobs', () => {
  it('reports an unowned job at once and cancels it after the grace period; owned, foreign and completing jobs are left alone', () => {
    const jobs = [job('1', 'a'), job('2', 'b'), job('3', 'c', { state: 'completing' }), { jobId: '4', name: 'someone-else', state: 'running' as const }, job('5', 'd', { state: 'queued' })];
    const first = planPilotReconcile(observe({ slots: { [slot('a')]: 'open', [slot('b')]: 'closed', [slot('c')]: 'closed' }, jobs: { batch: 'ok', jobs } }));
    expect(first.unowned.map((u) => [u.jobId, u.newlySeen, u.cancelAfter])).toEqual([
      ['2', true, ago(-60)],
      ['5', true, ago(-60)],
    ]);
    expect(first.cancel).toEqual([]);
    expect(first.counts['unowned-job-reported']).toBe(2);
    expect(first.jobsFirstSeen).toEqual({ 2: NOW, 5: NOW });

    const later = planPilotReconcile(observe({ slots: { [slot('a')]: 'open' }, jobs: { batch: 'ok', jobs }, jobsFirstSeen: { 2: ago(61), 5: ago(30) } }));
    expect(later.cancel.map((u) => u.jobId)).toEqual(['2']);
    expect(later.unowned.every((u) => !u.newlySeen)).toBe(true);
    expect(later.counts['unowned-job-reported']).toBe(0);
  });

  it('forgets a job that is gone or owned again, and keeps first-seen times while the batch system does not answer', () => {
    expect(planPilotReconcile(observe({ jobsFirstSeen: { 2: ago(10) } })).jobsFirstSeen).toEqual({});
    expect(planPilotReconcile(observe({ slots: { [slot('b')]: 'open' }, jobs: { batch: 'ok', jobs: [job('2', 'b')] }, jobsFirstSeen: { 2: ago(10) } })).jobsFirstSeen).toEqual({});
    const blind = planPilotReconcile(observe({ jobs: { batch: 'unavailable', error: 'x' }, jobsFirstSeen: { 2: ago(10) } }));
    expect(blind.jobsFirstSeen).toEqual({ 2: ago(10) });
    expect(blind.unowned).toEqual([]);
  });

  it('with no grace, reports and cancels in the same run', () => {
    const plan = planPilotReconcile(observe({ graceSeconds: 0, jobs: { batch: 'ok', jobs: [job('2', 'b')] } }));
    expect(plan.unowned[0].newlySeen).toBe(true);
    expect(plan.cancel.map((u) => u.jobId)).toEqual(['2']);
  });
});

describe('counts', () => {
  it('adds the pilot kinds to older totals that never counted them', () => {
    const old = { 'orphan-grant-released': 2 } as Partial<ReturnType<typeof zeroCounts>>;
    const sum = addCounts(old, { 'orphan-lease-ended': 1, 'unowned-job-cancelled': 1 });
    expect(sum).toMatchObject({ 'orphan-grant-released': 2, 'orphan-lease-ended': 1, 'unowned-job-cancelled': 1, 'orphan-lease-job-cancelled': 0, 'unowned-job-reported': 0 });
  });
});
