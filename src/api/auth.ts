/**
 * Bearer-token authentication. Tokens are compared by sha256 digest in constant time; a request never
 * learns whether a token exists for another client, and tokens are never logged.
 */
import { timingSafeEqual } from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';
import { tokenDigest } from '../config/secrets';
import { HttpProblem } from './problem';

/** Who made a request. */
export interface Principal {
  name: string;
  identity: string;
  admin: boolean;
}

/** A known token, by digest. */
export interface TokenEntry {
  digest: string;
  principal: Principal;
}

/** The bearer token a request carries (`Authorization: Bearer <token>`), or null. */
export function bearerToken(req: Request): string | null {
  const h = req.headers.authorization;
  const m = h ? /^Bearer\s+(\S+)$/i.exec(h) : null;
  return m ? m[1] : null;
}

/** Finds the principal of a token, or null. */
export function lookup(tokens: readonly TokenEntry[], token: string): Principal | null {
  const digest = Buffer.from(tokenDigest(token), 'hex');
  let found: Principal | null = null;
  for (const t of tokens) {
    // Compare with every entry, so timing does not tell how far the search went.
    if (timingSafeEqual(digest, Buffer.from(t.digest, 'hex'))) found = t.principal;
  }
  return found;
}

/** Middleware: requires a valid token and puts the principal in `res.locals.principal`. */
export function requireToken(tokens: () => readonly TokenEntry[]) {
  return (req: Request, res: Response, next: NextFunction) => {
    const token = bearerToken(req);
    const principal = token ? lookup(tokens(), token) : null;
    if (!principal) {
      res.setHeader('WWW-Authenticate', 'Bearer realm="vws"');
      next(new HttpProblem(401, 'Unauthorized', 'a valid bearer token is required (Authorization: Bearer <token>)'));
      return;
    }
    res.locals.principal = principal;
    next();
  };
}
