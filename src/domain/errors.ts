/**
 * Failure types carried by `ApplicationFailure.type` across activities, workflows and the API. One list,
 * so retry policies (`nonRetryableErrorTypes`) and the API's HTTP mapping read the same names.
 */
export const FailureType = {
  /** The request or a stored value failed validation; retrying cannot help. */
  InvalidSpec: 'InvalidSpec',
  /** The allocator has no node or address that fits the request. */
  NoCapacity: 'NoCapacity',
  /** The request would take the client over one of its quotas (workspaces held, reserved minutes). */
  QuotaExceeded: 'QuotaExceeded',
  /** The request is outside the site's policy (running time, memory, nodes per request). */
  PolicyViolation: 'PolicyViolation',
  /** The named image is not in the site repository. */
  ImageNotFound: 'ImageNotFound',
  /** A downloaded image does not match its sha256 digest. */
  DigestMismatch: 'DigestMismatch',
  /** An external image source or target cannot be used: unknown scheme, not allowed, missing, unreachable. */
  SourceUnavailable: 'SourceUnavailable',
  /** The operation is not allowed in the workspace's current state. */
  OperationNotAllowed: 'OperationNotAllowed',
  /** A command on a node exited non-zero. Retryable: the node may recover. */
  CommandFailed: 'CommandFailed',
  /** The VM did not obtain its address from DHCP in time. */
  AddressTimeout: 'AddressTimeout',
  /** Pause, unpause or reboot named a VM the node's driver does not run; retrying cannot make it appear. */
  VmNotFound: 'VmNotFound',
  /**
   * The batch system (Slurm, PBS) refused a job at submission: unknown partition/queue, node, feature or
   * account, a limit the queue does not allow. The same request would be refused again.
   */
  BatchSubmitRefused: 'BatchSubmitRefused',
  /** The batch system's controller did not answer (down, unreachable, timed out). Retryable: it may come back. */
  BatchSystemUnavailable: 'BatchSystemUnavailable',
} as const;

/** One of {@link FailureType}'s values. */
export type FailureTypeName = (typeof FailureType)[keyof typeof FailureType];

/** Failure types that no retry can fix. */
export const NON_RETRYABLE_FAILURES: FailureTypeName[] = [
  FailureType.InvalidSpec,
  FailureType.NoCapacity,
  FailureType.QuotaExceeded,
  FailureType.PolicyViolation,
  FailureType.ImageNotFound,
  FailureType.DigestMismatch,
  FailureType.SourceUnavailable,
  FailureType.OperationNotAllowed,
  FailureType.VmNotFound,
  FailureType.BatchSubmitRefused,
];
