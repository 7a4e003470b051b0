import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { stateTableMarkdown } from '../../src/domain/state-table-doc';
import { refusalReason } from '../../src/domain/states';

describe('the state table', () => {
  it('is what docs/states.md documents (regenerate with npm run docs:states)', () => {
    expect(readFileSync(join(__dirname, '../../docs/states.md'), 'utf8')).toBe(stateTableMarkdown());
  });

  it('refuses naming the state, refuses while busy, and always lets destroy through', () => {
    expect(refusalReason({ state: 'Propagated', task: null }, 'pause')).toBe('cannot pause a workspace in state Propagated; allowed now: start, shutdown-save, destroy');
    expect(refusalReason({ state: 'Running', task: 'rebooting' }, 'pause')).toContain('while it is rebooting');
    expect(refusalReason({ state: 'Running', task: 'rebooting' }, 'destroy')).toBeNull();
    expect(refusalReason({ state: 'Corrupted', task: null }, 'destroy')).toBeNull();
    expect(refusalReason({ state: 'StagedOut', task: null, hasSavedState: false }, 'start')).toContain('only a workspace serialized');
    expect(refusalReason({ state: 'StagedOut', task: null, hasSavedState: true }, 'start')).toBeNull();
    expect(refusalReason({ state: 'Cancelled', task: null }, 'destroy')).toBe('cannot destroy a workspace in state Cancelled');
  });
});
