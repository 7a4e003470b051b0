/**
 * One workspace's lifecycle (seed 002): allocate a slot and an address, propagate the image to the
 * node, add the DHCP entry, boot, learn the address the VM obtained, run until destroyed or until
 * DeploymentTime runs out, then clean up everything on the node and release the grant.
 *
 * No workflow run timeout: the deadline is a timer here, so cleanup always runs. Cleanup runs in a
 * non-cancellable scope and its activities retry until the node answers, because a slot or address must
 * not be released before its VM is confirmed gone.
 */
import {
  ActivityCancellationType,
  ApplicationFailure,
  CancellationScope,
  condition,
  isCancellation,
  proxyActivities,
  type RetryPolicy,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { HeadActivities } from '../activities/head/allocator-client';
import type { NodeActivities } from '../activities/node';
import type { Grant } from '../domain/allocation';
import { FailureType, NON_RETRYABLE_FAILURES } from '../domain/errors';
import { describeQuery, destroyUpdate, VwsNode, VwsState } from '../domain/messages';
import { isOperationAllowed, refusalMessage, type WorkspaceState } from '../domain/states';
import { networkOf, type WorkspaceDescription, type WorkspaceInput } from '../domain/workspace';

/** Forward steps give up after a few attempts (the workspace then becomes Corrupted). */
const FORWARD_RETRY: RetryPolicy = { initialInterval: '1s', maximumInterval: '10s', maximumAttempts: 5, nonRetryableErrorTypes: NON_RETRYABLE_FAILURES };
/** Cleanup never gives up: it retries until the node answers. */
const CLEANUP_RETRY: RetryPolicy = { initialInterval: '1s', maximumInterval: '30s', nonRetryableErrorTypes: [FailureType.InvalidSpec] };

function nodeActivities(taskQueue: string, retry: RetryPolicy) {
  // WAIT_CANCELLATION_COMPLETED: when destroy cancels a forward step, cleanup must not start until the
  // node has finished (or abandoned) it; otherwise a VM could boot after destroyVm ran, and leak.
  const cancellationType = ActivityCancellationType.WAIT_CANCELLATION_COMPLETED;
  return {
    quick: proxyActivities<NodeActivities>({ taskQueue, startToCloseTimeout: '60s', retry, cancellationType }),
    long: proxyActivities<NodeActivities>({ taskQueue, startToCloseTimeout: '30m', heartbeatTimeout: '60s', retry, cancellationType }),
  };
}

/** The DHCP host entry of a workspace's grant. */
function dhcpEntry(workspaceId: string, grant: Grant) {
  return { workspaceId, mac: grant.address.mac, ip: grant.address.ip, hostname: grant.address.hostname };
}

/** Runs one workspace from creation to Cancelled; returns its final description. */
export async function workspaceWorkflow(input: WorkspaceInput): Promise<WorkspaceDescription> {
  const { spec, routing } = input;
  const holder = workflowInfo().workflowId;
  const head = proxyActivities<HeadActivities>({
    taskQueue: routing.headTaskQueue,
    startToCloseTimeout: '30s',
    retry: { ...CLEANUP_RETRY, nonRetryableErrorTypes: NON_RETRYABLE_FAILURES },
  });

  // The image was resolved in the site repository when the request was accepted: it is staged.
  const d: WorkspaceDescription = {
    id: input.id,
    owner: input.owner,
    state: 'Unpropagated',
    task: 'allocating',
    image: spec.image.name,
    memoryMiB: spec.memoryMiB,
    vcpus: spec.vcpus,
    createdAt: input.createdAt,
    durationSeconds: spec.durationSeconds,
  };
  let grant: Grant | undefined;
  let destroyRequested = false;
  const forward = new CancellationScope();

  const setState = (state: WorkspaceState) => {
    d.state = state;
    upsertSearchAttributes([{ key: VwsState, value: state }]);
  };

  setHandler(describeQuery, () => d);
  setHandler(
    destroyUpdate,
    () => {
      destroyRequested = true;
      forward.cancel(); // stop whatever forward step is in flight; cleanup follows
      return d;
    },
    {
      validator: () => {
        if (destroyRequested || !isOperationAllowed(d.state, 'destroy')) {
          const message = destroyRequested ? 'the workspace is already being destroyed' : refusalMessage(d.state, 'destroy');
          throw ApplicationFailure.create({ type: FailureType.OperationNotAllowed, message, nonRetryable: true });
        }
      },
    },
  );

  try {
    await forward.run(async () => {
      grant = await head.reserve({ holder, memoryMiB: spec.memoryMiB, vcpus: spec.vcpus });
      d.node = grant.node;
      d.network = networkOf(grant);
      upsertSearchAttributes([{ key: VwsNode, value: grant.node }]);
      const node = nodeActivities(`${routing.nodeTaskQueuePrefix}${grant.node}`, FORWARD_RETRY);

      d.task = 'propagating';
      const { rootDisk } = await node.long.propagateImage({ workspaceId: input.id, image: spec.image });
      setState('Propagated');
      if (spec.targetState === 'Propagated') {
        d.task = null;
        return;
      }

      d.task = 'starting';
      await node.quick.addDhcpEntry(dhcpEntry(input.id, grant));
      await node.quick.bootVm({
        workspaceId: input.id,
        hostname: grant.address.hostname,
        memoryMiB: spec.memoryMiB,
        vcpus: spec.vcpus,
        mac: grant.address.mac,
        rootDisk,
      });
      d.firstStartedAt = new Date().toISOString();
      setState('Running');

      d.task = 'awaiting-address';
      d.obtainedIp = await node.long.waitForLease({ mac: grant.address.mac, timeoutSeconds: routing.addressTimeoutSeconds });
      d.task = null;
    });

    // Running (or parked at the target state): wait for destroy or for DeploymentTime to run out.
    if (d.state === 'Running') {
      const elapsed = Date.now() - Date.parse(d.firstStartedAt!);
      const expired = !(await condition(() => destroyRequested, Math.max(0, spec.durationSeconds * 1000 - elapsed)));
      if (expired) d.reason = `DeploymentTime of ${spec.durationSeconds} s ran out`;
    } else {
      await condition(() => destroyRequested);
    }
  } catch (err) {
    if (isCancellation(err) && (destroyRequested || CancellationScope.current().consideredCancelled)) {
      // Destroy (or a cancel of the whole workflow) stopped a forward step: clean up below.
    } else {
      // Activity failures wrap the typed ApplicationFailure as their cause.
      const failure = err as Error & { type?: string; cause?: Error & { type?: string } };
      const cause = failure.cause ?? failure;
      if (cause.type === FailureType.NoCapacity) {
        d.reason = `refused: ${cause.message}`;
      } else {
        d.heading = d.task === 'propagating' ? 'Propagated' : 'Running';
        d.reason = cause.message;
        setState('Corrupted');
        d.task = null;
        // A Corrupted workspace keeps its slot until the client destroys it (its files may be on the node).
        await condition(() => destroyRequested);
      }
    }
  } finally {
    await CancellationScope.nonCancellable(async () => {
      d.task = 'destroying';
      if (grant) {
        const node = nodeActivities(`${routing.nodeTaskQueuePrefix}${grant.node}`, CLEANUP_RETRY);
        await node.quick.destroyVm({ workspaceId: input.id });
        await node.quick.removeDhcpEntry(dhcpEntry(input.id, grant));
        await node.quick.removeWorkspaceFiles({ workspaceId: input.id });
      }
      // Always release: a reserve whose answer was lost may still have granted.
      await head.release(holder);
      d.task = null;
      d.endedAt = new Date().toISOString();
      setState('Cancelled');
    });
  }
  return d;
}
