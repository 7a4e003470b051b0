#!/usr/bin/env node
/**
 * `vws-pilot` (`node dist/pilot/main.js`): the program that runs on a VMM node.
 *
 * - `run`: the batch job of one pilot slot (see `run.ts`): lock, reserve, notify, hold, hand back.
 * - `reset`: by hand: every vws VM destroyed, memory exactly at its configured value, a stale lock
 *   removed. Idempotent. Refuses while a live pilot holds the lock, unless `--force`.
 * - `boot-reset`: the same reset at the node's boot, its settings from the site configuration (see
 *   `boot-reset.ts`; the systemd unit is `deploy/systemd/vws-pilot-boot-reset.service`).
 * - `kill-all`: the admin's emergency stop on every configured node (see `kill-all.ts`).
 * - `receive`: on the head, the SSH fallback's receiver of one notification (see `receive.ts`).
 *
 * Every step is one JSON line on stdout. Exit codes: `exit-codes.ts`.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { Command, Option } from 'commander';
import { loadConfig } from '../config/load';
import { DEFAULT_MIN_DOM0_MIB, type VwsConfig } from '../config/schema';
import { LocalExecutor } from '../exec/local';
import { PILOT_EXIT } from './exit-codes';
import { killAll } from './kill-all';
import { acquirePilotLock, pilotLockFile, PilotLockHeld, type PilotLock } from './lock';
import { pilotLogger, type Logger } from './logger';
import { bootResetNodeName, bootResetPlan } from './boot-reset';
import { nodeControl, resetNodeState, type MemoryMode, type ResetReport } from './node-control';
import { PilotNotifier } from './notifier';
import {
  apiOption,
  endOption,
  intOption,
  memoryOption,
  nodeFromBatch,
  nodeOption,
  nodeTableOption,
  holdOption,
  numberOption,
  pathOption,
  PilotUsageError,
  readSecretOption,
  slotOption,
  sshFallbackOption,
  sshHostsOption,
} from './options';
import { SshNotificationChannel } from './ssh-notify';
import { watchParent } from './parent-watch';
import { runPilot } from './run';

const DEFAULT_NODE_DIR = '/var/lib/vws/node';

/** Signals that end a slot early: scancel/qdel/preemption/shutdown (TERM), Slurm's pre-end signal (USR1), a person (INT). */
const TERMINATING_SIGNALS = ['SIGTERM', 'SIGUSR1', 'SIGINT'] as const;

/** What the pilot's log calls the end of the job's parent (`--end-if-orphaned`), in place of a signal's name. */
const ORPHANED = 'ORPHANED';

/** Loads the site configuration from `--config` (or `VWS_CONFIG`, or the embedded defaults). */
function siteConfig(file: string | undefined): VwsConfig {
  return loadConfig(file ? { ...process.env, VWS_CONFIG: file } : process.env);
}

/** Ends the process with `code` after the log is written (the logger writes synchronously). */
function exit(code: number): never {
  process.exit(code);
}

/** Runs a command's body, turning usage errors into exit 2 and anything unexpected into exit 1. */
async function guarded(log: Logger, body: () => Promise<number>): Promise<never> {
  try {
    exit(await body());
  } catch (e) {
    if (e instanceof PilotUsageError) {
      log.error({ step: 'usage', option: e.option }, e.message);
      exit(PILOT_EXIT.usage);
    }
    log.error({ step: 'fatal', err: (e as Error).message, stack: (e as Error).stack }, `pilot failed: ${(e as Error).message}`);
    exit(PILOT_EXIT.internal);
  }
}

interface RunFlags {
  slot?: string;
  node?: string;
  api?: string;
  secretFile?: string;
  reserveMib?: string;
  memory?: string;
  configuredMib?: string;
  end?: string;
  holdSeconds?: string;
  nodeTable?: string;
  marginSeconds: string;
  graceSeconds: string;
  graceRatio: string;
  pilotNeedsSeconds: string;
  notifySeconds: string;
  memoryTimeoutSeconds: string;
  minDom0Mib: string;
  nodeDir: string;
  lockFile?: string;
  config?: string;
  sshFallback?: string;
  endIfOrphaned?: boolean;
}

