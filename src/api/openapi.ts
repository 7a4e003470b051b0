/**
 * The API's route table and the OpenAPI 3.1 document generated from it (`GET /openapi.json`). Bodies and
 * queries are described by the very zod schemas the routes validate with; a unit test checks that every
 * route express serves is in the table and every route in the table is served. The table also names
 * the route of a request for metrics and logs (a bounded set of labels, never a raw URL).
 */
import { OpenAPIRegistry, OpenApiGeneratorV31, type ResponseConfig, type RouteConfig } from '@asteasolutions/zod-to-openapi';
import { z } from 'zod';
import {
  createEnsembleSchema,
  createWorkspaceSchema,
  emptyRequestSchema,
  ensembleIdSchema,
  ensembleMemberSchema,
  groupIdSchema,
  idempotencyKeySchema,
  imageNameSchema,
  killAllRequestSchema,
  listWorkspacesSchema,
  workspaceIdSchema,
} from '../domain/requests';
import { signedPilotMessageSchema } from '../domain/pilot-message';
import { GROUP_OPERATIONS, WORKSPACE_OPERATIONS } from './operations';
import {
  createdSchema,
  drainResultSchema,
  driftSchema,
  ensembleRegistrationSchema,
  ensembleSchema,
  groupOperationResultSchema,
  groupSchema,
  healthSchema,
  imageSchema,
  killAllSchema,
  leasesSchema,
  named,
  nodesSchema,
  problemSchema,
  statusSchema,
  workspaceListSchema,
  workspaceSchema,
} from './openapi-schemas';

/**
 * Who may call a route: nobody in particular, a client token, an admin's token, a node token, the metrics
 * rule, or a pilot (no token: the body's HMAC signature with the site's pilot secret).
 */
export type RouteAuth = 'none' | 'client' | 'admin' | 'node' | 'metrics' | 'pilot';

/** One route of the API. */
export interface ApiRoute {
  method: 'get' | 'post' | 'put' | 'delete';
  /** OpenAPI style: `/workspaces/{id}`. */
  path: string;
  summary: string;
  tag: string;
  auth: RouteAuth;
  /** Path parameters, each with the schema of what the API issues (others are answered 404). */
  params?: Record<string, z.ZodType>;
  query?: z.ZodObject;
  body?: { schema: z.ZodType; example: unknown };
  /** Takes an `Idempotency-Key` header. */
  idempotent?: boolean;
  success: { status: number; description: string; schema?: z.ZodType; contentType?: string };
  /** Error statuses beyond those the route's shape implies (401, 403 for admin, 404 for ids, 400 for input, 422 for keys, 500). */
  errors?: number[];
}

const wsId = { id: workspaceIdSchema };
const grpId = { id: groupIdSchema };
const ensId = { id: ensembleIdSchema };

/** Example bodies of the operations that take one. */
const OPERATION_EXAMPLES: Record<string, unknown> = { start: { durationSeconds: 600 }, 'shutdown-save': { target: 'my-image' } };

/** The answer to a delivered pilot notification. */
const pilotDeliveredSchema = z.object({ delivered: z.literal(true), slotId: z.string(), event: z.string(), receivedAt: z.string() }).openapi('PilotDelivered');

