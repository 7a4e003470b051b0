/** The one failure drivers throw when an operation names a VM they do not run. */
import { ApplicationFailure } from '@temporalio/common';
import { FailureType } from '../domain/errors';

/**
 * A non-retryable `VmNotFound` failure for `operation` on VM `name`: pausing, unpausing or rebooting a VM
 * that is absent cannot succeed on a retry, and the workflow must see the type to decide what to do.
 */
export function vmNotFound(name: string, operation: string): ApplicationFailure {
  return ApplicationFailure.create({
    type: FailureType.VmNotFound,
    nonRetryable: true,
    message: `cannot ${operation} VM ${name}: it does not exist on this node`,
  });
}
