/**
 * One workspace's lifecycle (seed 002), driven by the state table in `domain/states`.
 *
 * The workflow first advances the workspace as far as the request's target state (allocate a slot and
 * an address, propagate, boot, learn the address). Then one loop serves, one at a time: client
 * operations (Updates, validated against the table so a refused one changes nothing), Signals (early
 * shutdown-save, preemption; recorded in history even while no worker runs) and the DeploymentTime
 * deadline, a durable timer that runs only while the VM exists (Running or Paused). At the deadline
 * the ShutdownMechanism applies: Normal (graceful shutdown, unpropagate), Serialize (save the VM's
 * state, RAM included, and unpropagate; the workspace can be started again from it) or Trash (evict).
 *
 * No workflow run timeout: cleanup must always run. Destroy cancels the step in flight; cleanup runs in
 * a non-cancellable scope and its activities retry until the node answers, because a slot or address
 * must not be released before its VM is confirmed gone.
 */
import {
  ActivityCancellationType,
  ApplicationFailure,
  CancellationScope,
  condition,
  isCancellation,
  log,
  ParentClosePolicy,
  patched,
  proxyActivities,
  type RetryPolicy,
  setHandler,
  startChild,
  upsertMemo,
  upsertSearchAttributes,
  workflowInfo,
  type ChildWorkflowHandle,
} from '@temporalio/workflow';
import type { pilotSlotWorkflow } from './pilot-slot';
import type { HeadActivities } from '../activities/head/allocator-client';
import type { createHeadImageActivities } from '../activities/head/images';
import type { PropagatePartition } from '../activities/images/propagate';
import type { ExtraDisk } from '../activities/hypervisor';
import type { NodeActivities } from '../activities/node';
import type { DhcpEntry, DhcpServerSpec } from '../activities/network/types';
import type { createDhcpActivities } from '../activities/network/dhcp';
import { grantNics, type Grant, type NicGrant } from '../domain/allocation';
import { FailureType, NON_RETRYABLE_FAILURES } from '../domain/errors';
import {
  describeQuery,
  destroyUpdate,
  pauseUpdate,
  preemptSignal,
  rebootUpdate,
  shutdownSaveSignal,
  shutdownSaveUpdate,
  shutdownUpdate,
  slotFailedSignal,
  slotReadySignal,
  slotReleaseSignal,
  startUpdate,
  unpauseUpdate,
  vmVanishedSignal,
  VwsNode,
  VwsState,
  type ShutdownSaveArgs,
  type SlotReady,
  type StartArgs,
} from '../domain/messages';
import { OPERATION_TARGET, refusalReason, VM_STATES, type WorkspaceOperation, type WorkspaceState, type WorkspaceTask } from '../domain/states';
import type { ImageSource, ResolvedImage, WorkspaceDescription, WorkspaceInput, WorkspaceRouting } from '../domain/workspace';
import { redactUrl } from '../domain/image-url';
import { DEFAULT_NODE_HEARTBEAT_SECONDS, DEFAULT_NODE_STEP_SECONDS, isUrl, nicsOf, targetForMember } from '../domain/workspace';
import { VIEW_MEMO_KEY, VIEW_MEMO_MAX_CHARS, VIEW_MEMO_PATCH, viewMemo } from '../domain/view-memo';

/** The DHCP activities (served on a node's queue, or the head's for central delivery). */
type DhcpActivities = ReturnType<typeof createDhcpActivities>;

/** The head's image activities (stage-in, stage-out to URLs), for `proxyActivities`. */
type HeadImageActivities = ReturnType<typeof createHeadImageActivities>;

/**
 * Workflows started after this patch add a node-served DHCP entry within `bootVm` and tear the workspace
 * down on its node with one `destroyWorkspace` (VM, then entries, then files): three round trips fewer
 * per lifecycle (issue 6: lifecycles per second). Histories recorded before it replay the separate steps.
 */
export const FOLDED_NODE_STEPS_PATCH = 'folded-node-steps';

/** Forward steps give up after a few attempts (the workspace then becomes Corrupted). */
const FORWARD_RETRY: RetryPolicy = { initialInterval: '1s', maximumInterval: '10s', maximumAttempts: 5, nonRetryableErrorTypes: NON_RETRYABLE_FAILURES };
/** Cleanup never gives up: it retries until the node answers. */
const CLEANUP_RETRY: RetryPolicy = { initialInterval: '1s', maximumInterval: '30s', nonRetryableErrorTypes: [FailureType.InvalidSpec] };

