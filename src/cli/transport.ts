/**
 * How the CLI speaks HTTP(S) to the API: node's own `http`/`https` clients rather than `fetch`, because
 * a client certificate (mutual TLS) and a site CA must go with every request, the event stream included,
 * and node's `fetch` takes neither without an extra dependency. TLS failures become sentences that say
 * what to fix (`TransportError`), never a stack trace.
 */
import { readFileSync } from 'node:fs';
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { createSecureContext } from 'node:tls';

/** Where the CLI's TLS files are, and which setting named each (for the messages). */
export interface TlsFiles {
  /** Client certificate (PEM), presented to an API that asks for one. */
  cert?: { path: string; setting: string };
  /** Its private key (PEM). */
  key?: { path: string; setting: string };
  /** CA certificate(s) (PEM) the API's certificate must chain to, instead of the system's. */
  ca?: { path: string; setting: string };
}

/** A problem with the CLI's own TLS settings (unreadable file, key not matching the certificate, …): bad usage. */
export class TlsSettingsError extends Error {}

/** Why a request got no HTTP answer. `kind` tells the caller which exit code it is. */
export class TransportError extends Error {
  constructor(
    message: string,
    /** `trust`: TLS failed on certificates (the server's, or the client's refused); `unreachable`: anything else. */
    readonly kind: 'trust' | 'unreachable',
  ) {
    super(message);
  }
}

/** The connection pool of one CLI run: the TLS material, read and checked once. */
export interface Transport {
  agent: HttpAgent | HttpsAgent;
  /** True when a client certificate is presented. */
  clientCertificate: boolean;
}

function readPem(f: { path: string; setting: string }): Buffer {
  try {
    return readFileSync(f.path);
  } catch (e) {
    throw new TlsSettingsError(`${f.setting}: cannot read ${f.path} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}

/**
 * The transport for `api` (an http or https URL) with these TLS files. Refused (TlsSettingsError): a key
 * without a certificate or the reverse, TLS files for an http URL (they would silently do nothing), and
 * files OpenSSL cannot use together (checked here, before any request).
 */
export function createTransport(api: string, files: TlsFiles): Transport {
  const https = new URL(api).protocol === 'https:';
  const given = [files.cert, files.key, files.ca].filter((f): f is { path: string; setting: string } => !!f);
  if (!https) {
    if (given.length) throw new TlsSettingsError(`${given.map((f) => f.setting).join(', ')} given, but the API URL ${api} is not https: TLS settings need an https:// URL`);
    return { agent: new HttpAgent({ keepAlive: false }), clientCertificate: false };
  }
  if (!!files.cert !== !!files.key) {
    const [has, lacks] = files.cert ? [files.cert.setting, 'the key (--key, VWS_KEY or key in the configuration file)'] : [files.key!.setting, 'the certificate (--cert, VWS_CERT or cert in the configuration file)'];
    throw new TlsSettingsError(`${has} is set but ${lacks} is not: a client certificate needs both`);
  }
  const material = {
    ...(files.cert ? { cert: readPem(files.cert) } : {}),
    ...(files.key ? { key: readPem(files.key) } : {}),
    ...(files.ca ? { ca: readPem(files.ca) } : {}),
  };
  try {
    // Fails now, with OpenSSL's reason, on a mangled PEM or a key that is not the certificate's.
    createSecureContext(material);
  } catch (e) {
    throw new TlsSettingsError(`cannot use ${given.map((f) => `${f.setting} ${f.path}`).join(', ')}: ${(e as Error).message}`);
  }
  return { agent: new HttpsAgent({ ...material, keepAlive: false }), clientCertificate: !!files.cert };
}

/** OpenSSL's verification codes of a server certificate the CLI does not trust. */
const UNTRUSTED = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
]);

/** The sentence for a failed request to `api`. */
export function explain(api: string, e: Error): TransportError {
  const code = (e as NodeJS.ErrnoException).code ?? '';
  const fixCa = 'give the site CA with --ca, VWS_CA or ca in the configuration file';
  if (UNTRUSTED.has(code)) return new TransportError(`the API at ${api} presented a certificate this CLI does not trust (${code}: ${e.message}); ${fixCa}`, 'trust');
  if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') return new TransportError(`the API at ${api} presented a certificate that is not valid now (${code}); the site must renew it`, 'trust');
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return new TransportError(`the API's certificate is not for the host in ${api} (${e.message}); use the name or address it was issued for`, 'trust');
  if (/ALERT_(CERTIFICATE_REQUIRED|BAD_CERTIFICATE|UNKNOWN_CA|CERTIFICATE_UNKNOWN|ACCESS_DENIED)/.test(code)) {
    return new TransportError(`the API at ${api} refused the TLS handshake (${code}): it wants a client certificate it trusts; give one with --cert and --key (or VWS_CERT and VWS_KEY)`, 'trust');
  }
  if (code === 'EPROTO' || code.startsWith('ERR_SSL_')) return new TransportError(`TLS with the API at ${api} failed (${code}: ${e.message}); is it really https?`, 'unreachable');
  return new TransportError(`cannot reach the vws API at ${api}: ${e.message}${code && !e.message.includes(code) ? ` (${code})` : ''}`, 'unreachable');
}

/** An HTTP answer whose body has not been read yet. */
export interface Answer {
  status: number;
  statusText: string;
  contentType: string;
  /** The body as it arrives (an async iterable of chunks). */
  body: IncomingMessage;
}

/**
 * Sends one request and answers once the status and headers are in. Every failure before that is a
 * {@link TransportError}; an abort through `signal` rejects with the abort's error.
 */
export function send(t: Transport, api: string, path: string, o: { method: string; headers: Record<string, string>; body?: string; signal?: AbortSignal }): Promise<Answer> {
  const url = new URL(`${api}${path}`);
  const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: o.method,
        agent: t.agent,
        headers: { ...o.headers, ...(o.body !== undefined ? { 'content-length': String(Buffer.byteLength(o.body)) } : {}) },
        ...(o.signal ? { signal: o.signal } : {}),
      },
      (res) => resolve({ status: res.statusCode ?? 0, statusText: res.statusMessage ?? '', contentType: String(res.headers['content-type'] ?? ''), body: res }),
    );
    req.on('error', (e: Error) => reject(e.name === 'AbortError' ? e : explain(api, e)));
    req.end(o.body);
  });
}

/** Reads a whole answer body as JSON; an empty or non-JSON body is `{}`. */
export async function readJson(a: Answer): Promise<Record<string, unknown>> {
  let text = '';
  a.body.setEncoding('utf8');
  for await (const chunk of a.body) text += chunk as string;
  try {
    const v = JSON.parse(text) as unknown;
    return v && typeof v === 'object' ? (v as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}
