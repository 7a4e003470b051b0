/** The structured logger (pino). Never log tokens: the API logs requests without headers. */
import pino from 'pino';

/** The process-wide logger; level from `VWS_LOG_LEVEL` (default `info`). */
export const log = pino({ level: process.env.VWS_LOG_LEVEL ?? 'info', base: { service: 'vws' } });