/** Every route the API serves. */
export const API_ROUTES: readonly ApiRoute[] = [
  { method: 'get', path: '/healthz', summary: 'Liveness of the API process', tag: 'service', auth: 'none', success: { status: 200, description: 'the API answers', schema: healthSchema } },
  {
    method: 'get',
    path: '/openapi.json',
    summary: 'This document',
    tag: 'service',
    auth: 'none',
    success: { status: 200, description: 'the OpenAPI 3.1 document', schema: z.looseObject({ openapi: z.string() }) },
  },
  {
    method: 'get',
    path: '/metrics',
    summary: 'Prometheus metrics: requests, workspaces by state, allocator use per node, process',
    tag: 'service',
    auth: 'metrics',
    success: { status: 200, description: 'metrics in the Prometheus text format', schema: z.string(), contentType: 'text/plain' },
  },
  {
    method: 'post',
    path: '/workspaces',
    summary: 'Create a workspace, or a group of `count` identical workspaces; reserved before anything starts',
    tag: 'workspaces',
    auth: 'client',
    idempotent: true,
    body: {
      schema: named('CreateWorkspaceRequest', createWorkspaceSchema),
      example: { image: 'sample', memoryMiB: { min: 128, max: 512 }, vcpus: 1, durationSeconds: 3600, targetState: 'Running', shutdownMechanism: 'Normal' },
    },
    success: { status: 202, description: 'created; follow `Location`', schema: createdSchema },
    errors: [403, 409],
  },
  {
    method: 'get',
    path: '/workspaces',
    summary: "The caller's workspaces (an admin's: everyone's), newest first, filtered by state, group or ensemble",
    tag: 'workspaces',
    auth: 'client',
    query: listWorkspacesSchema,
    success: { status: 200, description: 'the workspaces', schema: workspaceListSchema },
  },
  {
    method: 'get',
    path: '/workspaces/{id}',
    summary: 'A workspace: state, node, addresses, running time left, copy progress, Temporal UI link',
    tag: 'workspaces',
    auth: 'client',
    params: wsId,
    success: { status: 200, description: 'the workspace', schema: workspaceSchema },
    errors: [503],
  },
  {
    method: 'delete',
    path: '/workspaces/{id}',
    summary: 'Destroy a workspace, from any state',
    tag: 'workspaces',
    auth: 'client',
    params: wsId,
    success: { status: 202, description: 'destroy accepted; follow `Location` to Cancelled', schema: workspaceSchema },
    errors: [409, 503],
  },
  ...Object.entries(WORKSPACE_OPERATIONS).map(
    ([op, { schema }]): ApiRoute => ({
      method: 'post',
      path: `/workspaces/{id}/${op}`,
      summary: `${op} a workspace (refused with 409 naming the state when the state table does not allow it)`,
      tag: 'workspaces',
      auth: 'client',
      params: wsId,
      body: { schema, example: OPERATION_EXAMPLES[op] ?? {} },
      success: { status: 202, description: 'accepted; follow `Location`', schema: workspaceSchema },
      errors: [409, 503],
    }),
  ),
  {
    method: 'get',
    path: '/groups/{id}',
    summary: 'A group and its members',
    tag: 'groups',
    auth: 'client',
    params: grpId,
    success: { status: 200, description: 'the group', schema: groupSchema },
    errors: [503],
  },
  ...Object.entries(GROUP_OPERATIONS).map(
    ([op, schema]): ApiRoute => ({
      method: 'post',
      path: `/groups/{id}/${op}`,
      summary: `${op} every live member of a group`,
      tag: 'groups',
      auth: 'client',
      params: grpId,
      body: { schema, example: OPERATION_EXAMPLES[op] ?? {} },
      success: { status: 202, description: 'what each member did', schema: groupOperationResultSchema },
      errors: [409, 503],
    }),
  ),
  {
    method: 'delete',
    path: '/groups/{id}',
    summary: 'Destroy every member of a group',
    tag: 'groups',
    auth: 'client',
    params: grpId,
    success: { status: 202, description: 'what each member did', schema: groupOperationResultSchema },
    errors: [409, 503],
  },
  {
    method: 'post',
    path: '/ensembles',
    summary: 'Create an ensemble that members register with until `done`',
    tag: 'ensembles',
    auth: 'client',
    idempotent: true,
    body: { schema: createEnsembleSchema, example: {} },
    success: { status: 202, description: 'created; follow `Location`', schema: createdSchema },
  },
  {
    method: 'get',
    path: '/ensembles/{id}',
    summary: 'The ensemble report',
    tag: 'ensembles',
    auth: 'client',
    params: ensId,
    success: { status: 200, description: 'the ensemble', schema: ensembleSchema },
    errors: [503],
  },
  {
    method: 'post',
    path: '/ensembles/{id}/members',
    summary: 'Register a member (a workspace, or a group when `count` > 1); `done: true` co-schedules them all',
    tag: 'ensembles',
    auth: 'client',
    params: ensId,
    idempotent: true,
    body: { schema: named('EnsembleMemberRequest', ensembleMemberSchema), example: { image: 'sample', memoryMiB: 128, count: 2, done: false } },
    success: { status: 202, description: 'registered', schema: ensembleRegistrationSchema },
    errors: [409, 503],
  },
  {
    method: 'post',
    path: '/ensembles/{id}/done',
    summary: 'Done registering: co-schedule every member',
    tag: 'ensembles',
    auth: 'client',
    params: ensId,
    body: { schema: emptyRequestSchema, example: {} },
    success: { status: 202, description: 'accepted; follow the report', schema: ensembleSchema },
    errors: [409, 503],
  },
  {
    method: 'delete',
    path: '/ensembles/{id}',
    summary: 'Destroy every member of an ensemble',
    tag: 'ensembles',
    auth: 'client',
    params: ensId,
    success: { status: 202, description: 'destroy accepted', schema: ensembleSchema },
    errors: [409, 503],
  },
  ...(
    [
      ['workspaces', wsId, 'a workspace: state, task, obtained IP, bytes copied; `end` when Cancelled or Corrupted'],
      ['groups', grpId, 'a group: its state and each member; `end` when Ended'],
      ['ensembles', ensId, 'an ensemble report: its state and each member; `end` when Ended'],
    ] as const
  ).map(
    ([collection, params, what]): ApiRoute => ({
      method: 'get',
      path: `/${collection}/{id}/events`,
      summary: `Server-sent events following ${what}. Each event's data is the object as GET answers it, sent when it changes; comment lines keep the stream alive`,
      tag: collection,
      auth: 'client',
      params,
      success: { status: 200, description: 'a `text/event-stream` of `workspace`/`group`/`ensemble` events, then one `end` event (or `error` when the head stops answering)', schema: z.string(), contentType: 'text/event-stream' },
      errors: [503],
    }),
  ),
  {
    method: 'get',
    path: '/status',
    summary: "The caller's usage: live workspaces, used and reserved minutes, quota",
    tag: 'status',
    auth: 'client',
    query: emptyRequestSchema,
    success: { status: 200, description: 'the usage', schema: statusSchema },
    errors: [503],
  },
  { method: 'get', path: '/admin/nodes', summary: 'Nodes with capacity, use and drain flag', tag: 'admin', auth: 'admin', success: { status: 200, description: 'the nodes', schema: nodesSchema }, errors: [503] },
  ...(['drain', 'undrain'] as const).map(
    (action): ApiRoute => ({
      method: 'post',
      path: `/admin/nodes/{name}/${action}`,
      summary: action === 'drain' ? 'Drain a node: no new grants on it; live ones stay' : 'Undrain a node',
      tag: 'admin',
      auth: 'admin',
      params: { name: z.string() },
      body: { schema: emptyRequestSchema, example: {} },
      success: { status: 200, description: 'every node after the change', schema: drainResultSchema },
      errors: [503],
    }),
  ),
  { method: 'get', path: '/admin/leases', summary: 'Every live grant and pilot lease', tag: 'admin', auth: 'admin', success: { status: 200, description: 'the grants (leases) and pilot leases (pilotLeases)', schema: leasesSchema }, errors: [503] },
  { method: 'get', path: '/admin/drift', summary: "The reconciler's drift listing", tag: 'admin', auth: 'admin', success: { status: 200, description: 'the listing', schema: driftSchema } },
  {
    method: 'post',
    path: '/admin/kill-all',
    summary: 'Emergency stop: every node destroys every VM and resets its memory to the configured value; then every open workspace is destroyed. Follow the Location for the report',
    tag: 'admin',
    auth: 'admin',
    body: { schema: killAllRequestSchema, example: { confirm: 'kill-all' } },
    success: { status: 202, description: 'started', schema: killAllSchema },
    errors: [503],
  },
  {
    method: 'get',
    path: '/admin/kill-all/{id}',
    summary: 'A kill-all: running, or done with its report per node and workspace',
    tag: 'admin',
    auth: 'admin',
    params: { id: z.string() },
    success: { status: 200, description: 'its state and report', schema: killAllSchema },
    errors: [404, 503],
  },
  {
    method: 'post',
    path: '/pilot/notifications',
    summary:
      "A pilot's signed notification about its slot, delivered to the slot's workflow. No bearer token: the HMAC-SHA256 `signature` with the site's pilot secret authenticates it (401 if forged); 409 if outside the time window or replayed; 404 if the slot has no running workflow",
    tag: 'pilot',
    auth: 'pilot',
    body: {
      schema: named('SignedPilotMessage', signedPilotMessageSchema),
      example: {
        slotId: 'slot-0123456789ab',
        node: 'vmm1',
        event: 'reserved',
        at: '2026-12-01T17:00:00.000Z',
        nonce: 'q1Jx7m2Ck9vHs0aTzR4wYg',
        memoryMiB: 1024,
        signature: '5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592',
      },
    },
    success: { status: 202, description: 'verified and delivered', schema: pilotDeliveredSchema },
    errors: [404, 409, 503],
  },
  {
    method: 'get',
    path: '/repository/{name}',
    summary: 'An image of the site repository (for node workers)',
    tag: 'repository',
    auth: 'node',
    params: { name: imageNameSchema },
    success: { status: 200, description: 'the image file', schema: z.string().openapi({ format: 'binary' }), contentType: 'application/octet-stream' },
  },
  {
    method: 'put',
    path: '/repository/{name}',
    summary: 'Stage a disk out to the repository (for node workers); `X-Vws-Sha256` is its digest taken on the node',
    tag: 'repository',
    auth: 'node',
    params: { name: imageNameSchema },
    success: { status: 201, description: 'stored', schema: imageSchema },
    errors: [409],
  },
];