async function runCommand(f: RunFlags): Promise<never> {
  // Signals are caught from the first instant: a scancel during start-up still gets a clean hand-back.
  const pending: string[] = [];
  let deliver: ((signal: string) => void) | undefined;
  let firstSignalAt: number | undefined;
  const graceGuess = Number(f.graceSeconds);
  let log = pilotLogger({ slot: f.slot, node: f.node });
  const terminate = (sig: string) => {
    if (firstSignalAt === undefined) {
      firstSignalAt = Date.now();
      // Last resort: whatever is still running, exit before the batch system's SIGKILL.
      if (Number.isFinite(graceGuess) && graceGuess > 0) {
        setTimeout(() => {
          log.error({ step: 'exit', reason: 'grace period over', sinceSignalMs: Date.now() - firstSignalAt! }, 'grace period over before the hand-back finished: the node needs `vws-pilot reset`');
          exit(PILOT_EXIT.unreserveFailed);
        }, Math.max(0, graceGuess * 1000 - 100));
      }
    }
    if (deliver) deliver(sig);
    else pending.push(sig);
  };
  for (const sig of TERMINATING_SIGNALS) process.on(sig, () => terminate(sig));
  if (f.endIfOrphaned) {
    // The job's slurmstepd died: no signal will come, so the pilot hands the node back as on SIGTERM.
    const watching = watchParent((parent) => {
      log.warn({ step: 'orphaned', parent }, `the batch job's parent process (pid ${parent}) is gone: the batch system no longer runs this job`);
      terminate(ORPHANED);
    });
    if (!watching) log.warn({ step: 'orphaned', parent: process.ppid }, 'started without a parent to watch (parent pid 1): --end-if-orphaned has no effect');
  }
  return guarded(log, async () => {
    const slotId = slotOption(f.slot);
    const node = nodeFromBatch(f.node);
    log = pilotLogger({ slot: slotId, node });
    const table = nodeTableOption(f.nodeTable, node);
    const api = apiOption(f.api);
    const secret = readSecretOption(f.secretFile);
    const reserveMiB = intOption('--reserve-mib', f.reserveMib, 0);
    if (reserveMiB === undefined) throw new PilotUsageError('--reserve-mib', 'required (MiB reserved for VMs)');
    const memory = f.memory === undefined && table ? table.memory : memoryOption(f.memory);
    const configuredMiB = intOption('--configured-mib', f.configuredMib, 1) ?? table?.configuredMiB;
    if (f.end !== undefined && f.holdSeconds !== undefined) throw new PilotUsageError('--hold-seconds', 'give --end or --hold-seconds, not both');
    const endAt = holdOption(f.holdSeconds) ?? endOption(f.end);
    const marginMs = numberOption('--margin-seconds', f.marginSeconds, 0, 86_400)! * 1000;
    const graceSeconds = numberOption('--grace-seconds', f.graceSeconds, 0, 3600)!;
    const graceRatio = numberOption('--grace-ratio', f.graceRatio, 0, 1, true)!;
    const pilotNeedsMs = numberOption('--pilot-needs-seconds', f.pilotNeedsSeconds, 0, 3600)! * 1000;
    const notifyReservedMs = numberOption('--notify-seconds', f.notifySeconds, 0, 3600)! * 1000;
    const memoryTimeoutMs = numberOption('--memory-timeout-seconds', f.memoryTimeoutSeconds, 1, 3600)! * 1000;
    const minDom0MiB = intOption('--min-dom0-mib', f.minDom0Mib, 64)!;
    const nodeDir = pathOption('--node-dir', f.nodeDir);
    const lockFile = f.lockFile ? pathOption('--lock-file', f.lockFile) : pilotLockFile(nodeDir);
    const sshFallback = sshFallbackOption(f.sshFallback);
    if (endAt - marginMs <= Date.now()) throw new PilotUsageError('--end', `the slot ends at ${new Date(endAt).toISOString()}, within the ${marginMs / 1000} s margin: nothing to hold`);
    const config = siteConfig(f.config);
    log.info(
      { step: 'start', api, sshFallback: sshFallback ? `${sshFallback.user}@${sshFallback.host}:${sshFallback.port}` : null, reserveMiB, memory, configuredMiB, minDom0MiB, end: new Date(endAt).toISOString(), marginMs, graceSeconds, graceRatio, nodeDir, lockFile },
      'pilot starting',
    );
    mkdirSync(dirname(lockFile), { recursive: true, mode: 0o755 });
    const control = await nodeControl({ exec: new LocalExecutor(), node, nodeDir, memory, ...(configuredMiB !== undefined ? { configuredMiB } : {}), minDom0MiB, config });
    const notifier = new PilotNotifier({
      api,
      secret,
      slotId,
      node,
      onRetry: (i) => log.warn({ step: 'notify-retry', event: i.event, via: i.via, attempt: i.attempt, last: i.last, backoffMs: i.backoffMs }, `notification ${i.event} not delivered yet`),
      ...(sshFallback ? { fallback: { channel: new SshNotificationChannel(sshFallback), afterHttpAttempts: sshFallback.afterHttpAttempts } } : {}),
    });
    const result = await runPilot(
      { slotId, node, reserveMiB, endAt, marginMs, graceSeconds, graceRatio, pilotNeedsMs, lockFile, notifyReservedMs, memoryTimeoutMs },
      {
        control,
        notifier,
        log,
        onTerminate: (handler) => {
          deliver = handler;
          for (const sig of pending.splice(0)) handler(sig);
        },
      },
    );
    return result.exitCode;
  });
}

