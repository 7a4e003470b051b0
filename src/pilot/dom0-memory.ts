/**
 * The memory a pilot takes from its node for VMs and gives back (seed 004: dom0 ballooning; issue 7:
 * "the memory the pilot gives and takes back is the same number, to the MiB, every time").
 *
 * Every target is ABSOLUTE and derived from the node's configuration: reserving R MiB sets dom0 to
 * `configured − R`, restoring sets it to `configured`, whatever dom0 holds at the time. Nimbus computed
 * `current − R` and later `current + R` (research/anchors-mission.md §1.3), so every rounding or
 * unfinished balloon was carried into the next slot: seed 004's 1-4 MiB drift. Here a drift cannot
 * accumulate, and `xl mem-set` exiting 0 is not taken as done: the value is polled until reached.
 *
 * Xen nodes balloon dom0 with `xl mem-set 0`; QEMU nodes have nothing to balloon, so the pilot records
 * the reservation in a file the allocator accounts for ({@link HostMemoryReservation}). Both behind one
 * interface, over an injected {@link Executor} (argv only).
 */
import { dirname, join } from 'node:path';
import type { Executor } from '../exec/executor';
import { parseXlList } from '../activities/xen/config';
import { DEFAULT_MIN_DOM0_MIB } from '../config/schema';

/** How a set waits for its value. */
export interface SetOptions {
  /** Reached when within this many MiB of the target (default 1: `xl list` rounds pages down to MiB). */
  toleranceMiB?: number;
  /** Give up after this long (default 60 s). */
  timeoutMs?: number;
  /** Time between two reads (default 200 ms). */
  pollMs?: number;
}

/** What a set observed. */
export interface SetResult {
  targetMiB: number;
  /** The value read when it counted as reached. */
  reachedMiB: number;
  /** From the command to the read that matched, in ms. */
  elapsedMs: number;
  /** Of which the setting command itself took (`xl mem-set` returns before the balloon is done), in ms. */
  commandMs: number;
  /** Reads it took. */
  polls: number;
}

/** The memory did not reach its target in time: names the target and the last value seen. */
export class MemoryTargetTimeout extends Error {
  override name = 'MemoryTargetTimeout';
  constructor(
    readonly targetMiB: number,
    readonly lastObservedMiB: number | null,
    readonly toleranceMiB: number,
    readonly timeoutMs: number,
  ) {
    super(`memory is ${lastObservedMiB ?? 'unknown'} MiB, target ${targetMiB} MiB (±${toleranceMiB}), after ${timeoutMs} ms`);
  }
}

/** A target or reservation that the node's configuration does not allow: names the value. */
export class MemoryTargetInvalid extends Error {
  override name = 'MemoryTargetInvalid';
}

/**
 * What the pilot does with its node's memory. "Host memory" is dom0's memory on Xen, and on QEMU the
 * node's configured memory minus the pilot's recorded reservation.
 */
export interface PilotMemoryControl {
  /** Host memory when nothing is reserved: the node's configured value (MiB). */
  readonly configuredMiB: number;
  /** The host's memory now (MiB). */
  currentMiB(): Promise<number>;
  /** Sets the host's memory to `targetMiB` (absolute) and waits until it is reached. */
  setAndWait(targetMiB: number, options?: SetOptions): Promise<SetResult>;
  /** Reserves `reserveMiB` for VMs: host memory to `configuredMiB − reserveMiB`. */
  reserve(reserveMiB: number, options?: SetOptions): Promise<SetResult>;
  /** Gives everything back: host memory to exactly `configuredMiB`. */
  restore(options?: SetOptions): Promise<SetResult>;
}

/**
 * The host memory that reserving `reserveMiB` leaves: `configuredMiB − reserveMiB`, never below
 * `minHostMiB` (what the host needs to keep running: Nimbus's `minmem`).
 * @throws MemoryTargetInvalid naming the value.
 */