/** What each error status means on this API. */
const ERROR_MEANING: Record<number, string> = {
  400: 'invalid request: `errors` names each field (or header) at fault',
  401: 'no valid bearer token (pilot notifications: a forged signature)',
  403: 'not allowed: admin only, or over the client quota (`urn:vws:problem:QuotaExceeded`)',
  404: 'no such object, or it belongs to another client',
  409: 'refused in the current state (`state` names it), no capacity, or already ended; a pilot notification that is stale or replayed',
  413: 'body larger than 64 KiB',
  422: 'the Idempotency-Key was already used with another body',
  503: 'the head worker does not answer; nothing is lost, try again',
  500: 'a server fault; nothing a client sends causes one',
};

/** The error statuses a route can answer. */
export function errorStatuses(route: ApiRoute): number[] {
  const s = new Set<number>(route.errors ?? []);
  if (route.auth !== 'none') s.add(401);
  if (route.auth === 'admin' || route.auth === 'metrics') s.add(403);
  if (route.params) s.add(404);
  if (route.body || route.query || route.idempotent) s.add(400);
  if (route.body) s.add(413);
  if (route.idempotent) s.add(422);
  if (route.auth === 'metrics') s.delete(401);
  s.add(500);
  return [...s].sort((a, b) => a - b);
}

