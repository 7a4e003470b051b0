/**
 * The pilot's SSH fallback (issue 7: notifications over HTTP, "SSH as fallback"): when the pilot cannot
 * deliver a notification over HTTP (connection refused, timeout, 5xx) after a few attempts, it connects
 * with ssh2 to a head host and runs one fixed command there (`vws-pilot receive`), passing the same signed
 * message on stdin. A fragment on its own: `schema.ts` embeds it as `pilot.sshFallback`, and the pilot's
 * `--ssh-fallback <json>` option is parsed with the same schema, so both name a bad field alike.
 */
import { z } from 'zod';

/** How pilots reach the head over SSH when HTTP fails. Paths are as seen on the nodes. */
export const pilotSshFallbackSchema = z
  .object({
    /** The head host as the nodes reach it (address or name). */
    host: z.string().regex(/^[A-Za-z0-9.:_-]{1,253}$/, 'must be a host name or address'),
    port: z.number().int().min(1).max(65535).default(22),
    user: z.string().regex(/^[a-z_][a-z0-9_-]{0,31}$/, 'must be a user name').default('root'),
    /** The site's private key on the nodes (no passphrase); it is read, never logged. */
    keyFile: z.string().startsWith('/', 'must be an absolute path'),
    /** known_hosts on the nodes with the head host's key pinned; an unknown or changed key is refused. */
    knownHostsFile: z.string().startsWith('/', 'must be an absolute path'),
    /** Another name to look the host up by in known_hosts (OpenSSH's HostKeyAlias). */
    hostAlias: z.string().min(1).optional(),
    /**
     * The receiving command on the head, as argv: the installed `vws-pilot receive` with the head's
     * configuration, e.g. `["/usr/bin/node", "/opt/vws/dist/pilot/main.js", "receive", "--config", "/etc/vws/vws.yaml"]`.
     * Fixed by the site: nothing of the message ever becomes part of it (the message goes on stdin).
     */
    command: z.array(z.string().min(1)).min(1),
    /** HTTP attempts that failed for want of a connection (refused, timeout, 5xx) before the pilot tries SSH. */
    afterHttpAttempts: z.number().int().min(1).max(20).default(2),
    /** Bound on TCP connect + handshake + authentication, ms. */
    connectTimeoutMs: z.number().int().min(100).max(60_000).default(5_000),
  })
  .strict();

/** The validated SSH fallback settings. */
export type PilotSshFallback = z.infer<typeof pilotSshFallbackSchema>;
