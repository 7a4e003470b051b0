/**
 * The pilot's state machine (Nimbus 2.10.1 `workspacepilot.py` ReserveSlot, research/anchors-mission.md
 * §1.3): queued → reserving → reserved → unreserving → ended, with early-unreserving when the batch
 * system ends the job before its time (scancel/qdel, preemption, node shutdown: SIGTERM). Pure: the
 * pilot program drives it, the slot workflow reads the same rules (stale messages, grace split).
 */

/** Where a pilot is. `ended` carries why. */
export const PILOT_STATES = ['queued', 'reserving', 'reserved', 'unreserving', 'early-unreserving', 'ended'] as const;
/** One of {@link PILOT_STATES}. */
export type PilotState = (typeof PILOT_STATES)[number];

/** Why a pilot ended. */
export type PilotEndReason =
  /** Its slot ran to the end; VMs gone and memory restored. */
  | 'completed'
  /** SIGTERM before the end (cancel, preemption, shutdown); VMs gone and memory restored. */
  | 'early-unreserved'
  /** SIGTERM before it had reserved anything (still waiting for the node lock). */
  | 'cancelled'
  /** Reserving failed (memory not reached, lock not taken); what it had changed was put back. */
  | 'error-reserving'
  /** Something failed while reserved (the pilot handed the node back early); VMs gone, memory restored. */
  | 'error-reserved'
  /** Unreserving failed: memory not restored, or a VM could not be destroyed. Needs the node's reset. */
  | 'error-unreserving';

/** What happens to a pilot: its own progress, the slot's end, or a signal. */
export type PilotInput =
  /** The batch job started on the node and the pilot took the node lock. */
  | { kind: 'start' }
  /** Memory reached its target and vws was told. */
  | { kind: 'reserved' }
  /** The slot's time is up (the sleep until the horizon ended). */
  | { kind: 'slot-end' }
  /** SIGTERM (scancel/qdel, preemption, node shutdown). */
  | { kind: 'sigterm' }
  /** The VMs are gone and memory is back at its configured value. */
  | { kind: 'unreserved' }
  /** The step in progress failed. */
  | { kind: 'failed'; detail: string };

/** A pilot's state, when it was entered, and (ended) why. */
export interface PilotStatus {
  state: PilotState;
  /** When the state was entered (ISO); the stale-message rule compares notifications with it. */
  since: string;
  endReason?: PilotEndReason;
  /** The failure that led here, if any. */
  detail?: string;
  /** The state the first failure happened in (it decides the end reason). */
  failedIn?: PilotState;
  /** True once SIGTERM was seen: later steps skip what they can (no more waiting for vws). */
  terminating?: boolean;
}

/** A transition that is not in the table: names the state and the input. */
export class PilotTransitionError extends Error {
  override name = 'PilotTransitionError';
  constructor(
    readonly state: PilotState,
    readonly input: PilotInput['kind'],
  ) {
    super(`pilot in state ${state} cannot take ${input}`);
  }
}

type Target = { state: Exclude<PilotState, 'ended'> } | { state: 'ended'; endReason: PilotEndReason };

/**
 * Every allowed transition. A state missing an input refuses it: e.g. `reserved` in `queued` (nothing
 * was reserved), or anything in `ended`. SIGTERM in `unreserving` or `early-unreserving` keeps the state
 * (the pilot is already handing the node back; it only stops waiting for vws).
 */
export const PILOT_TRANSITIONS: Readonly<Record<PilotState, Partial<Record<PilotInput['kind'], Target>>>> = {
  queued: {
    start: { state: 'reserving' },
    sigterm: { state: 'ended', endReason: 'cancelled' },
    failed: { state: 'ended', endReason: 'error-reserving' },
  },
  reserving: {
    reserved: { state: 'reserved' },
    sigterm: { state: 'early-unreserving' },
    // Put back what was changed (memory) before ending: through unreserving.
    failed: { state: 'unreserving' },
  },
  reserved: {
    'slot-end': { state: 'unreserving' },
    sigterm: { state: 'early-unreserving' },
    failed: { state: 'unreserving' },
  },
  unreserving: {
    sigterm: { state: 'unreserving' },
    unreserved: { state: 'ended', endReason: 'completed' },
    failed: { state: 'ended', endReason: 'error-unreserving' },
  },
  'early-unreserving': {
    sigterm: { state: 'early-unreserving' },
    unreserved: { state: 'ended', endReason: 'early-unreserved' },
    failed: { state: 'ended', endReason: 'error-unreserving' },
  },
  ended: {},
};

/** True if `input` is allowed in `state`. */
export function canTake(state: PilotState, input: PilotInput['kind']): boolean {
  return PILOT_TRANSITIONS[state][input] !== undefined;
}

/**
 * The status after `input` at `at` (ISO).
 * @throws PilotTransitionError when the table does not allow it.
 */
