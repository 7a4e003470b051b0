/**
 * `vws-pilot run`: the batch job that holds a node's time for vws (seed 003; Nimbus's ReserveSlot,
 * research/anchors-mission.md §1.3), driven by the state machine in `src/domain/pilot-states.ts`:
 *
 *   queued ─lock─▶ reserving ─memory at target─▶ reserved ─(sleep until end − margin)─▶ unreserving ─▶ ended
 *                                                   └─SIGTERM/SIGUSR1─▶ early-unreserving ─▶ ended
 *
 * Reserved: memory is set to an absolute target and polled until reached, then vws is told `reserved`
 * in the background (bounded retries: vws being down never holds the node). Unreserving: tell vws, destroy
 * what vws left, restore memory exactly, release the lock. On SIGTERM (scancel, preemption, node
 * shutdown) or SIGUSR1 (Slurm's `--signal=B:USR1@N` before the limit): the state's plan
 * ({@link SIGTERM_PLANS}); from reserved, notify `early-unreserving`, give vws its share of the grace
 * period ({@link graceSplit}) to trash its VMs, then destroy what is left and restore memory, all before
 * the batch system's SIGKILL.
 */
import { nextPilotStatus, SIGTERM_PLANS, graceSplit, type PilotInput, type PilotStatus } from '../domain/pilot-states';
import { exitCodeFor, PILOT_EXIT } from './exit-codes';
import { acquirePilotLock, freshResetIntentAge, PilotLockHeld, resetIntentFile, type PilotLock } from './lock';
import type { Logger } from './logger';
import { destroyAllVms, type NodeControl } from './node-control';
import type { NotifyOutcome, PilotNotifier } from './notifier';

/** Everything `run` is told (validated by the CLI). */
export interface PilotRunSettings {
  slotId: string;
  node: string;
  /** Memory reserved for VMs, MiB. */
  reserveMiB: number;
  /** The slot's end (ms since the epoch). */
  endAt: number;
  /** The pilot starts unreserving this long before `endAt`, ms. */
  marginMs: number;
  /** The batch system's grace between SIGTERM and SIGKILL (Slurm KillWait), s. */
  graceSeconds: number;
  /** Share of the grace given to vws (Nimbus's earlywaitratio). */
  graceRatio: number;
  /** What the pilot keeps of the grace for itself at least, ms. */
  pilotNeedsMs: number;
  lockFile: string;
  /** Longest the pilot tries to deliver `reserved`, ms (never past the slot's end). */
  notifyReservedMs: number;
  /** Longest a memory change may take to reach its target, ms. */
  memoryTimeoutMs: number;
}

/** What `run` works with. */
export interface PilotRunDeps {
  control: NodeControl;
  notifier: PilotNotifier;
  log: Logger;
  /** Subscribes to the signals that end a slot early; the pilot calls it once. */
  onTerminate: (handler: (signal: string) => void) => void;
}

/** How a run ended. */
export interface PilotRunResult {
  status: PilotStatus;
  exitCode: number;
}

interface Termination {
  signal: string;
  at: number;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));

/** Sleeps until `t` (ms since the epoch) in timer chunks of at most an hour (wall-clock jumps are caught up). */
async function sleepUntil(t: number, stop: Promise<unknown>): Promise<'time' | 'stopped'> {
  let stopped = false;
  void stop.then(() => (stopped = true));
  for (;;) {
    const remaining = t - Date.now();
    if (remaining <= 0) return 'time';
    let timer: NodeJS.Timeout | undefined;
    const r = await Promise.race([new Promise<'chunk'>((res) => (timer = setTimeout(() => res('chunk'), Math.min(remaining, 3_600_000)))), stop.then(() => 'stopped' as const)]);
    clearTimeout(timer);
    if (r === 'stopped' || stopped) return 'stopped';
  }
}

