/**
 * The activities a node serves on its task queue `<prefix>-node.<name>`: propagation and
 * unpropagation, DHCP entries and VM control through the node's hypervisor driver. The same factory
 * serves a node worker on the node (local executor) and SSH mode on the head (SSH executor).
 */
import { dirname, join } from 'node:path';
import { Context, heartbeat } from '@temporalio/activity';
import { log } from '../log';
import type { VwsConfig } from '../config/schema';
import type { Executor } from '../exec/executor';
import { createDriver } from './drivers';
import { withHeartbeat } from './heartbeat';
import type { ExtraDisk, HypervisorDriver, ShutdownResult, VmSpec } from './hypervisor';
import { createImageActivities, localRepositoryReader } from './images/propagate';
import { createUnpropagateActivities } from './images/unpropagate';
import { ApplicationFailure } from '@temporalio/common';
import { FailureType } from '../domain/errors';
import { createAntiSpoof } from './network/antispoof';
import { createDhcpActivities, type DhcpActivities, type DhcpEntryInput } from './network/dhcp';
import { nicInterfaceName, type GuardedNic } from './network/types';
import { nodePaths, workspaceDir } from './node-paths';
import { nodeControl, resetNodeState } from '../pilot/node-control';
import { holderAliveFromStat, parseHolder, parseProcStat, pilotLockFile, resetIntentFile, type PilotLockHolder } from '../pilot/lock';
import type { NodeResetReport } from '../domain/kill-all';

/** Dependencies of a node's activities. */
export interface NodeActivityDeps {
  config: VwsConfig;
  /** This node's name (must be in `config.nodes`). */
  node: string;
  exec: Executor;
  repositoryToken: () => string;
  /** Set when these activities run on the head (SSH mode): images are read from this directory, not over HTTP. */
  localRepositoryDir?: string;
  /** Defaults to the driver the node's configuration names. */
  driver?: HypervisorDriver;
  /** Heartbeat function (the Temporal heartbeat inside an activity). */
  beat?: (details?: unknown) => void;
  /**
   * The node's DHCP activities; defaults to the real servers (dnsmasq or dhcpd) under the node's
   * directory. Only the orchestration benchmark passes its stand-in (bench nodes have no guests).
   */
  dhcp?: Pick<DhcpActivities, 'addDhcpEntry' | 'removeDhcpEntry' | 'waitForLease'>;
}

/** Input of `restoreAfterPilot`. */
export interface RestoreAfterPilotInput {
  /**
   * The slot whose job the batch system reports gone: a live pilot of this slot outlived its job and is
   * stopped. Absent (slots recorded before `ORPHAN_PILOT_PATCH`): every live holder is left alone.
   */
  slotId?: string;
}

/** A pilot `restoreAfterPilot` found alive after its job had ended, and how it was stopped. */
export interface OrphanPilotStop {
  pid: number;
  /** SIGTERM: it handed the node back itself; SIGKILL: it had not exited within its grace. */
  signal: 'SIGTERM' | 'SIGKILL';
  ms: number;
}

/** What `restoreAfterPilot` did. */
export interface RestoreAfterPilotResult {
  /** The node was reset (false: a later slot's live pilot holds it). */
  reset: boolean;
  /** That later slot's pilot. */
  liveHolder?: string;
  report?: NodeResetReport;
  /** This slot's own pilot, found alive after its job and stopped before the reset. */
  orphan?: OrphanPilotStop;
}

/** How often a stopped pilot is checked for, ms. */
const ORPHAN_POLL_MS = 500;
/** Beyond the pilot's grace, what its hand-back may take before SIGKILL, ms. */
const ORPHAN_SLACK_MS = 10_000;
/** Never wait longer than this for SIGTERM to work (the activity's start-to-close is 2 minutes), ms. */
const ORPHAN_TERM_WAIT_MAX_MS = 75_000;
/** How long a SIGKILLed pilot may take to go, ms. */
const ORPHAN_KILL_WAIT_MS = 10_000;

