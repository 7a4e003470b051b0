/**
 * Middleware that authenticates a client by its bearer token and, when the API serves mutual TLS, by
 * its client certificate (see `client-identity.ts` for the rules). Without `api.tls` it is the token
 * check alone, exactly as before.
 */
import type { TLSSocket } from 'node:tls';
import type { NextFunction, Request, Response } from 'express';
import type { VwsConfig } from '../config/schema';
import { bearerToken, lookup, type TokenEntry } from './auth';
import { decideClient, identityIndex, type CertificateFacts } from './client-identity';
import { HttpProblem } from './problem';

/** The certificate facts of a request, or null when it did not come over TLS with client certificates asked for. */
export function certificateFacts(req: Request): CertificateFacts | null {
  const socket = req.socket as Partial<TLSSocket>;
  if (!socket.encrypted || typeof socket.getPeerX509Certificate !== 'function') return null;
  const cert = socket.getPeerX509Certificate();
  if (!cert) return { presented: false, verified: false };
  const error = socket.authorizationError;
  return {
    presented: true,
    verified: socket.authorized === true,
    ...(error ? { verifyError: typeof error === 'string' ? error : (error as Error).message } : {}),
    subject: cert.subject,
  };
}

/**
 * Middleware: requires a client (by certificate or token) and puts its principal in
 * `res.locals.principal`; anything else is a 401 problem that says why, never echoing a token.
 */
export function requireClient(tokens: () => readonly TokenEntry[], tls: VwsConfig['api']['tls']) {
  return (req: Request, res: Response, next: NextFunction) => {
    const token = bearerToken(req);
    const table = tokens();
    const decision = decideClient({
      certificate: tls?.clientCaFile ? certificateFacts(req) : null,
      tokenGiven: token !== null,
      tokenPrincipal: token ? lookup(table, token) : null,
      byIdentity: identityIndex(table.map((t) => t.principal)),
      requireClientCert: tls?.requireClientCert ?? false,
    });
    if ('refused' in decision) {
      res.setHeader('WWW-Authenticate', 'Bearer realm="vws"');
      next(new HttpProblem(401, 'Unauthorized', decision.refused));
      return;
    }
    res.locals.principal = decision.principal;
    next();
  };
}
