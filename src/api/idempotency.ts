/**
 * Idempotent creates. A create with an `Idempotency-Key` gets a public id derived from the owner and the
 * key, so its workflow id is fixed before anything happens: a repeat finds the workflow the first one
 * started (Temporal refuses a second start of the same id), and the allocator, which keys grants by the
 * holder's workflow id, hands a concurrent repeat the same grant. The validated body's hash travels in
 * the workflow's memo, so a repeat with another body is told apart. Pure, apart from randomness.
 */
import { createHash, randomBytes } from 'node:crypto';

/** The memo field that holds what a create answered, and the hash of the body that asked for it. */
export const CREATE_MEMO = 'vwsCreate';

/** What a create leaves in its workflow's memo. */
export interface CreateMemo {
  bodyHash: string;
  /** The create's answer, returned as is to every repeat. */
  answer: Record<string, unknown>;
}

/** JSON with object keys sorted, so equal values hash equally whatever order the client wrote them in. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/** sha256 (hex) of a validated body, independent of key order. */
export function bodyHash(body: unknown): string {
  return createHash('sha256').update(canonicalJson(body)).digest('hex');
}

/**
 * The 12 hex digits of a public id: from sha256(scope, owner, key) when the create has a key (so every
 * repeat names the same workflow; owners never share ids), random otherwise.
 */
export function idDigits(scope: string, owner: string, key: string | undefined): string {
  if (key === undefined) return randomBytes(6).toString('hex');
  return createHash('sha256').update(`${scope}\0${owner}\0${key}`).digest('hex').slice(0, 12);
}

/**
 * The member workspace ids of a group, derived from the group id: a repeated create of a keyed group
 * reserves for the same holders, so the allocator answers it with the same grants.
 */
export function memberIds(groupId: string, count: number): string[] {
  return Array.from({ length: count }, (_, i) => `ws-${createHash('sha256').update(`${groupId}\0member\0${i}`).digest('hex').slice(0, 12)}`);
}
