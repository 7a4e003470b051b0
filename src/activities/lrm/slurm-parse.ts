/**
 * Pure parsers of Slurm's command output, unit-tested against outputs recorded from the testbed's Slurm
 * 22.05 (test/fixtures/slurm/). The JSON parser also reads the shapes of later Slurm releases (data
 * parser v0.0.39+: `job_state` as a list, times and exit codes as objects), so a site upgrade does not
 * silently turn every job into `unknown`.
 */
import type { BatchEndOutcome, BatchJobStatus, BatchJobSummary } from './types';

/** `sbatch --parsable` prints `<id>` or `<id>;<cluster>`; anything else means sbatch did not submit. */
export function parseSbatchParsable(stdout: string): string {
  const line = stdout.trim().split('\n').pop() ?? '';
  const id = line.split(';')[0].trim();
  if (!/^\d+$/.test(id)) throw new Error(`sbatch --parsable printed no job id: "${stdout.trim().slice(0, 200)}"`);
  return id;
}

/** Why sbatch failed, and which request field Slurm objected to when its message says. */
export interface SbatchFailure {
  /** `refused`: the request will be refused again; `unavailable`: the controller did not answer. */
  kind: 'refused' | 'unavailable';
  /** The request field involved (`partition`, `node`, `constraints`, `account`, ...), when known. */
  field?: string;
  /** Slurm's own error lines, without the `sbatch: error:` prefixes. */
  message: string;
}

const UNAVAILABLE = /Unable to contact slurm controller|Unable to process configuration file|Socket timed out|Zero Bytes were transmitted|Connection refused|Communication connection failure|Slurm backup controller in standby|Transport endpoint/i;

// Order matters: 22.05 reports an unsatisfiable --mem as "Memory specification can not be satisfied"
// followed by the generic "Requested node configuration is not available".
const FIELD_OF: Array<[RegExp, string]> = [
  [/memory specification/i, 'memoryMiB'],
  [/invalid partition/i, 'partition'],
  [/invalid node name|node.*not (in|part of) partition|Requested node configuration is not available/i, 'node'],
  [/invalid feature|feature specification/i, 'constraints'],
  [/invalid account|account.*(not|invalid)/i, 'account'],
  [/time limit|--time/i, 'walltimeSeconds'],
  [/processors|cpu count|cpus/i, 'cpus'],
  [/--signal/i, 'signalBeforeEnd'],
];

/** Classifies sbatch's stderr; unknown errors count as refusals, so an unexpected answer is not retried forever. */
export function classifySbatchError(stderr: string): SbatchFailure {
  const message = stderr
    .split('\n')
    .map((l) => l.replace(/^sbatch: error: /, '').trim())
    .filter(Boolean)
    .join('; ');
  if (UNAVAILABLE.test(stderr)) return { kind: 'unavailable', message };
  const field = FIELD_OF.find(([re]) => re.test(stderr))?.[1];
  return { kind: 'refused', field, message: message || 'sbatch failed without a message' };
}

/** True when a Slurm command's error says the job id is unknown to the controller (never existed or purged). */
export function isUnknownJobError(text: string): boolean {
  return /Invalid job id specified|Invalid job id|Unknown job/i.test(text);
}

/** True when scancel's error says the job has already ended (idempotent cancel counts it as success). */
export function isAlreadyEndedError(text: string): boolean {
  return /already completing or completed|Job\/step already completing|Job has already finished|job.*not (running|active)/i.test(text);
}

const QUEUED = new Set(['PENDING', 'CONFIGURING', 'REQUEUED', 'REQUEUE_HOLD', 'REQUEUE_FED', 'RESV_DEL_HOLD']);
const RUNNING = new Set(['RUNNING', 'SUSPENDED', 'STOPPED', 'RESIZING', 'SIGNALING', 'STAGE_OUT', 'UPDATE_DB', 'POWER_UP_NODE']);
const ENDED: Record<string, BatchEndOutcome> = {
  COMPLETED: 'completed',
  FAILED: 'failed',
  SPECIAL_EXIT: 'failed',
  CANCELLED: 'cancelled',
  TIMEOUT: 'timeout',
  DEADLINE: 'timeout',
  NODE_FAIL: 'node-fail',
  BOOT_FAIL: 'node-fail',
  PREEMPTED: 'preempted',
  OUT_OF_MEMORY: 'out-of-memory',
  REVOKED: 'other',
};

