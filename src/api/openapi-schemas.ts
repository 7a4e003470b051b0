/**
 * Schemas of what the API answers, for the OpenAPI document only (requests are validated with the
 * schemas in `src/domain/requests.ts`; answers are built from the domain's types). They name the fields
 * clients rely on and allow more, so adding a field to an answer never makes the document wrong.
 * The zod extension for OpenAPI metadata is installed here, before any schema below is made.
 */
import { extendZodWithOpenApi } from '@asteasolutions/zod-to-openapi';
import { z } from 'zod';
import { WORKSPACE_STATES } from '../domain/states';

extendZodWithOpenApi(z);

/**
 * A schema made before the extension, re-made from its definition so that it carries OpenAPI metadata
 * (a component name). It validates exactly as the original: it is the same definition.
 */
export function named<T extends z.ZodType>(refId: string, schema: T): T {
  const Ctor = schema.constructor as new (def: unknown) => T;
  return (new Ctor(schema._zod.def) as T & { openapi(refId: string): T }).openapi(refId);
}

const state = z.enum(WORKSPACE_STATES);
const gangState = z.enum(['Registering', 'Waiting', 'Deploying', 'Ready', 'BackingOut', 'Ended']);

/** RFC 9457 problem details, as every error is answered. */
export const problemSchema = z
  .looseObject({
    type: z.string().openapi({ description: '`about:blank`, or `urn:vws:problem:<kind>` for refusals a client can act on', example: 'urn:vws:problem:NoCapacity' }),
    title: z.string(),
    status: z.number().int(),
    detail: z.string().openapi({ description: 'a sentence a person can act on' }),
    errors: z
      .array(z.object({ field: z.string().openapi({ description: 'dotted path of the field (or header) at fault' }), message: z.string() }))
      .optional(),
    state: z.string().optional().openapi({ description: 'the workspace state that refused an operation' }),
    task: z.string().nullable().optional(),
  })
  .openapi('Problem');

const nic = z.looseObject({ network: z.string(), ip: z.string().optional(), mac: z.string().optional(), hostname: z.string().optional(), obtainedIp: z.string().optional() });

/** `GET /workspaces/:id` and the operations' answer. */
export const workspaceSchema = z
  .looseObject({
    id: z.string(),
    owner: z.string(),
    state,
    task: z.string().nullable(),
    heading: state.optional(),
    reason: z.string().optional(),
    image: z.string(),
    memoryMiB: z.number().int(),
    vcpus: z.number().int(),
    node: z.string().optional(),
    obtainedIp: z.string().optional(),
    nics: z.array(nic).optional(),
    createdAt: z.string(),
    durationSeconds: z.number().int(),
    runningTimeLeftSeconds: z.number(),
    shutdownMechanism: z.enum(['Normal', 'Serialize', 'Trash']),
    progress: z.object({ bytes: z.number(), total: z.number(), image: z.string().optional() }).optional(),
    notices: z.array(z.string()),
    links: z.object({ self: z.string(), temporalUi: z.string() }),
  })
  .openapi('Workspace');

/** What a create answers (202): a workspace, a group (count > 1) or an ensemble. */
export const createdSchema = z
  .looseObject({
    id: z.string(),
    kind: z.enum(['workspace', 'group', 'ensemble']),
    state: z.string(),
    count: z.number().int().optional(),
    memoryMiB: z.number().int().optional(),
    vcpus: z.number().int().optional(),
    durationSeconds: z.number().int().optional(),
    node: z.string().optional(),
    /** A group's members: each one's node, or in pilot mode `task: queued-in-batch` (no node yet). */
    members: z.array(z.looseObject({ id: z.string(), node: z.string().optional(), task: z.string().optional() })).optional(),
    links: z.looseObject({ self: z.string() }),
  })
  .openapi('Created');

/** `GET /workspaces`. */
export const workspaceListSchema = z
  .object({
    workspaces: z.array(
      z.looseObject({
        id: z.string(),
        state: state.optional(),
        owner: z.string().optional(),
        node: z.string().optional(),
        group: z.string().optional(),
        ensemble: z.string().optional(),
        open: z.boolean(),
        createdAt: z.string().optional(),
        endedAt: z.string().optional(),
        links: z.object({ self: z.string() }),
      }),
    ),
    count: z.number().int(),
    truncated: z.boolean().optional(),
  })
  .openapi('WorkspaceList');

const member = z.looseObject({ id: z.string(), index: z.number().int(), state, task: z.string().nullable(), node: z.string().optional(), ip: z.string().optional() });

