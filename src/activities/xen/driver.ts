/**
 * The Xen driver: PV domains through the real `xl` toolstack in dom0, reached through an {@link Executor}
 * (SSH from the head, or local in dom0). Disks (the root as xvda, extra disks as xvdb, xvdc…) are raw files
 * in the workspace directory, each attached as its own loop device, because dom0 has no qemu (qdisk)
 * backend for file-backed disks.
 *
 * State lives in Xen itself (`xl list`), so every method re-reads it and is idempotent; the driver
 * keeps nothing in memory. Files: `<workspace>/domain.cfg` (the config last used).
 */
import { CommandError, type Executor } from '../../exec/executor';
import type { Dom0Memory, HypervisorDriver, ShutdownResult, VmPowerState, VmSpec } from '../hypervisor';
import { workspaceDir, type NodePaths } from '../node-paths';
import { vmNotFound } from '../vm-not-found';
import {
  WORKSPACE_ID,
  checkXenDisks,
  loopsUnder,
  parseLosetupAssociations,
  parseXlList,
  powerStateFromFlags,
  renderDomainConfig,
} from './config';

/** What the driver needs. */
export interface XenDriverOptions {
  exec: Executor;
  paths: NodePaths;
}

/**
 * Dom0's memory counts as reached within this many MiB of the target. `xl list` prints tot_pages
 * rounded down to MiB, and the balloon driver may stop a few pages short of its target (it never
 * gives up pages it cannot free), so exact equality can be unreachable although the job is done.
 * On the testbed every mem-set landed exactly; 1 MiB absorbs the rounding without hiding a balloon
 * that is stuck (that is off by far more).
 */
export const DOM0_MEMORY_TOLERANCE_MIB = 1;

const XL_TIMEOUT_MS = 120_000; // create/restore with hotplug take ~5-15 s under TCG
const SAVE_TIMEOUT_MS = 15 * 60_000; // writes the guest's whole RAM
const GONE_TIMEOUT_MS = 30_000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Refuses anything but a workspace id, so no call can reach Domain-0 (or a domid) by accident. */
function checkName(name: string): string {
  if (!WORKSPACE_ID.test(name)) throw new Error(`refusing Xen domain name ${JSON.stringify(name)}: not a workspace id`);
  return name;
}

/** {@link HypervisorDriver} over `xl`, plus dom0 ballooning ({@link Dom0Memory}). */
export class XenDriver implements HypervisorDriver, Dom0Memory {
  readonly kind = 'xen' as const;
  readonly diskFormat = 'raw' as const;

  constructor(private readonly o: XenDriverOptions) {}

  private cfgPath(name: string): string {
    return `${workspaceDir(this.o.paths, name)}/domain.cfg`;
  }

  private xl(args: readonly string[], timeoutMs = XL_TIMEOUT_MS, okCodes = [0]) {
    return this.o.exec.run(['xl', ...args], { timeoutMs, okCodes });
  }

  async status(name: string): Promise<VmPowerState> {
    const r = await this.xl(['list', checkName(name)], 30_000, [0, 1]);
    if (r.code !== 0) {
      // "<name> is an invalid domain identifier (rc=-6)": no such domain. Anything else is a real failure.
      if (/invalid domain identifier/.test(r.stderr)) return 'absent';
      throw new CommandError(['xl', 'list', name], r.code, r.stderr);
    }
    const row = parseXlList(r.stdout).find((d) => d.name === name);
    return row ? powerStateFromFlags(row.state) : 'absent';
  }

  /** Waits until the domain is gone (after destroy, save, or shutdown with on_poweroff=destroy). */
  private async waitGone(name: string, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while ((await this.status(name)) !== 'absent') {
      if (Date.now() > deadline) return false;
      await sleep(250);
    }
    return true;
  }

  /** The loop device for `file`: an existing one (a retried create) or a new one. */
  private async attachLoop(file: string): Promise<string> {
    const existing = parseLosetupAssociations((await this.o.exec.run(['losetup', '-j', file])).stdout);
    if (existing.length > 0) return existing[0];
    const dev = (await this.o.exec.run(['losetup', '--find', '--show', file])).stdout.trim();
    if (!/^\/dev\/loop[0-9]+$/.test(dev)) throw new Error(`losetup --find --show ${file} printed ${JSON.stringify(dev)}`);
    return dev;
  }

