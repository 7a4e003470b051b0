/**
 * The pilot's command-line options, checked before anything on the node is touched: every bad value is
 * refused with the option's name, so a misconfigured pilot job fails at once and changes nothing.
 */
import { readFileSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { pilotSshFallbackSchema, type PilotSshFallback } from '../config/pilot-fallback-schema';
import { pilotSlotIdSchema } from '../domain/pilot-message';
import type { MemoryMode } from './node-control';

/** A bad option value: names the option. */
export class PilotUsageError extends Error {
  override name = 'PilotUsageError';
  constructor(
    readonly option: string,
    message: string,
  ) {
    super(`${option}: ${message}`);
  }
}

/** `--slot`: a slot id (it names the slot's workflow and files). */
export function slotOption(v: string | undefined): string {
  if (v === undefined) throw new PilotUsageError('--slot', 'required');
  const r = pilotSlotIdSchema.safeParse(v);
  if (!r.success) throw new PilotUsageError('--slot', `${JSON.stringify(v)} ${r.error.issues[0].message}`);
  return v;
}

/** `--node`: a node name as the configuration spells it. */
export function nodeOption(v: string | undefined): string {
  if (v === undefined) throw new PilotUsageError('--node', 'required');
  if (!/^[a-z][a-z0-9-]{0,30}$/.test(v)) throw new PilotUsageError('--node', `${JSON.stringify(v)} must be lowercase letters, digits and -, starting with a letter`);
  return v;
}

/**
 * The node the pilot runs on: `--node` when given, else the batch system's word for it (Slurm's
 * `SLURMD_NODENAME`, PBS's `PBS_NODENAME`): where vws lets the batch system choose the node, the
 * pilot learns it here and says it in its `reserved` message.
 */
export function nodeFromBatch(v: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  return nodeOption(v ?? env.SLURMD_NODENAME ?? env.PBS_NODENAME);
}

/** One pilot node's memory handling, as `--node-table` gives it. */
export interface NodeTableEntry {
  memory: MemoryMode;
  configuredMiB?: number;
}

/**
 * `--node-table`: JSON `{"<node>": {"memory": "xen"|"host", "configuredMiB": n}}`, the site's pilot nodes,
 * so one job script serves whichever node the batch system picks. Answers this node's entry.
 */
export function nodeTableOption(v: string | undefined, node: string): NodeTableEntry | undefined {
  if (v === undefined) return undefined;
  const table = jsonOption('--node-table', v, '{"<node>": {"memory": "xen"|"host", "configuredMiB": n}}');
  if (!table || typeof table !== 'object' || Array.isArray(table)) throw new PilotUsageError('--node-table', 'must be a JSON object keyed by node name');
  const entry = (table as Record<string, unknown>)[node] as Record<string, unknown> | undefined;
  if (!entry) throw new PilotUsageError('--node-table', `node ${node} is not a pilot node of this site (table has: ${Object.keys(table).join(', ') || 'none'})`);
  const memory = memoryOption(entry.memory as string | undefined);
  const mib = entry.configuredMiB;
  if (mib !== undefined && (!Number.isInteger(mib) || (mib as number) < 1)) throw new PilotUsageError('--node-table', `${node}.configuredMiB must be a positive whole number`);
  return { memory, ...(mib !== undefined ? { configuredMiB: mib as number } : {}) };
}

/** `--hold-seconds`: the slot ends this long after the pilot starts (the job may wait in the queue first). */
export function holdOption(v: string | undefined, now = Date.now()): number | undefined {
  const s = intOption('--hold-seconds', v, 1, 30 * 86_400);
  return s === undefined ? undefined : now + s * 1000;
}

/** An integer option within bounds; `undefined` stays undefined. */
export function intOption(option: string, v: string | undefined, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^-?\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min || n > max) throw new PilotUsageError(option, `must be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
  return n;
}

/** A number option within bounds (`maxExclusive` excludes the upper bound); `undefined` stays undefined. */
export function numberOption(option: string, v: string | undefined, min: number, max: number, maxExclusive = false): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < min || (maxExclusive ? n >= max : n > max)) {
    throw new PilotUsageError(option, `must be a number from ${min} to ${max}${maxExclusive ? ' (exclusive)' : ''}, got ${JSON.stringify(v)}`);
  }
  return n;
}

/** `--memory`: `xen` (dom0 ballooning) or `host` (the QEMU node's reservation file). */
export function memoryOption(v: string | undefined): MemoryMode {
  if (v !== 'xen' && v !== 'host') throw new PilotUsageError('--memory', `must be xen or host, got ${JSON.stringify(v)}`);
  return v;
}

/** `--end`: an ISO 8601 time with its zone; answers ms since the epoch. */
export function endOption(v: string | undefined, now = Date.now()): number {
  if (v === undefined) throw new PilotUsageError('--end', 'required (the slot\'s end, ISO 8601, e.g. 2026-12-01T18:00:00Z)');
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/.test(v)) throw new PilotUsageError('--end', `must be ISO 8601 with a zone (e.g. 2026-12-01T18:00:00Z), got ${JSON.stringify(v)}`);
  const t = Date.parse(v);
  // Date.parse rolls Feb 30 over into March: check the calendar fields themselves.
  const [y, mo, d, h, mi, se] = v.split(/[-T:.Z+]/).map(Number);
  const day = new Date(Date.UTC(y, mo - 1, d));
  const real = day.getUTCFullYear() === y && day.getUTCMonth() === mo - 1 && day.getUTCDate() === d && h < 24 && mi < 60 && (Number.isNaN(se) || se < 60);
  if (Number.isNaN(t) || !real) throw new PilotUsageError('--end', `not a real time: ${JSON.stringify(v)}`);
  if (t <= now) throw new PilotUsageError('--end', `${v} is already past`);
  return t;
}

/** An absolute path option. */
export function pathOption(option: string, v: string): string {
  if (!isAbsolute(v)) throw new PilotUsageError(option, `must be an absolute path, got ${JSON.stringify(v)}`);
  return v;
}

/** `--api`: the vws API's base URL. */
export function apiOption(v: string | undefined): string {
  if (v === undefined) throw new PilotUsageError('--api', 'required (vws\'s API, e.g. http://10.213.0.1:8080)');
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    throw new PilotUsageError('--api', `not a URL: ${JSON.stringify(v)}`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new PilotUsageError('--api', `must be http or https, got ${u.protocol}`);
  return v;
}

/** `--secret-file`: the shared pilot secret (at least 16 bytes). The secret itself is never printed. */
export function readSecretOption(file: string | undefined): string {
  if (file === undefined) throw new PilotUsageError('--secret-file', 'required (the site\'s pilot secret, `pilot.secretFile`)');
  let text: string;
  try {
    text = readFileSync(pathOption('--secret-file', file), 'utf8').trim();
  } catch (e) {
    if (e instanceof PilotUsageError) throw e;
    throw new PilotUsageError('--secret-file', `cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (Buffer.byteLength(text) < 16) throw new PilotUsageError('--secret-file', `${file} holds fewer than 16 bytes`);
  return text;
}

/** `--ssh NODE=HOST` (repeatable) into a map. */
export function sshHostsOption(values: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of values) {
    const m = /^([a-z][a-z0-9-]{0,30})=([A-Za-z0-9.:_-]+)$/.exec(v);
    if (!m) throw new PilotUsageError('--ssh', `must be NODE=HOST, got ${JSON.stringify(v)}`);
    out[m[1]] = m[2];
  }
  return out;
}

/**
 * `--ssh-fallback`: JSON of the SSH fallback settings (`pilot.sshFallback` of the site configuration,
 * same schema), or undefined without it. Every bad field is named (`--ssh-fallback.keyFile: …`).
 */
export function sshFallbackOption(v: string | undefined): PilotSshFallback | undefined {
  if (v === undefined) return undefined;
  const raw = jsonOption('--ssh-fallback', v, '{"host": …, "keyFile": …, "knownHostsFile": …, "command": [ … ]}');
  const r = pilotSshFallbackSchema.safeParse(raw);
  if (!r.success) {
    const i = r.error.issues[0];
    const field = i.path.length ? `--ssh-fallback.${i.path.join('.')}` : '--ssh-fallback';
    throw new PilotUsageError(field, i.code === 'unrecognized_keys' ? `unknown fields: ${i.keys.join(', ')}` : i.message);
  }
  return r.data;
}

/** Parses option `flag`'s JSON value; a value that is not JSON is a usage error showing the expected `shape`. */
function jsonOption(flag: string, v: string, shape: string): unknown {
  try {
    return JSON.parse(v) as unknown;
  } catch {
    throw new PilotUsageError(flag, `must be JSON: ${shape}`);
  }
}