interface ResetFlags {
  node?: string;
  memory?: string;
  configuredMib?: string;
  nodeDir: string;
  lockFile?: string;
  config?: string;
  force?: boolean;
}

/** What one node reset needs (from `reset`'s flags or `boot-reset`'s configuration). */
interface NodeResetSettings {
  node: string;
  memory: MemoryMode;
  configuredMiB?: number;
  nodeDir: string;
  lockFile: string;
  config: VwsConfig;
  force?: boolean;
  /** Retry a reset that could not start (the hypervisor's tools not ready yet at boot) this long, ms. */
  retryMs?: number;
}

/**
 * The node reset of `reset` and `boot-reset`: under the node lock (taking it removes a stale one, of a
 * dead pilot or a previous boot), every vws VM destroyed and memory set to exactly its configured value.
 * Answers the exit code.
 */
async function resetNode(o: NodeResetSettings, log: Logger): Promise<number> {
  mkdirSync(dirname(o.lockFile), { recursive: true, mode: 0o755 });
  // Holding the lock keeps a pilot from starting mid-reset; taking it removes a stale one.
  let lock: PilotLock | undefined;
  try {
    lock = await acquirePilotLock(o.lockFile, { slotId: 'reset' });
  } catch (e) {
    if (!(e instanceof PilotLockHeld)) throw e;
    if (!o.force) {
      log.error({ step: 'lock', lockFile: o.lockFile, holder: { pid: e.holder.pid, slotId: e.holder.slotId } }, `a live pilot holds the node (${e.message}); not resetting (use --force, or kill-all)`);
      return PILOT_EXIT.lockHeld;
    }
    log.warn({ step: 'lock', lockFile: o.lockFile, holder: { pid: e.holder.pid, slotId: e.holder.slotId } }, 'a live pilot holds the node; resetting anyway (--force), its lock stays');
  }
  try {
    const until = Date.now() + (o.retryMs ?? 0);
    let r: ResetReport;
    for (let attempt = 1; ; attempt++) {
      try {
        const control = await nodeControl({ exec: new LocalExecutor(), node: o.node, nodeDir: o.nodeDir, memory: o.memory, ...(o.configuredMiB !== undefined ? { configuredMiB: o.configuredMiB } : {}), config: o.config });
        r = await resetNodeState(control);
        break;
      } catch (e) {
        if (Date.now() >= until) throw e;
        log.warn({ step: 'reset-retry', attempt, err: (e as Error).message }, 'the node cannot be reset yet; trying again in 2 s');
        await new Promise((res) => setTimeout(res, 2_000));
      }
    }
    const ok = r.vms.failed.length === 0;
    log[ok ? 'info' : 'error'](
      { step: 'reset', destroyed: r.vms.destroyed, failed: r.vms.failed, memoryBeforeMiB: r.memoryBeforeMiB, memoryAfterMiB: r.memory.reachedMiB, configuredMiB: r.configuredMiB },
      ok ? `node reset: ${r.vms.destroyed.length} VMs destroyed, memory at ${r.memory.reachedMiB} MiB` : 'node reset incomplete',
    );
    return ok ? PILOT_EXIT.ok : PILOT_EXIT.unreserveFailed;
  } finally {
    lock?.release();
  }
}

async function resetCommand(f: ResetFlags): Promise<never> {
  const log = pilotLogger({ node: f.node, command: 'reset' });
  return guarded(log, async () => {
    const node = nodeOption(f.node);
    const memory = memoryOption(f.memory);
    const configuredMiB = intOption('--configured-mib', f.configuredMib, 1);
    const nodeDir = pathOption('--node-dir', f.nodeDir);
    const lockFile = f.lockFile ? pathOption('--lock-file', f.lockFile) : pilotLockFile(nodeDir);
    const config = siteConfig(f.config);
    return resetNode({ node, memory, ...(configuredMiB !== undefined ? { configuredMiB } : {}), nodeDir, lockFile, config, ...(f.force ? { force: true } : {}) }, log);
  });
}

interface BootResetFlags {
  node?: string;
  config?: string;
  waitSeconds: string;
}

