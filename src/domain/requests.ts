/**
 * Client request schemas (zod): the one definition that validates API bodies and, later, generates the
 * OpenAPI document and the CLI's options. Not imported by workflow code.
 */
import { z } from 'zod';
import { checkImageUrl } from './image-url';
import { WORKSPACE_STATES } from './states';
import { isUrl } from './workspace';

/** Image names in the site repository: a plain file-name-like token, never a path. */
export const imageNameSchema = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/, 'must be an image name from the site repository (letters, digits, . _ -)');

/**
 * An image reference: a repository image name, or a URL of an image outside the repository
 * (file://, http(s)://, sftp://user@host/path) that stage-in copies in first.
 */
export const imageRefSchema = z.string().superRefine((s, ctx) => {
  if (isUrl(s)) {
    const reason = checkImageUrl(s);
    if (reason) ctx.addIssue({ code: 'custom', message: reason });
  } else if (!imageNameSchema.safeParse(s).success) {
    ctx.addIssue({ code: 'custom', message: 'must be a repository image name (letters, digits, . _ -) or a file://, http(s):// or sftp:// URL' });
  }
});

const sha256Schema = z.string().regex(/^[0-9a-f]{64}$/, 'must be a sha256 digest: 64 lowercase hex digits');

/** A partition besides the root: an image (name or URL) or a blank partition of a size and filesystem. */
export const partitionSchema = z
  .object({
    image: imageRefSchema.optional(),
    /** Expected sha256 of a URL image. */
    sha256: sha256Schema.optional(),
    /** Size of a blank partition in MiB (seed 002 blankspace). */
    blankMiB: z.number().int().min(1).optional(),
    /** Filesystem made on a blank partition. */
    filesystem: z.enum(['ext4', 'swap', 'none']).optional(),
  })
  .strict()
  .superRefine((p, ctx) => {
    if ((p.image === undefined) === (p.blankMiB === undefined)) {
      ctx.addIssue({ code: 'custom', message: 'give exactly one of image (a name or URL) and blankMiB (a blank partition)' });
    }
    if (p.sha256 && (!p.image || !isUrl(p.image))) ctx.addIssue({ code: 'custom', path: ['sha256'], message: 'sha256 goes with an image URL' });
    if (p.filesystem && p.blankMiB === undefined) ctx.addIssue({ code: 'custom', path: ['filesystem'], message: 'filesystem goes with blankMiB' });
  });

/** An unpropagation target: a repository image name or a URL under one of the client's allowed prefixes. */
export const targetSchema = imageRefSchema;

/** A requested amount: an exact value, or a range the factory picks the exact value from. */
export type Amount = number | { min: number; max: number };

/**
 * Seed 002: "the deployment type can be filled in with ranges of values or exact requests". An integer
 * in [lo, hi], or `{ min, max }` within it; the factory picks the largest value the site's policy allows.
 */
export function amountSchema(lo: number, hi: number, unit: string) {
  const exact = z.number().int().min(lo).max(hi);
  const range = z
    .object({ min: exact, max: exact })
    .strict()
    .refine((r) => r.min <= r.max, { message: 'min must not exceed max', path: ['max'] });
  return z.union([exact, range], { error: `must be a whole number of ${unit} from ${lo} to ${hi}, or a range { min, max } of them` });
}

/** A node property a request may require (`nodes[].properties` in the site configuration). */
const nodePropertySchema = z.string().regex(/^[a-z][a-z0-9-]{0,30}$/, 'must be a node property name (lowercase letters, digits and -)');

/** The fields of a deployment request, before the cross-field checks (shared by single, group and ensemble member). */
const deploymentShape = {
  image: imageRefSchema,
  /** Expected sha256 of an image URL; a staged-in copy with another digest makes the workspace Corrupted. */
  imageSha256: sha256Schema.optional(),
  /** Partitions besides the root, attached in order (vdb, vdc, … / xvdb, …). */
  partitions: z.array(partitionSchema).max(8).default([]),
  /**
   * The VM's NICs, in order (eth0, eth1, …), each on a network of the site (seed 001 association).
   * Absent: the site's default networks. How many are allowed and which networks exist is site policy.
   */
  nics: z
    .array(z.object({ network: z.string().regex(/^[a-z][a-z0-9-]{0,30}$/, 'must be a network name') }).strict())
    .min(1)
    .max(8)
    .optional(),
  /** Memory per workspace in MiB (per member of a group, seed 002): exact or a range. */
  memoryMiB: amountSchema(64, 1024 * 1024, 'MiB').default(128),
  vcpus: amountSchema(1, 256, 'vCPUs').default(1),
  /** Seed 002 DeploymentTime in seconds (first start to last shutdown): exact or a range. */
  durationSeconds: amountSchema(1, 366 * 24 * 3600, 'seconds').default(3600),
  /** Seed 002 NodeNumber: how many identical workspaces; more than one makes a group. */
  count: z.number().int().min(1).max(1024).default(1),
  /** Properties the node must have (every one), e.g. a node pool; see the site's `nodes[].properties`. */
  nodeProperties: z.array(nodePropertySchema).max(16).default([]),
  targetState: z.enum(['Propagated', 'Running']).default('Running'),
  /** Seed 002 ShutdownMechanism: what happens when DeploymentTime runs out. */
  shutdownMechanism: z.enum(['Normal', 'Serialize', 'Trash']).default('Normal'),
  /** Seed 000 `--trash-at-shutdown`: discard the VM after use instead of unpropagating it. */
  trashAtShutdown: z.boolean().default(false),
  /**
   * Seed 002 PostShutdown rootPartitionUnpropagationTarget: a repository image name, or a URL the
   * client may write (its `stageOutTargets`), to save the root disk as.
   */
  unpropagationTarget: targetSchema.optional(),
};