function nodeActivities(taskQueue: string, retry: RetryPolicy, routing: WorkspaceRouting) {
  // WAIT_CANCELLATION_COMPLETED: when destroy cancels a forward step, cleanup must not start until the
  // node has finished (or abandoned) it; otherwise a VM could boot after destroyVm ran, and leak.
  const cancellationType = ActivityCancellationType.WAIT_CANCELLATION_COMPLETED;
  // Short timeouts decide how soon a step is retried after its worker died (kill -9): the server only
  // notices by the timeout. Long steps heartbeat every 5 s, so some seconds of silence mean dead.
  const step = (routing.nodeStepSeconds ?? DEFAULT_NODE_STEP_SECONDS) * 1000;
  const heartbeatTimeout = (routing.nodeHeartbeatSeconds ?? DEFAULT_NODE_HEARTBEAT_SECONDS) * 1000;
  return {
    quick: proxyActivities<NodeActivities>({ taskQueue, startToCloseTimeout: step, retry, cancellationType }),
    long: proxyActivities<NodeActivities>({ taskQueue, startToCloseTimeout: '30m', heartbeatTimeout, retry, cancellationType }),
  };
}

/** The DHCP host entry of one NIC's address. */
function dhcpEntry(nic: NicGrant): DhcpEntry {
  const a = nic.address;
  return { mac: a.mac, ip: a.ip, hostname: a.hostname, gateway: a.gateway ?? '', netmask: a.netmask ?? '', broadcast: a.broadcast ?? '', dns: a.dns ?? [] };
}

/** The in-flight task each client operation shows while it runs. */
const OPERATION_TASK: Record<Exclude<WorkspaceOperation, 'destroy'>, WorkspaceTask> = {
  start: 'starting',
  pause: 'pausing',
  unpause: 'unpausing',
  reboot: 'rebooting',
  shutdown: 'shutting-down',
  'shutdown-save': 'shutting-down',
};

/** The state a step was heading to, by what was in flight when it failed (Nimbus: "Corrupted-Propagating"). */
const TASK_HEADING: Partial<Record<NonNullable<WorkspaceTask>, WorkspaceState>> = {
  'staging-in': 'Unpropagated',
  allocating: 'Propagated',
  propagating: 'Propagated',
  starting: 'Running',
  restoring: 'Running',
  'awaiting-address': 'Running',
  pausing: 'Paused',
  unpausing: 'Running',
  rebooting: 'Running',
  'shutting-down': 'Propagated',
  serializing: 'Propagated',
  unpropagating: 'TransportReady',
  'staging-out': 'StagedOut',
};

/** A client operation waiting for the loop, and its outcome. */
interface Job {
  op: Exclude<WorkspaceOperation, 'destroy'>;
  args: StartArgs & ShutdownSaveArgs;
  done: boolean;
  error?: ApplicationFailure;
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
  // Copies between the head and other hosts: long, with progress heartbeats; forward steps give up.
  const headImages = proxyActivities<HeadImageActivities>({
    taskQueue: routing.headTaskQueue,
    startToCloseTimeout: '2h',
    heartbeatTimeout: '30s',
    retry: FORWARD_RETRY,
  });
  const headImagesCleanup = proxyActivities<HeadImageActivities>({ taskQueue: routing.headTaskQueue, startToCloseTimeout: '30s', retry: CLEANUP_RETRY });
  /** Images outside the repository, staged in first (seed 002 Unstaged); index 0 is the root. */
  const toStage: Array<{ index: number; source: ImageSource }> = [
    ...(spec.imageSource ? [{ index: 0, source: spec.imageSource }] : []),
    ...(spec.partitions ?? []).flatMap((p, i) => (p.imageSource ? [{ index: i + 1, source: p.imageSource }] : [])),
  ];
  /** The root image and partitions, resolved in the repository (after stage-in for URL images). */
  let rootImage: ResolvedImage | undefined = spec.image;
  let partitions: PropagatePartition[] = (spec.partitions ?? []).map((p) => ({ image: p.image, blank: p.blank }));