/** The fields a Slurm job report gives, whatever the command; times in Unix seconds. */
export interface SlurmJobFields {
  jobId: string;
  name?: string;
  /** Base state, then flags (`['CANCELLED', 'COMPLETING']` in later releases; 22.05 gives one word). */
  states: string[];
  reason?: string;
  nodes?: string;
  startTime?: number;
  endTime?: number;
  exitCode?: number;
  signal?: number;
}

/**
 * Maps a Slurm job to the vws status. A job still `COMPLETING` (in any release's spelling) is not ended:
 * its processes may still run on the node until KillWait's SIGKILL.
 */
export function slurmJobStatus(f: SlurmJobFields): BatchJobSummary | Extract<BatchJobStatus, { state: 'unknown' }> {
  const raw = f.states.join(',');
  const common = {
    jobId: f.jobId,
    ...(f.name !== undefined ? { name: f.name } : {}),
    ...(f.nodes ? { nodes: f.nodes } : {}),
    rawState: raw,
    ...(f.reason && f.reason !== 'None' ? { reason: f.reason } : {}),
    ...(f.startTime ? { startTime: f.startTime } : {}),
    ...(f.endTime ? { endTime: f.endTime } : {}),
  };
  const base = f.states[0] ?? '';
  if (f.states.includes('COMPLETING')) return { ...common, state: 'completing' };
  if (QUEUED.has(base)) return { ...common, state: 'queued' };
  if (RUNNING.has(base)) return { ...common, state: 'running' };
  const outcome = ENDED[base];
  if (outcome) {
    return {
      ...common,
      state: 'ended',
      outcome,
      ...(f.exitCode !== undefined ? { exitCode: f.exitCode } : {}),
      ...(f.signal ? { signal: f.signal } : {}),
    };
  }
  return { state: 'unknown', jobId: f.jobId, rawState: raw };
}

/** A wait(2) status (what 22.05's JSON `exit_code` holds) as exit code or signal. */
export function decodeWaitStatus(status: number): { exitCode?: number; signal?: number } {
  const sig = status & 0x7f;
  return sig ? { signal: sig } : { exitCode: (status >> 8) & 0xff };
}

type Json = Record<string, unknown>;

/** A number from 22.05 (plain) or later releases (`{ set, infinite, number }`); undefined when unset. */
function num(v: unknown): number | undefined {
  if (typeof v === 'number') return v;
  if (v && typeof v === 'object') {
    const o = v as Json;
    if (o.set === false || o.infinite === true) return undefined;
    if (typeof o.number === 'number') return o.number;
  }
  return undefined;
}

function exitOf(v: unknown): { exitCode?: number; signal?: number } {
  if (typeof v === 'number') return decodeWaitStatus(v);
  if (v && typeof v === 'object') {
    const o = v as Json;
    const signal = num((o.signal as Json | undefined)?.id ?? (o.signal as Json | undefined)?.signal_id);
    const code = num(o.return_code);
    return { ...(code !== undefined ? { exitCode: code } : {}), ...(signal ? { signal } : {}) };
  }
  return {};
}

function statesOf(v: unknown): string[] {
  if (Array.isArray(v)) return v.map(String);
  if (typeof v === 'string') return v.split(/[,+]/).filter(Boolean);
  return [];
}

/** One job object of `squeue --json`. */
export function squeueJsonJob(j: Json): SlurmJobFields {
  const start = num(j.start_time);
  const end = num(j.end_time);
  return {
    jobId: String(num(j.job_id) ?? j.job_id),
    ...(typeof j.name === 'string' ? { name: j.name } : {}),
    states: statesOf(j.job_state),
    ...(typeof j.state_reason === 'string' ? { reason: j.state_reason } : {}),
    ...(typeof j.nodes === 'string' && j.nodes ? { nodes: j.nodes } : {}),
    ...(start ? { startTime: start } : {}),
    ...(end ? { endTime: end } : {}),
    ...exitOf(j.exit_code),
  };
}

/**
 * Every job in `squeue --json` output. Slurm 22.05 ignores `-j`/`-n` filters with `--json` (measured on
 * the testbed: `squeue --json -j 6` lists all jobs), so callers filter the result themselves.
 * @throws if the output is not squeue's JSON or reports errors.
 */
