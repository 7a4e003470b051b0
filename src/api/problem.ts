/** RFC 9457 problem details: every error the API sends is one of these. */
import type { Response } from 'express';
import { WorkflowUpdateFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import type { FailureTypeName } from '../domain/errors';
import type { FieldProblem } from '../domain/requests';

/** Extra members of a problem: the fields at fault, the state that refused, the kind of refusal. */
export interface ProblemExtra {
  /**
   * The problem type (RFC 9457 `type`): `urn:vws:problem:<FailureType>` for refusals a client can act on
   * (PolicyViolation, NoCapacity, QuotaExceeded, …); absent: `about:blank`, the status says it all.
   */
  type?: string;
  errors?: FieldProblem[];
  state?: string;
  task?: string | null;
  /** Anything else a problem wants to name (e.g. the quota or limit that refused). */
  [member: string]: unknown;
}

/** The problem type URI of a failure type (or of an API-level refusal such as `IdempotencyKeyReused`). */
export function problemType(failure: FailureTypeName | 'IdempotencyKeyReused' | 'Forbidden'): string {
  return `urn:vws:problem:${failure}`;
}

/** Status and title of the failure types a client can act on; the rest are the server's problem. */
const FAILURE_STATUS: Partial<Record<FailureTypeName, { status: number; title: string }>> = {
  InvalidSpec: { status: 400, title: 'Invalid request' },
  PolicyViolation: { status: 400, title: 'Invalid request' },
  ImageNotFound: { status: 400, title: 'Invalid request' },
  SourceUnavailable: { status: 400, title: 'Invalid request' },
  NoCapacity: { status: 409, title: 'No capacity' },
  QuotaExceeded: { status: 403, title: 'Quota exceeded' },
  OperationNotAllowed: { status: 409, title: 'Operation not allowed' },
};

/**
 * The problem for a typed failure (an `ApplicationFailure`, or a failed Update that carries one): the
 * allocator's refusals and the workflows' validators; null for anything else (a server error).
 */
export function failureProblem(e: unknown, extra: ProblemExtra = {}): HttpProblem | null {
  const failure = e instanceof WorkflowUpdateFailedError ? e.cause : e;
  if (!(failure instanceof ApplicationFailure) || !failure.type) return null;
  const known = FAILURE_STATUS[failure.type as FailureTypeName];
  if (!known) return null;
  return new HttpProblem(known.status, known.title, failure.message, { type: problemType(failure.type as FailureTypeName), ...extra });
}

/** A problem the API answers with; thrown by handlers, rendered by the error middleware. */
export class HttpProblem extends Error {
  override name = 'HttpProblem';
  constructor(
    readonly status: number,
    readonly title: string,
    detail: string,
    readonly extra: ProblemExtra = {},
  ) {
    super(detail);
  }
}

/** Writes a problem+json response. */
export function sendProblem(res: Response, p: HttpProblem): void {
  const { type, ...rest } = p.extra;
  res
    .status(p.status)
    .type('application/problem+json')
    .json({ type: type ?? 'about:blank', title: p.title, status: p.status, detail: p.message, ...rest });
}