  const mechanism = spec.trashAtShutdown ? 'Trash' : spec.shutdownMechanism;
  const d: WorkspaceDescription = {
    id: input.id,
    owner: input.owner,
    // A repository image was resolved when the request was accepted; a URL image is staged in first.
    state: toStage.length ? 'Unstaged' : 'Unpropagated',
    task: toStage.length ? 'staging-in' : 'allocating',
    image: spec.image ? spec.image.name : redactUrl(spec.imageSource!.url),
    memoryMiB: spec.memoryMiB,
    vcpus: spec.vcpus,
    createdAt: input.createdAt,
    durationSeconds: spec.durationSeconds,
    runningTimeLeftSeconds: spec.durationSeconds,
    shutdownMechanism: mechanism,
    notices: [],
  };
  let grant: Grant | undefined;
  let rootDisk: string | undefined;
  let disks: ExtraDisk[] = [];
  /** The repository copy on its way to a URL target, removed once copied out (or at cleanup). */
  let intermediate: string | undefined;
  /** Staged-out copies of a serialized VM, from which `start` resumes it. */
  let savedFiles: { disk: ResolvedImage; state: ResolvedImage } | undefined;
  let destroyRequested = false;
  /** Set when the reconciler's notice made the workspace Corrupted: the loop drops its running-time timer. */
  let vanished = false;
  let step: CancellationScope | undefined;
  const jobs: Job[] = [];
  const signals: Array<{ kind: 'shutdown-save'; args: ShutdownSaveArgs }> = [];

  // DeploymentTime: a budget of running time, spent while the VM exists (Running or Paused).
  let budgetMs = spec.durationSeconds * 1000;
  let usedMs = 0;
  let runningSince: number | undefined;
  const timeLeftMs = () => budgetMs - usedMs - (runningSince === undefined ? 0 : Date.now() - runningSince);
  /** Running time used so far, first start to now or the last shutdown, for the allocator's accounting. */
  const usedSeconds = () => Math.round((usedMs + (runningSince === undefined ? 0 : Date.now() - runningSince)) / 1000);

  const setState = (state: WorkspaceState) => {
    const wasUp = VM_STATES.includes(d.state);
    const isUp = VM_STATES.includes(state);
    if (!wasUp && isUp) runningSince = Date.now();
    if (wasUp && !isUp && runningSince !== undefined) {
      usedMs += Date.now() - runningSince;
      runningSince = undefined;
    }
    d.state = state;
    upsertSearchAttributes([{ key: VwsState, value: state }]);
  };
  const describe = (): WorkspaceDescription => ({ ...d, runningTimeLeftSeconds: Math.max(0, Math.round(timeLeftMs() / 1000)) });

  // The public view in the memo, so `GET /workspaces/:id` reads it from the server without a query (which
  // needs this workflow in the head's cache, or a replay). Only behind the patch: recorded histories replay.
  const keepsView = patched(VIEW_MEMO_PATCH);
  /** The memo of the view as it is now (the time left as a clock the reader runs on). */
  const currentView = () => JSON.stringify(viewMemo(d, { leftMs: budgetMs - usedMs, ...(runningSince === undefined ? {} : { runningSince }) }));
  let publishedView = '';
  /** Upserts the view if it changed: in the workflow task that changed it, beside its search attribute upserts. */
  const publishView = () => {
    if (!keepsView) return;
    const view = currentView();
    if (view === publishedView) return;
    const wasCleared = publishedView.length > VIEW_MEMO_MAX_CHARS;
    publishedView = view;
    // A view grown past the limit (notices pile up) is cleared instead, far below the server's memo limit
    // that would fail the task: readers then query the workflow, as for one started before the patch.
    if (view.length <= VIEW_MEMO_MAX_CHARS) upsertMemo({ [VIEW_MEMO_KEY]: JSON.parse(view) });
    else if (!wasCleared) upsertMemo({ [VIEW_MEMO_KEY]: null });
  };
  if (keepsView) {
    // Whatever changes the view (state, task, addresses, notices, an operation's arrival), wherever it is
    // changed: conditions are evaluated at the end of each activation, so the upsert joins that task's commands.
    void (async () => {
      for (;;) {
        await condition(() => currentView() !== publishedView);
        publishView();
      }
    })();
  }
  const node = (retry: RetryPolicy) => nodeActivities(`${routing.nodeTaskQueuePrefix}${grant!.node}`, retry, routing);

