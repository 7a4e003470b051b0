/**
 * Who a request comes from when the API serves mutual TLS: pure decisions over what the TLS layer
 * established (a client certificate, whether it verified, its subject) and the bearer token, if any.
 * A verified certificate's subject, written as a grid DN (`/O=Grid/OU=site/CN=alice`), must be a
 * configured client's identity; a token sent along must be that same client's. No I/O here: the
 * middleware in `client-auth.ts` gathers the facts.
 */
import type { Principal } from './auth';

/** A grid DN, or why a certificate subject cannot be written as one. */
export type GridDn = { dn: string } | { error: string };

/**
 * The grid-style DN of a certificate subject as node's `X509Certificate.subject` prints it (one
 * `TYPE=value` per line, in the certificate's order, RFC 2253 escapes): the RDNs joined with `/`.
 * Refused, so that no certificate can pass for another DN: a value holding `/` (`CN=bob/CN=root`
 * would read as two RDNs), a multi-valued RDN, a control character, an empty subject.
 */
export function gridDn(subject: string): GridDn {
  if (!subject.trim()) return { error: 'the client certificate has an empty subject' };
  const parts: string[] = [];
  for (const line of subject.split('\n')) {
    const rdn = parseRdn(line);
    if ('error' in rdn) return rdn;
    if (rdn.value.includes('/')) return { error: `the client certificate's subject has a "/" in ${rdn.type}, which a grid DN cannot hold` };
    parts.push(`/${rdn.type}=${rdn.value}`);
  }
  return { dn: parts.join('') };
}

/** One printed RDN line, unescaped; a multi-valued RDN or a control character is refused. */
function parseRdn(line: string): { type: string; value: string } | { error: string } {
  const eq = line.indexOf('=');
  const type = eq > 0 ? line.slice(0, eq) : '';
  if (!/^[A-Za-z][A-Za-z0-9-]*$|^\d+(\.\d+)+$/.test(type)) return { error: `the client certificate's subject has an unreadable part (${JSON.stringify(line)})` };
  let value = '';
  const raw = line.slice(eq + 1);
  for (let i = 0; i < raw.length; i++) {
    const ch = raw[i];
    if (ch === '\\') {
      // `\` + two hex digits is an escaped control (or non-printable) byte; `\` + a special is the special.
      if (/^[0-9A-Fa-f]{2}$/.test(raw.slice(i + 1, i + 3))) return { error: `the client certificate's subject has a control character in ${type}` };
      if (i + 1 >= raw.length) return { error: `the client certificate's subject has an unreadable part (${JSON.stringify(line)})` };
      value += raw[++i];
    } else if (ch === '+') {
      // Specials inside a value are escaped; an unescaped + separates the values of a multi-valued RDN.
      return { error: `the client certificate's subject has a multi-valued RDN (${type}=…+…), which a grid DN cannot hold` };
    } else if (ch < ' ' || ch === '\x7f') {
      return { error: `the client certificate's subject has a control character in ${type}` };
    } else {
      value += ch;
    }
  }
  return { type, value };
}

/** What the TLS layer established about a request's client certificate. */
export interface CertificateFacts {
  /** The client sent a certificate. */
  presented: boolean;
  /** It verified against the configured client CA (only then does its subject count). */
  verified: boolean;
  /** Why it did not verify (OpenSSL's code, e.g. `UNABLE_TO_VERIFY_LEAF_SIGNATURE`). */
  verifyError?: string;
  /** Its subject as `X509Certificate.subject` prints it. */
  subject?: string;
}

/** The inputs of one authentication decision. */
export interface ClientAuthInput {
  /** The certificate facts; null when the request did not come over TLS with client certificates asked for. */
  certificate: CertificateFacts | null;
  /** Whether an `Authorization: Bearer` token was sent. */
  tokenGiven: boolean;
  /** The client the token belongs to (null: none, or no token). */
  tokenPrincipal: Principal | null;
  /** The configured client whose identity is this DN, or null. */
  byIdentity: (dn: string) => Principal | null;
  /** Refuse requests without a verified certificate (`api.tls.requireClientCert`). */
  requireClientCert: boolean;
}

/** Who the caller is, or why it is refused (a sentence for a 401; it never echoes a token). */
export type ClientAuthDecision = { principal: Principal; via: 'certificate' | 'token' } | { refused: string };

/** The refusal of a request without a valid token and without a certificate (the API's long-standing 401). */
export const TOKEN_REQUIRED = 'a valid bearer token is required (Authorization: Bearer <token>)';

/**
 * Decides who a request comes from. A certificate that was presented but did not verify is refused, not
 * ignored: falling back to the token would let a forged certificate pass unnoticed. With a verified
 * certificate the DN decides, and a token must agree with it; without one, the token alone decides
 * (unless certificates are required).
 */
export function decideClient(input: ClientAuthInput): ClientAuthDecision {
  const cert = input.certificate;
  if (cert?.presented && !cert.verified) {
    return { refused: `the client certificate was not accepted${cert.verifyError ? ` (${cert.verifyError})` : ''}: it must be issued by the site's client CA` };
  }
  if (cert?.presented && cert.verified) {
    const dn = gridDn(cert.subject ?? '');
    if ('error' in dn) return { refused: dn.error };
    const principal = input.byIdentity(dn.dn);
    if (!principal) return { refused: `the client certificate's subject ${dn.dn} is not a client of this site` };
    if (input.tokenGiven) {
      if (!input.tokenPrincipal) return { refused: 'the bearer token sent with the client certificate is not valid' };
      if (input.tokenPrincipal.name !== principal.name) return { refused: `the bearer token belongs to another client than the certificate's subject ${dn.dn}` };
    }
    return { principal, via: 'certificate' };
  }
  if (input.requireClientCert) return { refused: "a client certificate issued by the site's client CA is required" };
  return input.tokenPrincipal ? { principal: input.tokenPrincipal, via: 'token' } : { refused: TOKEN_REQUIRED };
}

/** A lookup of clients by identity over the token table's principals (first wins; the config keeps them unique under mTLS). */
export function identityIndex(principals: readonly Principal[]): (dn: string) => Principal | null {
  const map = new Map<string, Principal>();
  for (const p of principals) if (!map.has(p.identity)) map.set(p.identity, p);
  return (dn) => map.get(dn) ?? null;
}
