/**
 * The PBS adapter (TORQUE and PBS Professional/OpenPBS): `qsub`, `qdel`, `qsig`, `qstat -f`, as argv
 * through the injected {@link Executor}. Same interface and guarantees as the Slurm adapter. It has been
 * tested only against recorded command outputs (test/fixtures/pbs/): no PBS can run on the testbed.
 */
import type { CommandResult, Executor } from '../../exec/executor';
import { batchUnavailable, commandText, invalidJobField, noExitCode, submitRefused } from './failures';
import { classifyQsubError, formatDuration, isPbsAlreadyEnded, isPbsUnknownJob, parseQstatFull, parseQsubOutput, pbsJobStatus, PBS_JOB_ID, type PbsFlavor } from './pbs-parse';
import { argvBatchScript, paddedWalltimeSeconds, validateJobRequest, validateSignal } from './request';
import type { BatchCapabilities, BatchJobStatus, BatchJobSummary, BatchSystem, CancelOptions, ListOptions, PilotJobRequest } from './types';

/** Site settings of the PBS adapter (the `lrm` config section, kind `pbs`). */
export interface PbsOptions {
  flavor?: PbsFlavor;
  /** Queue used when a request names none. */
  queue?: string;
  /** Node properties every pilot job requires, in addition to the request's. */
  constraints?: string[];
  account?: string;
  /** Seconds added to each pilot's time (PBS counts seconds: no rounding beyond that). */
  walltimePaddingSeconds?: number;
  /** `PBS_DEFAULT` (the server) for every command; absent: the client's default. */
  server?: string;
  /** Limit for each PBS command (default 30 s). */
  commandTimeoutMs?: number;
}

/** PBS through one executor. */
export class PbsBatchSystem implements BatchSystem {
  readonly kind = 'pbs';
  /** PBS has no portable "signal before the limit" (Slurm's `--signal`): the pilot must time its own end. */
  readonly capabilities: BatchCapabilities = { signalBeforeEnd: false, walltimeGranularitySeconds: 1 };

  constructor(
    private readonly exec: Executor,
    private readonly options: PbsOptions = {},
  ) {}

  private get flavor(): PbsFlavor {
    return this.options.flavor ?? 'torque';
  }

  private run(argv: string[], input?: string): Promise<CommandResult> {
    const full = this.options.server ? ['env', `PBS_DEFAULT=${this.options.server}`, ...argv] : argv;
    return this.exec.run(full, { timeoutMs: this.options.commandTimeoutMs ?? 30_000, ...(input !== undefined ? { input } : {}) });
  }

  async submit(job: PilotJobRequest): Promise<{ jobId: string }> {
    validateJobRequest(job);
    const args = qsubArgs(job, this.options);
    const script = job.command.kind === 'argv' ? argvBatchScript(job.command.argv, '/bin/sh', job.workDir ?? '/tmp') : undefined;
    let result: CommandResult;
    try {
      result = await this.run(['qsub', ...args, ...(job.command.kind === 'script' ? [job.command.path] : [])], script);
    } catch (e) {
      const text = commandText(e);
      const failure = classifyQsubError(text);
      if (noExitCode(e) || failure.kind === 'unavailable') throw batchUnavailable('pbs', `qsub for ${job.name}`, text);
      const props = [...new Set([...(this.options.constraints ?? []), ...(job.constraints ?? [])])];
      const value =
        failure.field === 'partition'
          ? `queue "${job.partition ?? this.options.queue ?? '(default)'}"`
          : failure.field === 'node'
            ? `node "${job.node ?? '(any)'}"${props.length ? ` with properties "${props.join(':')}"` : ''}`
            : failure.field === 'constraints'
              ? `constraints "${props.join(':')}"`
              : failure.field;
      throw submitRefused('pbs', job.name, failure.message, value);
    }
    return { jobId: parseQsubOutput(result.stdout) };
  }

  /** `qdel ID`, or `qsig -s SIG ID`; a finished or unknown job is success, and so is signalling a queued one. */
  async cancel(jobId: string, options: CancelOptions = {}): Promise<void> {
    checkJobId(jobId);
    if (options.signal !== undefined) validateSignal(options.signal);
    const argv = options.signal ? ['qsig', '-s', options.signal, jobId] : ['qdel', jobId];
    try {
      await this.run(argv);
    } catch (e) {
      const text = commandText(e);
      if (!noExitCode(e) && (isPbsUnknownJob(text) || isPbsAlreadyEnded(text))) return;
      if (options.signal && !noExitCode(e)) {
        const now = await this.status(jobId);
        if (now.state === 'queued' || now.state === 'ended' || now.state === 'unknown') return;
      }
      throw batchUnavailable('pbs', `${argv[0]} ${jobId}`, text);
    }
  }

