/**
 * Client request schemas (zod): the one definition that validates API bodies and, later, generates the
 * OpenAPI document and the CLI's options. Not imported by workflow code.
 */
import { z } from 'zod';

/** Image names in the site repository: a plain file-name-like token, never a path. */
export const imageNameSchema = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/, 'must be an image name from the site repository (letters, digits, . _ -)');

/** POST /workspaces body: a deployment request for one workspace. */
export const createWorkspaceSchema = z
  .object({
    image: imageNameSchema,
    memoryMiB: z.number().int().min(64).max(1024 * 1024).default(128),
    vcpus: z.number().int().min(1).max(256).default(1),
    durationSeconds: z
      .number()
      .int()
      .min(1)
      .max(366 * 24 * 3600)
      .default(3600),
    targetState: z.enum(['Propagated', 'Running']).default('Running'),
    /** Seed 002 ShutdownMechanism: what happens when DeploymentTime runs out. */
    shutdownMechanism: z.enum(['Normal', 'Serialize', 'Trash']).default('Normal'),
    /** Seed 000 `--trash-at-shutdown`: discard the VM after use instead of unpropagating it. */
    trashAtShutdown: z.boolean().default(false),
    /** Seed 002 PostShutdown rootPartitionUnpropagationTarget: the repository image name to save the disk as. */
    unpropagationTarget: imageNameSchema.optional(),
  })
  .strict();

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
    /** Alternate unpropagation target: a repository image name. */
    target: imageNameSchema.optional(),
  })
  .strict();

/** Body of the operations that take no arguments. */
export const emptyRequestSchema = z.object({}).strict();

/** A validated create request. */
export type CreateWorkspaceRequest = z.infer<typeof createWorkspaceSchema>;

/** Workspace ids as issued by the API: `ws-` and 12 lowercase hex digits. */
export const workspaceIdSchema = z.string().regex(/^ws-[0-9a-f]{12}$/, 'must be a workspace id like ws-0123456789ab');

/** One problem found by a schema, with the field path as a dotted string. */
export interface FieldProblem {
  field: string;
  message: string;
}

/** Flattens a zod error into field paths and sentences a person can act on. */
export function fieldProblems(error: z.ZodError): FieldProblem[] {
  return error.issues.map((issue) => {
    if (issue.code === 'unrecognized_keys') {
      return { field: issue.keys.join(', '), message: `unknown field(s): ${issue.keys.join(', ')}` };
    }
    return { field: issue.path.length ? issue.path.join('.') : '(body)', message: issue.message };
  });
}