/** `boot-reset`: `reset` at the node's boot, its settings from the site configuration (see `boot-reset.ts`). */
async function bootResetCommand(f: BootResetFlags): Promise<never> {
  let log = pilotLogger({ command: 'boot-reset' });
  return guarded(log, async () => {
    const node = nodeOption(bootResetNodeName(f.node));
    log = pilotLogger({ command: 'boot-reset', node });
    const retryMs = numberOption('--wait-seconds', f.waitSeconds, 0, 3600)! * 1000;
    const config = siteConfig(f.config);
    const plan = bootResetPlan(config, node);
    if (plan.action === 'skip') {
      log.info({ step: 'boot-reset', action: 'skip', reason: plan.reason }, `nothing to reset on ${node}: ${plan.reason}`);
      return PILOT_EXIT.ok;
    }
    log.info({ step: 'boot-reset', action: 'reset', memory: plan.memory, configuredMiB: plan.configuredMiB ?? 'dom0_mem', nodeDir: plan.nodeDir }, `resetting ${node} at boot`);
    return resetNode({ ...plan, lockFile: pilotLockFile(plan.nodeDir), config, retryMs }, log);
  });
}

interface KillAllFlags {
  config?: string;
  ssh: string[];
  node: string[];
  nodeTimeoutSeconds: string;
}

async function killAllCommand(f: KillAllFlags): Promise<never> {
  const log = pilotLogger({ command: 'kill-all' });
  return guarded(log, async () => {
    const sshHosts = sshHostsOption(f.ssh);
    const nodeTimeoutMs = numberOption('--node-timeout-seconds', f.nodeTimeoutSeconds, 1, 3600)! * 1000;
    const config = siteConfig(f.config);
    const started = Date.now();
    let reports;
    try {
      reports = await killAll(config, { sshHosts, nodeTimeoutMs, ...(f.node.length ? { only: f.node } : {}) });
    } catch (e) {
      throw new PilotUsageError('--node/--ssh', (e as Error).message);
    }
    for (const r of reports) log[r.ok ? 'info' : 'error']({ step: 'kill-all-node', ...r }, r.ok ? `${r.node}: ${r.destroyed.length} VMs destroyed, memory at ${r.memoryAfterMiB ?? '-'} MiB` : `${r.node}: FAILED: ${r.error}`);
    const failed = reports.filter((r) => !r.ok).map((r) => r.node);
    log[failed.length ? 'error' : 'info']({ step: 'kill-all', nodes: reports.length, failed, ms: Date.now() - started }, failed.length ? `kill-all: ${failed.length} of ${reports.length} nodes failed` : `kill-all: ${reports.length} nodes reset`);
    return failed.length ? PILOT_EXIT.someNodesFailed : PILOT_EXIT.ok;
  });
}

/**
 * `receive`: the head's end of the SSH fallback (see `receive.ts`). Its answer is the one JSON line on
 * stdout; its log goes to stderr. Exit 0 when delivered (or already delivered: a replay), 1 otherwise.
 */
async function receiveCommand(f: { config?: string }): Promise<never> {
  const log = pilotLogger({ command: 'receive' }, 2);
  const { readInput, receivePilotMessage } = await import('./receive');
  let answer;
  try {
    const config = siteConfig(f.config);
    answer = await receivePilotMessage(config, await readInput());
  } catch (e) {
    answer = { status: e instanceof Error && e.name === 'PilotMessageError' ? 400 : 503, title: 'refused', detail: (e as Error).message };
  }
  const ok = answer.status === 202 || answer.type === 'urn:vws:problem:PilotMessageReplayed';
  log[ok ? 'info' : 'warn']({ step: 'receive', answer: answer.status, type: answer.type, slot: answer.slotId, event: answer.event }, answer.detail);
  process.stdout.write(`${JSON.stringify(answer)}\n`);
  exit(ok ? PILOT_EXIT.ok : PILOT_EXIT.internal);
}

const collect = (v: string, all: string[]) => [...all, v];

const program = new Command('vws-pilot')
  .description('the vws pilot: holds a VMM node for vws as a batch job, and resets nodes')
  .showHelpAfterError()
  .exitOverride((err) => exit(err.exitCode === 0 ? 0 : PILOT_EXIT.usage));