  /** Whether a NIC's network has its DHCP on the head (central delivery) rather than on the node. */
  const servedByHead = (nic: NicGrant) => routing.networks?.[nic.network]?.on === 'head';
  /**
   * The DHCP server that delivers a NIC's address and the activities that reach it: the node's own, or
   * the head's for a network with central delivery.
   */
  const dhcpFor = (nic: NicGrant, retry: RetryPolicy): { server: DhcpServerSpec; quick: DhcpActivities; long: DhcpActivities } => {
    const net = routing.networks?.[nic.network];
    const onHead = servedByHead(nic);
    const server: DhcpServerSpec = {
      network: nic.network,
      subnet: net?.subnet ?? '',
      interface: (onHead ? net?.interface : routing.bridges?.[grant!.node]?.[nic.network]) ?? '',
      server: net?.server ?? 'dnsmasq',
    };
    if (!onHead) return { server, ...node(retry) };
    const taskQueue = routing.headTaskQueue;
    return {
      server,
      quick: proxyActivities<DhcpActivities>({ taskQueue, startToCloseTimeout: '30s', retry }),
      long: proxyActivities<DhcpActivities>({ taskQueue, startToCloseTimeout: '30m', heartbeatTimeout: '20s', retry }),
    };
  };
  const nics = () => (grant ? grantNics(grant) : []);
  /** True while the DHCP entries added ahead of the first boot (ensemble members) are still to be used by it. */
  let entriesServed = false;
  async function addDhcpEntries(): Promise<void> {
    for (const nic of nics()) {
      const { server, quick } = dhcpFor(nic, FORWARD_RETRY);
      await quick.addDhcpEntry({ server, entry: dhcpEntry(nic) });
    }
  }
  /** Removes every NIC's DHCP entry and lease; only after the VM is gone. */
  async function removeDhcpEntries(retry: RetryPolicy, nicsOnHead = false): Promise<void> {
    for (const nic of nics()) {
      if (nicsOnHead && !servedByHead(nic)) continue;
      const { server, quick } = dhcpFor(nic, retry);
      await quick.removeDhcpEntry({ server, entry: dhcpEntry(nic) });
    }
  }
  /** The DHCP entries the workspace's node serves (its NICs on networks without central delivery). */
  const nodeServedEntries = () => nics().filter((nic) => !servedByHead(nic)).map((nic) => ({ server: dhcpFor(nic, FORWARD_RETRY).server, entry: dhcpEntry(nic) }));

  // ---- messages ---------------------------------------------------------------------------------
  setHandler(describeQuery, describe);

  const refuse = (message: string) => {
    throw ApplicationFailure.create({ type: FailureType.OperationNotAllowed, message, nonRetryable: true });
  };
  const validate = (op: WorkspaceOperation, args?: StartArgs) => {
    const reason = refusalReason({ state: d.state, task: destroyRequested ? 'destroying' : d.task, hasSavedState: !!savedFiles }, op);
    if (reason) refuse(reason);
    if (op === 'start' && timeLeftMs() <= 0 && !args?.durationSeconds) {
      refuse('this workspace has no running time left; start it with durationSeconds to give it more');
    }
    if (op === 'start' && args?.notBefore !== undefined && Number.isNaN(Date.parse(args.notBefore))) {
      refuse(`notBefore: "${args.notBefore}" is not an ISO date-time`);
    }
  };
  /** Queues an operation for the loop and answers when it is done (or failed, typed). */
  const enqueue = async (op: Job['op'], args: Job['args'] = {}): Promise<WorkspaceDescription> => {
    const job: Job = { op, args, done: false };
    d.task = OPERATION_TASK[op]; // synchronously, so the next validator already sees the workspace busy
    jobs.push(job);
    await condition(() => job.done);
    if (job.error) throw job.error;
    return describe();
  };
  setHandler(startUpdate, (args: StartArgs) => enqueue('start', args ?? {}), { validator: (args: StartArgs) => validate('start', args) });
  setHandler(pauseUpdate, () => enqueue('pause'), { validator: () => validate('pause') });
  setHandler(unpauseUpdate, () => enqueue('unpause'), { validator: () => validate('unpause') });
  setHandler(rebootUpdate, () => enqueue('reboot'), { validator: () => validate('reboot') });
  setHandler(shutdownUpdate, () => enqueue('shutdown'), { validator: () => validate('shutdown') });
  setHandler(shutdownSaveUpdate, (args: ShutdownSaveArgs) => enqueue('shutdown-save', args ?? {}), {
    validator: (_args: ShutdownSaveArgs) => validate('shutdown-save'),
  });
  setHandler(
    destroyUpdate,
    () => {
      destroyRequested = true;
      step?.cancel(); // stop whatever step is in flight; cleanup follows
      return describe();
    },
    { validator: () => validate('destroy') },
  );
  setHandler(shutdownSaveSignal, (args: ShutdownSaveArgs) => {
    signals.push({ kind: 'shutdown-save', args: args ?? {} });
  });
  setHandler(preemptSignal, (notice) => {
    d.notices.push(`preempted: ${notice.reason}`);
    if (d.state === 'Cancelled' || destroyRequested) return;
    // The node's time is ending: evict at once (Trash), whatever is in flight.
    d.reason = `preempted: ${notice.reason}`;
    destroyRequested = true;
    step?.cancel();
  });
  setHandler(vmVanishedSignal, (notice) => {
    const why = notice?.reason ?? 'VM vanished from its node';
    // Only a workspace at rest with its VM up: a VM that is being shut down, saved or destroyed is
    // expected to disappear, and a busy step will find out for itself.
    if (!VM_STATES.includes(d.state) || d.task !== null || destroyRequested) {
      d.notices.push(`vm-vanished notice ignored (state ${d.state}${d.task ? `, ${d.task}` : ''}): ${why}`);
      return;
    }
    d.notices.push(`vm-vanished notice acted on: ${why}`);
    d.heading = 'Running';
    d.reason = why;
    setState('Corrupted');
    vanished = true;
  });

