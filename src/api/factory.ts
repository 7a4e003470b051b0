/**
 * The factory (seed 000's factory service): turns a deployment request into exact values within the
 * site's policy, reserves the slots synchronously so that a refusal (no capacity, quota) is the create's
 * own answer and nothing is created or held, then starts the workspace, group or ensemble workflow.
 * Creates with an `Idempotency-Key` are repeatable: the same key and body answer the same, once.
 */
import { WorkflowExecutionAlreadyStartedError, WorkflowNotFoundError, type Client, type WorkflowStartOptions } from '@temporalio/client';
import type { AllocatorClient } from '../clients/allocator';
import { ensembleWorkflowId, groupWorkflowId, headTaskQueue, pilotSlotWorkflowId, workspaceRouting, workspaceWorkflowId } from '../config/names';
import { pilotHoldSeconds } from '../domain/pilot-slot';
import type { VwsConfig } from '../config/schema';
import type { Grant, SlotRequest } from '../domain/allocation';
import type { EnsembleInput, EnsembleMemberRequest, GroupInput } from '../domain/groups';
import { VwsOwner, VwsState } from '../domain/messages';
import type { CreateWorkspaceRequest, EnsembleMemberBody } from '../domain/requests';
import { nicsOf, type WorkspaceInput, type WorkspaceSpec } from '../domain/workspace';
import { log } from '../log';
import type { Principal } from './auth';
import { bodyHash, CREATE_MEMO, idDigits, memberIds, type CreateMemo } from './idempotency';
import { nodesWithProperties, resolveResources, type ExactResources } from './policy';
import { failureProblem, HttpProblem, problemType } from './problem';
import { buildWorkspaceSpec, invalid } from './workspace-spec';

/** What a create answers (202), and where the client follows the new object. */
export interface Created {
  location: string;
  answer: Record<string, unknown>;
}

/** The workflow a create starts. */
interface StartPlan {
  workflowType: 'workspaceWorkflow' | 'groupWorkflow' | 'ensembleWorkflow';
  workflowId: string;
  args: [unknown];
  searchAttributes: NonNullable<WorkflowStartOptions['typedSearchAttributes']>;
  answer: Record<string, unknown>;
  location: string;
  /** Gives back what was reserved for the workflow, when it could not be started. */
  release: () => Promise<unknown>;
  /** The client's name, for the log. */
  owner: string;
}

/** A workflow found under a create's id, with the memo its create left. */
interface Existing {
  memo?: CreateMemo;
  running: boolean;
}

/** The factory over the Temporal client and the allocator. */
export class Factory {
  constructor(
    private readonly config: VwsConfig,
    private readonly client: Client,
    private readonly allocator: AllocatorClient,
  ) {}

  /** Exact resources and the exact spec of a request, or a 400 naming each refused field (nothing is reserved yet). */
  async resolve(principal: Principal, body: CreateWorkspaceRequest | EnsembleMemberBody): Promise<{ spec: WorkspaceSpec; exact: ExactResources }> {
    const r = resolveResources(this.config, body);
    if (!r.ok) {
      if (r.invalid.length) throw invalid(r.invalid);
      const errors = r.policy.map(({ field, message }) => ({ field, message }));
      throw new HttpProblem(400, 'Invalid request', errors.map((e) => `${e.field}: ${e.message}`).join('; '), {
        type: problemType('PolicyViolation'),
        errors,
        limits: Object.fromEntries(r.policy.map((p) => [p.field, p.limit])),
      });
    }
    return { spec: await buildWorkspaceSpec(this.config, principal, body, r.exact), exact: r.exact };
  }

  /**
   * POST /workspaces: one workspace, or a group when `count` > 1 (seed 002 NodeNumber). Reserves first;
   * a refusal answers the create and nothing is created or held.
   */
  async createWorkspaces(principal: Principal, body: CreateWorkspaceRequest, key?: string): Promise<Created> {
    const hash = bodyHash(body);
    const digits = idDigits('workspaces', principal.identity, key);
    // Either kind may exist under a key (the same key first used with another count): look for both.
    if (key !== undefined) {
      for (const id of [`ws-${digits}`, `grp-${digits}`]) {
        const found = await this.existing(`${this.config.temporal.prefix}-${id}`);
        if (found) return this.repeat(found, hash, id);
      }
    }
    if (body.pilot) this.checkPilotMode();
    const { spec, exact } = await this.resolve(principal, body);
    if (body.pilot && body.count > 1) this.checkPilotGroup(spec, body.count);
    const plan = body.pilot
      ? body.count > 1
        ? this.pilotGroup(principal, `grp-${digits}`, spec, exact, body.count)
        : this.pilotOne(principal, `ws-${digits}`, spec, exact)
      : body.count > 1
        ? await this.reserveGroup(principal, `grp-${digits}`, spec, exact, body.count)
        : await this.reserveOne(principal, `ws-${digits}`, spec, exact);
    return this.start(plan, hash, key);
  }

