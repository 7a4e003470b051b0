/** The pilot's watch on its parent (`run --end-if-orphaned`), over an injected parent pid. */
import { watchParent } from '../../src/pilot/parent-watch';

describe('watchParent', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  it('calls back once, with the parent it started under, when the parent pid changes', () => {
    let parent = 4242;
    const seen: number[] = [];
    const stop = watchParent((p) => seen.push(p), 1000, () => parent);
    expect(stop).not.toBeNull();
    jest.advanceTimersByTime(5000);
    expect(seen).toEqual([]);
    parent = 1; // adopted by init
    jest.advanceTimersByTime(1000);
    expect(seen).toEqual([4242]);
    parent = 77; // a subreaper later: no second call
    jest.advanceTimersByTime(5000);
    expect(seen).toEqual([4242]);
  });

  it('stops when asked: a later change calls nothing', () => {
    let parent = 500;
    const seen: number[] = [];
    watchParent((p) => seen.push(p), 1000, () => parent)!();
    parent = 1;
    jest.advanceTimersByTime(5000);
    expect(seen).toEqual([]);
  });

  it('does not watch a process that starts without a parent (pid 1)', () => {
    const seen: number[] = [];
    expect(watchParent((p) => seen.push(p), 1000, () => 1)).toBeNull();
    jest.advanceTimersByTime(5000);
    expect(seen).toEqual([]);
  });
});
