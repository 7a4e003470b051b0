/** The batch-system adapter a site's `lrm` configuration names, over the executor of its submit host. */
import type { LrmConfig } from '../../config/lrm-schema';
import type { VwsConfig } from '../../config/schema';
import type { Executor } from '../../exec/executor';
import { LocalExecutor } from '../../exec/local';
import { KnownHosts, SshExecutor } from '../../exec/ssh';
import { PbsBatchSystem } from './pbs';
import { SlurmBatchSystem } from './slurm';
import type { BatchSystem } from './types';

export type { BatchSystem, BatchJobStatus, BatchJobSummary, PilotJobRequest } from './types';

/**
 * Builds the adapter for `config` (kind slurm or pbs). `executor` runs on the submit host: a
 * LocalExecutor on the head, or an SshExecutor for `submitHost.via: ssh` ({@link batchSystemFor} makes it).
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

/**
 * The executor of the configured submit host: commands on the head itself (`via: local`), or over SSH
 * to `submitHost.host` (`via: ssh`) with the site's key (`ssh.keyFile`) and its pinned host keys
 * (`ssh.knownHostsFile`, looked up by the host's address as OpenSSH does; an unpinned host is refused).
 * @throws Error naming `lrm` or `lrm.submitHost.host` when the configuration lacks them.
 */
export function submitHostExecutor(config: VwsConfig): Executor {
  const lrm = config.lrm;
  if (!lrm) throw new Error('lrm: this site has no batch system configured');
  const at = lrm.submitHost;
  if (at.via === 'local') return new LocalExecutor();
  if (!at.host) throw new Error('lrm.submitHost.host: is required when submitHost.via is ssh');
  return new SshExecutor({
    host: at.host,
    port: at.port,
    user: at.user,
    privateKey: config.ssh.keyFile,
    knownHosts: KnownHosts.fromFile(config.ssh.knownHostsFile),
    connectTimeoutMs: config.ssh.connectTimeoutMs,
    keepaliveIntervalMs: config.ssh.keepaliveIntervalMs,
    maxChannels: config.ssh.maxChannels,
    sftpTimeoutMs: config.ssh.sftpTimeoutMs,
  });
}

/** One batch system per configuration object, so the slot and reconciler activities share one SSH connection. */
const perConfig = new WeakMap<VwsConfig, BatchSystem>();

/**
 * The site's batch system over its configured submit host ({@link submitHostExecutor}): the one way the
 * head's activities reach it. `executor` (tests) replaces the submit host's; then nothing is shared.
 * @throws Error naming the missing setting (`lrm`, `lrm.submitHost.host`).
 */
export function batchSystemFor(config: VwsConfig, executor?: Executor): BatchSystem {
  if (!config.lrm) throw new Error('lrm: this site has no batch system configured');
  if (executor) return createBatchSystem(config.lrm, executor);
  let batch = perConfig.get(config);
  if (!batch) {
    batch = createBatchSystem(config.lrm, submitHostExecutor(config));
    perConfig.set(config, batch);
  }
  return batch;
}
