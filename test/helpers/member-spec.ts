/** The workspace spec group, ensemble and benchmark tests give their members. */
import type { ResolvedImage, WorkspaceSpec } from '../../src/domain/workspace';

/**
 * A member spec: one vCPU on the public network, Trash at the deadline (nothing to stage out when a
 * test ends early), an hour of running time unless the test says otherwise.
 */
export function memberSpec(image: ResolvedImage, o: { memoryMiB?: number; durationSeconds?: number; targetState?: WorkspaceSpec['targetState'] } = {}): WorkspaceSpec {
  return {
    image,
    memoryMiB: o.memoryMiB ?? 128,
    vcpus: 1,
    durationSeconds: o.durationSeconds ?? 3600,
    targetState: o.targetState ?? 'Running',
    shutdownMechanism: 'Trash',
    trashAtShutdown: false,
    networks: ['public'],
  };
}