export function parseSqueueJson(text: string): SlurmJobFields[] {
  let doc: Json;
  try {
    doc = JSON.parse(text) as Json;
  } catch (e) {
    throw new Error(`squeue --json printed no JSON: ${(e as Error).message}`);
  }
  const errors = Array.isArray(doc.errors) ? (doc.errors as Json[]) : [];
  if (errors.length) {
    const texts = errors.map((e) => String(e.description ?? e.error ?? JSON.stringify(e)));
    throw new Error(`squeue --json reported errors: ${texts.join('; ')}`);
  }
  if (!Array.isArray(doc.jobs)) throw new Error('squeue --json printed no "jobs" list');
  return (doc.jobs as Json[]).map(squeueJsonJob);
}

/**
 * One line of `scontrol show job -o`: `Key=Value` pairs separated by spaces. Keys contain `:` and `/`
 * (`AllocNode:Sid`, `CPUs/Task`), values may contain spaces (a command path), so a pair starts only where a
 * space is followed by a key and `=`.
 */
export function parseScontrolLine(line: string): Record<string, string> {
  const out: Record<string, string> = {};
  const parts = line.trim().split(/ (?=[A-Za-z][A-Za-z0-9_:/]*=)/);
  for (const p of parts) {
    const eq = p.indexOf('=');
    if (eq > 0) out[p.slice(0, eq)] = p.slice(eq + 1).trim();
  }
  return out;
}

/** Slurm's local time stamp (`2026-12-01T17:44:12`) as Unix seconds in this process's zone; undefined for `Unknown`, `None`, `N/A`. */
export function slurmTime(s: string | undefined): number | undefined {
  if (!s || !/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$/.test(s)) return undefined;
  const t = new Date(s).getTime();
  return Number.isNaN(t) ? undefined : Math.round(t / 1000);
}

/** The jobs of `scontrol show job -o` output (one per line; empty lines skipped). */
export function parseScontrolJobs(text: string): SlurmJobFields[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith('JobId='))
    .map((l) => {
      const kv = parseScontrolLine(l);
      const [code, sig] = (kv.ExitCode ?? '').split(':').map((n) => Number(n));
      const start = slurmTime(kv.StartTime);
      const end = slurmTime(kv.EndTime);
      return {
        jobId: kv.JobId,
        ...(kv.JobName !== undefined ? { name: kv.JobName } : {}),
        states: statesOf(kv.JobState),
        ...(kv.Reason ? { reason: kv.Reason } : {}),
        ...(kv.NodeList && kv.NodeList !== '(null)' ? { nodes: kv.NodeList } : {}),
        ...(start ? { startTime: start } : {}),
        ...(end ? { endTime: end } : {}),
        ...(Number.isInteger(code) ? { exitCode: code } : {}),
        ...(sig ? { signal: sig } : {}),
      };
    });
}

/** The `squeue -h -o` format of the text fallback: name last, so a `|` in another user's job name cannot shift fields. */
export const SQUEUE_TEXT_FORMAT = '%i|%T|%r|%N|%j';

/** Jobs of `squeue -h -o SQUEUE_TEXT_FORMAT` (Slurm without `--json`); no exit codes or times in this format. */
export function parseSqueueText(text: string): SlurmJobFields[] {
  return text
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => {
      const [jobId, state, reason, nodes, ...name] = l.split('|');
      return {
        jobId: jobId.trim(),
        name: name.join('|'),
        states: statesOf(state.trim()),
        ...(reason ? { reason } : {}),
        ...(nodes ? { nodes } : {}),
      };
    });
}

/**
 * Jobs of `sacct -n -P -X -o JobID,JobName,State,ExitCode,NodeList` (accounting on): the record of jobs
 * the controller has purged. `State` may read `CANCELLED by 0`; `ExitCode` is `code:signal`.
 */
export function parseSacct(text: string): SlurmJobFields[] {
  return text
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => {
      const [jobId, name, state, exit, nodes] = l.split('|');
      const [code, sig] = (exit ?? '').split(':').map((n) => Number(n));
      return {
        jobId,
        name,
        states: [state.split(' ')[0]],
        ...(nodes && nodes !== 'None assigned' ? { nodes } : {}),
        ...(Number.isInteger(code) ? { exitCode: code } : {}),
        ...(sig ? { signal: sig } : {}),
      };
    });
}