  /** POST /ensembles: an ensemble that members register with until `done`. Nothing is reserved yet. */
  async createEnsemble(principal: Principal, body: Record<string, unknown>, key?: string): Promise<Created> {
    const hash = bodyHash(body);
    const id = `ens-${idDigits('ensembles', principal.identity, key)}`;
    const workflowId = ensembleWorkflowId(this.config, id);
    if (key !== undefined) {
      const found = await this.existing(workflowId);
      if (found) return this.repeat(found, hash, id);
    }
    const input: EnsembleInput = {
      id,
      owner: principal.identity,
      routing: workspaceRouting(this.config),
      createdAt: new Date().toISOString(),
      deadlineSeconds: this.config.policies.ensembleDeadlineSeconds,
    };
    const location = `/ensembles/${id}`;
    return this.start(
      {
        workflowType: 'ensembleWorkflow',
        workflowId,
        args: [input],
        searchAttributes: [{ key: VwsOwner, value: principal.identity }],
        answer: { id, kind: 'ensemble', state: 'Registering', deadlineSeconds: input.deadlineSeconds, links: { self: location, members: `${location}/members`, done: `${location}/done` } },
        location,
        release: async () => undefined,
        owner: principal.name,
      },
      hash,
      key,
    );
  }

  /** The registration an ensemble member's body becomes: exact values within the policy, checked like any create. */
  async memberRequest(principal: Principal, body: EnsembleMemberBody): Promise<EnsembleMemberRequest> {
    const { spec } = await this.resolve(principal, body);
    return { spec, count: body.count, ...(body.done ? { done: true } : {}) };
  }

  /** Reserves one slot for a new workspace (holder: its workflow id). */
  private async reserveOne(principal: Principal, id: string, spec: WorkspaceSpec, exact: ExactResources): Promise<StartPlan> {
    const workflowId = workspaceWorkflowId(this.config, id);
    const grant = await this.refusing(principal, () => this.allocator.reserve(this.slot(principal, workflowId, spec)));
    const input: WorkspaceInput = { id, owner: principal.identity, spec, routing: workspaceRouting(this.config), createdAt: new Date().toISOString(), grant };
    return this.workspacePlan(principal, workflowId, input, exact, { node: grant.node, nics: nicsOf(grant) }, () => this.allocator.release(workflowId));
  }

  /** The start of one workspace workflow, and the create's answer (`extra`: what this kind of create adds). */
  private workspacePlan(principal: Principal, workflowId: string, input: WorkspaceInput, exact: ExactResources, extra: Record<string, unknown>, release: () => Promise<unknown>): StartPlan {
    const { id, spec } = input;
    const state = isStaging(spec) ? 'Unstaged' : 'Unpropagated';
    return {
      workflowType: 'workspaceWorkflow',
      workflowId,
      args: [input],
      searchAttributes: [
        { key: VwsOwner, value: principal.identity },
        { key: VwsState, value: state },
      ],
      answer: { id, kind: 'workspace', state, count: 1, ...exact, ...extra, links: { self: `/workspaces/${id}` } },
      location: `/workspaces/${id}`,
      release,
      owner: principal.name,
    };
  }

  /** A 400 naming `pilot` when this site cannot borrow node time from a batch system. */
  private checkPilotMode(): void {
    const { pilot, lrm, nodes } = this.config;
    const why = !lrm ? 'no batch system (lrm)' : !pilot?.apiUrl ? 'no pilot.apiUrl' : !nodes.some((n) => n.pilot) ? 'no pilot nodes (nodes[].pilot)' : undefined;
    if (!why) return;
    const message = `pilot mode is not available on this site: ${why} is configured`;
    throw new HttpProblem(400, 'Invalid request', `pilot: ${message}`, { errors: [{ field: 'pilot', message }] });
  }

  /**
   * A 400 naming `count` when a pilot-mode group cannot ever run whole here: each member's pilot job has a
   * node to itself, so the group needs as many pilot nodes (with the requested properties) as members.
   */
  private checkPilotGroup(spec: WorkspaceSpec, count: number): void {
    const wanted = spec.nodeProperties ?? [];
    const nodes = nodesWithProperties(this.config.nodes, wanted).filter((n) => n.pilot).length;
    if (count <= nodes) return;
    const message = `pilot mode runs each member on a node of its own: ${count} members, but this site has ${nodes} pilot node(s)${wanted.length ? ` with ${wanted.join(', ')}` : ''}`;
    throw new HttpProblem(400, 'Invalid request', `count: ${message}`, { errors: [{ field: 'count', message }] });
  }