  /** Detaches every loop device backed by a file in the workspace dir; call only once the domain is gone. */
  private async detachLoops(name: string): Promise<void> {
    const dir = workspaceDir(this.o.paths, name);
    const list = async () => loopsUnder((await this.o.exec.run(['losetup', '-J', '-l', '-O', 'NAME,BACK-FILE'])).stdout, dir);
    for (const dev of await list()) {
      // Exit 1 if it vanished in between (another cleanup): the check below is what counts.
      await this.o.exec.run(['losetup', '-d', dev], { okCodes: [0, 1] });
    }
    const left = await list();
    if (left.length > 0) throw new Error(`loop devices of ${name} still attached: ${left.join(', ')}`);
  }

  /** What every ending (destroy, shutdown, save) leaves to do once the domain is gone. */
  private async cleanup(name: string): Promise<void> {
    await this.detachLoops(name);
    await this.o.exec.remove(this.cfgPath(name));
  }

  /** `xl destroy` if the domain exists (in any state), then waits until it is gone. */
  private async destroyDomain(name: string): Promise<void> {
    if ((await this.status(name)) === 'absent') return;
    // Exit 1 if it disappeared on its own meanwhile; waitGone decides.
    await this.xl(['destroy', name], 60_000, [0, 1]);
    if (!(await this.waitGone(name, GONE_TIMEOUT_MS))) throw new Error(`domain ${name} still exists ${GONE_TIMEOUT_MS} ms after xl destroy`);
  }

  /**
   * Attaches the disks (root, then `spec.disks` in order, one loop device each) and writes the config: the
   * common first half of create and restore. The spec is checked before the first losetup, so a qcow2 or
   * misplaced disk leaves nothing attached. A crash between a losetup and `xl create` leaves loop devices
   * whose backing files are in the workspace directory: a retry reuses them ({@link attachLoop}), and
   * every ending finds them there ({@link detachLoops}).
   */
  private async prepare(spec: VmSpec): Promise<string> {
    checkXenDisks(spec, workspaceDir(this.o.paths, spec.name));
    const loop = await this.attachLoop(spec.rootDisk);
    const diskLoops: string[] = [];
    for (const d of spec.disks ?? []) diskLoops.push(await this.attachLoop(d.path));
    const cfg = this.cfgPath(spec.name);
    await this.o.exec.writeFileAtomic(cfg, renderDomainConfig(spec, loop, diskLoops));
    return cfg;
  }

  /** Runs create/restore; on failure leaves no half-built domain or loop behind, then rethrows. */
  private async start(spec: VmSpec, xlArgs: (cfg: string) => string[]): Promise<void> {
    const state = await this.status(checkName(spec.name));
    if (state === 'running' || state === 'paused') return;
    // A domain that shut down or crashed but is not reaped yet would make xl refuse the name.
    if (state === 'shutoff') await this.destroyDomain(spec.name);
    try {
      // Inside the try: a losetup that fails for the third disk must not leave the first two attached.
      await this.xl(xlArgs(await this.prepare(spec)), XL_TIMEOUT_MS);
    } catch (e) {
      await this.destroyDomain(spec.name).catch(() => undefined);
      await this.cleanup(spec.name).catch(() => undefined);
      throw e;
    }
  }

  async create(spec: VmSpec): Promise<void> {
    await this.start(spec, (cfg) => ['create', '-q', cfg]);
  }

  async pause(name: string): Promise<void> {
    const state = await this.status(checkName(name));
    if (state === 'absent') throw vmNotFound(name, 'pause');
    if (state !== 'paused') await this.xl(['pause', name], 30_000);
  }

  async unpause(name: string): Promise<void> {
    const state = await this.status(checkName(name));
    if (state === 'absent') throw vmNotFound(name, 'unpause');
    if (state === 'paused') await this.xl(['unpause', name], 30_000);
  }

  async reboot(name: string): Promise<void> {
    const state = await this.status(checkName(name));
    if (state === 'absent') throw vmNotFound(name, 'reboot');
    // A paused guest cannot act on the request; it would reboot only once unpaused.
    if (state === 'paused') await this.xl(['unpause', name], 30_000);
    // The guest reboots itself; on_reboot="restart" makes xl's monitor rebuild the same domain.
    await this.xl(['reboot', name], 30_000);
  }

  async shutdown(name: string, timeoutMs: number): Promise<ShutdownResult> {
    const state = await this.status(checkName(name));
    if (state === 'absent') {
      await this.cleanup(name);
      return { graceful: true };
    }
    if (state === 'paused') await this.xl(['unpause', name], 30_000);
    const asked = state === 'shutoff' ? 'the domain was already shut off' : await this.askShutdown(name, timeoutMs);
    const graceful = asked === true;
    // xl's monitor destroys the domain right after it shut down (on_poweroff="destroy"); give it a moment.
    if (!(await this.waitGone(name, graceful ? 5_000 : 0))) await this.destroyDomain(name);
    await this.cleanup(name);
    return asked === true ? { graceful } : { graceful, forcedBecause: asked };
  }

