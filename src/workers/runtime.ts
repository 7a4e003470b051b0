/**
 * Routes the Temporal SDK's own logs (worker state, core warnings) through vws's pino logger, so one
 * level setting (`VWS_LOG_LEVEL`) and one format cover everything a worker prints.
 */
import type { LogLevel, LogMetadata, Logger } from '@temporalio/common';
import { Runtime } from '@temporalio/worker';
import { log } from '../log';

const PINO: Record<LogLevel, 'trace' | 'debug' | 'info' | 'warn' | 'error'> = {
  TRACE: 'trace',
  DEBUG: 'debug',
  INFO: 'info',
  WARN: 'warn',
  ERROR: 'error',
};

/** A Temporal SDK {@link Logger} over pino. */
export const sdkLogger: Logger = {
  log: (level: LogLevel, message: string, meta?: LogMetadata) => log[PINO[level]]({ temporal: meta }, message),
  trace: (m, meta) => log.trace({ temporal: meta }, m),
  debug: (m, meta) => log.debug({ temporal: meta }, m),
  info: (m, meta) => log.info({ temporal: meta }, m),
  warn: (m, meta) => log.warn({ temporal: meta }, m),
  error: (m, meta) => log.error({ temporal: meta }, m),
};

/**
 * Installs the SDK runtime with {@link sdkLogger}; once per process, before any worker is created.
 * With `metricsAddress` (host:port) the SDK serves its worker metrics (task latencies, slots, polls,
 * sticky cache) and vws's own activity counters in the Prometheus format at http://<address>/metrics.
 */
export function installRuntime(opts: { metricsAddress?: string } = {}): void {
  const level = (process.env.VWS_LOG_LEVEL ?? 'info').toUpperCase();
  const coreLevel = (['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR'].includes(level) ? level : 'INFO') as LogLevel;
  Runtime.install({
    logger: sdkLogger,
    telemetryOptions: {
      logging: { filter: { core: coreLevel, other: 'WARN' }, forward: {} },
      ...(opts.metricsAddress ? { metrics: { prometheus: { bindAddress: opts.metricsAddress, countersTotalSuffix: true } } } : {}),
    },
  });
}
