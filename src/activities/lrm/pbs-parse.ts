/**
 * Pure parsers of PBS command output, for both families: TORQUE (`qstat -f`, `exit_status`, completed jobs
 * in state `C`) and PBS Professional/OpenPBS (`qstat -x -f`, `Exit_status`, finished jobs in state `F`).
 * No PBS can be installed on the testbed (no TORQUE or OpenPBS package exists for Debian bookworm), so
 * these are tested only against outputs written from the TORQUE 6 and PBS Pro 2021 documentation
 * (test/fixtures/pbs/README.md), never against a running server.
 */
import type { BatchEndOutcome, BatchJobStatus, BatchJobSummary } from './types';

/** Which PBS: the families differ in `qstat -x`, exit-status names and resource syntax. */
export type PbsFlavor = 'torque' | 'pbspro';

/** A PBS job id: `1234.server`, `1234[].server` for arrays. */
export const PBS_JOB_ID = /^\d+(\[\d*\])?(\.[A-Za-z0-9._-]+)?$/;

/** `qsub` prints the new job's id on its last line. */
export function parseQsubOutput(stdout: string): string {
  const id = stdout.trim().split('\n').pop()?.trim() ?? '';
  if (!PBS_JOB_ID.test(id)) throw new Error(`qsub printed no job id: "${stdout.trim().slice(0, 200)}"`);
  return id;
}

/**
 * `qstat -f` output: `Job Id: ID` blocks of `    key = value` lines. Long values are wrapped onto lines
 * that start with a tab; the wrap point is arbitrary, so continuation text is joined without a separator.
 */
export function parseQstatFull(text: string): Array<Record<string, string>> {
  const jobs: Array<Record<string, string>> = [];
  let cur: Record<string, string> | undefined;
  let lastKey: string | undefined;
  for (const line of text.split('\n')) {
    const head = /^Job Id:\s*(\S+)/.exec(line);
    if (head) {
      cur = { 'Job Id': head[1] };
      jobs.push(cur);
      lastKey = undefined;
      continue;
    }
    if (!cur) continue;
    if (line.startsWith('\t') && lastKey) {
      cur[lastKey] += line.slice(1).replace(/\r$/, '');
      continue;
    }
    const kv = /^\s+([A-Za-z_][A-Za-z0-9_.]*) = ?(.*)$/.exec(line);
    if (kv) {
      lastKey = kv[1];
      cur[lastKey] = kv[2].replace(/\r$/, '');
    }
  }
  return jobs;
}

/** `HH:MM:SS` (hours may exceed 24; `DD:HH:MM:SS` too) as seconds; undefined if not a duration. */
export function parseDuration(s: string | undefined): number | undefined {
  if (!s || !/^\d+(:\d+){0,3}$/.test(s)) return undefined;
  return s.split(':').reduce((acc, part, i, all) => acc + Number(part) * [1, 60, 3600, 86400][all.length - 1 - i], 0);
}

/** Seconds as PBS's `HH:MM:SS`. */
export function formatDuration(seconds: number): string {
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  return [h, m, s].map((n) => String(n).padStart(2, '0')).join(':');
}

/** A PBS time: Unix seconds (TORQUE's `start_time`) or a ctime string (`stime = Tue Dec  1 17:44:12 2026`, local). */
export function pbsTime(s: string | undefined): number | undefined {
  if (!s) return undefined;
  if (/^\d{9,}$/.test(s)) return Number(s);
  const m = /^\w{3} (\w{3})\s+(\d{1,2}) (\d\d:\d\d:\d\d) (\d{4})$/.exec(s.trim());
  if (!m) return undefined;
  const t = new Date(`${m[1]} ${m[2]}, ${m[4]} ${m[3]}`).getTime();
  return Number.isNaN(t) ? undefined : Math.round(t / 1000);
}

/** The hosts of `exec_host` (`vmm1/0+vmm1/1`, `vmm2/0*4`), unique, joined with `+`. */
export function execHosts(s: string | undefined): string | undefined {
  if (!s) return undefined;
  const hosts = [...new Set(s.split('+').map((h) => h.split('/')[0]).filter(Boolean))];
  return hosts.length ? hosts.join('+') : undefined;
}

const QUEUED = new Set(['Q', 'H', 'W', 'T', 'M']);
const RUNNING = new Set(['R', 'S', 'U', 'B']);
const ENDED = new Set(['C', 'F', 'X']);