  /**
   * `xl shutdown -w` until the guest has shut down, within `timeoutMs`. A guest still booting has no PV
   * control interface yet, so that answer is retried until the deadline, and so is an `xl` that ended
   * without an exit code before it (a lost SSH channel, a signal). True once shut down; otherwise why not.
   */
  private async askShutdown(name: string, timeoutMs: number): Promise<true | string> {
    const deadline = Date.now() + timeoutMs;
    let last = 'no answer';
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) return `the guest did not shut down within ${Math.round(timeoutMs / 1000)} s (last: ${last})`;
      try {
        const r = await this.xl(['shutdown', '-w', name], left, [0, 1]);
        if (r.code === 0) return true;
        if (/invalid domain identifier/.test(r.stderr)) return true; // it went away meanwhile
        if (!/PV control interface not available/i.test(r.stderr)) throw new CommandError(['xl', 'shutdown', '-w', name], r.code, r.stderr);
        last = r.stderr.trim().slice(-200);
      } catch (e) {
        // No exit code: our timeout killed xl (then the loop ends above), or it was cut off: ask again.
        if (!(e instanceof CommandError && e.code === null)) throw e;
        last = e.message.slice(0, 200);
      }
      await sleep(500);
    }
  }

  async save(name: string, stateFile: string): Promise<void> {
    const state = await this.status(checkName(name));
    if (state === 'absent') {
      // Saved already (a retried activity), or there was nothing to save.
      if (!(await this.o.exec.exists(stateFile))) throw vmNotFound(name, 'save');
      await this.cleanup(name);
      return;
    }
    // A paused PV guest cannot answer the suspend request that xl save sends.
    if (state === 'paused') await this.xl(['unpause', name], 30_000);
    const part = `${stateFile}.part`;
    await this.o.exec.remove(part);
    try {
      await this.xl(['save', name, part], SAVE_TIMEOUT_MS);
    } catch (e) {
      await this.o.exec.remove(part);
      throw e;
    }
    // xl save destroys the domain once the file is complete; only then is the file complete for us.
    if (!(await this.waitGone(name, GONE_TIMEOUT_MS))) throw new Error(`domain ${name} still exists after xl save`);
    await this.o.exec.rename(part, stateFile);
    await this.cleanup(name);
  }

  async restore(spec: VmSpec, stateFile: string): Promise<void> {
    // The file carries the old config too, but its loop device may belong to someone else by now:
    // restore with a fresh config naming the loop devices attached now (same disks, same order).
    await this.start(spec, (cfg) => ['restore', cfg, stateFile]);
  }

  async destroy(name: string): Promise<void> {
    await this.destroyDomain(checkName(name));
    await this.cleanup(name);
  }

  /**
   * Plain `xl list`, not the JSON of `xl list -l`: while a domain is being built, `xl list -l` leaves it
   * out and still exits 0 ("Fail to get domain configuration" on stderr; seen on xen1, sample in
   * test/fixtures/xen), so a VM that is starting would look absent.
   */
  async list(): Promise<string[]> {
    const r = await this.xl(['list'], 30_000);
    return parseXlList(r.stdout)
      .map((d) => d.name)
      .filter((n) => WORKSPACE_ID.test(n));
  }

  async dom0MemoryMiB(): Promise<number> {
    const dom0 = parseXlList((await this.xl(['list', '0'], 30_000)).stdout).find((d) => d.domid === 0);
    if (!dom0 || !Number.isFinite(dom0.memMiB)) throw new Error('xl list 0 printed no Domain-0 row');
    return dom0.memMiB;
  }

  async setDom0MemoryMiB(targetMiB: number, timeoutMs = 60_000): Promise<void> {
    if (!Number.isInteger(targetMiB) || targetMiB <= 0) throw new Error(`dom0 memory target must be a positive integer MiB, got ${targetMiB}`);
    await this.xl(['mem-set', '0', `${targetMiB}m`], 30_000);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const current = await this.dom0MemoryMiB();
      if (Math.abs(current - targetMiB) <= DOM0_MEMORY_TOLERANCE_MIB) return;
      if (Date.now() > deadline) {
        throw new Error(`dom0 memory is ${current} MiB, target ${targetMiB} MiB (±${DOM0_MEMORY_TOLERANCE_MIB}), after ${timeoutMs} ms`);
      }
      await sleep(250);
    }
  }
}
