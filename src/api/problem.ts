/** RFC 9457 problem details: every error the API sends is one of these. */
import type { Response } from 'express';
import type { FieldProblem } from '../domain/requests';

/** A problem the API answers with; thrown by handlers, rendered by the error middleware. */
export class HttpProblem extends Error {
  override name = 'HttpProblem';
  constructor(
    readonly status: number,
    readonly title: string,
    detail: string,
    readonly extra: { errors?: FieldProblem[]; state?: string; task?: string | null } = {},
  ) {
    super(detail);
  }
}

/** Writes a problem+json response. */
export function sendProblem(res: Response, p: HttpProblem): void {
  res
    .status(p.status)
    .type('application/problem+json')
    .json({ type: 'about:blank', title: p.title, status: p.status, detail: p.message, ...p.extra });
}
