/**
 * The reconciler's decisions (src/domain/reconcile.ts): given grants, open holders, what the nodes run,
 * first-seen times and now, which grants go, which VMs are reported and destroyed, which workspaces vanished.
 */
import type { Grant } from '../../src/domain/allocation';
import {
  addCounts,
  emptyListing,
  holderWorkspaceId,
  isOwned,
  planReconcile,
  vanishedReason,
  withReport,
  zeroCounts,
  type DriftReport,
  type ReconcileObservation,
} from '../../src/domain/reconcile';

const NOW = '2025-01-01T12:00:00.000Z';
const ago = (s: number) => new Date(Date.parse(NOW) - s * 1000).toISOString();
const P = 'tabc';
const A = 'ws-00000000000a';
const B = 'ws-00000000000b';
const C = 'ws-00000000000c';

function grant(id: string, over: Partial<Grant> = {}): Grant {
  return {
    holder: `${P}-${id}`,
    node: 'vmm1',
    memoryMiB: 128,
    vcpus: 1,
    nics: [{ network: 'public', address: { ip: '10.0.0.2', mac: '02:00:00:00:00:02', hostname: 'h' } }],
    grantedAt: ago(600),
    ...over,
  };
}

function observe(over: Partial<ReconcileObservation> = {}): ReconcileObservation {
  return { prefix: P, now: NOW, graceSeconds: 60, grants: [], holders: {}, nodes: { vmm1: [] }, openWorkspaceWorkflowIds: [], workspaces: [], firstSeen: {}, ...over };
}

describe('names', () => {
  it('derives the workspace id from a holder of this installation only', () => {
    expect(holderWorkspaceId(P, `${P}-${A}`)).toBe(A);
    expect(holderWorkspaceId(P, `tother-${A}`)).toBeUndefined();
    expect(holderWorkspaceId(P, `${P}-grp-00000000000a`)).toBeUndefined();
  });
  it('owns a VM when an open workflow id under any prefix ends in -<vm>', () => {
    expect(isOwned(A, [`tzzz-${A}`])).toBe(true);
    expect(isOwned(A, [`tzzz-${B}`, `${A}x`])).toBe(false);
  });
});

describe('grants', () => {
  it('keeps a grant whose holder is open, whatever its age', () => {
    const plan = planReconcile(observe({ grants: [grant(A, { grantedAt: ago(99999) })], holders: { [`${P}-${A}`]: 'open' } }));
    expect(plan.release).toEqual([]);
    expect(plan.waiting).toEqual([]);
    expect(plan.counts['orphan-grant-released']).toBe(0);
  });

  it('releases a grant whose holder is closed or missing once older than the grace period, with its workspace id', () => {
    const g1 = grant(A);
    const g2 = grant(B, { holder: `${P}-${B}` });
    const plan = planReconcile(observe({ grants: [g1, g2], holders: { [`${P}-${A}`]: 'closed' } }));
    expect(plan.release.map((r) => [r.grant.holder, r.workspaceId, r.afterDestroy])).toEqual([
      [`${P}-${A}`, A, undefined],
      [`${P}-${B}`, B, undefined],
    ]);
    expect(plan.release[0].detail).toContain('closed');
    expect(plan.release[1].detail).toContain('not found');
  });

  it('waits within the grace period for a holder not found (the API reserves before it starts the workspace), not for a closed one', () => {
    const plan = planReconcile(observe({ grants: [grant(A, { grantedAt: ago(59) })] }));
    expect(plan.release).toEqual([]);
    expect(plan.waiting[0].detail).toMatch(/within the grace period of 60 s/);
    const closed = planReconcile(observe({ grants: [grant(A, { grantedAt: NOW })], holders: { [`${P}-${A}`]: 'closed' } }));
    expect(closed.release.map((r) => r.workspaceId)).toEqual([A]);
  });

  it('releases at once with grace 0', () => {
    const plan = planReconcile(observe({ graceSeconds: 0, grants: [grant(A, { grantedAt: NOW })] }));
    expect(plan.release).toHaveLength(1);
  });

  it('never releases while the node does not answer, or is not configured (the VM cannot be confirmed gone)', () => {
    const plan = planReconcile(observe({ grants: [grant(A), grant(B, { node: 'gone' })], nodes: { vmm1: null } }));
    expect(plan.release).toEqual([]);
    expect(plan.waiting.map((w) => w.detail)).toEqual([expect.stringContaining('vmm1 did not answer'), expect.stringContaining('gone did not answer')]);
    expect(plan.unreachable).toEqual(['vmm1']);
    expect(plan.counts['node-unreachable']).toBe(1);
  });

  it('releases only after its VM, which is destroyed first once past its own grace period', () => {
    // The holder was terminated; its VM still runs and is seen unowned for the first time.
    const first = planReconcile(observe({ grants: [grant(A)], nodes: { vmm1: [A] } }));
    expect(first.release).toEqual([]);
    expect(first.waiting[0].detail).toMatch(/still runs on vmm1/);
    expect(first.unowned).toMatchObject([{ node: 'vmm1', vm: A, firstSeen: NOW, newlySeen: true }]);
    expect(first.destroy).toEqual([]);
    expect(first.counts['unowned-vm-reported']).toBe(1);
    // Later, past the grace: destroy, then release in the same run.
    const later = planReconcile(observe({ grants: [grant(A)], nodes: { vmm1: [A] }, firstSeen: { [`vmm1/${A}`]: ago(61) } }));
    expect(later.destroy.map((d) => d.vm)).toEqual([A]);
    expect(later.release.map((r) => r.afterDestroy)).toEqual([`vmm1/${A}`]);
    expect(later.counts['unowned-vm-reported']).toBe(0); // reported when first seen, not again
  });

  it('keeps a gang member grant whose holder is not started yet while the gang is open; releases it when the gang is gone too', () => {
    const g = grant(A, { gang: `${P}-grp-000000000001` });
    const open = planReconcile(observe({ grants: [g], holders: { [`${P}-grp-000000000001`]: 'open' } }));
    expect(open.release).toEqual([]);
    expect(open.waiting).toEqual([]);
    const closedHolder = planReconcile(observe({ grants: [g], holders: { [`${P}-${A}`]: 'closed', [`${P}-grp-000000000001`]: 'open' } }));
    expect(closedHolder.release).toHaveLength(1);
    const gangGone = planReconcile(observe({ grants: [g], holders: { [`${P}-grp-000000000001`]: 'closed' } }));
    expect(gangGone.release).toHaveLength(1);
  });
});