  // ---- pilot mode -------------------------------------------------------------------------------------
  let slot: ChildWorkflowHandle<typeof pilotSlotWorkflow> | undefined;
  let slotReady: SlotReady | undefined;
  let slotFailed: { type: string; reason: string } | undefined;
  let slotEnded = false;
  let slotReleased = false;
  setHandler(slotReadySignal, (r) => {
    slotReady ??= r;
    if (d.pilot) Object.assign(d.pilot, { node: r.node, until: r.until, jobId: r.jobId });
  });
  setHandler(slotFailedSignal, (f) => void (slotFailed ??= f));

  /** Pilot mode: starts the slot (once) and waits in the batch queue until its node time is lent to the allocator. */
  async function awaitSlot(pilot: NonNullable<WorkspaceInput['pilot']>): Promise<SlotReady> {
    if (slotReady) return slotReady;
    if (slotEnded || slotReleased) {
      throw ApplicationFailure.create({ type: FailureType.NoCapacity, message: 'the pilot slot has ended: a pilot-mode workspace cannot be allocated again', nonRetryable: true });
    }
    d.task = 'queued-in-batch';
    d.pilot ??= { slotId: pilot.slot.slotId };
    if (!slot) {
      // ABANDON: the slot outlives this workflow long enough to confirm its job is gone and end its lease.
      slot = await startChild<typeof pilotSlotWorkflow>('pilotSlotWorkflow', {
        workflowId: pilot.slotWorkflowId,
        taskQueue: routing.headTaskQueue,
        args: [pilot.slot],
        parentClosePolicy: ParentClosePolicy.ABANDON,
      });
      slot.result().then(
        () => void (slotEnded = true),
        (e: Error & { cause?: Error & { type?: string } }) => {
          slotEnded = true;
          slotFailed ??= { type: e.cause?.type ?? FailureType.NoCapacity, reason: e.cause?.message ?? e.message };
        },
      );
    }
    await condition(() => slotReady !== undefined || slotFailed !== undefined || slotEnded);
    if (!slotReady) {
      const f = slotFailed ?? { type: FailureType.NoCapacity, reason: 'the pilot slot ended before it reserved a node' };
      throw ApplicationFailure.create({ type: f.type, message: `pilot mode: ${f.reason}`, nonRetryable: true });
    }
    return slotReady;
  }

  /** Pilot mode: the node's time is no longer needed (the VM is gone); the slot hands it back. */
  async function releaseSlot(reason: string): Promise<void> {
    if (!slot || slotReleased || slotEnded) return;
    slotReleased = true;
    try {
      await slot.signal(slotReleaseSignal, { reason });
    } catch {
      // The slot has ended on its own (failed, or its job is gone): nothing to hand back.
    }
  }

  // ---- steps --------------------------------------------------------------------------------------
  /** A grant made before the workflow started (by the factory, a group or an ensemble); used once. */
  let given = input.grant;
  async function allocate(): Promise<void> {
    d.task = 'allocating';
    const lease = !given && input.pilot ? (await awaitSlot(input.pilot)).lease : undefined;
    d.task = 'allocating';
    // Histories without a given grant schedule the same reserve as before.
    // The owner and the running time still to come are charged, so quotas hold for a later start too.
    grant =
      given ??
      (await head.reserve({
        holder,
        memoryMiB: spec.memoryMiB,
        vcpus: spec.vcpus,
        ...(spec.networks ? { networks: spec.networks } : {}),
        // In pilot mode the batch system chose the node (the properties went to it as constraints).
        ...(spec.nodeProperties?.length && !lease ? { nodeProperties: spec.nodeProperties } : {}),
        owner: input.owner,
        reservedSeconds: Math.max(1, Math.round(timeLeftMs() / 1000)),
        ...(lease ? { lease } : {}),
      }));
    given = undefined; // released at StagedOut, the slot must be reserved again for a later start
    d.node = grant.node;
    d.nics = nicsOf(grant);
    const first = d.nics[0];
    d.network = { name: first.network, ip: first.ip, mac: first.mac, hostname: first.hostname };
    d.allocation = { node: grant.node, memoryMiB: grant.memoryMiB, vcpus: grant.vcpus };
    upsertSearchAttributes([{ key: VwsNode, value: grant.node }]);
  }

