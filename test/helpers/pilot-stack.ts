/**
 * A stack in pilot mode on the testbed's real Slurm: one pilot node (default vmm3, where no other test
 * runs VMs: a pilot destroys every vws VM of its node when it hands the node back), the site's pilot
 * secret and the API URL the pilots report to, and the testbed's KillWait as the grace.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { WorkflowHandle } from '@temporalio/client';
import { SlurmBatchSystem } from '../../src/activities/lrm/slurm';
import { AllocatorClient } from '../../src/clients/allocator';
import { pilotSlotWorkflowId } from '../../src/config/names';
import type { Executor } from '../../src/exec/executor';
import { LocalExecutor } from '../../src/exec/local';
import { hostReservationProbe, type MemoryProbe } from './memory-monitor';
import { eventually, ROOT, startStack, TESTBED_DIR, TEST_NODES, type Stack, type StackOptions, type TestNode } from './stack';
import { temporalAddress } from './temporal';
import { dom0ProjectDir, xen1Executor } from './xen1';

/** The testbed's slurm.conf (testbed/testbed.sh). */
export const SLURM_CONF = join(TESTBED_DIR, 'slurm', 'slurm.conf');
/** The testbed's KillWait, seconds (testbed/testbed.sh). */
export const TESTBED_KILL_WAIT_S = 15;

/** The testbed's Slurm through vws's adapter, on the head. */
export function testbedSlurm(): SlurmBatchSystem {
  return new SlurmBatchSystem(new LocalExecutor(), { slurmConf: SLURM_CONF });
}

/** Options of {@link startPilotStack}. */
export interface PilotStackOptions extends Pick<StackOptions, 'label' | 'first' | 'last' | 'headProcess'> {
  node?: TestNode;
  /**
   * Several pilot nodes instead of `node` (the first is the stack's main node). The jobs are not pinned
   * then: set `lrm.constraints` to the testbed's feature `pilot` (vmm2 and up have it).
   */
  nodes?: TestNode[];
  /** Extra `lrm` and `pilot` settings over the defaults here. */
  lrm?: Record<string, unknown>;
  pilot?: Record<string, unknown>;
  /**
   * vws's HTTP endpoint unreachable from the pilots: their API URL is a closed port (10.213.0.1:9), and
   * `pilot.sshFallback` carries every notification over SSH to vmm2, where `vws-pilot receive` (this
   * tree's dist/, with the stack's own configuration) stands in for the head's receiver: the testbed's
   * head runs no sshd. The receiver reaches the dev server over the bridge.
   */
  sshFallback?: boolean;
  /** vws unreachable from the pilots altogether: their API URL is a closed port and there is no SSH fallback. */
  unreachableApi?: boolean;
}

/** An API URL where nothing listens (the discard port): every HTTP attempt is refused at once. */
const CLOSED_API = 'http://10.213.0.1:9';

/** `pilot.sshFallback` to vmm2's sshd (its key pinned) and `vws-pilot receive` there with `configFile`. */
function sshFallbackToVmm2(configFile: string): Record<string, unknown> {
  return {
    host: '10.213.0.12',
    hostAlias: 'vmm2',
    keyFile: join(TESTBED_DIR, 'ssh/id_ed25519'),
    knownHostsFile: join(TESTBED_DIR, 'ssh/known_hosts'),
    command: ['/usr/bin/env', `VWS_TEMPORAL_ADDRESS=10.213.0.1:${temporalAddress().split(':').pop()}`, process.execPath, join(ROOT, 'dist/pilot/main.js'), 'receive', '--config', configFile],
  };
}

/** The memory a pilot reserves on a testbed QEMU node, read from its node directory (configured − reserved). */
export function testbedReservationProbe(node: TestNode): MemoryProbe {
  return hostReservationProbe(node, join(TESTBED_DIR, 'hosts', node, 'node'), TEST_NODES[node].memoryMiB);
}

/** Starts a stack whose nodes are pilot nodes lent by the testbed's Slurm (one unless `nodes` says otherwise). */
export function startPilotStack(o: PilotStackOptions): Promise<Stack> {
  const nodes = o.nodes ?? [o.node ?? 'vmm3'];
  return startStack({
    label: o.label,
    first: o.first,
    last: o.last,
    nodes,
    pilotNodes: nodes,
    ...(o.headProcess ? { headProcess: true } : {}),
    config: {
      lrm: { kind: 'slurm', partition: 'vws', slurm: { conf: SLURM_CONF }, ...o.lrm },
      pilot: { graceSeconds: TESTBED_KILL_WAIT_S, graceRatio: 0.5, pollSeconds: 5, reserveTimeoutSeconds: 120, ...o.pilot },
    },
    lateConfig: (dir, api) => ({
      pilot: {
        secretFile: join(dir, 'secrets', 'pilot.secret'),
        apiUrl: o.sshFallback || o.unreachableApi ? CLOSED_API : api,
        ...(o.sshFallback ? { sshFallback: sshFallbackToVmm2(join(dir, 'vws.yaml')) } : {}),
      },
    }),
  });
}

