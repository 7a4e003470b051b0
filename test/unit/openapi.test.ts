/**
 * The OpenAPI document against the routes express really serves: every registered route is documented
 * and every documented route is served; request examples validate with the schemas the routes use;
 * every error is problem+json. No server: the app is built over a lazy Temporal client never used.
 */
import { Client } from '@temporalio/client';
import type express from 'express';
import { createApp } from '../../src/api/app';
import { API_ROUTES, errorStatuses, openApiDocument, routeOf } from '../../src/api/openapi';
import { GROUP_OPERATIONS, WORKSPACE_OPERATIONS } from '../../src/api/operations';
import { idsOf } from '../../src/api/request-log';
import { parseConfig } from '../../src/config/load';

interface Registered {
  method: string;
  path: string;
}

/** Every route registered on the app, walking nested routers (all mounted at the root). */
function registeredRoutes(app: express.Express): Registered[] {
  const out: Registered[] = [];
  const walk = (stack: Array<Record<string, any>>) => {
    for (const layer of stack) {
      if (layer.route) {
        for (const [method, on] of Object.entries(layer.route.methods as Record<string, boolean>)) {
          if (on && method !== '_all') out.push({ method, path: String(layer.route.path) });
        }
      } else if (layer.handle?.stack) {
        // A router mounted under a path would prefix its routes; this API mounts every router at the root.
        expect(layer.slash).toBe(true);
        walk(layer.handle.stack);
      }
    }
  };
  walk((app as unknown as { router: { stack: Array<Record<string, any>> } }).router.stack);
  return out;
}

/** An express path (`/workspaces/:id/:operation`) as a pattern over concrete paths. */
const expressPattern = (path: string) => new RegExp(`^${path.replace(/:[A-Za-z]+/g, '[^/]+')}$`);
/** A documented path with a sample value for each parameter. */
const sample = (path: string) => path.replace(/\{[^}]+\}/g, 'x');

const app = createApp({ config: parseConfig({}), client: new Client(), clientTokens: () => [], nodeTokens: () => [] });
const doc = openApiDocument() as { paths: Record<string, Record<string, any>>; components: { securitySchemes: Record<string, unknown> } };
const documented = Object.entries(doc.paths).flatMap(([path, ops]) => Object.keys(ops).map((method) => ({ method, path })));