  /** Unstaged → Unpropagated: copies URL images into the repository, verifying their digests. */
  async function stageIn(): Promise<void> {
    d.task = 'staging-in';
    for (const { index, source } of toStage) {
      const staged = await headImages.stageIn({ workspaceId: input.id, index, source });
      const image: ResolvedImage = { name: staged.name, url: staged.url, sha256: staged.sha256, sizeBytes: staged.sizeBytes };
      if (index === 0) rootImage = image;
      else partitions[index - 1] = { ...partitions[index - 1], image };
      d.stagedIn = [...(d.stagedIn ?? []), { index, name: staged.name, sha256: staged.sha256, bytesCopied: staged.bytesCopied }];
    }
    setState('Unpropagated');
  }

  async function propagate(image: ResolvedImage, withPartitions = true): Promise<void> {
    d.task = 'propagating';
    const parts = withPartitions ? partitions : [];
    const r = await node(FORWARD_RETRY).long.propagateImage({ workspaceId: input.id, image, ...(parts.length ? { partitions: parts } : {}) });
    rootDisk = r.rootDisk;
    disks = r.disks ?? [];
    d.propagation = { bytesCopied: r.bytesCopied ?? 0, resumedFromBytes: r.resumedFromBytes ?? 0 };
    setState('Propagated');
  }

  const bootInput = () => ({
    workspaceId: input.id,
    hostname: nics()[0].address.hostname,
    memoryMiB: spec.memoryMiB,
    vcpus: spec.vcpus,
    nics: nics().map((n) => ({ network: n.network, mac: n.address.mac, ip: n.address.ip })),
    rootDisk: rootDisk!,
    ...(disks.length ? { disks } : {}),
  });

  async function boot(notBefore?: string): Promise<void> {
    const n = node(FORWARD_RETRY);
    d.task = 'starting';
    forgetObtained();
    // An ensemble member's entries were served at Propagated: its co-scheduled start is the boot alone.
    // Otherwise the node's own entries go with the boot (one round trip), the head's before it.
    let withBoot: ReturnType<typeof nodeServedEntries> = [];
    if (entriesServed) entriesServed = false;
    else if (patched(FOLDED_NODE_STEPS_PATCH)) {
      // Inline, not through addDhcpEntries: an extra await here would move the view's memo upsert
      // before bootVm's scheduling, and recorded histories would no longer replay (the replay test says so).
      for (const nic of nics().filter(servedByHead)) {
        const { server, quick } = dhcpFor(nic, FORWARD_RETRY);
        await quick.addDhcpEntry({ server, entry: dhcpEntry(nic) });
      }
      withBoot = nodeServedEntries();
    } else await addDhcpEntries();
    const booted = await n.long.bootVm({ ...bootInput(), ...(notBefore ? { notBefore } : {}), ...(withBoot.length ? { dhcpEntries: withBoot } : {}) });
    // The node's instant of the start, when it reports one: an ensemble's start spread is measured there.
    d.firstStartedAt ??= booted?.startedAt ?? new Date().toISOString();
    setState('Running');
    d.task = 'awaiting-address';
    for (const [i, nic] of nics().entries()) {
      const { server, long } = dhcpFor(nic, FORWARD_RETRY);
      const ip = await long.waitForLease({ server, mac: nic.address.mac, timeoutSeconds: routing.addressTimeoutSeconds });
      if (d.nics?.[i]) d.nics[i].obtainedIp = ip;
      if (i === 0) d.obtainedIp = ip;
    }
  }

  /** The VM is gone (or booting again): the addresses it obtained no longer hold. */
  function forgetObtained(): void {
    d.obtainedIp = undefined;
    d.nics?.forEach((n) => delete n.obtainedIp);
  }

  async function start(args: StartArgs): Promise<void> {
    if (args.durationSeconds) budgetMs = usedMs + args.durationSeconds * 1000;
    if (!grant) await allocate();
    if (savedFiles) {
      // A serialized workspace: bring its staged-out disk and VM state back, and resume it.
      const saved = savedFiles;
      await propagate(saved.disk, false);
      const n = node(FORWARD_RETRY);
      await n.long.fetchSavedState({ workspaceId: input.id, state: saved.state });
      d.task = 'restoring';
      await addDhcpEntries();
      await n.long.restoreVm(bootInput());
      savedFiles = undefined;
      d.saved = undefined;
      setState('Running');
      return;
    }
    if (d.state === 'Unpropagated') await propagate(rootImage!);
    await boot(args.notBefore);
  }

