/**
 * The pilot's watch on its parent (`run --end-if-orphaned`). Under Slurm the pilot is the batch shell
 * itself (the job script `exec`s it), so its parent is the job's slurmstepd. If that process dies (seen on
 * the testbed: heap corruption in dom0), Slurm can end the job without any signal reaching the pilot, which
 * would then hold the node, its memory and its VMs, until its own end while the batch system counts the
 * node free. vws stops such a pilot when it checks the node after the job; this watch covers the time
 * vws's workers are down.
 *
 * Not for PBS/TORQUE: there the job shell's parent is pbs_mom, and a pbs_mom restarted with its jobs kept
 * (`pbs_mom -p`) leaves them running under init. A changed parent would not mean the job is gone.
 */

/** Stops the watch. */
export type StopWatch = () => void;

/**
 * Calls `onOrphaned(startParent)` once, the first time the parent pid differs from the one at the start
 * (the orphan was adopted by init or a subreaper). Checks every `everyMs`; the timer never keeps the
 * process alive. A process that starts already orphaned (parent pid 1) is not watched: answers null.
 */
export function watchParent(onOrphaned: (startParent: number) => void, everyMs = 1000, parentPid: () => number = () => process.ppid): StopWatch | null {
  const start = parentPid();
  if (start <= 1) return null;
  const timer = setInterval(() => {
    if (parentPid() === start) return;
    clearInterval(timer);
    onOrphaned(start);
  }, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