  /**
   * Pilot mode: nothing is reserved now. The workspace's pilot slot submits a job to the batch system and
   * the workspace waits in its queue (task `queued-in-batch`), then allocates inside the node time the
   * pilot obtained; a refusal then (the job never ran) ends the workspace with the reason.
   */
  private pilotOne(principal: Principal, id: string, spec: WorkspaceSpec, exact: ExactResources): StartPlan {
    const workflowId = workspaceWorkflowId(this.config, id);
    const input: WorkspaceInput = {
      id,
      owner: principal.identity,
      spec,
      routing: workspaceRouting(this.config),
      createdAt: new Date().toISOString(),
      pilot: this.pilotSlot(id, spec),
    };
    return this.workspacePlan(principal, workflowId, input, exact, { task: 'queued-in-batch', pilot: { slotId: id } }, async () => undefined);
  }

  /**
   * A group in pilot mode: nothing is reserved now; each member's own pilot job (a node to itself) waits
   * in the batch queue. The group is Ready once every member runs, and backs out if one cannot.
   */
  private pilotGroup(principal: Principal, id: string, spec: WorkspaceSpec, exact: ExactResources, count: number): StartPlan {
    const members = memberIds(id, count);
    const input: GroupInput = {
      id,
      owner: principal.identity,
      spec,
      count,
      routing: workspaceRouting(this.config),
      createdAt: new Date().toISOString(),
      pilots: members.map((m) => this.pilotSlot(m, spec)),
    };
    const answer = members.map((m) => ({ id: m, task: 'queued-in-batch', pilot: { slotId: m } }));
    return this.groupPlan(principal, input, exact, answer, async () => undefined);
  }

  /** The start of one group workflow, and the create's answer (`members`: what it says of each member). */
  private groupPlan(principal: Principal, input: GroupInput, exact: ExactResources, members: Array<Record<string, unknown>>, release: () => Promise<unknown>): StartPlan {
    const { id, count } = input;
    return {
      workflowType: 'groupWorkflow',
      workflowId: groupWorkflowId(this.config, id),
      args: [input],
      searchAttributes: [{ key: VwsOwner, value: principal.identity }],
      answer: { id, kind: 'group', state: 'Deploying', count, ...exact, members, links: { self: `/groups/${id}` } },
      location: `/groups/${id}`,
      release,
      owner: principal.name,
    };
  }

  /** The pilot slot of workspace `id` (its slot id is the workspace's id), with the site's pilot timing. */
  private pilotSlot(id: string, spec: WorkspaceSpec): NonNullable<WorkspaceInput['pilot']> {
    const pilot = this.config.pilot!;
    const settings = {
      reserveTimeoutSeconds: pilot.reserveTimeoutSeconds,
      marginSeconds: pilot.marginSeconds,
      evacuateSeconds: pilot.evacuateSeconds,
      pollSeconds: pilot.pollSeconds,
      windowSeconds: pilot.windowSeconds,
    };
    const routing = workspaceRouting(this.config);
    return {
      slotWorkflowId: pilotSlotWorkflowId(this.config, id),
      slot: {
        slotId: id,
        workspaceWorkflowId: workspaceWorkflowId(this.config, id),
        memoryMiB: spec.memoryMiB,
        vcpus: spec.vcpus,
        holdSeconds: pilotHoldSeconds(spec.durationSeconds, settings, pilot.startupSeconds),
        ...(spec.nodeProperties?.length ? { constraints: spec.nodeProperties } : {}),
        headTaskQueue: routing.headTaskQueue,
        nodeTaskQueuePrefix: routing.nodeTaskQueuePrefix,
        settings,
      },
    };
  }

  /** Reserves every member's slot at once (gang: the group's workflow id), all or none. */
  private async reserveGroup(principal: Principal, id: string, spec: WorkspaceSpec, exact: ExactResources, count: number): Promise<StartPlan> {
    const gang = groupWorkflowId(this.config, id);
    const members = memberIds(id, count);
    const holders = members.map((m) => workspaceWorkflowId(this.config, m));
    const granted = await this.refusing(principal, () => this.allocator.reserveGang({ gang, members: holders.map((h) => this.slot(principal, h, spec)) }));
    const grants = holders.map((h) => granted.find((g) => g.holder === h)).filter((g): g is Grant => !!g);
    if (grants.length !== count) {
      await this.allocator.releaseGang(gang);
      throw new Error(`the allocator granted ${grants.length} of the group's ${count} members`);
    }
    const input: GroupInput = { id, owner: principal.identity, spec, count, routing: workspaceRouting(this.config), createdAt: new Date().toISOString(), grants };
    const answer = grants.map((g, i) => ({ id: members[i], node: g.node, nics: nicsOf(g) }));
    return this.groupPlan(principal, input, exact, answer, () => this.allocator.releaseGang(gang));
  }

