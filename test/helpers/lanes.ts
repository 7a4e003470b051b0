/**
 * Independent end-to-end scenarios at the same time, each still its own test. A lane is one node (one
 * stack, so its own ledger and leftovers); lanes run side by side. A lane is a list of stages run one
 * after the other; the scenarios of one stage run together and meet (see {@link Meet}) before they check
 * that the node holds nothing, so each clean-node check still sees the whole node clean.
 */

/**
 * Waits until every other scenario of the stage has also called it or has ended (a failed scenario
 * never holds the others up). Call it at most once, where the scenario's own work is over and its
 * node-wide checks begin.
 */
export type Meet = () => Promise<void>;

/** One scenario: its assertions, with the stage's {@link Meet}. */
export type Scenario = (meet: Meet) => Promise<void>;

/** The scenarios that run together, by name (each test awaits one by its lane and name). */
export type Stage = Record<string, Scenario>;

/**
 * Lanes that start together on the first {@link Lanes.run} call (inside a test, so after `beforeAll`);
 * each test awaits only its own scenario, so a failure is reported by the test it belongs to, and a
 * failed scenario does not stop the stages after it (as with serial tests).
 */
export class Lanes<K extends string> {
  private runs: Map<K, Map<string, Promise<void>>> | undefined;

  /** `stages(key)` lists a lane's stages, in order; each names its scenarios. */
  constructor(
    private readonly keys: readonly K[],
    private readonly stages: (key: K) => Stage[],
  ) {}

  /** The outcome of scenario `name` of lane `key`, starting every lane if none runs yet. */
  run(key: K, name: string): Promise<void> {
    this.runs ??= new Map(this.keys.map((k) => [k, runLane(this.stages(k))]));
    const run = this.runs.get(key)?.get(name);
    if (!run) throw new Error(`lane ${key} has no scenario ${name}`);
    return run;
  }

  /** Waits until every started scenario has ended, whatever its outcome (for `afterAll`, before the stacks stop). */
  async settled(): Promise<void> {
    if (this.runs) await Promise.allSettled([...this.runs.values()].flatMap((m) => [...m.values()]));
  }
}

/** Runs the stages one after the other and the scenarios of a stage together; one promise per scenario. */
function runLane(stages: Stage[]): Map<string, Promise<void>> {
  const out = new Map<string, Promise<void>>();
  let previous: Promise<unknown> = Promise.resolve();
  for (const stage of stages) {
    const started = previous.then(() => undefined);
    const seat = meeting(Object.keys(stage).length);
    const runs = Object.entries(stage).map(([name, scenario]) => {
      const { meet, leave } = seat();
      const p = started.then(() => scenario(meet)).finally(leave);
      // Rejections are reported by the test that awaits this scenario; none is left unhandled meanwhile.
      p.catch(() => undefined);
      out.set(name, p);
      return p;
    });
    previous = Promise.allSettled(runs);
  }
  return out;
}

/**
 * A meeting point of `n` scenarios: each takes a seat, and counts once, when it meets or when it ends
 * without having met (failed first), so the others never wait for it in vain.
 */
function meeting(n: number): () => { meet: Meet; leave: () => void } {
  let waiting = n;
  let open!: () => void;
  const opened = new Promise<void>((ok) => (open = ok));
  const arrive = () => {
    waiting -= 1;
    if (waiting <= 0) open();
  };
  return () => {
    let counted = false;
    const count = () => {
      if (counted) return;
      counted = true;
      arrive();
    };
    return {
      meet: () => {
        count();
        return opened;
      },
      leave: count,
    };
  };
}
