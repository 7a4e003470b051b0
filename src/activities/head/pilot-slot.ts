/**
 * Head activities of the pilot-slot workflow (issue 7, seed 003): submit the pilot job to the site's batch
 * system, ask about it, cancel it, and lend the node time it obtained to the allocator. The job itself is
 * built here from the site configuration, so a workflow's history carries only the slot's own numbers.
 * Every activity is safe to repeat: a submit first looks for the slot's job by its unique name.
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { ApplicationFailure, type Client } from '@temporalio/client';
import { AllocatorClient } from '../../clients/allocator';
import type { NodeConfig, VwsConfig } from '../../config/schema';
import type { NodeLease } from '../../domain/allocation';
import { FailureType } from '../../domain/errors';
import type { Executor } from '../../exec/executor';
import { batchSystemFor } from '../lrm';
import type { BatchJobStatus, BatchSystem, PilotJobRequest } from '../lrm/types';

/** What one slot asks of the batch system. */
export interface PilotJobArgs {
  /** The slot id: lowercase letters, digits and `-` (the workspace id). */
  slotId: string;
  /** Memory the VMs need (the pilot reserves it plus the site's overhead), MiB. */
  memoryMiB: number;
  vcpus: number;
  /** How long the pilot holds the node once it runs, seconds (the workspace's running time and the margins). */
  holdSeconds: number;
  /** Node properties the node must have (the request's, with the site's). */
  constraints?: string[];
}

/** The batch job's name of a slot: the prefix first, so leak checks find every vws pilot. */
export function pilotJobName(config: VwsConfig, slotId: string): string {
  return `${config.temporal.prefix}-pilot-${slotId}`;
}

/** The pilot's view of the site's pilot nodes: which memory each hands out, and its configured value. */
function nodeTable(nodes: NodeConfig[]): Record<string, { memory: 'xen' | 'host'; configuredMiB?: number }> {
  return Object.fromEntries(nodes.filter((n) => n.pilot).map((n) => [n.name, n.driver === 'xen' ? { memory: 'xen' as const } : { memory: 'host' as const, configuredMiB: n.memoryMiB }]));
}

/**
 * This installation's pilot program: `dist/pilot/main.js` beside this file once built; from the sources
 * (tests run the head from TypeScript), the built copy in the project's `dist/`.
 */
function defaultPilotCommand(): string[] {
  const built = resolve(__dirname, '../../pilot/main.js');
  return [process.execPath, existsSync(built) ? built : resolve(__dirname, '../../../dist/pilot/main.js')];
}

/** What the activities need; `batch` and `executor` are injected by tests or built from the configuration. */
export interface PilotSlotDeps {
  client: Client;
  config: VwsConfig;
  batch?: BatchSystem;
  executor?: Executor;
}

/** The site's pilot settings, or a non-retryable failure naming what is missing. */
function pilotSettings(config: VwsConfig) {
  const { pilot, lrm } = config;
  if (!pilot || !lrm || !pilot.apiUrl) {
    throw ApplicationFailure.create({ type: FailureType.InvalidSpec, nonRetryable: true, message: 'pilot mode is not configured on this site (lrm, pilot.apiUrl)' });
  }
  return { pilot: { ...pilot, apiUrl: pilot.apiUrl }, lrm };
}

/** The batch job of a slot, from the site configuration (a pure function of both). */
export function pilotJobRequest(config: VwsConfig, args: PilotJobArgs): PilotJobRequest {
  const { pilot, lrm } = pilotSettings(config);
  const name = pilotJobName(config, args.slotId);
  const command = pilot.command ?? defaultPilotCommand();
  const argv = [
    ...command,
    'run',
    '--slot', args.slotId,
    '--api', pilot.apiUrl,
    '--secret-file', pilot.secretFile,
    '--reserve-mib', String(args.memoryMiB + pilot.overheadMiB),
    '--node-table', JSON.stringify(nodeTable(config.nodes)),
    '--hold-seconds', String(args.holdSeconds),
    '--margin-seconds', String(pilot.marginSeconds),
    '--grace-seconds', String(pilot.graceSeconds),
    '--grace-ratio', String(pilot.graceRatio),
    '--min-dom0-mib', String(pilot.minDom0MiB),
    '--node-dir', config.node.dir,
    // HTTP's fallback: the same signed message over SSH to the head's `receive` (`pilot.sshFallback`).
    ...(pilot.sshFallback ? ['--ssh-fallback', JSON.stringify(pilot.sshFallback)] : []),
    ...((pilot.endIfOrphaned ?? lrm.kind === 'slurm') ? ['--end-if-orphaned'] : []),
  ];
  // One pilot node: the job is pinned to it. Several: the site's partition and constraints must select
  // exactly its pilot nodes (a pilot that lands elsewhere finds no --node-table entry and exits at once).
  const pilotNodes = config.nodes.filter((n) => n.pilot);
  return {
    name,
    command: { kind: 'argv', argv },
    ...(pilotNodes.length === 1 ? { node: pilotNodes[0].name } : {}),
    // One pilot per node: a second one beside it would refuse at the node lock (lrm.exclusive).
    ...(lrm.exclusive ? { exclusive: true } : {}),
    walltimeSeconds: args.holdSeconds,
    cpus: args.vcpus,
    ...(args.constraints?.length ? { constraints: args.constraints } : {}),
    // /tmp: it exists on every node before the job starts (Slurm opens the file before the pilot runs).
    outputFile: `/tmp/${name}.out`,
    workDir: '/tmp',
  };
}

/** Creates the pilot-slot activities. */
export function createPilotSlotActivities(deps: PilotSlotDeps) {
  const { config } = deps;
  const allocator = new AllocatorClient(deps.client, config);
  let batch = deps.batch;
  /** Built on first use: a head without pilot mode never needs a batch system. */
  const batchSystem = (): BatchSystem => {
    if (!batch) {
      pilotSettings(config);
      batch = batchSystemFor(config, deps.executor);
    }
    return batch;
  };

  return {
    /**
     * Submits the slot's pilot job, or finds the one a lost answer already submitted (same name, still
     * known to the batch system). Refusals are typed: `BatchSubmitRefused`, `InvalidSpec` (non-retryable),
     * `BatchSystemUnavailable` (retryable).
     */
    async submitPilotJob(args: PilotJobArgs): Promise<{ jobId: string; name: string }> {
      const request = pilotJobRequest(config, args);
      const mine = (await batchSystem().listByPrefix(request.name)).filter((j) => j.name === request.name && j.state !== 'ended');
      if (mine.length) return { jobId: mine[0].jobId, name: request.name };
      const { jobId } = await batchSystem().submit(request);
      return { jobId, name: request.name };
    },

    /** The job's state as the batch system reports it. */
    pilotJobStatus(jobId: string): Promise<BatchJobStatus> {
      return batchSystem().status(jobId);
    },

    /** Cancels the job (SIGTERM to the pilot, which hands the node back); an ended job counts as success. */
    cancelPilotJob(jobId: string): Promise<void> {
      return batchSystem().cancel(jobId);
    },

    /** Lends the slot's node time to the allocator (idempotent per holder); a refusal is typed (`NoCapacity`). */
    leaseNode(lease: NodeLease): Promise<NodeLease> {
      return allocator.lease(lease);
    },

    /** Ends the slot's lease (idempotent). */
    endNodeLease(holder: string): Promise<boolean> {
      return allocator.endLease(holder);
    },
  };
}

/** The pilot-slot activities' type, for `proxyActivities`. */
export type PilotSlotActivities = ReturnType<typeof createPilotSlotActivities>;
