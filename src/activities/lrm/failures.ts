/** The typed failures every batch-system adapter throws, so the pilot-slot workflow decides on types, not text. */
import { ApplicationFailure } from '@temporalio/common';
import { CommandError } from '../../exec/executor';
import { FailureType } from '../../domain/errors';

/** A request field that no batch system would accept: non-retryable, names the field. */
export function invalidJobField(field: string, message: string): ApplicationFailure {
  return ApplicationFailure.create({ type: FailureType.InvalidSpec, nonRetryable: true, message: `pilot job ${field}: ${message}` });
}

/**
 * The batch system refused the job. `what` names the request field the batch system objected to, with its
 * value, when the error says which (`partition "nosuch"`); the batch system's own words are kept.
 */
export function submitRefused(system: string, jobName: string, batchMessage: string, what?: string): ApplicationFailure {
  return ApplicationFailure.create({
    type: FailureType.BatchSubmitRefused,
    nonRetryable: true,
    message: `${system} refused pilot job ${jobName}${what ? ` (${what})` : ''}: ${batchMessage}`,
    details: [{ system, jobName, what: what ?? null, batchMessage }],
  });
}

/** The batch system did not answer; retryable. */
export function batchUnavailable(system: string, action: string, cause: string): ApplicationFailure {
  return ApplicationFailure.create({ type: FailureType.BatchSystemUnavailable, message: `${system} ${action}: ${cause}` });
}

/** The text a failed command printed (stderr, else stdout), one line per message, trimmed. */
export function commandText(e: unknown): string {
  if (e instanceof CommandError) return e.stderr.trim() || e.message;
  return e instanceof Error ? e.message : String(e);
}

/** True when the command did not run to an exit code (spawn failure, our own timeout). */
export function noExitCode(e: unknown): boolean {
  return e instanceof CommandError && e.code === null;
}