export function nextPilotStatus(status: PilotStatus, input: PilotInput, at: string): PilotStatus {
  const target = PILOT_TRANSITIONS[status.state][input.kind];
  if (!target) throw new PilotTransitionError(status.state, input.kind);
  const terminating = status.terminating || input.kind === 'sigterm';
  const failedIn = input.kind === 'failed' && status.failedIn === undefined ? status.state : status.failedIn;
  const detail = input.kind === 'failed' ? input.detail : status.detail;
  // A SIGTERM that keeps the state does not restart its clock: the state did not change.
  const since = target.state === status.state ? status.since : at;
  let endReason: PilotEndReason | undefined;
  if (target.state === 'ended') {
    endReason = target.endReason;
    // Handing back went well after an earlier failure: the slot still ended in that failure.
    if (endReason === 'completed' && (failedIn === 'reserving' || failedIn === 'queued')) endReason = 'error-reserving';
    if (endReason === 'completed' && failedIn === 'reserved') endReason = 'error-reserved';
  }
  return {
    state: target.state,
    since,
    ...(endReason ? { endReason } : {}),
    ...(failedIn !== undefined ? { failedIn } : {}),
    ...(detail !== undefined ? { detail } : {}),
    ...(terminating ? { terminating } : {}),
  };
}

/** What the pilot does when SIGTERM arrives, per state. */
export interface SigtermPlan {
  /** The message to send vws first, if any. */
  notify?: 'early-unreserving';
  /** Wait for vws to trash its VMs (its share of the grace period) before acting alone. */
  waitForVws: boolean;
  /** Destroy whatever pilot-hosted VM is still there, itself. */
  destroyLeftovers: boolean;
  /** Set memory back to its configured value. */
  restoreMemory: boolean;
}

/**
 * The SIGTERM plan of each state. `queued`: nothing was changed, just exit. `reserving`: vws was not told
 * `reserved` yet so no VM of the slot can exist; tell vws (its slot workflow stops waiting), restore
 * memory, no wait. `reserved`: Nimbus's early-unreserving: notify, give vws its share of the grace, then
 * destroy what is left and restore. `unreserving` / `early-unreserving`: already handing back; stop
 * waiting for vws and finish alone. `ended`: nothing.
 */
export const SIGTERM_PLANS: Readonly<Record<PilotState, SigtermPlan>> = {
  queued: { waitForVws: false, destroyLeftovers: false, restoreMemory: false },
  reserving: { notify: 'early-unreserving', waitForVws: false, destroyLeftovers: true, restoreMemory: true },
  reserved: { notify: 'early-unreserving', waitForVws: true, destroyLeftovers: true, restoreMemory: true },
  unreserving: { waitForVws: false, destroyLeftovers: true, restoreMemory: true },
  'early-unreserving': { waitForVws: false, destroyLeftovers: true, restoreMemory: true },
  ended: { waitForVws: false, destroyLeftovers: false, restoreMemory: false },
};

/** How the batch system's grace period (Slurm KillWait, PBS kill_delay) is shared. */
export interface GraceSplit {
  /** How long the pilot waits for vws to trash the VMs after notifying it, in ms. */
  vwsMs: number;
  /** What is left for the pilot to destroy leftovers and restore memory before SIGKILL, in ms. */
  pilotMs: number;
}

/**
 * Splits the grace period between SIGTERM and SIGKILL: `graceRatio` of it to vws (Nimbus's
 * `earlywaitratio`, default 0.5), the rest to the pilot, but never less than `pilotNeedsMs` to the pilot
 * (its own cleanup must fit before SIGKILL; vws's share shrinks first).
 * @throws Error naming the bad argument.
 */
export function graceSplit(graceSeconds: number, graceRatio = 0.5, pilotNeedsMs = 0): GraceSplit {
  if (!Number.isFinite(graceSeconds) || graceSeconds < 0) throw new Error(`graceSeconds must be a number >= 0, got ${graceSeconds}`);
  if (!Number.isFinite(graceRatio) || graceRatio < 0 || graceRatio >= 1) throw new Error(`graceRatio must be in [0, 1), got ${graceRatio}`);
  if (!Number.isFinite(pilotNeedsMs) || pilotNeedsMs < 0) throw new Error(`pilotNeedsMs must be a number >= 0, got ${pilotNeedsMs}`);
  const totalMs = Math.round(graceSeconds * 1000);
  const vwsMs = Math.max(0, Math.min(Math.floor(totalMs * graceRatio), totalMs - pilotNeedsMs));
  return { vwsMs, pilotMs: totalMs - vwsMs };
}

/**
 * The stale-message rule: a notification written before the slot's current state was entered says
 * something about an earlier state, so it is ignored (e.g. an `early-unreserving` of a previous job,
 * or one delayed while vws was down, reaching a slot that has moved on).
 */
export function isStaleNotification(messageAt: string, stateSince: string): boolean {
  return Date.parse(messageAt) < Date.parse(stateSince);
}

/** What the slot workflow does with an `early-unreserving` notification. */
export type EarlyUnreservingVerdict = 'ignore' | 'trash' | 'cancel-without-trash';

/**
 * Nimbus's rule (PilotSlotManagement.earlyUnreserving): trash the slot's VMs only if the notification
 * is fresh, i.e. received within the grace period (plus `slackSeconds` for transport) of being written;
 * an older one arrived after the pilot has acted alone (vws was down), so the VMs are gone or going:
 * the slot is released without trashing. A notification older than the slot's state is ignored.
 */
export function earlyUnreservingVerdict(messageAt: string, receivedAt: string, stateSince: string, graceSeconds: number, slackSeconds = 2): EarlyUnreservingVerdict {
  if (isStaleNotification(messageAt, stateSince)) return 'ignore';
  const ageMs = Date.parse(receivedAt) - Date.parse(messageAt);
  return ageMs <= (graceSeconds + slackSeconds) * 1000 ? 'trash' : 'cancel-without-trash';
}
