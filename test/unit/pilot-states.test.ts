/**
 * The pilot's state machine: the normal path, early-unreserving on SIGTERM from each state, failures,
 * refused transitions, the SIGTERM plan of each state, the grace split and the stale-message rule.
 */
import fc from 'fast-check';
import {
  canTake,
  earlyUnreservingVerdict,
  graceSplit,
  isStaleNotification,
  nextPilotStatus,
  PILOT_STATES,
  PILOT_TRANSITIONS,
  PilotTransitionError,
  SIGTERM_PLANS,
  type PilotInput,
  type PilotStatus,
} from '../../src/domain/pilot-states';

const t = (s: number) => new Date(Date.parse('2026-12-01T17:00:00.000Z') + s * 1000).toISOString();

/** Runs inputs from `queued`, one second apart. */
function run(...inputs: PilotInput[]): PilotStatus {
  let s: PilotStatus = { state: 'queued', since: t(0) };
  inputs.forEach((input, i) => (s = nextPilotStatus(s, input, t(i + 1))));
  return s;
}

const INPUTS: PilotInput['kind'][] = ['start', 'reserved', 'slot-end', 'sigterm', 'unreserved', 'failed'];
const input = (kind: PilotInput['kind']): PilotInput => (kind === 'failed' ? { kind, detail: 'x' } : ({ kind } as PilotInput));

describe('transitions', () => {
  it('runs the normal path: queued → reserving → reserved → unreserving → ended(completed)', () => {
    let s: PilotStatus = { state: 'queued', since: t(0) };
    const seen: string[] = [s.state];
    for (const [i, kind] of (['start', 'reserved', 'slot-end', 'unreserved'] as const).entries()) {
      s = nextPilotStatus(s, { kind }, t(i + 1));
      seen.push(s.state);
    }
    expect(seen).toEqual(['queued', 'reserving', 'reserved', 'unreserving', 'ended']);
    expect(s).toEqual({ state: 'ended', since: t(4), endReason: 'completed' });
  });

  it('early-unreserves on SIGTERM while reserving or reserved, and ends early-unreserved', () => {
    expect(run({ kind: 'start' }, { kind: 'reserved' }, { kind: 'sigterm' })).toMatchObject({ state: 'early-unreserving', since: t(3), terminating: true });
    expect(run({ kind: 'start' }, { kind: 'reserved' }, { kind: 'sigterm' }, { kind: 'unreserved' })).toMatchObject({ state: 'ended', endReason: 'early-unreserved' });
    expect(run({ kind: 'start' }, { kind: 'sigterm' }, { kind: 'unreserved' })).toMatchObject({ state: 'ended', endReason: 'early-unreserved' });
  });

  it('ends cancelled on SIGTERM while queued (nothing was changed)', () => {
    expect(run({ kind: 'sigterm' })).toEqual({ state: 'ended', since: t(1), endReason: 'cancelled', terminating: true });
  });

  it('keeps the state and its clock on a SIGTERM while already unreserving, but marks it terminating', () => {
    const s = run({ kind: 'start' }, { kind: 'reserved' }, { kind: 'slot-end' }, { kind: 'sigterm' });
    expect(s).toEqual({ state: 'unreserving', since: t(3), terminating: true });
    const e = run({ kind: 'start' }, { kind: 'reserved' }, { kind: 'sigterm' }, { kind: 'sigterm' });
    expect(e).toMatchObject({ state: 'early-unreserving', since: t(3) });
  });

  it('puts things back after a failed reserve and ends error-reserving, keeping the first failure', () => {
    const s = run({ kind: 'start' }, { kind: 'failed', detail: 'dom0 stuck at 480 MiB' });
    expect(s).toMatchObject({ state: 'unreserving', failedIn: 'reserving', detail: 'dom0 stuck at 480 MiB' });
    expect(nextPilotStatus(s, { kind: 'unreserved' }, t(9))).toMatchObject({ state: 'ended', endReason: 'error-reserving', detail: 'dom0 stuck at 480 MiB' });
    expect(nextPilotStatus(s, { kind: 'failed', detail: 'restore failed too' }, t(9))).toMatchObject({ state: 'ended', endReason: 'error-unreserving', failedIn: 'reserving', detail: 'restore failed too' });
    expect(run({ kind: 'failed', detail: 'lock' })).toMatchObject({ state: 'ended', endReason: 'error-reserving' });
    expect(run({ kind: 'start' }, { kind: 'reserved' }, { kind: 'failed', detail: 'x' }, { kind: 'unreserved' })).toMatchObject({ endReason: 'error-reserved' });
  });

  it('refuses what the table does not allow, naming the state and the input', () => {
    expect(() => run({ kind: 'reserved' })).toThrow(new PilotTransitionError('queued', 'reserved'));
    expect(() => run({ kind: 'start' }, { kind: 'slot-end' })).toThrow('pilot in state reserving cannot take slot-end');
    expect(() => run({ kind: 'sigterm' }, { kind: 'sigterm' })).toThrow(PilotTransitionError);
    for (const kind of INPUTS) expect(canTake('ended', kind)).toBe(false);
  });

  it('property: any input sequence either follows the table or is refused; ended is final and every path can end', () => {
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...INPUTS), { maxLength: 12 }), (kinds) => {
        let s: PilotStatus = { state: 'queued', since: t(0) };
        for (const [i, kind] of kinds.entries()) {
          if (!canTake(s.state, kind)) {
            expect(() => nextPilotStatus(s, input(kind), t(i + 1))).toThrow(PilotTransitionError);
            continue;
          }
          const next = nextPilotStatus(s, input(kind), t(i + 1));
          expect(next.state).toBe(PILOT_TRANSITIONS[s.state][kind]!.state);
          expect(next.state === 'ended').toBe(next.endReason !== undefined);
          if (s.terminating) expect(next.terminating).toBe(true);
          s = next;
        }
        // From wherever it is, SIGTERM then `unreserved` (or SIGTERM alone) ends the pilot.
        if (s.state !== 'ended') {
          s = nextPilotStatus(s, { kind: 'sigterm' }, t(99));
          if (s.state !== 'ended') s = nextPilotStatus(s, { kind: 'unreserved' }, t(100));
        }
        expect(s.state).toBe('ended');
      }),
      { numRuns: 500 },
    );
  });
});