/**
 * The OpenAPI security requirements of a route: alternatives, any one of which is enough. A client (or
 * an admin) authenticates by token or by client certificate (`mutualTLS`, where the site serves it); a
 * node worker sends no certificate, so the repository takes its token only; `/metrics` may also be
 * public (the empty requirement); a pilot's route takes no HTTP credential (the body is signed).
 */
export function securityOf(auth: RouteAuth): Array<Record<string, string[]>> {
  switch (auth) {
    case 'none':
    case 'pilot':
      return [];
    case 'node':
      return [{ bearer: [] }];
    case 'metrics':
      return [{ bearer: [] }, { mutualTLS: [] }, {}];
    case 'client':
    case 'admin':
      return [{ bearer: [] }, { mutualTLS: [] }];
  }
}

function routeConfig(route: ApiRoute): RouteConfig {
  const responses: Record<number, ResponseConfig> = {
    [route.success.status]: {
      description: route.success.description,
      ...(route.success.schema ? { content: { [route.success.contentType ?? 'application/json']: { schema: route.success.schema } } } : {}),
    },
  };
  for (const status of errorStatuses(route)) {
    responses[status] = { description: ERROR_MEANING[status] ?? 'error', content: { 'application/problem+json': { schema: problemSchema } } };
  }
  const headers = route.idempotent ? z.object({ 'Idempotency-Key': idempotencyKeySchema.optional() }) : undefined;
  return {
    method: route.method,
    path: route.path,
    summary: route.summary,
    tags: [route.tag],
    operationId: `${route.method}${route.path.replace(/[{}]/g, '').replace(/[^A-Za-z0-9]+(.)?/g, (_m, c: string | undefined) => (c ? c.toUpperCase() : ''))}`,
    security: securityOf(route.auth),
    request: {
      ...(route.params ? { params: z.object(route.params) } : {}),
      ...(route.query ? { query: route.query } : {}),
      ...(headers ? { headers } : {}),
      ...(route.body ? { body: { required: true, content: { 'application/json': { schema: route.body.schema, example: route.body.example } } } } : {}),
    },
    responses,
  };
}