/** Input of `bootVm` and `restoreVm`. */
export interface BootInput {
  workspaceId: string;
  hostname: string;
  memoryMiB: number;
  vcpus: number;
  /** The VM's NICs in order: network, the MAC bound to the address, and the address. */
  nics: BootNic[];
  rootDisk: string;
  /** Disks after the root, in order (partitions). */
  disks?: ExtraDisk[];
  /**
   * Boot no earlier than this instant (ISO). An ensemble gives all its members one such start time, a
   * little ahead, so they start together however long its fan-out took to reach each node.
   */
  notBefore?: string;
  /**
   * DHCP entries this node serves to add before the boot (`bootVm` only): the two steps in one round
   * trip. Absent when the entries are served elsewhere (the head) or were added earlier (ensembles).
   */
  dhcpEntries?: DhcpEntryInput[];
}

/** Input of `destroyWorkspace`. */
export interface DestroyWorkspaceInput {
  workspaceId: string;
  /** The DHCP entries this node serves for the workspace's NICs, removed once the VM is confirmed gone. */
  dhcpEntries?: DhcpEntryInput[];
}

/** What `bootVm` reports: the driver's time and the instant the VM was started. */
export interface BootResult extends DriverTiming {
  /** When the hypervisor's create returned (the node's clock). */
  startedAt: string;
}

/** Longest `notBefore` wait honoured, so a bad value cannot park an activity slot for long. */
const MAX_START_WAIT_MS = 120_000;

/** Waits until `notBefore` (at most MAX_START_WAIT_MS); at once if it has passed or is absent. */
async function waitUntil(notBefore: string | undefined): Promise<void> {
  const ms = notBefore ? Math.min(Date.parse(notBefore) - Date.now(), MAX_START_WAIT_MS) : 0;
  if (ms > 0) await new Promise((r) => setTimeout(r, ms));
}

/** One NIC of a VM to boot. */
export interface BootNic {
  network: string;
  mac: string;
  ip: string;
}

/** How long the driver's own commands took inside an activity (benchmarks split vws's time from the driver's). */
export interface DriverTiming {
  driverMs: number;
}

/** Runs a driver call and measures it. */
async function timed<T extends object | void>(call: () => Promise<T>): Promise<(T extends void ? object : T) & DriverTiming> {
  const t0 = performance.now();
  const result = await call();
  return { ...(result ?? {}), driverMs: Math.round((performance.now() - t0) * 10) / 10 } as (T extends void ? object : T) & DriverTiming;
}