program
  .command('run')
  .description('hold this node for one slot (run as the batch job)')
  .option('--slot <id>', 'the slot id (the batch job vws submitted)')
  .option('--node <name>', "this node's name in vws's configuration")
  .option('--api <url>', "vws's API, e.g. http://10.213.0.1:8080")
  .option('--secret-file <file>', 'the shared pilot secret (pilot.secretFile copied to the node)')
  .option('--reserve-mib <n>', 'memory to reserve for VMs, MiB')
  .addOption(new Option('--memory <mode>', 'xen: balloon dom0 (xl mem-set 0); host: the QEMU node reservation file').choices(['xen', 'host']))
  .option('--configured-mib <n>', "the node's memory with nothing reserved (xen: default dom0_mem from xl info)")
  .option('--end <iso>', "the slot's end (ISO 8601 with zone)")
  .option('--hold-seconds <s>', 'or: the slot ends this long after the pilot starts')
  .option('--node-table <json>', 'the pilot nodes\' memory handling, {"<node>": {"memory": "xen"|"host", "configuredMiB": n}}; with it --node may come from the batch system (SLURMD_NODENAME)')
  .option('--margin-seconds <s>', 'start unreserving this long before --end', '10')
  .option('--grace-seconds <s>', "the batch system's SIGTERM→SIGKILL grace (Slurm KillWait)", '30')
  .option('--grace-ratio <r>', "share of the grace given to vws to trash its VMs, in [0, 1)", '0.5')
  .option('--pilot-needs-seconds <s>', 'the least of the grace the pilot keeps for its own cleanup', '2')
  .option('--notify-seconds <s>', 'longest the pilot retries the reserved notification', '20')
  .option('--memory-timeout-seconds <s>', 'longest a memory change may take to reach its target', '60')
  .option('--min-dom0-mib <n>', 'xen: dom0 is never ballooned below this (a share that would leave less is refused)', String(DEFAULT_MIN_DOM0_MIB))
  .option('--node-dir <dir>', 'the node directory (node.dir)', DEFAULT_NODE_DIR)
  .option('--lock-file <file>', 'the node lock (default <node-dir>/pilot/pilot.lock)')
  .option('--config <file>', "vws's configuration (driver settings); default VWS_CONFIG or the embedded defaults")
  .option('--ssh-fallback <json>', 'notify over SSH when HTTP gets no answer: pilot.sshFallback as JSON (host, keyFile, knownHostsFile, command, …)')
  .option('--end-if-orphaned', "hand the node back as on SIGTERM if the pilot's parent (Slurm's slurmstepd) dies; not for PBS, whose pbs_mom may restart under running jobs")
  .action((f: RunFlags) => runCommand(f));

program
  .command('reset')
  .description("destroy every vws VM on this node, restore memory to its configured value, remove a stale lock")
  .option('--node <name>', "this node's name in vws's configuration")
  .addOption(new Option('--memory <mode>', 'xen or host').choices(['xen', 'host']))
  .option('--configured-mib <n>', "the node's memory with nothing reserved (xen: default dom0_mem from xl info)")
  .option('--node-dir <dir>', 'the node directory (node.dir)', DEFAULT_NODE_DIR)
  .option('--lock-file <file>', 'the node lock (default <node-dir>/pilot/pilot.lock)')
  .option('--config <file>', "vws's configuration; default VWS_CONFIG or the embedded defaults")
  .option('--force', 'reset even while a live pilot holds the node (its lock stays)')
  .action((f: ResetFlags) => resetCommand(f));

program
  .command('boot-reset')
  .description("at the node's boot (before slurmd): `reset` with this node's settings from vws's configuration; a non-pilot node is left alone")
  .option('--node <name>', "this node's name in vws's configuration (default VWS_NODE, else the short host name)")
  .option('--config <file>', "vws's configuration; default VWS_CONFIG")
  .option('--wait-seconds <s>', "retry this long while the node cannot be reset yet (Xen's tools starting)", '60')
  .action((f: BootResetFlags) => bootResetCommand(f));

program
  .command('kill-all')
  .description('emergency stop: on every configured node, destroy every vws VM and reset memory')
  .option('--config <file>', "vws's configuration; default VWS_CONFIG or the embedded defaults")
  .option('--ssh <node=host>', 'reach NODE over SSH at HOST (repeatable; default: the node\'s ssh address, else local commands)', collect, [])
  .option('--node <name>', 'only this node (repeatable; default: all)', collect, [])
  .option('--node-timeout-seconds <s>', 'longest one node may take', '90')
  .action((f: KillAllFlags) => killAllCommand(f));

program
  .command('receive')
  .description("(on the head) take one pilot notification from stdin, sent over SSH when HTTP failed; check it and deliver it")
  .option('--config <file>', "vws's configuration; default VWS_CONFIG or the embedded defaults")
  .action((f: { config?: string }) => receiveCommand(f));

void program.parseAsync(process.argv);
