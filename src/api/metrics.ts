/**
 * Prometheus metrics of the API process (`GET /metrics`): requests by route, method and status with a
 * latency histogram; open workspaces by state (visibility counts); each node's capacity, use and drain
 * flag (the allocator's `nodes` query); and the process's own metrics. What comes from Temporal is
 * read at most once per `cacheMs` however often the endpoint is scraped, so a scraper cannot load
 * Temporal; a source that does not answer is reported by `vws_metrics_source_up` instead of failing
 * the scrape. Every registry is the app's own, so several apps in one process (tests) do not collide.
 */
import type { NextFunction, Request, Response } from 'express';
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { AllocatorClient } from '../clients/allocator';
import type { VwsConfig } from '../config/schema';
import type { NodeUse } from '../domain/messages';
import { WORKSPACE_STATES } from '../domain/states';
import { log } from '../log';
import { routeOf } from './openapi';
import { readListing } from './drift';

/** What the metrics read. */
export interface MetricsDeps {
  config: VwsConfig;
  client: Client;
  allocator: AllocatorClient;
  /** How long Temporal's answers are reused, in ms (default 5000). */
  cacheMs?: number;
}

/** One reading of what Temporal knows; a null part did not answer. */
interface Snapshot {
  workspaces: Map<string, number> | null;
  nodes: NodeUse[] | null;
}

/** The visibility query counting this installation's open workspaces in `state`. */
export function workspacesInStateQuery(config: VwsConfig, state: string): string {
  return `WorkflowType = "workspaceWorkflow" AND WorkflowId STARTS_WITH "${config.temporal.prefix}-ws-" AND ExecutionStatus = "Running" AND VwsState = "${state}"`;
}

/** The API's metrics. */
export class ApiMetrics {
  /** The registry `/metrics` renders. */
  readonly registry = new Registry();
  private readonly requests: Counter<'method' | 'route' | 'status'>;
  private readonly latency: Histogram<'method' | 'route'>;
  private snapshot: { at: number; value: Promise<Snapshot> } | undefined;
  /** Temporal reads so far (each one a visibility count or a query); tests check the cache with it. */
  temporalReads = 0;

  constructor(readonly deps: MetricsDeps) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.requests = new Counter({
      name: 'vws_http_requests_total',
      help: 'HTTP requests answered, by route (the OpenAPI path; `unmatched` for none), method and status',
      labelNames: ['method', 'route', 'status'],
      registers,
    });
    this.latency = new Histogram({
      name: 'vws_http_request_duration_seconds',
      help: 'Time to answer an HTTP request, by route and method',
      labelNames: ['method', 'route'],
      buckets: [0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    const self = this;
    new Gauge({
      name: 'vws_metrics_source_up',
      help: 'Whether a source of these metrics (visibility, allocator) answered at the last reading (1) or not (0)',
      labelNames: ['source'],
      registers,
      async collect() {
        const s = await self.read();
        this.set({ source: 'visibility' }, s.workspaces ? 1 : 0);
        this.set({ source: 'allocator' }, s.nodes ? 1 : 0);
      },
    });
    new Gauge({
      name: 'vws_workspaces',
      help: 'Open workspaces by state (Temporal visibility; lags the workflows by a moment)',
      labelNames: ['state'],
      registers,
      async collect() {
        const s = await self.read();
        this.reset();
        for (const [state, n] of s.workspaces ?? []) this.set({ state }, n);
      },
    });
    const perNode = (name: string, help: string, value: (n: NodeUse) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ['node'],
        registers,
        async collect() {
          const s = await self.read();
          this.reset();
          for (const n of s.nodes ?? []) this.set({ node: n.name }, value(n));
        },
      });
    new Gauge({
      name: 'vws_reconcile_drift',
      help: "Drift the reconciler found and put right since the installation's first run, by kind (its drift listing)",
      labelNames: ['kind'],
      registers,
      async collect() {
        const listing = await readListing(self.deps.config).catch(() => null);
        this.reset();
        for (const [kind, n] of Object.entries(listing?.totals ?? {})) this.set({ kind }, n);
      },
    });
    perNode('vws_node_memory_capacity_mib', "A node's memory for workspaces, in MiB", (n) => n.memoryMiB);
    perNode('vws_node_memory_used_mib', 'Memory granted to live workspaces on a node, in MiB', (n) => n.usedMemoryMiB);
    perNode('vws_node_vcpus_capacity', "A node's CPUs for workspaces", (n) => n.cpus);
    perNode('vws_node_vcpus_used', 'vCPUs granted to live workspaces on a node', (n) => n.usedVcpus);
    perNode('vws_node_grants', 'Live grants (workspaces) on a node', (n) => n.grants);
    perNode('vws_node_drained', 'Whether a node is drained (1): no new grants on it', (n) => (n.drained ? 1 : 0));
  }

  /** Counts one answered request. */
  observe(method: string, route: string, status: number, seconds: number): void {
    this.requests.inc({ method, route, status: String(status) });
    this.latency.observe({ method, route }, seconds);
  }

  /** Middleware: observes every request when its answer is finished (or the client went away). */
  middleware() {
    return (req: Request, res: Response, next: NextFunction) => {
      const start = process.hrtime.bigint();
      res.once('close', () => {
        this.observe(req.method, routeOf(req.method, req.path), res.statusCode, Number(process.hrtime.bigint() - start) / 1e9);
      });
      next();
    };
  }

  /** The metrics in the Prometheus text format. */
  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  /** Temporal's answers, reused for `cacheMs` (a scrape in flight is shared, never doubled). */
  private read(): Promise<Snapshot> {
    const now = Date.now();
    if (!this.snapshot || now - this.snapshot.at >= (this.deps.cacheMs ?? 5000)) {
      this.snapshot = { at: now, value: this.fetch() };
    }
    return this.snapshot.value;
  }

  private async fetch(): Promise<Snapshot> {
    const { config, client, allocator } = this.deps;
    const [workspaces, nodes] = await Promise.all([
      Promise.all(
        WORKSPACE_STATES.map(async (state) => {
          this.temporalReads++;
          return [state, (await client.workflow.count(workspacesInStateQuery(config, state))).count] as const;
        }),
      ).then(
        (counts) => new Map<string, number>(counts),
        (err: unknown) => {
          log.warn({ err }, 'metrics: visibility did not answer the workspace counts');
          return null;
        },
      ),
      (async () => {
        this.temporalReads++;
        return allocator.nodes();
      })().catch((err: unknown) => {
        // Before the first grant there is no allocator: every node is empty.
        if (err instanceof WorkflowNotFoundError) {
          return config.nodes.map((n): NodeUse => ({ name: n.name, memoryMiB: n.memoryMiB, cpus: n.cpus, usedMemoryMiB: 0, usedVcpus: 0, grants: 0, drained: false, properties: n.properties }));
        }
        log.warn({ err }, 'metrics: the allocator did not answer');
        return null;
      }),
    ]);
    return { workspaces, nodes };
  }
}
