/** The API's token table, from the configured token files. */
import type { VwsConfig } from '../config/schema';
import { ensureToken, tokenDigest } from '../config/secrets';
import type { TokenEntry } from './auth';

/**
 * Token entries for the configured clients and for the nodes: a client's digest is its `tokenSha256`, or
 * that of the token in its `tokenFile` (token files are created if missing).
 */
export function loadTokens(config: VwsConfig): { clients: TokenEntry[]; nodes: TokenEntry[] } {
  return {
    clients: config.clients.map((c) => ({
      // The schema guarantees exactly one of the two.
      digest: c.tokenSha256 ?? tokenDigest(ensureToken(c.tokenFile!)),
      principal: { name: c.name, identity: c.identity, admin: c.admin },
    })),
    nodes: [{ digest: tokenDigest(ensureToken(config.repository.nodeTokenFile)), principal: { name: 'node', identity: 'node', admin: false } }],
  };
}
