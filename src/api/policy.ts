/**
 * The factory's site policy (seed 002: "ranges of values or exact requests"; once deployed only exact
 * values are used). Pure: from a validated request and the configuration to the exact memory, vCPUs and
 * running time, or the fields the policy refuses, each with the limit that refused it.
 */
import type { VwsConfig } from '../config/schema';
import type { Amount, FieldProblem } from '../domain/requests';

/** The exact values a request gets. */
export interface ExactResources {
  memoryMiB: number;
  vcpus: number;
  durationSeconds: number;
}

/** A field the site's policy refuses, with the limit it is over. */
export interface PolicyProblem extends FieldProblem {
  limit: number;
}

/** What {@link resolveResources} decides. */
export type Resolution =
  | { ok: true; exact: ExactResources }
  /** `invalid`: the request names something the site does not have (400 InvalidSpec); `policy`: over a limit (400 PolicyViolation). */
  | { ok: false; invalid: FieldProblem[]; policy: PolicyProblem[] };

/** The parts of a request the policy reads. */
export interface ResourceRequest {
  memoryMiB: Amount;
  vcpus: Amount;
  durationSeconds: Amount;
  count: number;
  nodeProperties: string[];
}

/** One limit and the sentence that says where it comes from. */
interface Limit {
  value: number;
  why: string;
}

/** The smaller of two limits (the first on a tie: the site's own policy names itself first). */
const lower = (a: Limit, b: Limit): Limit => (b.value < a.value ? b : a);

/**
 * The largest value of `amount` within `limit`, or the problem: an exact value over the limit, or a
 * range whose min is over it. A range whose max is over the limit is not a problem: the factory takes less.
 */
export function resolveAmount(field: string, amount: Amount, limit: Limit, unit: string): { value: number } | PolicyProblem {
  const min = typeof amount === 'number' ? amount : amount.min;
  const max = typeof amount === 'number' ? amount : amount.max;
  if (min > limit.value) {
    const asked = typeof amount === 'number' ? `${amount} ${unit}` : `the range's min, ${min} ${unit},`;
    return { field, limit: limit.value, message: `${asked} is over the limit of ${limit.value} ${unit} (${limit.why})` };
  }
  return { value: Math.min(max, limit.value) };
}

/** The configured nodes that have every one of `properties` (all nodes for none). */
export function nodesWithProperties<N extends { properties: string[] }>(nodes: readonly N[], properties: readonly string[]): N[] {
  return nodes.filter((n) => properties.every((p) => n.properties.includes(p)));
}

/**
 * Exact values for a request: for memory, vCPUs and running time the largest value within both the
 * request (exact or range) and the site's policy; memory and vCPUs are also bounded by the largest node
 * that has every property the request requires. `count` is bounded by `policies.maxNodesPerRequest`.
 */
export function resolveResources(config: VwsConfig, r: ResourceRequest): Resolution {
  const invalid: FieldProblem[] = [];
  const policy: PolicyProblem[] = [];
  const known = new Set(config.nodes.flatMap((n) => n.properties));
  r.nodeProperties.forEach((p, i) => {
    if (!known.has(p)) {
      invalid.push({ field: `nodeProperties.${i}`, message: `no node has the property ${p} (properties: ${[...known].sort().join(', ') || 'none defined'})` });
    }
  });
  const eligible = nodesWithProperties(config.nodes, r.nodeProperties);
  if (!invalid.length && !eligible.length) {
    invalid.push({ field: 'nodeProperties', message: `no single node has all of ${r.nodeProperties.join(', ')}` });
  }
  if (invalid.length) return { ok: false, invalid, policy };

  const largest = (pick: (n: (typeof eligible)[number]) => number, unit: string): Limit => {
    const n = eligible.reduce((a, b) => (pick(b) > pick(a) ? b : a));
    const which = r.nodeProperties.length ? `the largest node with ${r.nodeProperties.join(', ')}` : 'the largest node';
    return { value: pick(n), why: `${which}, ${n.name}, has ${pick(n)} ${unit}` };
  };
  const p = config.policies;
  const memory = resolveAmount('memoryMiB', r.memoryMiB, lower({ value: p.maxMemoryMiB, why: 'policies.maxMemoryMiB' }, largest((n) => n.memoryMiB, 'MiB')), 'MiB');
  const vcpus = resolveAmount('vcpus', r.vcpus, lower({ value: p.maxVcpus, why: 'policies.maxVcpus' }, largest((n) => n.cpus, 'CPUs')), 'vCPUs');
  const duration = resolveAmount('durationSeconds', r.durationSeconds, { value: p.maxDurationSeconds, why: 'policies.maxDurationSeconds' }, 'seconds');
  for (const x of [memory, vcpus, duration]) if ('field' in x) policy.push(x);
  if (r.count > p.maxNodesPerRequest) {
    policy.push({
      field: 'count',
      limit: p.maxNodesPerRequest,
      message: `${r.count} workspaces is over the limit of ${p.maxNodesPerRequest} per request (policies.maxNodesPerRequest)`,
    });
  }
  if (policy.length || 'field' in memory || 'field' in vcpus || 'field' in duration) return { ok: false, invalid, policy };
  return { ok: true, exact: { memoryMiB: memory.value, vcpus: vcpus.value, durationSeconds: duration.value } };
}
