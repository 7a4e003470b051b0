/**
 * A stack in pilot mode on the testbed's real Slurm: one pilot node (default vmm3, where no other test
 * runs VMs: a pilot destroys every vws VM of its node when it hands the node back), the site's pilot
 * secret and the API URL the pilots report to, and the testbed's KillWait as the grace.
 */
import { join } from 'node:path';
import { SlurmBatchSystem } from '../../src/activities/lrm/slurm';
import { LocalExecutor } from '../../src/exec/local';
import { startStack, TESTBED_DIR, type Stack, type StackOptions, type TestNode } from './stack';

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
  /** Extra `lrm` and `pilot` settings over the defaults here. */
  lrm?: Record<string, unknown>;
  pilot?: Record<string, unknown>;
}

/** Starts a stack whose only node is a pilot node lent by the testbed's Slurm. */
export function startPilotStack(o: PilotStackOptions): Promise<Stack> {
  const node = o.node ?? 'vmm3';
  return startStack({
    label: o.label,
    first: o.first,
    last: o.last,
    node,
    pilotNodes: [node],
    ...(o.headProcess ? { headProcess: true } : {}),
    config: {
      lrm: { kind: 'slurm', partition: 'vws', slurm: { conf: SLURM_CONF }, ...o.lrm },
      pilot: { graceSeconds: TESTBED_KILL_WAIT_S, graceRatio: 0.5, pollSeconds: 5, reserveTimeoutSeconds: 120, ...o.pilot },
    },
    lateConfig: (dir, api) => ({ pilot: { secretFile: join(dir, 'secrets', 'pilot.secret'), apiUrl: api } }),
  });
}

/** Cancels every job of the stack's prefix still known to Slurm (afterAll: nothing of a test may stay queued). */
export async function cancelStackJobs(stack: Stack | undefined, slurm: SlurmBatchSystem): Promise<void> {
  if (!stack) return;
  for (const j of await slurm.listByPrefix(stack.config.temporal.prefix).catch(() => [])) await slurm.cancel(j.jobId).catch(() => undefined);
}