  async function shutdown(): Promise<void> {
    d.task = 'shutting-down';
    const n = node(FORWARD_RETRY);
    const r = await n.long.shutdownVm({ workspaceId: input.id, timeoutSeconds: routing.shutdownTimeoutSeconds });
    d.lastShutdown = r.graceful ? 'graceful' : 'forced';
    if (!r.graceful && r.forcedBecause) d.notices.push(`shutdown forced: ${r.forcedBecause}`);
    // The DHCP entry and lease follow the VM: a later boot then waits for a lease of its own.
    await removeDhcpEntries(FORWARD_RETRY);
    forgetObtained();
    setState('Propagated');
  }

  /** Propagated → TransportReady → StagedOut; the node keeps nothing. A serialized workspace keeps its grant to resume. */
  async function unpropagate(target: string, withState: boolean): Promise<void> {
    const n = node(FORWARD_RETRY);
    d.task = 'unpropagating';
    const files = await n.long.packageForTransport({ workspaceId: input.id, rootDisk: rootDisk!, includeState: withState });
    setState('TransportReady');
    d.task = 'staging-out';
    const external = isUrl(target);
    // A URL target: the node stages out to the repository first, then the head copies it out.
    if (external) intermediate = `out-${input.id}`;
    const staged = await n.long.stageOut({ name: external ? `out-${input.id}` : target, files });
    d.saved = { disk: staged.disk.name, sha256: staged.disk.sha256, sizeBytes: staged.disk.sizeBytes, ...(staged.state ? { state: staged.state.name } : {}) };
    if (external) {
      const out = await headImages.stageOutToUrl({ image: staged.disk, target, owner: input.owner });
      d.saved = { disk: out.url, sha256: out.sha256, sizeBytes: out.sizeBytes };
      await headImagesCleanup.removeRepositoryImage({ name: staged.disk.name });
      intermediate = undefined;
    }
    if (staged.state) savedFiles = { disk: staged.disk, state: staged.state };
    await removeDhcpEntries(FORWARD_RETRY);
    await n.quick.removeWorkspaceFiles({ workspaceId: input.id });
    rootDisk = undefined;
    if (!savedFiles) {
      // Nothing left to resume: give the slot and address back now rather than at destroy.
      await head.release(holder, { usedSeconds: usedSeconds() });
      grant = undefined;
      await releaseSlot('the workspace is staged out');
    }
    setState('StagedOut');
  }

  const defaultTarget = () => targetForMember(spec.unpropagationTarget ?? `${rootImage!.name}-${input.id}`, spec.memberIndex);

  async function runOperation(job: Job): Promise<void> {
    const n = () => node(FORWARD_RETRY);
    switch (job.op) {
      case 'start':
        return start(job.args);
      case 'pause':
        await n().quick.pauseVm({ workspaceId: input.id });
        return setState('Paused');
      case 'unpause':
        await n().quick.unpauseVm({ workspaceId: input.id });
        return setState('Running');
      case 'reboot':
        await n().quick.rebootVm({ workspaceId: input.id });
        return setState('Running');
      case 'shutdown':
        return shutdown();
      case 'shutdown-save':
        if (VM_STATES.includes(d.state)) await shutdown();
        return unpropagate(job.args.target ? targetForMember(job.args.target, spec.memberIndex) : defaultTarget(), false);
    }
  }

  /** DeploymentTime ran out: the ShutdownMechanism applies. */
  async function deadline(): Promise<void> {
    const why = `DeploymentTime of ${Math.round(budgetMs / 1000)} s ran out`;
    if (mechanism === 'Trash') {
      d.reason = `${why}; trashed`;
      destroyRequested = true; // evict at once, keep nothing: the cleanup path
      return;
    }
    if (mechanism === 'Serialize') {
      d.task = 'serializing';
      await node(FORWARD_RETRY).long.saveVm({ workspaceId: input.id });
      setState('Propagated');
      d.reason = `${why}; serialized`;
      return unpropagate(defaultTarget(), true);
    }
    await shutdown();
    d.reason = `${why}; shut down`;
    return unpropagate(defaultTarget(), false);
  }

