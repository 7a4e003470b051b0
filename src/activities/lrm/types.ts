/**
 * The contract between vws and a site's batch system (local resource manager, LRM). vws borrows node time
 * by submitting a pilot job (seed 003): the batch system keeps full control of its nodes, so everything vws
 * needs from it is here: submit, cancel (or signal), ask a job's state, and list its own jobs by name
 * prefix so leaks can be found after crashes. Slurm ({@link ./slurm}) and PBS/TORQUE ({@link ./pbs})
 * implement it over an injected executor; nothing else in vws speaks a batch system's command language.
 *
 * Every value here is plain JSON (numbers of seconds, strings), so it crosses Temporal activity boundaries.
 */

/** What the pilot job runs. */
export type PilotCommand =
  /** A batch script file on the submit host (the executor's host); the batch system copies it at submission. */
  | { kind: 'script'; path: string; args?: string[] }
  /**
   * A program and its arguments, present on the execution node. The adapter wraps it in a generated
   * two-line batch script (`exec` + the quoted argv) given on stdin, because batch systems take scripts,
   * not argv; the pilot then *is* the batch shell and receives the batch system's signals itself.
   */
  | { kind: 'argv'; argv: string[] };

/** A signal the batch system sends the job's batch shell some time before its limit (Slurm `--signal=B:SIG@N`). */
export interface SignalBeforeEnd {
  /** Signal name without `SIG`, e.g. `USR1`. */
  signal: string;
  /** Seconds before the time limit. Slurm delivers it up to 60 s earlier than asked (measured: research/testbed-slurm-ssh.md). */
  seconds: number;
}

/** One pilot job to submit. */
export interface PilotJobRequest {
  /** Job name; vws puts its prefix first so {@link BatchSystem.listByPrefix} finds its jobs. `[A-Za-z0-9._-]`, 1–64. */
  name: string;
  command: PilotCommand;
  /** Pin the job to this node (Slurm `--nodelist`, PBS `nodes=`/`host=`); absent: the batch system chooses. */
  node?: string;
  /** Slurm partition / PBS queue; absent: the adapter's configured default, then the batch system's. */
  partition?: string;
  /** Node properties the node must have (Slurm features `--constraint=a&b`, PBS node properties). */
  constraints?: string[];
  /** Account charged (Slurm `--account`, PBS `-A`). */
  account?: string;
  /** Time the pilot needs, in seconds; the adapter adds its configured padding and rounds to the batch system's granularity. */
  walltimeSeconds: number;
  /** Memory per node in MiB (Slurm `--mem`, PBS `mem`). Absent: the batch system's default. */
  memoryMiB?: number;
  /** CPUs on the node (Slurm `--cpus-per-task`, PBS `ppn`/`ncpus`). Absent: 1. */
  cpus?: number;
  /**
   * The node to this job alone (Slurm `--exclusive`, TORQUE `-n`, PBS Pro `-l place=excl`): a pilot sets
   * the node's memory to absolute values under a node lock, so a second pilot there could only refuse.
   */
  exclusive?: boolean;
  /** A warning signal before the limit; adapters that cannot deliver one refuse the request (see {@link BatchCapabilities}). */
  signalBeforeEnd?: SignalBeforeEnd;
  /** Where the job's stdout and stderr go, on the execution node. */
  outputFile?: string;
  /** Working directory of the job on the execution node (default `/tmp`: the submitter's cwd need not exist there). */
  workDir?: string;
  /** Environment given to the job, and nothing else of the submitter's environment. */
  environment?: Record<string, string>;
}

/** How a job that left the batch system's queue ended. */
export type BatchEndOutcome =
  | 'completed'
  | 'failed'
  | 'cancelled'
  | 'timeout'
  | 'node-fail'
  | 'preempted'
  | 'out-of-memory'
  /** Ended by a signal whose cause the batch system does not name (PBS: qdel and preemption look alike). */
  | 'killed'
  | 'other';

/** Fields every status carries when the batch system reports them. */
interface StatusCommon {
  jobId: string;
  name?: string;
  /** The node(s) the job runs or ran on, as the batch system lists them (`vmm2`, `vmm[1-2]`). */
  nodes?: string;
  /** The batch system's own state word (`PENDING`, `R`, `CANCELLED`, `F`), for logs. */
  rawState?: string;
  /** The batch system's reason (`JobHeldUser`, `Resources`, a PBS comment), when it gives one. */
  reason?: string;
  /** Unix seconds. */
  startTime?: number;
  /** Unix seconds; for a queued or running job, when it is expected to end. */
  endTime?: number;
}

/**
 * A job's state, reduced to what the pilot-slot logic decides on. `completing` means the batch system has
 * ended the job but its processes may still run on the node (KillWait, epilogue): the node is not free
 * yet. `unknown` means the batch system does not know the job (never existed, or purged from its memory).
 */
export type BatchJobStatus =
  | (StatusCommon & { state: 'queued' })
  | (StatusCommon & { state: 'running' })
  | (StatusCommon & { state: 'completing' })
  | (StatusCommon & {
      state: 'ended';
      outcome: BatchEndOutcome;
      /** The batch script's exit code, when it exited. */
      exitCode?: number;
      /** The signal that ended it, when one did. */
      signal?: number;
    })
  | { state: 'unknown'; jobId: string; rawState?: string };

/** One entry of {@link BatchSystem.listByPrefix}. */
export type BatchJobSummary = Exclude<BatchJobStatus, { state: 'unknown' }>;

/** What an adapter can do, so callers choose before submitting instead of learning from a refusal. */
export interface BatchCapabilities {
  /** Whether `signalBeforeEnd` is honoured. */
  signalBeforeEnd: boolean;
  /** Granularity of time limits in seconds (Slurm 60, PBS 1). */
  walltimeGranularitySeconds: number;
}

/** Options of {@link BatchSystem.cancel}. */
export interface CancelOptions {
  /**
   * Send this signal (name without `SIG`, e.g. `USR1`) to the job's batch shell and its children instead of
   * cancelling it; the job goes on unless the signal ends it.
   */
  signal?: string;
}

/** Options of {@link BatchSystem.listByPrefix}. */
export interface ListOptions {
  /** Also list jobs that have ended but that the batch system still remembers (default false: live jobs only). */
  includeEnded?: boolean;
}

/** A site batch system, as vws uses it. Every method is safe to retry. */
export interface BatchSystem {
  /** `slurm` or `pbs`, for logs. */
  readonly kind: string;
  readonly capabilities: BatchCapabilities;
  /**
   * Submits a job. Rejects with `InvalidSpec` (bad request field, named), `BatchSubmitRefused` (the batch
   * system refused it; its message is kept) or `BatchSystemUnavailable`. Not idempotent by itself: a retry
   * after a lost reply can submit twice, so callers list by their unique name before resubmitting.
   */
  submit(job: PilotJobRequest): Promise<{ jobId: string }>;
  /** Cancels (or, with `signal`, signals) a job. A job that has ended or is unknown counts as success. */
  cancel(jobId: string, options?: CancelOptions): Promise<void>;
  /** The job's state now. */
  status(jobId: string): Promise<BatchJobStatus>;
  /** Jobs whose name starts with `prefix` (reconciliation, leak checks). */
  listByPrefix(prefix: string, options?: ListOptions): Promise<BatchJobSummary[]>;
}
