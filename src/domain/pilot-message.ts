/**
 * The messages a pilot sends vws about its slot (seed 000's pilot notifications; Nimbus's reserved,
 * unreserving, earlyunreserving, error*): their shape, their validation, and the one canonical text a
 * signature covers. Pure, so the API, the pilot and the slot workflow read the same definition; the
 * signing itself (node:crypto) is in `src/pilot/message.ts`.
 */
import { z } from 'zod';

/** What happened to the slot, as the pilot on the node saw it. */
export const PILOT_EVENTS = ['reserved', 'unreserving', 'early-unreserving', 'error'] as const;
/** One of {@link PILOT_EVENTS}. */
export type PilotEvent = (typeof PILOT_EVENTS)[number];

/**
 * A slot id: lowercase letters, digits and `-`, up to 63 characters. It becomes part of a workflow id
 * (`<prefix>-pilot-<slotId>`) and of file names on the node, so nothing else is accepted.
 */
export const pilotSlotIdSchema = z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'must be 1-63 lowercase letters, digits and -, starting with a letter or digit');

/** A message before it is signed. */
export interface PilotMessage {
  /** The slot (the batch job the pilot runs as) this message is about. */
  slotId: string;
  /** The node the pilot runs on (the configuration's node name). */
  node: string;
  event: PilotEvent;
  /** When the pilot wrote the message: ISO 8601 UTC with milliseconds (`new Date().toISOString()`). */
  at: string;
  /** Random, unique per message (at least 16 characters): what the receiver's replay cache remembers. */
  nonce: string;
  /** Memory the pilot has reserved for VMs (with `reserved`), in MiB. */
  memoryMiB?: number;
  /** Free text for people (an error's cause); never interpreted. */
  detail?: string;
}

/** A message with its signature: HMAC-SHA256 over {@link canonicalPilotMessage}, lowercase hex. */
export interface SignedPilotMessage extends PilotMessage {
  signature: string;
}

const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

/** True for a time exactly as `Date.prototype.toISOString` writes it (so no Feb 30th, one text per instant). */
function isCanonicalTime(s: string): boolean {
  if (!ISO_UTC.test(s)) return false;
  const t = Date.parse(s);
  return !Number.isNaN(t) && new Date(t).toISOString() === s;
}

/** The fields of a message as received (before its signature is checked): every bad field is named. */
export const pilotMessageSchema = z
  .object({
    slotId: pilotSlotIdSchema,
    node: z.string().regex(/^[a-z][a-z0-9-]{0,30}$/, 'must be a node name: lowercase letters, digits and -, starting with a letter'),
    event: z.enum(PILOT_EVENTS),
    at: z.string().refine(isCanonicalTime, 'must be a real ISO 8601 UTC time with milliseconds, like 2026-12-01T17:00:00.000Z'),
    nonce: z.string().regex(/^[A-Za-z0-9_-]{16,128}$/, 'must be 16-128 characters of A-Z a-z 0-9 _ -'),
    memoryMiB: z.number().int().min(0).max(16 * 1024 * 1024).optional(),
    detail: z.string().max(2000).optional(),
  })
  .strict();

/** A signed message as received: the fields plus `signature` (64 lowercase hex digits). */
export const signedPilotMessageSchema = pilotMessageSchema
  .extend({ signature: z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lowercase hex digits (HMAC-SHA256)') })
  .strict();

/** The version tag that starts every canonical text, so a signature never carries over to another format. */
export const PILOT_MESSAGE_VERSION = 'vws-pilot-message-v1';

/**
 * The exact text a signature covers: a JSON array of the version tag and every field in a fixed order,
 * absent optional fields as `null`. JSON escaping keeps field boundaries unambiguous (no value can shift
 * into its neighbour), and the fixed order makes it independent of how the sender ordered its keys.
 */
export function canonicalPilotMessage(m: PilotMessage): string {
  return JSON.stringify([PILOT_MESSAGE_VERSION, m.slotId, m.node, m.event, m.at, m.nonce, m.memoryMiB ?? null, m.detail ?? null]);
}

/** The message without its signature (what a receiver hands on once the signature checked out). */
export function unsignedPart(m: SignedPilotMessage): PilotMessage {
  const { signature: _signature, ...rest } = m;
  return rest;
}