/**
 * Negative exit statuses are the server's own (`JOB_EXEC_*`): PBS Pro's -29 and TORQUE's -11 mean the
 * walltime limit killed the job, -27/-10 the memory limit. Codes above 256 mean "killed by signal
 * (code − 256)", which is also what qdel and preemption look like: PBS does not name the cause.
 */
function endOutcome(flavor: PbsFlavor, code: number | undefined, timedOut: boolean): { outcome: BatchEndOutcome; exitCode?: number; signal?: number } {
  if (code === undefined) return { outcome: 'other' };
  const walltime = flavor === 'pbspro' ? -29 : -11;
  const memory = flavor === 'pbspro' ? -27 : -10;
  if (code === walltime) return { outcome: 'timeout' };
  if (code === memory) return { outcome: 'out-of-memory' };
  if (code < 0) return { outcome: 'other', exitCode: code };
  if (code > 256) return { outcome: timedOut ? 'timeout' : 'killed', signal: code - 256 };
  return code === 0 ? { outcome: 'completed', exitCode: 0 } : { outcome: 'failed', exitCode: code };
}

/** One `qstat -f` job as a vws status. */
export function pbsJobStatus(job: Record<string, string>, flavor: PbsFlavor): BatchJobSummary | Extract<BatchJobStatus, { state: 'unknown' }> {
  const jobId = job['Job Id'];
  const raw = job.job_state ?? '';
  const start = pbsTime(job.start_time ?? job.stime);
  const end = pbsTime(job.comp_time ?? job.obittime);
  const common = {
    jobId,
    ...(job.Job_Name !== undefined ? { name: job.Job_Name } : {}),
    ...(execHosts(job.exec_host) ? { nodes: execHosts(job.exec_host) } : {}),
    rawState: raw,
    ...(job.comment ? { reason: job.comment } : {}),
    ...(start ? { startTime: start } : {}),
    ...(end ? { endTime: end } : {}),
  };
  if (QUEUED.has(raw)) return { ...common, state: 'queued' };
  if (RUNNING.has(raw)) return { ...common, state: 'running' };
  if (raw === 'E') return { ...common, state: 'completing' };
  if (ENDED.has(raw)) {
    const rawCode = job.Exit_status ?? job.exit_status;
    const code = rawCode !== undefined && /^-?\d+$/.test(rawCode.trim()) ? Number(rawCode) : undefined;
    const used = parseDuration(job['resources_used.walltime']);
    const limit = parseDuration(job['Resource_List.walltime']);
    const timedOut = used !== undefined && limit !== undefined && used >= limit;
    return { ...common, state: 'ended', ...endOutcome(flavor, code, timedOut) };
  }
  return { state: 'unknown', jobId, rawState: raw };
}

/** True when a PBS command says the server does not know the job (`Unknown Job Id`, exit 153). */
export function isPbsUnknownJob(text: string): boolean {
  return /Unknown Job Id/i.test(text);
}

/** True when qdel/qsig found the job already finished or on its way out (PBS Pro exit 35, TORQUE "invalid state … COMPLETE"). */
export function isPbsAlreadyEnded(text: string): boolean {
  return /Job has finished|invalid state for job - (COMPLETE|EXITING)|Request invalid for state of job.*(COMPLETE|EXIT)/i.test(text);
}

/** Why qsub failed; as for sbatch, unknown errors are refusals so they are not retried forever. */
export function classifyQsubError(text: string): { kind: 'refused' | 'unavailable'; field?: string; message: string } {
  const message = text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .join('; ');
  if (/cannot connect to server|Connection refused|could not connect|timed out|pbs_connect|No route to host/i.test(text)) return { kind: 'unavailable', message };
  const fields: Array<[RegExp, string]> = [
    [/Unknown queue|queue.*(not found|disabled|not enabled|not started)/i, 'partition'],
    [/Invalid Account|account/i, 'account'],
    [/Unknown resource/i, 'constraints'],
    [/Unknown node|host=|cannot locate feasible nodes/i, 'node'],
    [/walltime/i, 'walltimeSeconds'],
    [/mem\b|memory/i, 'memoryMiB'],
  ];
  return { kind: 'refused', field: fields.find(([re]) => re.test(text))?.[1], message: message || 'qsub failed without a message' };
}