/** Resolves with `p`'s value, or `undefined` once `deadline` has passed. */
async function until<T>(p: Promise<T>, deadline: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), Math.max(0, deadline - Date.now()))));
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs one pilot to its end; never throws for what happens on the node (it ends in a state instead). */
export async function runPilot(s: PilotRunSettings, deps: PilotRunDeps): Promise<PilotRunResult> {
  const { control, notifier, log } = deps;
  const startedAt = Date.now();
  let status: PilotStatus = { state: 'queued', since: new Date(startedAt).toISOString() };
  let lock: PilotLock | undefined;
  let termination: Termination | undefined;
  /** Stops the retries of the `reserved` notification once a later message is sent. */
  let earlier: AbortController | undefined;
  let onTerm!: (t: Termination) => void;
  const terminated = new Promise<Termination>((r) => (onTerm = r));

  const step = (input: PilotInput, fields: Record<string, unknown> = {}) => {
    const from = status.state;
    status = nextPilotStatus(status, input, new Date().toISOString());
    log.info({ step: 'state', from, to: status.state, input: input.kind, ...(status.endReason ? { endReason: status.endReason } : {}), ...fields }, `pilot ${from} -> ${status.state}`);
  };

  deps.onTerminate((signal) => {
    const at = Date.now();
    if (termination) {
      log.warn({ step: 'signal', signal, state: status.state }, `${signal} again: already handing the node back`);
      return;
    }
    termination = { signal, at };
    log.warn({ step: 'signal', signal, state: status.state, graceSeconds: s.graceSeconds }, `${signal} in state ${status.state}: handing the node back within ${s.graceSeconds} s`);
    onTerm(termination);
  });

  const finish = (): PilotRunResult => {
    lock?.release();
    const exitCode = status.endReason ? exitCodeFor(status.endReason) : PILOT_EXIT.internal;
    log.info(
      {
        step: 'exit',
        endReason: status.endReason,
        exitCode,
        lockReleased: lock ? !lock.stillHeld() : null,
        totalMs: Date.now() - startedAt,
        ...(termination ? { signal: termination.signal, sinceSignalMs: Date.now() - termination.at } : {}),
      },
      `pilot ended: ${status.endReason}`,
    );
    return { status, exitCode };
  };

  // queued: take the node lock; a live pilot holding it means this one touches nothing. While vws resets
  // the node after an earlier pilot (a fresh reset intent), give the lock back and wait for it to finish.
  try {
    const intent = resetIntentFile(s.lockFile);
    for (;;) {
      lock = await acquirePilotLock(s.lockFile, { slotId: s.slotId });
      const age = freshResetIntentAge(intent);
      if (age === null) break;
      lock.release();
      lock = undefined;
      log.info({ step: 'lock', resetIntent: intent, ageMs: Math.round(age) }, 'vws is resetting this node after an earlier pilot: waiting for it');
      while (!termination && freshResetIntentAge(intent) !== null) await until(terminated, Date.now() + 250);
      if (termination) break;
    }
  } catch (e) {
    if (e instanceof PilotLockHeld) {
      log.error({ step: 'lock', lockFile: s.lockFile, holder: { pid: e.holder.pid, slotId: e.holder.slotId, at: e.holder.at } }, `refusing to run: ${e.message}`);
      status = nextPilotStatus(status, { kind: 'failed', detail: e.message }, new Date().toISOString());
      return { status, exitCode: PILOT_EXIT.lockHeld };
    }
    log.error({ step: 'lock', lockFile: s.lockFile, err: (e as Error).message }, 'could not take the node lock');
    step({ kind: 'failed', detail: (e as Error).message });
    return finish();
  }
  log.info({ step: 'lock', lockFile: s.lockFile, ms: Date.now() - startedAt }, 'node lock taken');
  if (termination) {
    step({ kind: 'sigterm' });
    return finish();
  }

  // reserving: absolute target, polled until reached.
  step({ kind: 'start' }, { reserveMiB: s.reserveMiB, configuredMiB: control.memory.configuredMiB });
  const reserving = control.memory.reserve(s.reserveMiB, { timeoutMs: s.memoryTimeoutMs });
  const first = await Promise.race([reserving.then((r) => ({ kind: 'reserved' as const, r }), (e: Error) => ({ kind: 'failed' as const, e })), terminated.then(() => ({ kind: 'term' as const }))]);
  if (first.kind === 'term') {
    // Let the memory change in flight settle briefly, so the restore below is the last word.
    await until(reserving.catch(() => undefined), Date.now() + 2_000);
    return earlyUnreserve();
  }
  if (first.kind === 'failed') {
    log.error({ step: 'reserve', err: first.e.message }, 'reserving memory failed: putting it back');
    step({ kind: 'failed', detail: first.e.message });
    void notifyBounded('error', Date.now() + 5_000, { detail: `reserving failed: ${first.e.message}` });
    return unreserve();
  }
  const reservedAt = Date.now();
  log.info({ step: 'reserve', targetMiB: first.r.targetMiB, reachedMiB: first.r.reachedMiB, elapsedMs: first.r.elapsedMs, polls: first.r.polls }, `memory reserved: host at ${first.r.reachedMiB} MiB`);
  step({ kind: 'reserved' });
  if (termination) return earlyUnreserve();

  // reserved: tell vws in the background; the slot's time runs whether or not vws hears it.
  const horizon = s.endAt - s.marginMs;
  earlier = new AbortController();
  void notifyBounded('reserved', Math.min(reservedAt + s.notifyReservedMs, horizon), { memoryMiB: s.reserveMiB }, earlier.signal).then((o) => {
    if (o.result === 'delivered') log.info({ step: 'notified', event: 'reserved', latencyMs: Date.now() - reservedAt }, 'vws knows the slot is reserved');
  });
  log.info({ step: 'sleep', until: new Date(horizon).toISOString(), end: new Date(s.endAt).toISOString(), ms: horizon - Date.now() }, 'holding the node until the slot ends');
  const woke = await sleepUntil(horizon, terminated);
  if (woke === 'stopped') return earlyUnreserve();
  step({ kind: 'slot-end' });
  return unreserve();

  /** Notifies and logs the outcome; never rejects. */
  async function notifyBounded(event: 'reserved' | 'unreserving' | 'early-unreserving' | 'error', deadline: number, fields: { memoryMiB?: number; detail?: string } = {}, stop?: AbortSignal): Promise<NotifyOutcome> {
    const sentAt = Date.now();
    let outcome: NotifyOutcome;
    // A later message stops the retries of an earlier one: vws must never get `reserved` after `unreserving`.
    if (!stop) earlier?.abort();
    try {
      outcome = await notifier.notify(event, deadline, fields, stop);
    } catch (e) {
      outcome = { event, result: 'gave-up', attempts: 0, elapsedMs: Date.now() - sentAt, last: (e as Error).message, at: new Date(sentAt).toISOString(), via: 'http' };
    }
    const level = outcome.result === 'delivered' ? 'info' : 'warn';
    log[level]({ step: 'notify', event, result: outcome.result, via: outcome.via, attempts: outcome.attempts, elapsedMs: outcome.elapsedMs, last: outcome.last, messageAt: outcome.at }, `notification ${event}: ${outcome.result}`);
    return outcome;
  }

  /** Destroys leftovers and restores memory by `deadline`; false (logged) if either did not happen. */
  async function handBack(deadline: number, plan: { destroyLeftovers: boolean; restoreMemory: boolean }): Promise<boolean> {
    let ok = true;
    if (plan.destroyLeftovers) {
      const t = Date.now();
      const report = await until(
        destroyAllVms(control.driver).catch((e: Error) => ({ destroyed: [], failed: [{ name: '(list)', error: e.message }] })),
        deadline,
      );
      if (!report) {
        ok = false;
        log.error({ step: 'destroy', ms: Date.now() - t }, 'destroying leftover VMs did not finish in time');
      } else {
        if (report.failed.length) ok = false;
        log[report.failed.length ? 'error' : 'info']({ step: 'destroy', destroyed: report.destroyed, failed: report.failed, ms: Date.now() - t }, `leftover VMs destroyed: ${report.destroyed.length}`);
      }
    }
    if (plan.restoreMemory) {
      const t = Date.now();
      try {
        const r = await control.memory.restore({ timeoutMs: Math.max(500, deadline - Date.now()) });
        log.info({ step: 'restore', targetMiB: r.targetMiB, reachedMiB: r.reachedMiB, elapsedMs: r.elapsedMs, polls: r.polls }, `memory restored to ${r.reachedMiB} MiB`);
      } catch (e) {
        ok = false;
        log.error({ step: 'restore', err: (e as Error).message, ms: Date.now() - t }, 'restoring memory failed');
      }
    }
    return ok;
  }

  /** The slot's normal end (or a failure): tell vws, destroy what it left, restore memory. */
  async function unreserve(): Promise<PilotRunResult> {
    // The margin is the budget; a signal meanwhile shortens it to the grace period.
    const marginDeadline = Math.max(s.endAt, Date.now() + s.marginMs);
    const notifyDeadline = Date.now() + Math.min(5_000, s.marginMs / 2);
    await Promise.race([notifyBounded('unreserving', notifyDeadline), terminated]);
    const deadline = termination ? Math.min(marginDeadline, termination.at + s.graceSeconds * 1000 - 250) : marginDeadline;
    const ok = await handBack(deadline, { destroyLeftovers: true, restoreMemory: true });
    step(ok ? { kind: 'unreserved' } : { kind: 'failed', detail: 'handing the node back failed' });
    return finish();
  }

  /** SIGTERM/SIGUSR1: the plan of the state it arrived in, within the batch system's grace period. */
  async function earlyUnreserve(): Promise<PilotRunResult> {
    const t = termination!;
    const plan = SIGTERM_PLANS[status.state];
    step({ kind: 'sigterm' });
    if (status.state === 'ended') return finish();
    const graceMs = s.graceSeconds * 1000;
    const split = graceSplit(s.graceSeconds, s.graceRatio, s.pilotNeedsMs);
    // Finish a little before SIGKILL, so the last log line and the lock release happen.
    const deadline = t.at + graceMs - Math.min(250, graceMs / 10);
    const vwsUntil = t.at + split.vwsMs;
    log.info({ step: 'grace', vwsMs: split.vwsMs, pilotMs: split.pilotMs, plan }, 'sharing the grace period');
    const notified = plan.notify ? notifyBounded(plan.notify, vwsUntil) : Promise.resolve(undefined);
    if (plan.waitForVws) {
      // vws's share: over as soon as vws was told and its VMs are gone, at the latest at its end.
      let settled = false;
      void notified.then(() => (settled = true));
      for (;;) {
        if (Date.now() >= vwsUntil) break;
        if (settled) {
          const left = await until(control.driver.list().catch(() => ['?']), vwsUntil);
          if (left && left.length === 0) break;
        }
        // Wake on the notification's outcome too: then the VM check above runs at once.
        await (settled ? sleep(Math.min(250, vwsUntil - Date.now())) : until(notified, Math.min(vwsUntil, Date.now() + 250)));
      }
      log.info({ step: 'grace', waitedMs: Date.now() - t.at }, "vws's share of the grace period is over");
    } else {
      await until(notified, vwsUntil);
    }
    const ok = await handBack(deadline, plan);
    step(ok ? { kind: 'unreserved' } : { kind: 'failed', detail: 'handing the node back failed' });
    return finish();
  }
}
