import { runningTimeLeftSeconds, viewFromMemo, viewMemo } from '../../src/domain/view-memo';
import type { WorkspaceDescription } from '../../src/domain/workspace';

const d: WorkspaceDescription = {
  id: 'ws-0123456789ab',
  owner: '/O=Grid/OU=test/CN=alice',
  state: 'Running',
  task: null,
  image: 'sample',
  memoryMiB: 128,
  vcpus: 1,
  node: 'vmm1',
  obtainedIp: '10.213.0.84',
  createdAt: '2026-12-01T00:00:00.000Z',
  durationSeconds: 600,
  runningTimeLeftSeconds: 600,
  shutdownMechanism: 'Normal',
  notices: ['early shutdown-save signal ignored: not now'],
};

describe('the view a workspace keeps in its memo', () => {
  it('round-trips through JSON to the description, with the time left computed at read time', () => {
    const memo = JSON.parse(JSON.stringify(viewMemo(d, { leftMs: 600_000, runningSince: 1_000_000 })));
    expect(memo.view).not.toHaveProperty('runningTimeLeftSeconds');
    expect(viewFromMemo(memo, 1_000_000 + 150_400)).toEqual({ ...d, runningTimeLeftSeconds: 450 });
  });

  it('counts down only while the VM exists, and never below zero', () => {
    expect(runningTimeLeftSeconds({ leftMs: 300_000 }, 9e12)).toBe(300);
    expect(runningTimeLeftSeconds({ leftMs: 300_000, runningSince: 0 }, 299_499)).toBe(1);
    expect(runningTimeLeftSeconds({ leftMs: 300_000, runningSince: 0 }, 900_000)).toBe(0);
    expect(viewMemo(d, { leftMs: 5, runningSince: undefined }).clock).toEqual({ leftMs: 5 });
  });

  it('is null for anything that is not a view of this version (the API then queries the workflow)', () => {
    for (const value of [undefined, null, 'x', {}, { v: 2, view: d, clock: { leftMs: 1 } }, { v: 1, view: d }, { v: 1, view: { ...d, owner: 7 }, clock: { leftMs: 1 } }]) {
      expect(viewFromMemo(value, 0)).toBeNull();
    }
  });
});
