/**
 * Pure checks and arithmetic on a {@link PilotJobRequest}, shared by the adapters: field validation (each
 * error names the field), the padded and rounded time limit, and the generated batch script for argv
 * commands.
 */
import { shellQuote } from '../../exec/ssh';
import { invalidJobField } from './failures';
import type { PilotJobRequest } from './types';

const NAME = /^[A-Za-z0-9._-]{1,64}$/;
const WORD = /^[A-Za-z0-9._-]{1,128}$/;
const ACCOUNT = /^[A-Za-z0-9._@-]{1,128}$/;
const SIGNAL = /^[A-Z][A-Z0-9]{0,15}$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;

function absolutePath(field: string, p: string): void {
  if (!p.startsWith('/')) throw invalidJobField(field, `must be an absolute path, got "${p}"`);
  if (/[\0\n\r]/.test(p)) throw invalidJobField(field, 'must not contain NUL or line breaks');
}

function positiveInt(field: string, v: number | undefined, max = Number.MAX_SAFE_INTEGER): void {
  if (v === undefined) return;
  if (!Number.isInteger(v) || v < 1 || v > max) throw invalidJobField(field, `must be a whole number from 1 to ${max}, got ${v}`);
}

/**
 * Checks every field of `job`; throws a non-retryable `InvalidSpec` failure naming the first bad one.
 * The patterns are the intersection of what Slurm and PBS accept, so a request valid for one adapter is
 * valid for the other (adapter-only limits, like PBS's comma-free environment, are checked there).
 */
export function validateJobRequest(job: PilotJobRequest): void {
  if (!NAME.test(job.name ?? '')) throw invalidJobField('name', `must be 1-64 of A-Z a-z 0-9 . _ -, got "${job.name}"`);
  const c = job.command;
  if (c?.kind === 'script') {
    absolutePath('command.path', c.path);
    (c.args ?? []).forEach((a, i) => {
      if (a.includes('\0')) throw invalidJobField(`command.args[${i}]`, 'must not contain NUL');
    });
  } else if (c?.kind === 'argv') {
    if (!Array.isArray(c.argv) || c.argv.length === 0 || !c.argv[0]) throw invalidJobField('command.argv', 'must name a program');
    c.argv.forEach((a, i) => {
      if (a.includes('\0')) throw invalidJobField(`command.argv[${i}]`, 'must not contain NUL');
    });
  } else {
    throw invalidJobField('command', 'must be { kind: "script", path } or { kind: "argv", argv }');
  }
  if (job.node !== undefined && !WORD.test(job.node)) throw invalidJobField('node', `must be one node name, got "${job.node}"`);
  if (job.partition !== undefined && !WORD.test(job.partition)) throw invalidJobField('partition', `must be one partition/queue name, got "${job.partition}"`);
  (job.constraints ?? []).forEach((p, i) => {
    if (!WORD.test(p)) throw invalidJobField(`constraints[${i}]`, `must be a node property name, got "${p}"`);
  });
  if (job.account !== undefined && !ACCOUNT.test(job.account)) throw invalidJobField('account', `must be an account name, got "${job.account}"`);
  positiveInt('walltimeSeconds', job.walltimeSeconds);
  if (job.walltimeSeconds === undefined) throw invalidJobField('walltimeSeconds', 'is required');
  positiveInt('memoryMiB', job.memoryMiB);
  positiveInt('cpus', job.cpus, 4096);
  if (job.signalBeforeEnd) {
    const s = job.signalBeforeEnd;
    if (!SIGNAL.test(s.signal ?? '') || s.signal.startsWith('SIG')) throw invalidJobField('signalBeforeEnd.signal', `must be a signal name without SIG, like USR1, got "${s.signal}"`);
    // Slurm's --signal takes at most 65535 s.
    positiveInt('signalBeforeEnd.seconds', s.seconds, 65535);
  }
  if (job.outputFile !== undefined) absolutePath('outputFile', job.outputFile);
  if (job.workDir !== undefined) absolutePath('workDir', job.workDir);
  for (const [k, v] of Object.entries(job.environment ?? {})) {
    if (!ENV_NAME.test(k)) throw invalidJobField(`environment.${k}`, 'is not a valid variable name');
    if (typeof v !== 'string' || v.includes('\0')) throw invalidJobField(`environment.${k}`, 'must be a string without NUL');
  }
}

/** Checks a signal name given to cancel (same rule as `signalBeforeEnd.signal`). */
export function validateSignal(signal: string): void {
  if (!SIGNAL.test(signal) || signal.startsWith('SIG')) throw invalidJobField('signal', `must be a signal name without SIG, like USR1, got "${signal}"`);
}

/**
 * The time limit asked of the batch system: the pilot's time plus padding (so the pilot's own end, which
 * comes first, is never cut by the batch system's), rounded *up* to the batch system's granularity: Slurm
 * counts whole minutes, and rounding down would kill the pilot before its slot ends.
 */
export function paddedWalltimeSeconds(walltimeSeconds: number, paddingSeconds: number, granularitySeconds: number): number {
  const total = walltimeSeconds + Math.max(0, paddingSeconds);
  return Math.ceil(total / granularitySeconds) * granularitySeconds;
}

/**
 * The batch script for an argv command: `exec` of the quoted argv, so the pilot replaces the batch shell
 * and receives the batch system's signals itself (a shell in between would run its traps only after its
 * foreground child exits). The argv is quoted by {@link shellQuote} and nowhere else. With `workDir`, the
 * script changes there first (for batch systems without a working-directory option).
 */
export function argvBatchScript(argv: readonly string[], interpreter = '/bin/sh', workDir?: string): string {
  // PBS Pro has no working-directory option (jobs start in the home directory): the script moves there.
  const cd = workDir ? `cd ${shellQuote(workDir)} || exit 1\n` : '';
  return `#!${interpreter}\n# generated by vws: runs the pilot as the batch shell itself\n${cd}exec ${argv.map(shellQuote).join(' ')}\n`;
}