let cached: ReturnType<OpenApiGeneratorV31['generateDocument']> | undefined;

/** The OpenAPI 3.1 document of the API (built once per process). */
export function openApiDocument(): ReturnType<OpenApiGeneratorV31['generateDocument']> {
  if (cached) return cached;
  const registry = new OpenAPIRegistry();
  registry.registerComponent('securitySchemes', 'bearer', {
    type: 'http',
    scheme: 'bearer',
    description: "A client's token (an admin's for admin routes), or a node's token for the repository. `/metrics` takes an admin token unless `api.metricsPublic` is set.",
  });
  registry.registerComponent('securitySchemes', 'mutualTLS', {
    type: 'mutualTLS',
    description:
      "A client certificate issued by the site's client CA (only where the site sets `api.tls.clientCaFile`): its subject, written as a grid DN (`/O=Grid/OU=site/CN=alice`), is a configured client's identity, with that client's role. A bearer token sent along must be the same client's; with `api.tls.requireClientCert` the certificate is required and a token alone is refused. Node tokens never need one.",
  });
  for (const route of API_ROUTES) registry.registerPath(routeConfig(route));
  cached = new OpenApiGeneratorV31(registry.definitions).generateDocument({
    openapi: '3.1.0',
    info: {
      title: 'vws: the Virtual Workspace Service',
      version: '1',
      description:
        'Virtual machines ("workspaces") on a site\'s hypervisor nodes. Every error is RFC 9457 problem+json; a client sees only its own workspaces, groups and ensembles (others\' are 404).',
    },
  });
  return cached;
}

/** A route's path as a regular expression over request paths. */
function pathPattern(path: string): RegExp {
  const escaped = path.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\{[^}]+\}/g, '[^/]+');
  return new RegExp(`^${escaped}/?$`);
}

const MATCHERS = API_ROUTES.map((r) => ({ method: r.method.toUpperCase(), path: r.path, re: pathPattern(r.path) }));

/**
 * The table's path of a request (`/workspaces/{id}/start`), or `unmatched`: a label with a bounded set
 * of values, for metrics and logs. HEAD is answered by the GET route.
 */
export function routeOf(method: string, path: string): string {
  const m = method === 'HEAD' ? 'GET' : method;
  return MATCHERS.find((r) => r.method === m && r.re.test(path))?.path ?? 'unmatched';
}