  /** TORQUE: `qstat -f ID` (completed jobs stay as `C` for keep_completed); PBS Pro: `qstat -x -f ID` (history). */
  async status(jobId: string): Promise<BatchJobStatus> {
    checkJobId(jobId);
    const argv = this.flavor === 'pbspro' ? ['qstat', '-x', '-f', jobId] : ['qstat', '-f', jobId];
    try {
      const jobs = parseQstatFull((await this.run(argv)).stdout);
      const job = jobs.find((j) => j['Job Id'] === jobId || j['Job Id'].split('.')[0] === jobId.split('.')[0]);
      return job ? pbsJobStatus(job, this.flavor) : { state: 'unknown', jobId };
    } catch (e) {
      const text = commandText(e);
      if (!noExitCode(e) && isPbsUnknownJob(text)) return { state: 'unknown', jobId };
      throw batchUnavailable('pbs', `qstat ${jobId}`, text);
    }
  }

  async listByPrefix(prefix: string, options: ListOptions = {}): Promise<BatchJobSummary[]> {
    // TORQUE's `-x` means XML, not history; its `qstat -f` already includes completed jobs.
    const argv = this.flavor === 'pbspro' && options.includeEnded ? ['qstat', '-x', '-f'] : ['qstat', '-f'];
    let text: string;
    try {
      text = (await this.run(argv)).stdout;
    } catch (e) {
      throw batchUnavailable('pbs', 'qstat -f', commandText(e));
    }
    return parseQstatFull(text)
      .filter((j) => j.Job_Name?.startsWith(prefix))
      .map((j) => pbsJobStatus(j, this.flavor))
      .filter((s): s is BatchJobSummary => s.state !== 'unknown' && (options.includeEnded || s.state !== 'ended'));
  }
}

function checkJobId(jobId: string): void {
  if (!PBS_JOB_ID.test(jobId)) throw invalidJobField('jobId', `not a PBS job id: "${jobId}"`);
}

/**
 * The qsub options for a request (pure, unit-tested). TORQUE places the job with
 * `-l nodes=<node or 1>:ppn=N[:property…]`, PBS Pro with `-l select=1:ncpus=N[:mem=…][:host=node][:property=True]`
 * (properties are boolean custom resources there). Refuses what PBS cannot carry: a pre-end signal,
 * script arguments, environment values with commas or line breaks (`-v` splits on commas).
 */
export function qsubArgs(job: PilotJobRequest, o: PbsOptions = {}): string[] {
  if (job.signalBeforeEnd) throw invalidJobField('signalBeforeEnd', 'PBS has no signal before the walltime limit; the pilot must end itself on time');
  if (job.command.kind === 'script' && job.command.args?.length) throw invalidJobField('command.args', 'PBS cannot pass arguments to a batch script portably; use an argv command');
  const flavor = o.flavor ?? 'torque';
  // `-r n`: not rerunnable (never requeued), as the Slurm adapter's --no-requeue: a pilot is for one slot.
  const args = ['-N', job.name, '-r', 'n'];
  const queue = job.partition ?? o.queue;
  if (queue) args.push('-q', queue);
  const account = job.account ?? o.account;
  if (account) args.push('-A', account);
  const props = [...new Set([...(o.constraints ?? []), ...(job.constraints ?? [])])];
  const cpus = job.cpus ?? 1;
  if (flavor === 'torque') {
    args.push('-l', [`nodes=${job.node ?? '1'}`, `ppn=${cpus}`, ...props].join(':'));
    if (job.memoryMiB) args.push('-l', `mem=${job.memoryMiB}mb`);
    if (job.exclusive) args.push('-n');
  } else {
    const select = ['select=1', `ncpus=${cpus}`];
    if (job.memoryMiB) select.push(`mem=${job.memoryMiB}mb`);
    if (job.node) select.push(`host=${job.node}`);
    for (const p of props) select.push(`${p}=True`);
    args.push('-l', select.join(':'));
    if (job.exclusive) args.push('-l', 'place=excl');
  }
  args.push('-l', `walltime=${formatDuration(paddedWalltimeSeconds(job.walltimeSeconds, o.walltimePaddingSeconds ?? 0, 1))}`);
  if (job.outputFile) args.push('-j', 'oe', '-o', job.outputFile);
  if (flavor === 'torque') args.push('-d', job.workDir ?? '/tmp');
  const env = Object.entries(job.environment ?? {});
  for (const [k, v] of env) {
    if (/[,\n\r]/.test(v)) throw invalidJobField(`environment.${k}`, 'PBS cannot pass a value with a comma or line break (qsub -v splits on commas)');
  }
  if (env.length) args.push('-v', env.map(([k, v]) => `${k}=${v}`).join(','));
  return args;
}