  /** What the allocator is asked for one workspace. */
  private slot(principal: Principal, holder: string, spec: WorkspaceSpec): SlotRequest {
    return {
      holder,
      memoryMiB: spec.memoryMiB,
      vcpus: spec.vcpus,
      ...(spec.networks ? { networks: spec.networks } : {}),
      owner: principal.identity,
      reservedSeconds: spec.durationSeconds,
      ...(spec.nodeProperties?.length ? { nodeProperties: spec.nodeProperties } : {}),
    };
  }

  /** Runs an allocator call; its refusal becomes the create's answer (409 NoCapacity, 403 QuotaExceeded). */
  private async refusing<T>(principal: Principal, reserve: () => Promise<T>): Promise<T> {
    try {
      return await reserve();
    } catch (e) {
      const quota = this.config.clients.find((c) => c.identity === principal.identity)?.quota;
      const problem = failureProblem(e, quota ? { quota } : {});
      if (problem) {
        log.info({ owner: principal.name, status: problem.status, reason: problem.message }, 'create refused by the allocator');
        throw problem;
      }
      throw e;
    }
  }

  /**
   * Starts the planned workflow with the create's memo. Another create with the same key may have won
   * the start: then its answer is this one's (the allocator gave both the same grant, held by that
   * workflow). Any other failure gives back what was reserved.
   */
  private async start(plan: StartPlan, hash: string, key: string | undefined): Promise<Created> {
    const memo: CreateMemo = { bodyHash: hash, answer: plan.answer };
    try {
      await this.client.workflow.start(plan.workflowType, {
        workflowId: plan.workflowId,
        taskQueue: headTaskQueue(this.config),
        args: plan.args,
        typedSearchAttributes: plan.searchAttributes,
        memo: { [CREATE_MEMO]: memo },
        // A keyed create names its workflow once for good: even after it ended, a repeat must not start it again.
        ...(key !== undefined ? { workflowIdReusePolicy: 'REJECT_DUPLICATE' as const } : {}),
      });
    } catch (e) {
      if (key !== undefined && e instanceof WorkflowExecutionAlreadyStartedError) {
        const found = await this.existing(plan.workflowId);
        // A workflow that already ended released its grants; what this create just reserved for it is nobody's.
        if (found && !found.running) await plan.release();
        if (found) return this.repeat(found, hash, String(plan.answer.id));
      }
      await plan.release().catch((err: unknown) => log.error({ err, workflowId: plan.workflowId }, 'could not release after a failed start'));
      throw e;
    }
    log.info({ workflowId: plan.workflowId, kind: plan.answer.kind, owner: plan.owner, keyed: key !== undefined }, 'created');
    return { location: plan.location, answer: plan.answer };
  }

  /** The workflow under `workflowId`, or null. */
  private async existing(workflowId: string): Promise<Existing | null> {
    try {
      const d = await this.client.workflow.getHandle(workflowId).describe();
      return { memo: d.memo?.[CREATE_MEMO] as CreateMemo | undefined, running: d.status.name === 'RUNNING' };
    } catch (e) {
      if (e instanceof WorkflowNotFoundError) return null;
      throw e;
    }
  }

  /** A repeated keyed create: the first one's answer, or 422 when the body differs. */
  private repeat(found: Existing, hash: string, id: string): Created {
    if (!found.memo || found.memo.bodyHash !== hash) {
      const message = `this key was already used for ${id} with another request body; send the same body to get its answer, or use a new key`;
      throw new HttpProblem(422, 'Idempotency key reused', `Idempotency-Key: ${message}`, {
        type: problemType('IdempotencyKeyReused'),
        errors: [{ field: 'Idempotency-Key', message }],
      });
    }
    const answer = found.memo.answer;
    return { location: String((answer.links as { self?: string } | undefined)?.self ?? ''), answer };
  }
}

/** True when some image of the spec comes from a URL (the workspace starts Unstaged). */
function isStaging(spec: WorkspaceSpec): boolean {
  return !!spec.imageSource || (spec.partitions ?? []).some((p) => p.imageSource);
}