/** `GET /groups/:id`. */
export const groupSchema = z
  .looseObject({ id: z.string(), owner: z.string(), count: z.number().int(), state: gangState, reason: z.string().optional(), members: z.array(member), createdAt: z.string(), links: z.object({ self: z.string() }) })
  .openapi('Group');

/** What a group operation did on each member. */
export const groupOperationResultSchema = z
  .looseObject({
    id: z.string(),
    op: z.string(),
    members: z.array(z.object({ id: z.string(), ok: z.boolean(), error: z.string().optional(), state: state.optional() })),
    links: z.object({ self: z.string() }),
  })
  .openapi('GroupOperationResult');

/** `GET /ensembles/:id`: the ensemble report. */
export const ensembleSchema = z
  .looseObject({
    id: z.string(),
    owner: z.string(),
    state: gangState,
    attempts: z.number().int(),
    members: z.array(z.looseObject({ memberId: z.string(), count: z.number().int(), workspaces: z.array(member) })),
    createdAt: z.string(),
    doneAt: z.string().optional(),
    started: z.object({ first: z.string(), last: z.string(), skewMs: z.number() }).optional(),
    links: z.looseObject({ self: z.string() }),
  })
  .openapi('Ensemble');

/** What registering an ensemble member answers. */
export const ensembleRegistrationSchema = z
  .looseObject({ ensemble: z.string(), memberId: z.string(), workspaceIds: z.array(z.string()), count: z.number().int(), links: z.looseObject({ self: z.string() }) })
  .openapi('EnsembleRegistration');

/** `GET /status`: the caller's usage. */
export const statusSchema = z
  .looseObject({
    owner: z.string(),
    chargeGranularitySeconds: z.number().int(),
    usedMinutes: z.number(),
    reservedMinutes: z.number(),
    heldMinutes: z.number(),
    liveGrants: z.number().int(),
    quota: z.object({ maxWorkspaces: z.number().int().optional(), maxReservedMinutes: z.number().int().optional() }).optional(),
    workspaces: z.array(z.looseObject({ id: z.string(), state, usedMinutes: z.number() })),
  })
  .openapi('Status');

const nodeUse = z
  .object({
    name: z.string(),
    memoryMiB: z.number().int(),
    cpus: z.number().int(),
    usedMemoryMiB: z.number().int(),
    usedVcpus: z.number().int(),
    grants: z.number().int(),
    drained: z.boolean(),
    properties: z.array(z.string()),
  })
  .openapi('NodeUse');

/** `GET /admin/nodes`. */
export const nodesSchema = z.object({ nodes: z.array(nodeUse) }).openapi('Nodes');

/** Drain and undrain. */
export const drainResultSchema = z.object({ node: z.string(), drained: z.boolean(), nodes: z.array(nodeUse) }).openapi('DrainResult');

/** `GET /admin/leases`: every live grant (`leases`, named so for older clients) and every pilot lease of node time. */
export const leasesSchema = z
  .object({
    leases: z.array(z.looseObject({ holder: z.string(), node: z.string(), memoryMiB: z.number().int(), vcpus: z.number().int(), grantedAt: z.string(), owner: z.string().optional(), gang: z.string().optional() })),
    count: z.number().int(),
    pilotLeases: z
      .array(
        z.looseObject({
          holder: z.string(),
          node: z.string(),
          memoryMiB: z.number().int(),
          vcpus: z.number().int(),
          until: z.string(),
          jobId: z.string().optional(),
          leasedAt: z.string().optional(),
          grants: z.number().int(),
          usedMemoryMiB: z.number().int(),
          usedVcpus: z.number().int(),
        }),
      )
      .optional(),
    pilotCount: z.number().int().optional(),
  })
  .openapi('Leases');

/** `POST /admin/kill-all` (202) and `GET /admin/kill-all/{id}`: the emergency stop and, when done, its report. */
export const killAllSchema = z
  .looseObject({ id: z.string(), state: z.enum(['running', 'done', 'failed']), nodes: z.array(z.string()).optional(), report: z.looseObject({}).optional(), reason: z.string().optional() })
  .openapi('KillAll');

/** `GET /admin/drift`: the reconciler's last report and totals. */
export const driftSchema = z
  .looseObject({ reconciler: z.looseObject({}), updatedAt: z.string().nullable(), runs: z.number().int(), totals: z.record(z.string(), z.number()), last: z.looseObject({}).nullable() })
  .openapi('Drift');

/** An image in the site repository. */
export const imageSchema = z.looseObject({ name: z.string(), url: z.string(), sha256: z.string(), sizeBytes: z.number().int() }).openapi('Image');

/** `GET /healthz`. */
export const healthSchema = z.object({ ok: z.literal(true) }).openapi('Health');
