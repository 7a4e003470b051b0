/**
 * The API's HTTP server: plain HTTP, or HTTPS when `api.tls` is set. With `clientCaFile` the server asks
 * every client for a certificate but completes the handshake whatever it gets: the client-auth middleware
 * then refuses an unverified certificate (or a missing one, with `requireClientCert`) with a 401 that
 * says why, and node workers, which send no certificate, still reach the repository with their token.
 */
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type RequestListener, type Server as HttpServer } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { VwsConfig } from '../config/schema';

/** Reads one PEM file of the TLS settings, naming the setting when it cannot. */
function pem(file: string, setting: string): Buffer {
  try {
    return readFileSync(file);
  } catch (e) {
    throw new Error(`api.tls.${setting}: cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}

/** The server for the API (not yet listening): HTTPS (optionally mutual TLS) when `api.tls` is set, else HTTP. */
export function createApiServer(config: VwsConfig, app: RequestListener): HttpServer | HttpsServer {
  const tls = config.api.tls;
  if (!tls) return createHttpServer(app);
  return createHttpsServer(
    {
      cert: pem(tls.certFile, 'certFile'),
      key: pem(tls.keyFile, 'keyFile'),
      minVersion: 'TLSv1.2',
      ...(tls.clientCaFile ? { ca: pem(tls.clientCaFile, 'clientCaFile'), requestCert: true, rejectUnauthorized: false } : {}),
    },
    app,
  );
}

/** The URL scheme the API serves. */
export function apiScheme(config: VwsConfig): 'http' | 'https' {
  return config.api.tls ? 'https' : 'http';
}
