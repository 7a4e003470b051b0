/**
 * The Slurm adapter: `sbatch --parsable`, `scancel`, `squeue --json` (with `scontrol show job -o` and
 * `squeue -h -o` as the fallback for releases without `--json`) and `sacct` when the site keeps
 * accounting, all as argv through the injected {@link Executor} (local on the submit host, or SSH to it).
 * Measured behaviour it relies on is in research/testbed-slurm-ssh.md: minute-granular limits, SIGTERM to
 * every job process on scancel, `--signal=B:` for the batch shell.
 */
import type { CommandResult, Executor } from '../../exec/executor';
import { batchUnavailable, commandText, invalidJobField, noExitCode, submitRefused } from './failures';
import { argvBatchScript, paddedWalltimeSeconds, validateJobRequest, validateSignal } from './request';
import {
  classifySbatchError,
  isAlreadyEndedError,
  isUnknownJobError,
  parseSacct,
  parseSbatchParsable,
  parseScontrolJobs,
  parseSqueueJson,
  parseSqueueText,
  slurmJobStatus,
  SQUEUE_TEXT_FORMAT,
  type SlurmJobFields,
} from './slurm-parse';
import type { BatchCapabilities, BatchJobStatus, BatchJobSummary, BatchSystem, CancelOptions, ListOptions, PilotJobRequest } from './types';

/** The PATH a pilot job gets: the submitter's environment is not passed on (see {@link SlurmBatchSystem.submit}). */
export const DEFAULT_JOB_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Site settings of the Slurm adapter (the `lrm` config section, kind `slurm`). */
export interface SlurmOptions {
  /** `SLURM_CONF` for every command; absent: Slurm's own default (`/etc/slurm/slurm.conf`). */
  slurmConf?: string;
  /** Partition used when a request names none. */
  partition?: string;
  /** Features every pilot job requires, in addition to the request's. */
  constraints?: string[];
  /** Account used when a request names none. */
  account?: string;
  /** Seconds added to each pilot's time before rounding up to whole minutes. */
  walltimePaddingSeconds?: number;
  /** Limit for each Slurm command (default 30 s). */
  commandTimeoutMs?: number;
  /** PATH given to the job. */
  jobPath?: string;
}

/** Slurm through one executor. */
export class SlurmBatchSystem implements BatchSystem {
  readonly kind = 'slurm';
  readonly capabilities: BatchCapabilities = { signalBeforeEnd: true, walltimeGranularitySeconds: 60 };
  /** Learnt on first use: whether `squeue --json` exists (Slurm ≥ 21.08), whether `sacct` has accounting. */
  private json: boolean | undefined;
  private sacct: boolean | undefined;

  constructor(
    private readonly exec: Executor,
    private readonly options: SlurmOptions = {},
  ) {}

  private get timeoutMs(): number {
    return this.options.commandTimeoutMs ?? 30_000;
  }

  /** `env SLURM_CONF=… <argv>` when a config file is set: the executor passes no environment of its own. */
  private argv(argv: string[]): string[] {
    return this.options.slurmConf ? ['env', `SLURM_CONF=${this.options.slurmConf}`, ...argv] : argv;
  }

  private run(argv: string[], input?: string): Promise<CommandResult> {
    return this.exec.run(this.argv(argv), { timeoutMs: this.timeoutMs, ...(input !== undefined ? { input } : {}) });
  }

  /** The `sbatch` options for `job` (pure given the options; exported through {@link sbatchArgs}). */
  sbatchOptions(job: PilotJobRequest): string[] {
    return sbatchArgs(job, this.options);
  }

