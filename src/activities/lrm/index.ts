/** The batch-system adapter a site's `lrm` configuration names, over the executor of its submit host. */
import type { LrmConfig } from '../../config/lrm-schema';
import type { Executor } from '../../exec/executor';
import { PbsBatchSystem } from './pbs';
import { SlurmBatchSystem } from './slurm';
import type { BatchSystem } from './types';

export type { BatchSystem, BatchJobStatus, BatchJobSummary, PilotJobRequest } from './types';

/**
 * Builds the adapter for `config` (kind slurm or pbs). `executor` runs on the submit host: a
 * LocalExecutor on the head, or an SshExecutor for `submitHost.via: ssh` (the caller makes it).
 */
export function createBatchSystem(config: LrmConfig, executor: Executor): BatchSystem {
  const common = {
    constraints: config.constraints,
    account: config.account,
    walltimePaddingSeconds: config.walltimePaddingSeconds,
    commandTimeoutMs: config.commandTimeoutMs,
  };
  if (config.kind === 'slurm') {
    return new SlurmBatchSystem(executor, { ...common, partition: config.partition, slurmConf: config.slurm?.conf });
  }
  return new PbsBatchSystem(executor, { ...common, queue: config.partition, flavor: config.pbs?.flavor ?? 'torque', server: config.pbs?.server });
}
