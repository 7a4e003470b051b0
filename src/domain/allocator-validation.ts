/**
 * Checks of the allocator's Update arguments, run in the Updates' validators so bad input is refused
 * before it reaches the history and changes nothing. Each answers the problem as `field: why`, or
 * undefined when the input is well formed.
 */
import type { GangRequest, ReleaseInfo, SlotRequest } from './allocation';
import type { SiteConfiguration } from './allocator-site';

const isName = (v: unknown): v is string => typeof v === 'string' && v.length > 0;
const isPositiveInt = (v: unknown) => Number.isInteger(v) && (v as number) > 0;
const isNonNegative = (v: unknown) => typeof v === 'number' && Number.isFinite(v) && v >= 0;
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Problems of one slot request; `at` prefixes field names (e.g. `members[2].`). */
export function slotRequestProblem(req: SlotRequest, at = ''): string | undefined {
  if (!isObject(req)) return `${at || 'request'}: must be an object`;
  if (!isName(req.holder)) return `${at}holder: must be a workflow id`;
  if (!isPositiveInt(req.memoryMiB)) return `${at}memoryMiB: must be a positive integer`;
  if (!isPositiveInt(req.vcpus)) return `${at}vcpus: must be a positive integer`;
  if (req.networks !== undefined && (!Array.isArray(req.networks) || !req.networks.length || !req.networks.every(isName))) {
    return `${at}networks: must be a non-empty list of network names`;
  }
  if (req.owner !== undefined && !isName(req.owner)) return `${at}owner: must be a non-empty client identity`;
  if (req.reservedSeconds !== undefined && !(Number.isInteger(req.reservedSeconds) && req.reservedSeconds >= 0)) {
    return `${at}reservedSeconds: must be a non-negative integer`;
  }
  if (req.nodeProperties !== undefined && (!Array.isArray(req.nodeProperties) || !req.nodeProperties.every(isName))) {
    return `${at}nodeProperties: must be a list of property names`;
  }
  return undefined;
}

/** Problems of a gang request: its id, a non-empty member list, each member, and distinct holders. */
export function gangRequestProblem(req: GangRequest): string | undefined {
  if (!isObject(req)) return 'request: must be an object';
  if (!isName(req.gang)) return 'gang: must be a workflow id';
  if (!Array.isArray(req.members) || !req.members.length) return 'members: must be a non-empty list of slot requests';
  for (let i = 0; i < req.members.length; i++) {
    const problem = slotRequestProblem(req.members[i], `members[${i}].`);
    if (problem) return problem;
  }
  const holders = req.members.map((m) => m.holder);
  const twice = holders.findIndex((h, i) => holders.indexOf(h) !== i);
  if (twice >= 0) return `members[${twice}].holder: ${holders[twice]} appears more than once`;
  return undefined;
}

/** Problems of a release: a holder and, if given, non-negative used seconds. */
export function releaseProblem(holder: unknown, info: ReleaseInfo | undefined): string | undefined {
  if (!isName(holder)) return 'holder: must be a workflow id';
  if (info === undefined || info === null) return undefined;
  if (!isObject(info)) return 'info: must be an object';
  if (info.usedSeconds !== undefined && !isNonNegative(info.usedSeconds)) return 'info.usedSeconds: must be a non-negative number';
  return undefined;
}

/** Problems of a drain request; `nodes` are the ledger's node names (an unknown node is named). */
export function drainProblem(req: { node: string; drained: boolean }, nodes: string[]): string | undefined {
  if (!isObject(req)) return 'request: must be an object';
  if (!isName(req.node)) return 'node: must be a node name';
  if (typeof req.drained !== 'boolean') return 'drained: must be true or false';
  if (!nodes.includes(req.node)) return `node: no such node: ${req.node} (nodes: ${nodes.join(', ')})`;
  return undefined;
}

/** Problems of a site configuration given to `configure`. */
export function siteConfigurationProblem(site: SiteConfiguration): string | undefined {
  if (!isObject(site)) return 'configuration: must be an object';
  if (!Array.isArray(site.nodes) || !site.nodes.length) return 'nodes: must be a non-empty list';
  for (let i = 0; i < site.nodes.length; i++) {
    const n = site.nodes[i];
    if (!isObject(n) || !isName(n.name)) return `nodes[${i}].name: must be a node name`;
    if (!isPositiveInt(n.memoryMiB)) return `nodes[${i}].memoryMiB: must be a positive integer`;
    if (!isPositiveInt(n.cpus)) return `nodes[${i}].cpus: must be a positive integer`;
  }
  if (!isObject(site.pools) || !Object.values(site.pools).every(Array.isArray)) return 'pools: must map each network to a list of addresses';
  if (site.placement !== undefined && site.placement !== 'greedy' && site.placement !== 'round-robin') return 'placement: must be greedy or round-robin';
  if (site.quotas !== undefined && !isObject(site.quotas)) return 'quotas: must map client identities to quotas';
  if (site.chargeGranularitySeconds !== undefined && !isPositiveInt(site.chargeGranularitySeconds)) {
    return 'chargeGranularitySeconds: must be a positive integer';
  }
  return undefined;
}
