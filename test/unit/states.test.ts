import { ALLOWED_OPERATIONS, isOperationAllowed, refusalMessage, WORKSPACE_OPERATIONS, WORKSPACE_STATES } from '../../src/domain/states';

describe('the workspace state table', () => {
  it('has exactly the nine states of seed 002', () => {
    expect([...WORKSPACE_STATES].sort()).toEqual(
      ['Cancelled', 'Corrupted', 'Paused', 'Propagated', 'Running', 'StagedOut', 'TransportReady', 'Unpropagated', 'Unstaged'].sort(),
    );
    expect(Object.keys(ALLOWED_OPERATIONS).sort()).toEqual([...WORKSPACE_STATES].sort());
  });

  it('allows destroy in every state but Cancelled, including Corrupted', () => {
    for (const s of WORKSPACE_STATES) expect(isOperationAllowed(s, 'destroy')).toBe(s !== 'Cancelled');
  });

  it('allows nothing once Cancelled', () => {
    for (const op of WORKSPACE_OPERATIONS) expect(isOperationAllowed('Cancelled', op)).toBe(false);
  });

  it('names the current state and what is allowed when refusing', () => {
    expect(refusalMessage('Paused', 'pause')).toBe('cannot pause a workspace in state Paused; allowed now: unpause, shutdown, shutdown-save, destroy');
    expect(refusalMessage('Cancelled', 'destroy')).toBe('cannot destroy a workspace in state Cancelled');
  });
});