describe('SIGTERM plans', () => {
  it('has one for every state', () => {
    expect(Object.keys(SIGTERM_PLANS).sort()).toEqual([...PILOT_STATES].sort());
  });

  it('notifies and waits for vws only while reserved; always restores memory once anything was reserved', () => {
    expect(SIGTERM_PLANS.reserved).toEqual({ notify: 'early-unreserving', waitForVws: true, destroyLeftovers: true, restoreMemory: true });
    expect(SIGTERM_PLANS.reserving).toMatchObject({ notify: 'early-unreserving', waitForVws: false, restoreMemory: true });
    expect(SIGTERM_PLANS.unreserving).toMatchObject({ waitForVws: false, destroyLeftovers: true, restoreMemory: true });
    expect(SIGTERM_PLANS['early-unreserving']).toMatchObject({ waitForVws: false, destroyLeftovers: true, restoreMemory: true });
    expect(SIGTERM_PLANS.queued).toEqual({ waitForVws: false, destroyLeftovers: false, restoreMemory: false });
    expect(SIGTERM_PLANS.ended).toEqual({ waitForVws: false, destroyLeftovers: false, restoreMemory: false });
    for (const s of PILOT_STATES) if (SIGTERM_PLANS[s].waitForVws) expect(SIGTERM_PLANS[s].notify).toBe('early-unreserving');
  });
});

describe('grace split', () => {
  it("gives vws graceRatio of the batch system's grace and the pilot the rest", () => {
    expect(graceSplit(30)).toEqual({ vwsMs: 15_000, pilotMs: 15_000 });
    expect(graceSplit(30, 0.8)).toEqual({ vwsMs: 24_000, pilotMs: 6_000 });
    expect(graceSplit(8, 0)).toEqual({ vwsMs: 0, pilotMs: 8_000 });
    expect(graceSplit(0)).toEqual({ vwsMs: 0, pilotMs: 0 });
  });

  it("shrinks vws's share first so the pilot keeps what it needs", () => {
    expect(graceSplit(30, 0.8, 10_000)).toEqual({ vwsMs: 20_000, pilotMs: 10_000 });
    expect(graceSplit(5, 0.5, 8_000)).toEqual({ vwsMs: 0, pilotMs: 5_000 });
  });

  it('refuses bad arguments naming them', () => {
    expect(() => graceSplit(-1)).toThrow(/graceSeconds/);
    expect(() => graceSplit(30, 1)).toThrow(/graceRatio/);
    expect(() => graceSplit(30, Number.NaN)).toThrow(/graceRatio/);
    expect(() => graceSplit(30, 0.5, -5)).toThrow(/pilotNeedsMs/);
  });

  it('property: the two shares add up to the grace and never go negative', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 3600 }), fc.double({ min: 0, max: 0.999, noNaN: true }), fc.integer({ min: 0, max: 100_000 }), (g, r, need) => {
        const { vwsMs, pilotMs } = graceSplit(g, r, need);
        expect(vwsMs + pilotMs).toBe(g * 1000);
        expect(vwsMs).toBeGreaterThanOrEqual(0);
        expect(pilotMs).toBeGreaterThanOrEqual(Math.min(need, g * 1000));
      }),
    );
  });
});

describe('stale-message rule', () => {
  it('ignores a notification written before the current state was entered', () => {
    expect(isStaleNotification(t(9), t(10))).toBe(true);
    expect(isStaleNotification(t(10), t(10))).toBe(false);
    expect(isStaleNotification(t(11), t(10))).toBe(false);
  });

  it('trashes on a fresh early-unreserving, cancels without trash on a late one, ignores a stale one', () => {
    // State entered at t(10); grace 8 s plus 2 s slack.
    expect(earlyUnreservingVerdict(t(20), t(21), t(10), 8)).toBe('trash');
    expect(earlyUnreservingVerdict(t(20), t(30), t(10), 8)).toBe('trash');
    expect(earlyUnreservingVerdict(t(20), t(31), t(10), 8)).toBe('cancel-without-trash');
    expect(earlyUnreservingVerdict(t(5), t(6), t(10), 8)).toBe('ignore');
  });
});