describe('unowned VMs', () => {
  it('ignores VMs that an open workspace workflow of any installation owns, and names that are not workspace ids', () => {
    const plan = planReconcile(observe({ nodes: { vmm1: [A, 'demo', 'ws-XYZ'] }, openWorkspaceWorkflowIds: [`tother-${A}`] }));
    expect(plan.unowned).toEqual([]);
  });

  it('reports at once and destroys after the grace period, carrying first-seen times across runs', () => {
    const first = planReconcile(observe({ nodes: { vmm1: [B] } }));
    expect(first.unowned).toEqual([{ node: 'vmm1', vm: B, firstSeen: NOW, destroyAfter: new Date(Date.parse(NOW) + 60_000).toISOString(), newlySeen: true }]);
    expect(first.destroy).toEqual([]);
    expect(first.firstSeen).toEqual({ [`vmm1/${B}`]: NOW });
    const second = planReconcile(observe({ nodes: { vmm1: [B] }, firstSeen: { [`vmm1/${B}`]: ago(30) } }));
    expect(second.destroy).toEqual([]);
    const third = planReconcile(observe({ nodes: { vmm1: [B] }, firstSeen: { [`vmm1/${B}`]: ago(60) } }));
    expect(third.destroy.map((d) => d.vm)).toEqual([B]);
  });

  it('destroys in the first run with grace 0', () => {
    const plan = planReconcile(observe({ graceSeconds: 0, nodes: { vmm1: [B] } }));
    expect(plan.destroy.map((d) => d.vm)).toEqual([B]);
    expect(plan.counts['unowned-vm-reported']).toBe(1);
  });

  it('forgets a VM that is gone or owned again, and keeps what it knew about a node that did not answer', () => {
    const plan = planReconcile(
      observe({
        nodes: { vmm1: [A], vmm2: null },
        openWorkspaceWorkflowIds: [`${P}-${A}`],
        firstSeen: { [`vmm1/${A}`]: ago(10), [`vmm1/${C}`]: ago(10), [`vmm2/${B}`]: ago(10) },
      }),
    );
    expect(plan.firstSeen).toEqual({ [`vmm2/${B}`]: ago(10) });
    expect(plan.destroy).toEqual([]);
  });
});

describe('vanished VMs', () => {
  const ws = (over: object) => ({ workflowId: `${P}-${A}`, workspaceId: A, state: 'Running' as const, task: null, node: 'vmm1', ...over });

  it('finds a Running or Paused workspace at rest whose VM its node does not run', () => {
    const plan = planReconcile(observe({ workspaces: [ws({}), ws({ workflowId: `${P}-${B}`, workspaceId: B, state: 'Paused' })], nodes: { vmm1: [] } }));
    expect(plan.vanished).toEqual([
      { workflowId: `${P}-${A}`, workspaceId: A, node: 'vmm1', reason: 'VM vanished from vmm1: found by the reconciler' },
      { workflowId: `${P}-${B}`, workspaceId: B, node: 'vmm1', reason: vanishedReason('vmm1') },
    ]);
    expect(plan.counts['vm-vanished']).toBe(2);
  });

  it('leaves alone a workspace whose VM runs, that is busy, not up, or whose node did not answer', () => {
    const plan = planReconcile(
      observe({
        workspaces: [ws({}), ws({ workspaceId: B, task: 'shutting-down' }), ws({ workspaceId: C, state: 'Propagated' }), ws({ node: 'vmm2' })],
        nodes: { vmm1: [A], vmm2: null },
      }),
    );
    expect(plan.vanished).toEqual([]);
  });
});

describe('drift listing', () => {
  it('adds counts kind by kind and keeps the last report', () => {
    expect(addCounts({ 'vm-vanished': 1 }, { 'vm-vanished': 2, 'node-unreachable': 1 })).toEqual({ ...zeroCounts(), 'vm-vanished': 3, 'node-unreachable': 1 });
    const report = { runId: 'r1', finishedAt: NOW, counts: { ...zeroCounts(), 'orphan-grant-released': 1 } } as DriftReport;
    const one = withReport(emptyListing(), report);
    const two = withReport(one, { ...report, runId: 'r2' });
    expect(two).toMatchObject({ runs: 2, updatedAt: NOW, totals: { 'orphan-grant-released': 2, 'unowned-vm-destroyed': 0 }, last: { runId: 'r2' } });
  });
});