  /**
   * Runs one step in its own cancellation scope (destroy cancels it). A failure that no retry fixed
   * makes the workspace Corrupted, heading to `heading`; returns that failure (typed) for the caller.
   */
  async function runStep(heading: WorkspaceState, work: () => Promise<void>): Promise<ApplicationFailure | undefined> {
    step = new CancellationScope();
    try {
      await step.run(work);
      d.task = null;
      return undefined;
    } catch (err) {
      if (isCancellation(err) && !destroyRequested) throw err; // the whole workflow was cancelled: clean up below
      if (isCancellation(err)) return ApplicationFailure.create({ type: FailureType.OperationNotAllowed, message: 'destroyed while in flight', nonRetryable: true });
      // Activity failures wrap the typed ApplicationFailure as their cause.
      const failure = err as Error & { type?: string; cause?: Error & { type?: string } };
      const cause = failure.cause ?? failure;
      if (cause.type === FailureType.NoCapacity || cause.type === FailureType.QuotaExceeded || cause.type === FailureType.BatchSubmitRefused) {
        d.reason = `refused: ${cause.message}`;
        destroyRequested = true; // nothing was granted; end Cancelled
        return ApplicationFailure.create({ type: cause.type, message: cause.message, nonRetryable: true });
      }
      d.heading = (d.task && TASK_HEADING[d.task]) ?? heading;
      d.reason = cause.message;
      d.task = null;
      setState('Corrupted');
      log.warn('workspace corrupted', { heading: d.heading, reason: cause.message });
      // A Corrupted workspace keeps its slot until the client destroys it (its files may be on the node).
      return ApplicationFailure.create({ type: cause.type ?? FailureType.CommandFailed, message: cause.message, nonRetryable: true });
    } finally {
      step = undefined;
    }
  }

  // ---- the lifecycle ----------------------------------------------------------------------------------
  try {
    await runStep(spec.targetState, async () => {
      if (toStage.length) await stageIn();
      await allocate();
      await propagate(rootImage!);
      if (spec.targetState === 'Running') await boot();
      else if (input.ensemble) {
        // An ensemble member's addresses are served before the co-scheduled start, so that start is the boot alone.
        await addDhcpEntries();
        entriesServed = true;
      }
    });

    while (!destroyRequested) {
      const wake = () => destroyRequested || jobs.length > 0 || signals.length > 0 || vanished;
      const vmUp = VM_STATES.includes(d.state);
      const expired = vmUp ? !(await condition(wake, Math.max(0, timeLeftMs()))) : (await condition(wake), false);
      if (destroyRequested) break;
      if (vanished) {
        vanished = false; // now Corrupted: wait again, without the running-time timer
        continue;
      }
      if (expired) {
        await runStep('StagedOut', deadline);
        continue;
      }
      const signal = signals.shift();
      if (signal) {
        const reason = refusalReason({ state: d.state, task: d.task }, 'shutdown-save');
        if (reason) {
          d.notices.push(`early shutdown-save signal ignored: ${reason}`);
          continue;
        }
        d.notices.push('early shutdown-save signal acted on');
        await runStep('StagedOut', () => runOperation({ op: 'shutdown-save', args: signal.args, done: false }));
        continue;
      }
      const job = jobs.shift()!;
      job.error = await runStep(OPERATION_TARGET[job.op], () => runOperation(job));
      job.done = true;
    }
  } finally {
    // Answer operations that were queued but will never run.
    for (const job of jobs.splice(0)) {
      job.error = ApplicationFailure.create({ type: FailureType.OperationNotAllowed, message: 'the workspace was destroyed first', nonRetryable: true });
      job.done = true;
    }
    await CancellationScope.nonCancellable(async () => {
      d.task = 'destroying';
      if (grant) {
        const n = node(CLEANUP_RETRY);
        // The VM must be confirmed gone before its addresses go back (Nimbus bug 101): destroyVm
        // retries until the node confirms, and only then do the entries go and the grant is released.
        if (patched(FOLDED_NODE_STEPS_PATCH)) {
          // The node's part in one activity (VM, its entries, its files), then entries served by the head.
          await n.quick.destroyWorkspace({ workspaceId: input.id, dhcpEntries: nodeServedEntries() });
          await removeDhcpEntries(CLEANUP_RETRY, true);
        } else {
          await n.quick.destroyVm({ workspaceId: input.id });
          await removeDhcpEntries(CLEANUP_RETRY);
          await n.quick.removeWorkspaceFiles({ workspaceId: input.id });
        }
      }
      // An abandoned stage-in leaves a partial copy in the repository's staging area.
      if (toStage.length) await headImagesCleanup.removeStaging({ workspaceId: input.id });
      if (intermediate) await headImagesCleanup.removeRepositoryImage({ name: intermediate });
      // Always release: a reserve whose answer was lost may still have granted.
      await head.release(holder, { usedSeconds: usedSeconds() });
      grant = undefined;
      await releaseSlot(d.reason ?? 'the workspace is destroyed');
      d.task = null;
      d.endedAt = new Date().toISOString();
      setState('Cancelled');
    });
  }
  publishView(); // before the completion, so the memo of a closed workspace holds its final view
  return describe();
}