/** Creates every activity of one node. */
export function createNodeActivities(deps: NodeActivityDeps) {
  const nodeConfig = deps.config.nodes.find((n) => n.name === deps.node);
  if (!nodeConfig) throw new Error(`node ${deps.node} is not in the configuration (nodes: ${deps.config.nodes.map((n) => n.name).join(', ')})`);
  const paths = nodePaths(deps.config.node.dir);
  const driver = deps.driver ?? createDriver(deps.config, nodeConfig, deps.exec, paths);
  const memoryMode = nodeConfig.driver === 'xen' ? 'xen' : 'host';
  const kernelDir = join(paths.kernels, deps.config.node.kernel);
  const beat = deps.beat ?? ((d?: unknown) => heartbeat(d));
  const antiSpoof = createAntiSpoof(deps.exec);
  const bridgeFor = (network: string): string => {
    const bridge = nodeConfig.bridges[network];
    if (!bridge) {
      throw ApplicationFailure.create({ type: FailureType.InvalidSpec, message: `node ${deps.node} has no bridge for network ${network} (nodes[].bridges)`, nonRetryable: true });
    }
    return bridge;
  };
  /** The anti-spoofing view of the VM's NICs: MAC and IP, and on isolated networks who they may reach. */
  const guarded = (input: BootInput): GuardedNic[] =>
    input.nics.map((nic, i) => {
      const net = deps.config.networks.find((n) => n.name === nic.network);
      return {
        iface: nicInterfaceName(input.workspaceId, i),
        mac: nic.mac,
        ip: nic.ip,
        ...(net?.isolated ? { isolate: { subnet: net.subnet, allowed: [net.gateway, ...net.dns] } } : {}),
      };
    });
  /** Rules first: the VM must not send one frame unguarded. */
  const guard = async (input: BootInput) => {
    if (nodeConfig.antiSpoofing) await antiSpoof.apply(guarded(input));
  };
  /** After the VM is gone: its rules go with it. */
  const unguard = async (workspaceId: string) => {
    if (nodeConfig.antiSpoofing) await antiSpoof.removeFor(workspaceId);
  };
  const vmSpec = (input: BootInput): VmSpec => ({
    name: input.workspaceId,
    hostname: input.hostname,
    memoryMiB: input.memoryMiB,
    vcpus: input.vcpus,
    rootDisk: input.rootDisk,
    ...(input.disks?.length ? { disks: input.disks } : {}),
    kernel: { vmlinuz: join(kernelDir, 'vmlinuz'), initrd: join(kernelDir, 'initrd.gz') },
    nics: input.nics.map((nic, i) => ({ mac: nic.mac, bridge: bridgeFor(nic.network), iface: nicInterfaceName(input.workspaceId, i) })),
  });
  const stateFile = (workspaceId: string) => join(workspaceDir(paths, workspaceId), 'vmstate');

  /** True if the lock's holder runs now, in this boot (not a later process with its pid). */
  async function holderAliveNow(holder: PilotLockHolder, bootId: string): Promise<boolean> {
    const stat = await deps.exec.readFile(`/proc/${holder.pid}/stat`);
    return holderAliveFromStat(holder, bootId, stat === null ? null : parseProcStat(stat));
  }

  /** Polls until the holder has exited; false if it still runs after `ms`. */
  async function holderExits(holder: PilotLockHolder, bootId: string, ms: number): Promise<boolean> {
    const until = Date.now() + ms;
    for (;;) {
      if (!(await holderAliveNow(holder, bootId))) return true;
      if (Date.now() >= until) return false;
      beat?.({ step: 'waiting for the orphan pilot', pid: holder.pid });
      await new Promise((r) => setTimeout(r, ORPHAN_POLL_MS));
    }
  }

  /**
   * Stops a pilot that outlived its job: SIGTERM, which it handles as a preemption (it hands the node back
   * itself: leftover VMs destroyed, memory restored, lock released) within the batch system's grace;
   * SIGKILL if it is still there after that. The reset that follows puts right whatever it left.
   */
  async function stopOrphanPilot(holder: PilotLockHolder, bootId: string): Promise<OrphanPilotStop> {
    // The pid comes from a file on the node: never signal anything but one ordinary process.
    if (!Number.isSafeInteger(holder.pid) || holder.pid <= 1) throw ApplicationFailure.nonRetryable(`the pilot lock names pid ${holder.pid}`, FailureType.InvalidSpec);
    const t0 = Date.now();
    const graceMs = Math.min((deps.config.pilot?.graceSeconds ?? 30) * 1000 + ORPHAN_SLACK_MS, ORPHAN_TERM_WAIT_MAX_MS);
    log.warn({ node: deps.node, pid: holder.pid, slotId: holder.slotId }, 'a pilot outlived its batch job: stopping it (SIGTERM)');
    await deps.exec.run(['kill', '-TERM', String(holder.pid)], { okCodes: [0, 1] }); // 1: it has just exited
    if (await holderExits(holder, bootId, graceMs)) return { pid: holder.pid, signal: 'SIGTERM', ms: Date.now() - t0 };
    log.warn({ node: deps.node, pid: holder.pid, waitedMs: Date.now() - t0 }, 'the orphan pilot is still there after its grace: SIGKILL');
    await deps.exec.run(['kill', '-KILL', String(holder.pid)], { okCodes: [0, 1] }); // 1: it has just exited
    await holderExits(holder, bootId, ORPHAN_KILL_WAIT_MS);
    return { pid: holder.pid, signal: 'SIGKILL', ms: Date.now() - t0 };
  }

  /** Every VM on the node destroyed and its memory exactly at its configured value (the pilot's reset). */
  async function resetNode(): Promise<NodeResetReport> {
    const t0 = Date.now();
    const memory = (await nodeControl({ exec: deps.exec, node: deps.node, nodeDir: paths.dir, memory: memoryMode, config: deps.config })).memory;
    const r = await withHeartbeat(beat, 'reset', () => resetNodeState({ node: deps.node, driver, memory }));
    return { node: deps.node, destroyed: r.vms.destroyed, failed: r.vms.failed, memoryMiB: r.memory.reachedMiB, configuredMiB: r.configuredMiB, ms: Date.now() - t0 };
  }

  /** Destroys the VM and its interfaces; returns once it is confirmed gone. Idempotent. */
  async function destroyVm(input: { workspaceId: string }): Promise<DriverTiming> {
    const r = await timed(() => driver.destroy(input.workspaceId));
    await unguard(input.workspaceId);
    return r;
  }
  const dhcp = { ...createDhcpActivities({ exec: deps.exec, dir: paths.dhcp }), ...deps.dhcp };
  const images = createImageActivities({
    exec: deps.exec,
    paths,
    repositoryToken: deps.repositoryToken,
    diskFormat: driver.diskFormat,
    cacheMaxBytes: deps.config.node.cacheMaxMiB * 1024 * 1024,
    ...(deps.localRepositoryDir ? { openLocal: localRepositoryReader(deps.config.repository.url, deps.localRepositoryDir) } : {}),
  });

  return {
    ...images,
    ...createUnpropagateActivities({
      exec: deps.exec,
      paths,
      diskFormat: driver.diskFormat,
      repositoryUrl: deps.config.repository.url,
      repositoryToken: deps.repositoryToken,
    }),
    ...dhcp,

    /** Boots the workspace's VM, after adding the DHCP entries given; succeeds at once if it already runs. */
    async bootVm(input: BootInput): Promise<BootResult> {
      const spec = vmSpec(input); // an unknown network fails here, before anything is made
      // Heartbeats from the first step: the entries may start the node's DHCP server, slow on a busy node.
      return withHeartbeat(beat, 'boot', async () => {
        for (const entry of input.dhcpEntries ?? []) await dhcp.addDhcpEntry(entry);
        await guard(input);
        await waitUntil(input.notBefore);
        const timing = await timed(() => driver.create(spec));
        return { ...timing, startedAt: new Date().toISOString() };
      });
    },

    /** Resumes the VM from its saved state (`vmstate` in the workspace dir); succeeds if it already runs. */
    async restoreVm(input: BootInput): Promise<DriverTiming> {
      const spec = vmSpec(input);
      await guard(input);
      return withHeartbeat(beat, 'restore', () => timed(() => driver.restore(spec, stateFile(input.workspaceId))));
    },

    /** Pauses the VM (seed 002 Paused: unscheduled, not serialized). Idempotent. */
    async pauseVm(input: { workspaceId: string }): Promise<DriverTiming> {
      return timed(() => driver.pause(input.workspaceId));
    },

    /** Resumes a paused VM. Idempotent. */
    async unpauseVm(input: { workspaceId: string }): Promise<DriverTiming> {
      return timed(() => driver.unpause(input.workspaceId));
    },

    /** Reboots the guest. */
    async rebootVm(input: { workspaceId: string }): Promise<DriverTiming> {
      return timed(() => driver.reboot(input.workspaceId));
    },

    /** Graceful shutdown with a timeout, then forced; returns how it ended. Idempotent (absent VM: graceful). */
    async shutdownVm(input: { workspaceId: string; timeoutSeconds: number }): Promise<ShutdownResult & DriverTiming> {
      const r = await withHeartbeat(beat, 'shutdown', () => timed(() => driver.shutdown(input.workspaceId, input.timeoutSeconds * 1000)));
      await unguard(input.workspaceId);
      return r;
    },

    /** Serializes the VM, RAM included, to `vmstate` in the workspace dir, ending it. Idempotent. */
    async saveVm(input: { workspaceId: string }): Promise<DriverTiming> {
      const r = await withHeartbeat(beat, 'save', () => timed(() => driver.save(input.workspaceId, stateFile(input.workspaceId))));
      await unguard(input.workspaceId);
      return r;
    },

    /** Destroys the VM and its interfaces; returns once it is confirmed gone. Idempotent. */
    destroyVm,

    /**
     * A workspace's whole teardown on this node in one round trip: the VM destroyed and confirmed gone,
     * only then its DHCP entries removed (an address is never served while its VM may still run, Nimbus
     * bug 101), then its files. Each step is idempotent, so a retry after any failure starts over safely.
     */
    async destroyWorkspace(input: DestroyWorkspaceInput): Promise<DriverTiming> {
      const r = await destroyVm({ workspaceId: input.workspaceId });
      for (const entry of input.dhcpEntries ?? []) await dhcp.removeDhcpEntry(entry);
      await images.removeWorkspaceFiles({ workspaceId: input.workspaceId });
      return r;
    },

    /** The VM's power state. */
    async vmStatus(input: { workspaceId: string }) {
      return driver.status(input.workspaceId);
    },

    /** VMs the driver runs on this node (for reconciliation and leak checks). */
    async listVms(): Promise<string[]> {
      const t0 = Date.now();
      // How long the task took from scheduling to a worker, and how long the listing took: a reconcile run
      // that finds a node unreachable is told apart from a slow listing by these two figures.
      const info = Context.current().info;
      const vms = await driver.list();
      log.info({ node: deps.node, attempt: info.attempt, queuedMs: t0 - info.currentAttemptScheduledTimestampMs, listMs: Date.now() - t0, vms: vms.length }, 'listVms');
      return vms;
    },

    /**
     * After a pilot slot's job is confirmed gone (issue 7: a pilot killed with SIGKILL, or a node whose
     * hand-back did not finish, must not keep memory or VMs): unless a live pilot of another slot holds
     * the node's lock (a later slot's; it sets absolute values itself), reset the node as `vws-pilot
     * reset` does (every VM destroyed, memory exactly at its configured value) and remove a stale lock. A
     * pilot that starts meanwhile waits for the reset (the reset intent, `resetIntentFile`).
     * A live pilot of `input.slotId` itself outlived its job: the batch system lost it (its job step
     * died, as dom0's slurmstepd did on xen1), so nothing will ever signal it, and it would hold the
     * node until its own end. It is stopped first ({@link stopOrphanPilot}). Idempotent.
     */
    async restoreAfterPilot(input: RestoreAfterPilotInput = {}): Promise<RestoreAfterPilotResult> {
      const lockFile = pilotLockFile(paths.dir);
      // The intent first, the lock second (see resetIntentFile): a pilot that takes the lock from now on
      // sees the intent and waits, so it never reserves memory this reset then puts back.
      const intent = resetIntentFile(lockFile);
      await deps.exec.mkdir(dirname(intent));
      await deps.exec.writeFileAtomic(intent, `${JSON.stringify({ by: 'vws restoreAfterPilot', node: deps.node, at: new Date().toISOString() })}\n`);
      try {
        const text = await deps.exec.readFile(lockFile);
        const holder = text ? parseHolder(text) : null;
        const bootId = holder ? ((await deps.exec.readFile('/proc/sys/kernel/random/boot_id')) ?? '').trim() : '';
        let orphan: OrphanPilotStop | undefined;
        if (holder && (await holderAliveNow(holder, bootId))) {
          const liveHolder = `pid ${holder.pid}${holder.slotId ? ` (slot ${holder.slotId})` : ''}`;
          if (!input.slotId || holder.slotId !== input.slotId) return { reset: false, liveHolder };
          orphan = await stopOrphanPilot(holder, bootId);
        }
        const report = await resetNode();
        // The dead pilot's lock goes. Another text there is a pilot that took the lock since: it saw the
        // intent and gives the lock back itself (were it removed here meanwhile, it still waits).
        if (text !== null && (await deps.exec.readFile(lockFile)) === text) await deps.exec.remove(lockFile);
        return { reset: true, report, ...(orphan ? { orphan } : {}) };
      } finally {
        await deps.exec.remove(intent);
      }
    },

    /**
     * The emergency stop on this node (`kill-all`): every VM the driver lists is destroyed, and the
     * node's memory is set back to exactly its configured value (dom0 on Xen, the pilot's host
     * reservation on QEMU), as the pilot's own reset does. Idempotent.
     */
    resetNode,
  };
}

/** The node activities' type, for `proxyActivities` in workflows (`import type` only). */
export type NodeActivities = ReturnType<typeof createNodeActivities>;