  /**
   * Submits under `env -i`: the job gets exactly PATH, SLURM_CONF and the request's environment
   * (`--export=ALL` of a clean environment), never the worker's own variables. Passing the variables as
   * `env` arguments rather than `--export=K=V` also keeps commas in values intact.
   */
  async submit(job: PilotJobRequest): Promise<{ jobId: string }> {
    validateJobRequest(job);
    const env = [`PATH=${this.options.jobPath ?? DEFAULT_JOB_PATH}`];
    if (this.options.slurmConf) env.push(`SLURM_CONF=${this.options.slurmConf}`);
    for (const [k, v] of Object.entries(job.environment ?? {})) env.push(`${k}=${v}`);
    const script = job.command.kind === 'argv' ? argvBatchScript(job.command.argv) : undefined;
    const tail = job.command.kind === 'script' ? [job.command.path, ...(job.command.args ?? [])] : [];
    const argv = ['env', '-i', ...env, 'sbatch', '--parsable', '--export=ALL', ...this.sbatchOptions(job), ...tail];
    let result: CommandResult;
    try {
      result = await this.exec.run(argv, { timeoutMs: this.timeoutMs, ...(script !== undefined ? { input: script } : {}) });
    } catch (e) {
      if (noExitCode(e)) throw batchUnavailable('slurm', `sbatch for ${job.name}`, commandText(e));
      const failure = classifySbatchError(commandText(e));
      if (failure.kind === 'unavailable') throw batchUnavailable('slurm', `sbatch for ${job.name}`, failure.message);
      throw submitRefused('slurm', job.name, failure.message, describeField(failure.field, job, this.options));
    }
    return { jobId: parseSbatchParsable(result.stdout) };
  }

  /**
   * `scancel ID`, or with a signal `scancel --signal=SIG --full ID`: without `--full` Slurm signals only
   * job steps, never the batch shell, i.e. never the pilot. A job that has ended or is unknown is success;
   * signalling a queued job does nothing (it has no process yet).
   */
  async cancel(jobId: string, options: CancelOptions = {}): Promise<void> {
    checkJobId(jobId);
    if (options.signal !== undefined) validateSignal(options.signal);
    if (options.signal) {
      // A queued job has no process to signal, and scancel retries "Job can not be altered now" on it for
      // over 30 s (measured, 22.05) before exiting 228: ask first.
      const now = await this.status(jobId);
      if (now.state === 'queued' || now.state === 'ended' || now.state === 'unknown') return;
    }
    const argv = options.signal ? ['scancel', `--signal=${options.signal}`, '--full', jobId] : ['scancel', jobId];
    try {
      // Some releases print the "already completed" error yet exit 0: nothing to do either way.
      await this.run(argv);
    } catch (e) {
      const text = commandText(e);
      if (!noExitCode(e) && (isUnknownJobError(text) || isAlreadyEndedError(text))) return;
      if (options.signal && !noExitCode(e)) {
        // It ended (or was requeued) between the status and the signal.
        const now = await this.status(jobId);
        if (now.state === 'queued' || now.state === 'ended' || now.state === 'unknown') return;
      }
      throw batchUnavailable('slurm', `scancel ${jobId}`, text);
    }
  }

  async status(jobId: string): Promise<BatchJobStatus> {
    checkJobId(jobId);
    const live = (await this.query(jobId)).find((j) => j.jobId === jobId);
    if (live) return slurmJobStatus(live);
    const old = (await this.accounting(jobId)).find((j) => j.jobId === jobId);
    return old ? slurmJobStatus(old) : { state: 'unknown', jobId };
  }

  async listByPrefix(prefix: string, options: ListOptions = {}): Promise<BatchJobSummary[]> {
    const jobs = (await this.query()).filter((j) => j.name?.startsWith(prefix));
    return jobs
      .map(slurmJobStatus)
      .filter((s): s is BatchJobSummary => s.state !== 'unknown' && (options.includeEnded || s.state !== 'ended'));
  }

  /**
   * Jobs the controller knows (finished ones until MinJobAge): `squeue --json -t all`, or the text fallback.
   * With `jobId`, the text path asks `scontrol show job -o ID` (it carries the exit code).
   */
  private async query(jobId?: string): Promise<SlurmJobFields[]> {
    if (this.json !== false) {
      try {
        const r = await this.run(['squeue', '--json', '-t', 'all', ...(jobId ? ['-j', jobId] : [])]);
        this.json = true;
        return parseSqueueJson(r.stdout);
      } catch (e) {
        const text = commandText(e);
        if (this.json === undefined && !noExitCode(e) && /unrecognized option|invalid option/i.test(text)) this.json = false;
        else if (jobId && !noExitCode(e) && isUnknownJobError(text)) return [];
        else throw batchUnavailable('slurm', 'squeue --json', text);
      }
    }
    try {
      if (jobId) return parseScontrolJobs((await this.run(['scontrol', 'show', 'job', '-o', jobId])).stdout);
      return parseSqueueText((await this.run(['squeue', '-h', '-t', 'all', '-o', SQUEUE_TEXT_FORMAT])).stdout);
    } catch (e) {
      const text = commandText(e);
      if (jobId && !noExitCode(e) && isUnknownJobError(text)) return [];
      throw batchUnavailable('slurm', jobId ? `scontrol show job ${jobId}` : 'squeue', text);
    }
  }