describe('the OpenAPI document', () => {
  it('documents every route express serves, and nothing it does not', () => {
    const routes = registeredRoutes(app);
    expect(routes.length).toBeGreaterThan(15);
    for (const r of routes) {
      const re = expressPattern(r.path);
      expect({ route: r, documented: documented.some((d) => d.method === r.method && re.test(sample(d.path))) }).toEqual({ route: r, documented: true });
    }
    for (const d of documented) {
      const served = routes.some((r) => r.method === d.method && expressPattern(r.path).test(sample(d.path)));
      expect({ documented: d, served }).toEqual({ documented: d, served: true });
    }
    // The generic operation routes serve exactly the documented operations.
    for (const op of Object.keys(WORKSPACE_OPERATIONS)) expect(doc.paths[`/workspaces/{id}/${op}`]?.post).toBeDefined();
    for (const op of Object.keys(GROUP_OPERATIONS)) expect(doc.paths[`/groups/{id}/${op}`]?.post).toBeDefined();
  });

  it('is OpenAPI 3.1 with the request schemas the routes validate with', () => {
    expect(doc).toMatchObject({ openapi: '3.1.0', components: { schemas: { CreateWorkspaceRequest: { type: 'object' }, Problem: { type: 'object' } } } });
    const create = (doc as any).components.schemas.CreateWorkspaceRequest;
    expect(create.required).toEqual(['image']);
    expect(create.additionalProperties).toBe(false);
    expect(Object.keys(create.properties)).toEqual(expect.arrayContaining(['image', 'memoryMiB', 'vcpus', 'durationSeconds', 'count', 'shutdownMechanism']));
    expect(doc.paths['/workspaces'].post.parameters).toEqual([expect.objectContaining({ name: 'Idempotency-Key', in: 'header' })]);
    expect(doc.paths['/workspaces'].get.parameters.map((p: { name: string }) => p.name).sort()).toEqual(['ensemble', 'group', 'state']);
    expect(doc.paths['/workspaces/{id}'].get.parameters).toEqual([expect.objectContaining({ name: 'id', in: 'path', required: true })]);
  });

  it('has request examples that validate with the route schemas', () => {
    const withBody = API_ROUTES.filter((r) => r.body);
    expect(withBody.length).toBeGreaterThan(10);
    for (const r of withBody) {
      const parsed = r.body!.schema.safeParse(r.body!.example);
      expect({ route: `${r.method} ${r.path}`, ok: parsed.success }).toEqual({ route: `${r.method} ${r.path}`, ok: true });
      expect(doc.paths[r.path][r.method].requestBody.content['application/json'].example).toEqual(r.body!.example);
    }
  });

  it('answers every error as problem+json, with 401 where a token is needed and 404 where an id is named', () => {
    for (const r of API_ROUTES) {
      const responses = doc.paths[r.path][r.method].responses as Record<string, { content?: Record<string, unknown> }>;
      for (const status of errorStatuses(r)) expect(Object.keys(responses[status].content ?? {})).toEqual(['application/problem+json']);
      expect(String(r.success.status) in responses).toBe(true);
      if (r.auth === 'client' || r.auth === 'admin' || r.auth === 'node') expect(errorStatuses(r)).toContain(401);
      if (r.auth === 'admin') expect(errorStatuses(r)).toContain(403);
      if (r.params) expect(errorStatuses(r)).toContain(404);
      if (r.body) expect(errorStatuses(r)).toContain(400);
      // A pilot's notification carries its HMAC signature in the body: no HTTP credential, but a 401 when forged.
      if (r.auth === 'pilot') expect(errorStatuses(r)).toContain(401);
      expect(doc.paths[r.path][r.method].security).toEqual(r.auth === 'none' || r.auth === 'pilot' ? [] : expect.arrayContaining([{ bearer: [] }]));
    }
  });

  it('declares the bearer and mutualTLS security schemes, and lets each operation take either', () => {
    expect(doc.components.securitySchemes).toEqual({
      bearer: { type: 'http', scheme: 'bearer', description: expect.any(String) },
      mutualTLS: { type: 'mutualTLS', description: expect.stringContaining('api.tls.clientCaFile') },
    });
    const expected: Record<string, unknown[]> = {
      none: [],
      pilot: [],
      // Node workers present no certificate: the repository takes their token only.
      node: [{ bearer: [] }],
      client: [{ bearer: [] }, { mutualTLS: [] }],
      admin: [{ bearer: [] }, { mutualTLS: [] }],
      // Or public, with api.metricsPublic.
      metrics: [{ bearer: [] }, { mutualTLS: [] }, {}],
    };
    for (const r of API_ROUTES) expect({ route: `${r.method} ${r.path}`, security: doc.paths[r.path][r.method].security }).toEqual({ route: `${r.method} ${r.path}`, security: expected[r.auth] });
    expect(doc.paths['/workspaces/{id}'].get.security).toEqual([{ bearer: [] }, { mutualTLS: [] }]);
    expect(doc.paths['/repository/{name}'].get.security).toEqual([{ bearer: [] }]);
    // Every scheme an operation names is declared.
    const declared = Object.keys(doc.components.securitySchemes);
    for (const r of API_ROUTES) for (const req of doc.paths[r.path][r.method].security as Array<Record<string, string[]>>) for (const name of Object.keys(req)) expect(declared).toContain(name);
  });
});

describe('route labels and log ids', () => {
  it('name the documented route, or unmatched', () => {
    expect(routeOf('POST', '/workspaces/ws-0123456789ab/start')).toBe('/workspaces/{id}/start');
    expect(routeOf('GET', '/workspaces/anything')).toBe('/workspaces/{id}');
    expect(routeOf('HEAD', '/healthz')).toBe('/healthz');
    expect(routeOf('POST', '/workspaces/ws-0123456789ab/explode')).toBe('unmatched');
    expect(routeOf('GET', '/no/such/thing')).toBe('unmatched');
  });

  it('take only well-formed ids from a path', () => {
    expect(idsOf('/workspaces/ws-0123456789ab/pause')).toEqual({ workspace: 'ws-0123456789ab' });
    expect(idsOf('/groups/grp-0123456789ab')).toEqual({ group: 'grp-0123456789ab' });
    expect(idsOf('/ensembles/ens-0123456789ab/members')).toEqual({ ensemble: 'ens-0123456789ab' });
    expect(idsOf('/workspaces/Bearer-secret')).toEqual({});
  });
});