/** Cross-field checks of a deployment request. */
function checkDeployment(r: { image: string; imageSha256?: string; shutdownMechanism: string; partitions: unknown[] }, ctx: z.RefinementCtx): void {
  if (r.imageSha256 && !isUrl(r.image)) ctx.addIssue({ code: 'custom', path: ['imageSha256'], message: 'imageSha256 goes with an image URL' });
  if (r.shutdownMechanism === 'Serialize' && r.partitions.length > 0) {
    ctx.addIssue({
      code: 'custom',
      path: ['shutdownMechanism'],
      message: 'Serialize saves the root disk and memory only; it cannot be combined with partitions',
    });
  }
}

/** POST /workspaces body: a deployment request for one workspace, or for a group when `count` > 1. */
export const createWorkspaceSchema = z
  .object({
    ...deploymentShape,
    /**
     * Pilot mode (seed 003): borrow the node's time from the site's batch system. The workspace waits in
     * the batch queue (best effort, task `queued-in-batch`) until a pilot job runs. A group (`count` > 1)
     * gets one pilot job per member, each with a node to itself; it is Ready once every member runs.
     */
    pilot: z.boolean().default(false),
  })
  .strict()
  .superRefine(checkDeployment);

/**
 * POST /ensembles/:id/members body: a deployment request registered with an ensemble (not launched);
 * `done` is seed 000's flag on the last member's create: co-schedule every member right after it.
 */
export const ensembleMemberSchema = z
  .object({
    ...deploymentShape,
    done: z.boolean().default(false),
    /** Refused when true, with the reason: a batch system gives no all-or-nothing start across pilot jobs. */
    pilot: z.literal(false, { error: 'ensembles are co-scheduled (every member at once, or none) and are not offered in pilot mode' }).optional(),
  })
  .strict()
  .superRefine(checkDeployment);

/** POST /ensembles body: nothing yet (the deadline is site policy). */
export const createEnsembleSchema = z.object({}).strict();

/** Body of POST /workspaces/:id/start. */
export const startRequestSchema = z
  .object({
    /** New running time in seconds, from now (needed when none is left, e.g. a serialized workspace). */
    durationSeconds: z.number().int().min(1).max(366 * 24 * 3600).optional(),
  })
  .strict();

/** Body of POST /workspaces/:id/shutdown-save (seed 000 `--shutdown-save`). */
export const shutdownSaveRequestSchema = z
  .object({
    /** Alternate unpropagation target: a repository image name or a URL the client may write. */
    target: targetSchema.optional(),
  })
  .strict();

/** Body of the operations that take no arguments. */
export const emptyRequestSchema = z.object({}).strict();

/** `POST /admin/kill-all`: the caller must say it means it, so no stray request stops the site. */
export const killAllRequestSchema = z
  .object({ confirm: z.literal('kill-all', { error: 'must be "kill-all": this destroys every VM on every node' }) })
  .strict();

/** A validated create request. */
export type CreateWorkspaceRequest = z.infer<typeof createWorkspaceSchema>;
/** A validated ensemble member registration. */
export type EnsembleMemberBody = z.infer<typeof ensembleMemberSchema>;

/** Workspace ids as issued by the API: `ws-` and 12 lowercase hex digits. */
export const workspaceIdSchema = z.string().regex(/^ws-[0-9a-f]{12}$/, 'must be a workspace id like ws-0123456789ab');

/** Group ids as issued by the API: `grp-` and 12 lowercase hex digits. */
export const groupIdSchema = z.string().regex(/^grp-[0-9a-f]{12}$/, 'must be a group id like grp-0123456789ab');

/** Ensemble ids as issued by the API: `ens-` and 12 lowercase hex digits. */
export const ensembleIdSchema = z.string().regex(/^ens-[0-9a-f]{12}$/, 'must be an ensemble id like ens-0123456789ab');

/**
 * The `Idempotency-Key` header: up to 200 printable ASCII characters. A repeat with the same key and
 * body answers the same and creates nothing; the same key with another body is refused.
 */
export const idempotencyKeySchema = z
  .string()
  .min(1, 'must not be empty')
  .max(200, 'must be at most 200 characters')
  .regex(/^[\x20-\x7e]+$/, 'must be printable ASCII characters');

/** GET /workspaces query: filters on the workspace's state, group and ensemble. */
export const listWorkspacesSchema = z
  .object({
    state: z.enum(WORKSPACE_STATES).optional(),
    group: groupIdSchema.optional(),
    ensemble: ensembleIdSchema.optional(),
  })
  .strict();

/** One problem found by a schema, with the field path as a dotted string. */
export interface FieldProblem {
  field: string;
  message: string;
}

/** Flattens a zod error into field paths and sentences a person can act on. */
export function fieldProblems(error: z.ZodError): FieldProblem[] {
  return error.issues.map((issue) => {
    if (issue.code === 'unrecognized_keys') {
      const at = issue.path.length ? `${issue.path.join('.')}.` : '';
      return { field: issue.keys.map((k) => `${at}${k}`).join(', '), message: `unknown field(s): ${issue.keys.join(', ')}` };
    }
    return { field: issue.path.length ? issue.path.join('.') : '(body)', message: issue.message };
  });
}