  /** The accounting record of a job the controller has purged; `[]` when the site keeps no accounting. */
  private async accounting(jobId: string): Promise<SlurmJobFields[]> {
    if (this.sacct === false) return [];
    try {
      const r = await this.run(['sacct', '-n', '-P', '-X', '-j', jobId, '-o', 'JobID,JobName,State,ExitCode,NodeList']);
      if (/accounting storage is disabled/i.test(r.stdout + r.stderr)) {
        this.sacct = false;
        return [];
      }
      this.sacct = true;
      return parseSacct(r.stdout);
    } catch (e) {
      const text = commandText(e);
      // Measured on 22.05 without accounting: exit 1, "Slurm accounting storage is disabled".
      if (/accounting storage is disabled|not found|could not run/i.test(text)) {
        this.sacct = false;
        return [];
      }
      throw batchUnavailable('slurm', `sacct -j ${jobId}`, text);
    }
  }
}

function checkJobId(jobId: string): void {
  if (!/^\d+(_\d+)?$/.test(jobId)) throw invalidJobField('jobId', `not a Slurm job id: "${jobId}"`);
}

/** The request field Slurm objected to, with the value it was given, for the refusal's message. */
function describeField(field: string | undefined, job: PilotJobRequest, o: SlurmOptions): string | undefined {
  switch (field) {
    case 'partition':
      return `partition "${job.partition ?? o.partition ?? '(default)'}"`;
    case 'node':
      return `node "${job.node ?? '(any)'}"`;
    case 'constraints':
      return `constraints "${mergedConstraints(job, o).join('&')}"`;
    case 'account':
      return `account "${job.account ?? o.account ?? '(default)'}"`;
    case undefined:
      return undefined;
    default:
      return field;
  }
}

function mergedConstraints(job: PilotJobRequest, o: SlurmOptions): string[] {
  return [...new Set([...(o.constraints ?? []), ...(job.constraints ?? [])])];
}

/**
 * The sbatch options for a validated request (pure, unit-tested): name, node, the node to itself,
 * partition, features, account, time limit in whole minutes after padding, memory, CPUs, the pre-end
 * signal to the batch shell (`B:`), output and working directory. One node, one task, never requeued: the pilot is one process per
 * node, for one slot.
 */
export function sbatchArgs(job: PilotJobRequest, o: SlurmOptions = {}): string[] {
  // Never requeued: a pilot belongs to one slot, and a requeued one would start later for a slot vws has
  // already released, holding the node's memory for nothing until its time ran out.
  const args = [`--job-name=${job.name}`, '--nodes=1', '--ntasks=1', '--no-requeue'];
  if (job.node) args.push(`--nodelist=${job.node}`);
  if (job.exclusive) args.push('--exclusive');
  const partition = job.partition ?? o.partition;
  if (partition) args.push(`--partition=${partition}`);
  const features = mergedConstraints(job, o);
  if (features.length) args.push(`--constraint=${features.join('&')}`);
  const account = job.account ?? o.account;
  if (account) args.push(`--account=${account}`);
  const seconds = paddedWalltimeSeconds(job.walltimeSeconds, o.walltimePaddingSeconds ?? 0, 60);
  args.push(`--time=${seconds / 60}`);
  if (job.memoryMiB) args.push(`--mem=${job.memoryMiB}M`);
  if (job.cpus) args.push(`--cpus-per-task=${job.cpus}`);
  if (job.signalBeforeEnd) args.push(`--signal=B:${job.signalBeforeEnd.signal}@${job.signalBeforeEnd.seconds}`);
  if (job.outputFile) args.push(`--output=${job.outputFile}`);
  args.push(`--chdir=${job.workDir ?? '/tmp'}`);
  return args;
}