/**
 * A pilot stack on the Xen node xen1, whose slurmd runs in dom0 (testbed/README.md "xen1 as a Slurm node"):
 * its jobs go to Slurm's partition `xen`, and the pilot runs this tree's dist/ from dom0's own copy
 * (`xen1.sh sync-project`, at the path dom0 was booted with: the repository root, which is not this
 * tree's when the tests run in a snapshot of it). The site's pilot secret is copied to the same path in dom0.
 */
export async function startXen1PilotStack(o: Omit<PilotStackOptions, 'node' | 'nodes'>): Promise<Stack> {
  await promisify(execFile)(join(ROOT, 'testbed/xen/xen1.sh'), ['sync-project'], { timeout: 600_000 });
  const dom0 = xen1Executor();
  const dom0Main = join(await dom0ProjectDir(dom0).finally(() => dom0.close()), 'dist', 'pilot', 'main.js');
  const stack = await startPilotStack({
    ...o,
    node: 'xen1',
    lrm: { partition: 'xen', constraints: ['xen'], ...o.lrm },
    pilot: { command: ['/usr/bin/node', dom0Main], ...o.pilot },
  });
  await copyPilotSecretToXen1(stack);
  return stack;
}

/**
 * Copies the stack's pilot secret into xen1's dom0 (its state directory is on a tmpfs: a reboot loses it),
 * through `dom0` (after a power cut, a new connection: the stack's own may still be the dead one).
 */
export async function copyPilotSecretToXen1(stack: Stack, dom0: Executor = stack.nodeExec): Promise<void> {
  const secret = readFileSync(stack.config.pilot!.secretFile, 'utf8');
  await dom0.mkdir(join(stack.config.stateDir, 'secrets'));
  await dom0.writeFileAtomic(stack.config.pilot!.secretFile, secret);
  await dom0.run(['chmod', '600', stack.config.pilot!.secretFile]);
}

/** Cancels every job of the stack's prefix still known to Slurm (afterAll: nothing of a test may stay queued). */
export async function cancelStackJobs(stack: Stack | undefined, slurm: SlurmBatchSystem): Promise<void> {
  if (!stack) return;
  for (const j of await slurm.listByPrefix(stack.config.temporal.prefix).catch(() => [])) await slurm.cancel(j.jobId).catch(() => undefined);
}

/**
 * After a pilot scenario: each workspace's slot ended (within `slotSeconds`), and nothing is held: no pilot
 * job of the stack's prefix in Slurm, no lease, grant or leftover, and each node's memory exactly at its
 * configured value (`memory`: a probe and the value it must read).
 */
export async function expectPilotStackClean(f: PilotFixture, workspaceIds: string[], memory: Array<{ probe: MemoryProbe; configuredMiB: number }>, slotSeconds = 120): Promise<void> {
  for (const id of workspaceIds) await eventually(slotSeconds, async () => (await f.slot(id).describe()).status.name !== 'RUNNING', `slot of ${id} ended`);
  expect(await f.slurm.listByPrefix(`${f.stack.config.temporal.prefix}-pilot`)).toEqual([]);
  expect(await f.allocator.leases()).toEqual([]);
  expect(await f.stack.grants()).toEqual([]);
  expect(await f.stack.leftovers()).toEqual([]);
  for (const m of memory) expect({ node: m.probe.node, MiB: await m.probe.read() }).toEqual({ node: m.probe.node, MiB: m.configuredMiB });
}

/** What a pilot test file works with: its stack, the testbed's Slurm and the stack's allocator. */
export interface PilotFixture {
  stack: Stack;
  slurm: SlurmBatchSystem;
  allocator: AllocatorClient;
  /** The handle of a workspace's pilot-slot workflow. */
  slot(workspaceId: string): WorkflowHandle;
}

/**
 * Starts a pilot stack (`start`: e.g. {@link startXen1PilotStack}) before the file's (or describe block's) tests and, after them, cancels every job of its prefix still
 * known to Slurm (nothing of a test may stay queued, whatever failed) and stops it. Read the fields
 * inside tests (they are set in beforeAll).
 */
export function usePilotStack(o: PilotStackOptions, start: (o: PilotStackOptions) => Promise<Stack> = startPilotStack): PilotFixture {
  const f = { slot: (id: string) => f.stack.conn.client.workflow.getHandle(pilotSlotWorkflowId(f.stack.config, id)) } as PilotFixture;
  beforeAll(async () => {
    f.slurm = testbedSlurm();
    f.stack = await start(o);
    f.allocator = new AllocatorClient(f.stack.conn.client, f.stack.config);
  });
  // A test that failed between killing a worker and starting it again must not fail the ones after it.
  afterEach(async () => {
    await f.stack?.restartKilledWorkers();
  });
  afterAll(async () => {
    await cancelStackJobs(f.stack, f.slurm);
    await f.stack?.stop();
  });
  return f;
}
