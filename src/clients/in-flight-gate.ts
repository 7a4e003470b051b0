/**
 * A first-come-first-served limit on how many calls run at once. The allocator's callers share one per
 * allocator and process (see `src/clients/allocator.ts` for why the limit matters to the server).
 */
export class InFlightGate {
  private active = 0;
  private readonly waiting: Array<() => void> = [];

  /** `limit`: how many calls may run at once (at least 1). */
  constructor(readonly limit: number) {
    if (!Number.isInteger(limit) || limit < 1) throw new Error(`limit: must be a positive integer, got ${limit}`);
  }

  /** Calls running now. */
  get running(): number {
    return this.active;
  }

  /** Calls waiting for their turn. */
  get queued(): number {
    return this.waiting.length;
  }

  /** Runs `call` once fewer than `limit` others run; callers are served in arrival order. */
  async run<T>(call: () => Promise<T>): Promise<T> {
    if (this.active < this.limit) this.active++;
    // The finishing call hands its place straight to the next waiter, so `active` stays counted.
    else await new Promise<void>((resolve) => this.waiting.push(resolve));
    try {
      return await call();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    }
  }
}