export function reservationTargetMiB(configuredMiB: number, reserveMiB: number, minHostMiB = 0): number {
  if (!Number.isInteger(configuredMiB) || configuredMiB <= 0) throw new MemoryTargetInvalid(`configured memory must be a positive integer MiB, got ${configuredMiB}`);
  if (!Number.isInteger(reserveMiB) || reserveMiB < 0) throw new MemoryTargetInvalid(`reserveMiB must be an integer >= 0, got ${reserveMiB}`);
  const target = configuredMiB - reserveMiB;
  if (target < minHostMiB) {
    throw new MemoryTargetInvalid(`reserving ${reserveMiB} MiB of ${configuredMiB} MiB leaves ${target} MiB, below the host's minimum of ${minHostMiB} MiB`);
  }
  return target;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `read` until within tolerance of `targetMiB`; `started` is when the change was made. */
async function waitFor(read: () => Promise<number>, targetMiB: number, started: number, commandMs: number, options: SetOptions): Promise<SetResult> {
  const { toleranceMiB = 1, timeoutMs = 60_000, pollMs = 200 } = options;
  let last: number | null = null;
  let polls = 0;
  for (;;) {
    try {
      last = await read();
    } catch (e) {
      // A read that fails (a busy node) is retried until the deadline; its error only if nothing was read.
      if (Date.now() - started > timeoutMs) throw last === null ? e : new MemoryTargetTimeout(targetMiB, last, toleranceMiB, timeoutMs);
      await sleep(pollMs);
      continue;
    }
    polls++;
    if (Math.abs(last - targetMiB) <= toleranceMiB) return { targetMiB, reachedMiB: last, elapsedMs: Date.now() - started, commandMs, polls };
    if (Date.now() - started > timeoutMs) throw new MemoryTargetTimeout(targetMiB, last, toleranceMiB, timeoutMs);
    await sleep(pollMs);
  }
}

/** What {@link XenDom0Memory} needs. */
export interface XenDom0MemoryOptions {
  exec: Executor;
  /** Dom0's memory when nothing is reserved: the node's configuration (see {@link readDom0BootMiB}). */
  configuredMiB: number;
  /** Dom0 is never ballooned below this (default {@link DEFAULT_MIN_DOM0_MIB}). */
  minDom0MiB?: number;
}

/** Dom0 ballooning with `xl mem-set 0 <N>m`, checked with `xl list 0`. */
export class XenDom0Memory implements PilotMemoryControl {
  readonly configuredMiB: number;
  private readonly minMiB: number;

  constructor(private readonly o: XenDom0MemoryOptions) {
    this.configuredMiB = o.configuredMiB;
    this.minMiB = o.minDom0MiB ?? DEFAULT_MIN_DOM0_MIB;
    reservationTargetMiB(this.configuredMiB, 0, this.minMiB);
  }

  async currentMiB(): Promise<number> {
    const r = await this.o.exec.run(['xl', 'list', '0'], { timeoutMs: 30_000 });
    const dom0 = parseXlList(r.stdout).find((d) => d.domid === 0);
    if (!dom0 || !Number.isFinite(dom0.memMiB)) throw new Error(`xl list 0 on ${this.o.exec.where} printed no Domain-0 row`);
    return dom0.memMiB;
  }

  async setAndWait(targetMiB: number, options: SetOptions = {}): Promise<SetResult> {
    if (!Number.isInteger(targetMiB) || targetMiB < this.minMiB || targetMiB > this.configuredMiB) {
      throw new MemoryTargetInvalid(`dom0 target must be an integer MiB from ${this.minMiB} to the configured ${this.configuredMiB}, got ${targetMiB}`);
    }
    const started = Date.now();
    await this.o.exec.run(['xl', 'mem-set', '0', `${targetMiB}m`], { timeoutMs: 30_000 });
    return waitFor(() => this.currentMiB(), targetMiB, started, Date.now() - started, options);
  }

  async reserve(reserveMiB: number, options?: SetOptions): Promise<SetResult> {
    return this.setAndWait(reservationTargetMiB(this.configuredMiB, reserveMiB, this.minMiB), options);
  }

  async restore(options?: SetOptions): Promise<SetResult> {
    return this.setAndWait(this.configuredMiB, options);
  }
}

const SIZE = /^(\d+)([tTgGmMkKbB]?)$/;
const SHIFT: Record<string, number> = { t: 40, g: 30, m: 20, k: 10, b: 0, '': 10 };

/**
 * Dom0's boot amount from Xen's command line (`xl info` → `xen_commandline`), in MiB: the `<size>` of
 * `dom0_mem=[min:<size>,][max:<size>,][<size>]`, e.g. `dom0_mem=512M,max:512M` → 512. Xen reads a
 * size without a unit as kB. Null if the command line has no plain amount (then the node's configuration
 * must state it).
 */
export function parseDom0MemMiB(xenCommandline: string): number | null {
  const m = /(?:^|\s)dom0_mem=(\S+)/.exec(xenCommandline);
  if (!m) return null;
  for (const part of m[1].split(',')) {
    if (/^(min|max):/.test(part)) continue;
    const s = SIZE.exec(part);
    if (!s) return null; // negative or percentage forms depend on the host's RAM
    const bytes = BigInt(s[1]) << BigInt(SHIFT[s[2].toLowerCase()]);
    return Number(bytes / (1n << 20n));
  }
  return null;
}

/**
 * Dom0's configured memory, read from the node: the `dom0_mem` Xen booted with.
 * @throws Error when Xen's command line does not give a plain amount.
 */
export async function readDom0BootMiB(exec: Executor): Promise<number> {
  const info = (await exec.run(['xl', 'info'], { timeoutMs: 30_000 })).stdout;
  const line = /^xen_commandline\s*:\s*(.*)$/m.exec(info)?.[1] ?? '';
  const mib = parseDom0MemMiB(line);
  if (mib === null) throw new Error(`Xen on ${exec.where} booted without a plain dom0_mem=<size> (command line: ${line || 'none'}); state dom0's memory in the node's configuration`);
  return mib;
}

/** Where a QEMU node's pilot records its reservation: `<node dir>/pilot/reserved-memory.json`. */
export function hostReservationFile(nodeDir: string): string {
  return join(nodeDir, 'pilot', 'reserved-memory.json');
}

/** The content of a reservation file. */
export interface HostReservationRecord {
  reservedMiB: number;
  at: string;
}

/**
 * Reads a reservation file: 0 MiB when it does not exist.
 * @throws Error on a file that is not a reservation (never guessed as 0: the allocator must not over-grant).
 */
export async function readHostReservationMiB(exec: Executor, file: string): Promise<number> {
  const text = await exec.readFile(file);
  if (text === null) return 0;
  const v = JSON.parse(text) as Partial<HostReservationRecord>;
  if (typeof v.reservedMiB !== 'number' || !Number.isInteger(v.reservedMiB) || v.reservedMiB < 0) throw new Error(`${file} holds no reservedMiB`);
  return v.reservedMiB;
}

/** What {@link HostMemoryReservation} needs. */
export interface HostMemoryReservationOptions {
  exec: Executor;
  /** The node's configured memory (`nodes[].memoryMiB`). */
  configuredMiB: number;
  /** The reservation file ({@link hostReservationFile}). */
  file: string;
  /** Memory the host keeps for itself whatever is reserved (default 0). */
  minHostMiB?: number;
}

/**
 * QEMU nodes: no balloon, the reservation is a number in a file (written atomically) that the allocator
 * accounts for. "Host memory" is `configuredMiB − reservedMiB`. Restoring removes the file: no file, no
 * reservation.
 */
export class HostMemoryReservation implements PilotMemoryControl {
  readonly configuredMiB: number;

  constructor(private readonly o: HostMemoryReservationOptions) {
    this.configuredMiB = o.configuredMiB;
    reservationTargetMiB(this.configuredMiB, 0, o.minHostMiB ?? 0);
  }

  async currentMiB(): Promise<number> {
    return this.configuredMiB - (await readHostReservationMiB(this.o.exec, this.o.file));
  }

  async setAndWait(targetMiB: number, options: SetOptions = {}): Promise<SetResult> {
    const min = this.o.minHostMiB ?? 0;
    if (!Number.isInteger(targetMiB) || targetMiB < min || targetMiB > this.configuredMiB) {
      throw new MemoryTargetInvalid(`host memory target must be an integer MiB from ${min} to the configured ${this.configuredMiB}, got ${targetMiB}`);
    }
    const started = Date.now();
    const reservedMiB = this.configuredMiB - targetMiB;
    if (reservedMiB === 0) await this.o.exec.remove(this.o.file);
    else {
      await this.o.exec.mkdir(dirname(this.o.file));
      const record: HostReservationRecord = { reservedMiB, at: new Date().toISOString() };
      await this.o.exec.writeFileAtomic(this.o.file, `${JSON.stringify(record)}\n`);
    }
    // Read back: what the allocator will read is what counts. Exact: a file has no rounding.
    return waitFor(() => this.currentMiB(), targetMiB, started, Date.now() - started, { ...options, toleranceMiB: 0 });
  }

  async reserve(reserveMiB: number, options?: SetOptions): Promise<SetResult> {
    return this.setAndWait(reservationTargetMiB(this.configuredMiB, reserveMiB, this.o.minHostMiB ?? 0), options);
  }

  async restore(options?: SetOptions): Promise<SetResult> {
    return this.setAndWait(this.configuredMiB, options);
  }
}
