/**
 * From a validated create request to the exact {@link WorkspaceSpec} the workflow runs, applying the
 * site's image policy: repository names resolved, image URLs allowed and answering, blank partitions
 * within the size limit, unpropagation targets the client may write. Every refusal names its field and
 * is found before anything is started, so a refused request changes nothing.
 */
import type { VwsConfig } from '../config/schema';
import type { CreateWorkspaceRequest, FieldProblem } from '../domain/requests';
import type { PartitionSpec, WorkspaceSpec } from '../domain/workspace';
import { isUrl } from '../domain/workspace';
import { probeSource } from '../activities/head/images';
import { isUnderPrefix, redactUrl } from '../activities/images/urls';
import { resolveImage } from '../repository';
import type { Principal } from './auth';
import type { ExactResources } from './policy';
import { HttpProblem } from './problem';

/** A 400 naming every field that failed. */
export function invalid(errors: FieldProblem[]): HttpProblem {
  return new HttpProblem(400, 'Invalid request', errors.map((e) => `${e.field}: ${e.message}`).join('; '), { errors });
}

/** Why the client may not write `target`, or null if it may (repository names always; URLs by prefix). */
export function targetProblem(config: VwsConfig, principal: Principal, target: string): string | null {
  if (!isUrl(target)) return null;
  const prefixes = config.clients.find((c) => c.name === principal.name)?.stageOutTargets ?? [];
  if (isUnderPrefix(target, prefixes)) return null;
  return prefixes.length
    ? `${redactUrl(target)} is not under a target this client may write (${prefixes.join(', ')})`
    : `this client may not write URL targets (none configured); give a repository image name`;
}

/** Resolves one image reference: a repository image, or an allowed URL that answers (staged in later). */
async function resolveRef(
  config: VwsConfig,
  field: string,
  ref: string,
  sha256: string | undefined,
  errors: FieldProblem[],
): Promise<Pick<PartitionSpec, 'image' | 'imageSource'>> {
  if (!isUrl(ref)) {
    const image = await resolveImage(config, ref);
    if (!image) errors.push({ field, message: `no image ${ref} in the site repository` });
    return image ? { image } : {};
  }
  if (!isUnderPrefix(ref, config.images.sources)) {
    errors.push({ field, message: `${redactUrl(ref)} is not under an allowed image source (${config.images.sources.join(', ')})` });
    return {};
  }
  try {
    // Also resolves symlinks under an allowed file:// directory, and asks the source whether it answers.
    await probeSource(config, ref);
  } catch (e) {
    errors.push({ field, message: redactUrl((e as Error).message) });
    return {};
  }
  return { imageSource: { url: ref, ...(sha256 ? { sha256 } : {}) } };
}

/**
 * The exact spec of a create request, with the exact resources the factory chose (see `policy.ts`), or
 * a 400 naming every field the site's image, network or target policy refuses.
 */
export async function buildWorkspaceSpec(
  config: VwsConfig,
  principal: Principal,
  body: Omit<CreateWorkspaceRequest, 'memoryMiB' | 'vcpus' | 'durationSeconds' | 'count' | 'pilot'>,
  exact: ExactResources,
): Promise<WorkspaceSpec> {
  const errors: FieldProblem[] = [];
  if (body.partitions.length > config.images.maxExtraPartitions) {
    errors.push({ field: 'partitions', message: `at most ${config.images.maxExtraPartitions} partitions besides the root` });
  }
  body.partitions.forEach((p, i) => {
    if (p.blankMiB !== undefined && p.blankMiB > config.images.maxBlankMiB) {
      errors.push({ field: `partitions.${i}.blankMiB`, message: `${p.blankMiB} MiB is over the site's limit of ${config.images.maxBlankMiB} MiB` });
    }
  });
  const networks = (body.nics ?? config.nics.defaultNetworks.map((network) => ({ network }))).map((n) => n.network);
  if (networks.length > config.nics.max) errors.push({ field: 'nics', message: `${networks.length} NICs asked; this site allows at most ${config.nics.max}` });
  const known = config.networks.map((n) => n.name);
  networks.forEach((network, i) => {
    if (!known.includes(network)) errors.push({ field: `nics.${i}.network`, message: `no network ${network} at this site (networks: ${known.join(', ')})` });
  });
  if (body.unpropagationTarget) {
    const problem = targetProblem(config, principal, body.unpropagationTarget);
    if (problem) errors.push({ field: 'unpropagationTarget', message: problem });
  }
  // Cheap checks first: a request refused by policy never makes the head fetch anything.
  if (errors.length) throw invalid(errors);

  const root = await resolveRef(config, 'image', body.image, body.imageSha256, errors);
  const partitions: PartitionSpec[] = [];
  for (const [i, p] of body.partitions.entries()) {
    if (p.image !== undefined) partitions.push(await resolveRef(config, `partitions.${i}.image`, p.image, p.sha256, errors));
    else partitions.push({ blank: { sizeMiB: p.blankMiB!, filesystem: p.filesystem ?? 'ext4' } });
  }
  if (errors.length) throw invalid(errors);

  return {
    ...root,
    ...(partitions.length ? { partitions } : {}),
    memoryMiB: exact.memoryMiB,
    vcpus: exact.vcpus,
    networks,
    ...(body.nodeProperties.length ? { nodeProperties: body.nodeProperties } : {}),
    durationSeconds: exact.durationSeconds,
    targetState: body.targetState,
    shutdownMechanism: body.shutdownMechanism,
    trashAtShutdown: body.trashAtShutdown,
    ...(body.unpropagationTarget ? { unpropagationTarget: body.unpropagationTarget } : {}),
  };
}
