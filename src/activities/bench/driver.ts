/**
 * The bench driver: VM states in memory, no hypervisor work at all.
 *
 * **FOR BENCHMARKS OF VWS'S ORCHESTRATION ONLY.** It is never enabled by default; a node uses it only when
 * its configuration says `driver: bench`. It boots nothing, saves nothing to disk and runs no guest, so
 * a workspace on a bench node has no VM. It exists so benchmarks measure Temporal, the workflows and
 * the activities without the (TCG-slow) hypervisor in the way.
 */
import type { HypervisorDriver, ShutdownResult, VmPowerState, VmSpec } from '../hypervisor';
import { vmNotFound } from '../vm-not-found';

/**
 * {@link HypervisorDriver} that keeps VM states in a Map. Never enabled by default; a node uses it only
 * when its config says `driver: bench`. The state rules are the real drivers' (pausing an absent VM
 * fails with `VmNotFound`, saving ends the VM, restoring needs a saved state...), so benchmarks go
 * through the same transitions and failures as production. State is per process: a restarted worker
 * forgets every VM, as a rebooted node would.
 */
export class BenchDriver implements HypervisorDriver {
  readonly kind = 'bench' as const;
  readonly diskFormat = 'qcow2' as const;

  private readonly vms = new Map<string, { spec: VmSpec; state: 'running' | 'paused' }>();
  /** Saved states by state file path (nothing is written to disk). */
  private readonly saved = new Map<string, VmSpec>();

  private get(name: string, operation: string) {
    const vm = this.vms.get(name);
    if (!vm) throw vmNotFound(name, operation);
    return vm;
  }

  async create(spec: VmSpec): Promise<void> {
    if (!this.vms.has(spec.name)) this.vms.set(spec.name, { spec, state: 'running' });
  }

  async status(name: string): Promise<VmPowerState> {
    return this.vms.get(name)?.state ?? 'absent';
  }

  async pause(name: string): Promise<void> {
    this.get(name, 'pause').state = 'paused';
  }

  async unpause(name: string): Promise<void> {
    this.get(name, 'unpause').state = 'running';
  }

  async reboot(name: string): Promise<void> {
    // As with qemu's system_reset, a paused VM stays paused.
    this.get(name, 'reboot');
  }

  async shutdown(name: string, _timeoutMs: number): Promise<ShutdownResult> {
    // The bench "guest" always honours the power button (a paused one is resumed first, as in qemu).
    this.vms.delete(name);
    return { graceful: true };
  }

  async save(name: string, stateFile: string): Promise<void> {
    const vm = this.vms.get(name);
    if (!vm) {
      if (this.saved.has(stateFile)) return;
      throw vmNotFound(name, 'save');
    }
    this.saved.set(stateFile, vm.spec);
    this.vms.delete(name);
  }

  async restore(spec: VmSpec, stateFile: string): Promise<void> {
    if (this.vms.has(spec.name)) return;
    if (!this.saved.has(stateFile)) throw vmNotFound(spec.name, 'restore');
    // Like the real drivers, the saved state stays (the caller owns the file); the VM resumes running.
    this.vms.set(spec.name, { spec, state: 'running' });
  }

  async destroy(name: string): Promise<void> {
    this.vms.delete(name);
  }

  async list(): Promise<string[]> {
    return [...this.vms.keys()];
  }
}
