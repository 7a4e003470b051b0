/**
 * http(s):// sources and targets. A source is read with one GET (Range and If-Range to resume, Basic
 * auth from the URL's credentials); a target gets one PUT with `content-length` and `x-vws-sha256`.
 * Redirects are never followed: they could lead outside the allowed prefixes.
 */
import { createHash } from 'node:crypto';
import { pipeline as pipelineCallback, Readable } from 'node:stream';
import { redactUrl, type HttpImageUrl } from '../../../domain/image-url';
import { copyMismatch, networkFailure, sourceUnavailable, targetDiffers, transient } from './failures';
import { hashingCounter, stallGuard } from './stream';
import { connectTimeout, DEFAULT_STALL_MS, type OpenedSource, type OpenOptions, type TargetContent, type TargetResult, type UrlDeps } from './types';

/** Headers for a request to `p`: Basic auth from the URL's credentials, if any. */
function httpHeaders(p: HttpImageUrl): Record<string, string> {
  const headers: Record<string, string> = {};
  if (p.auth) headers.authorization = `Basic ${Buffer.from(`${p.auth.username}:${p.auth.password}`).toString('base64')}`;
  return headers;
}

/** A fetch whose connection and headers must come within `timeoutMs`; the body may take longer. */
async function fetchWithin(url: string, init: RequestInit, timeoutMs: number, verb: string, shown: string): Promise<Response> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  try {
    return await fetch(url, { ...init, redirect: 'manual', signal: abort.signal });
  } catch (e) {
    if (abort.signal.aborted) throw transient(`cannot ${verb} ${shown}: timed out after ${timeoutMs} ms`);
    throw networkFailure(e, verb, shown);
  } finally {
    clearTimeout(timer);
  }
}

/** Throws the failure an HTTP status means; returns for 2xx. Consumes nothing. */
function checkHttpStatus(res: Response, verb: string, shown: string, requestUrl: string): void {
  if (res.ok) return;
  const at = `cannot ${verb} ${shown}: HTTP ${res.status}`;
  if (res.status >= 300 && res.status < 400) {
    const location = res.headers.get('location');
    const to = location ? new URL(location, requestUrl).href : 'somewhere';
    // Following it could lead outside the allowed prefixes; the client names the final URL instead.
    throw sourceUnavailable(`${at} redirects to ${to}; name the final URL`);
  }
  if (res.status === 404 || res.status === 410) throw sourceUnavailable(`${at}: no such file`);
  if (res.status === 401 || res.status === 403) throw sourceUnavailable(`${at}: access refused`);
  if (res.status === 408 || res.status === 429 || res.status >= 500) throw transient(`${at} (the server may recover)`);
  throw sourceUnavailable(`${at} ${res.statusText}`.trim());
}

/** The body of a response as a Node stream. */
function bodyStream(res: Response): Readable {
  return res.body ? Readable.fromWeb(res.body as import('node:stream/web').ReadableStream) : Readable.from([]);
}

/** A strong validator for If-Range: a strong ETag, else Last-Modified. */
function httpValidator(res: Response): string | undefined {
  const etag = res.headers.get('etag');
  if (etag && !etag.startsWith('W/')) return etag;
  return res.headers.get('last-modified') ?? undefined;
}

/**
 * Opens an http(s) source from byte `start` (up to byte `options.end` when given, as a probe asks for
 * one byte). Starts over at 0 when the server ignores Range, answers another range, or sends the whole
 * file because If-Range says it changed.
 */
export async function openHttp(p: HttpImageUrl, deps: UrlDeps, start: number, options: OpenOptions & { end?: number }): Promise<OpenedSource> {
  const shown = redactUrl(p.requestUrl);
  const headers = httpHeaders(p);
  if (start > 0 || options.end !== undefined) headers.range = `bytes=${start}-${options.end ?? ''}`;
  if (start > 0 && options.ifRange) headers['if-range'] = options.ifRange;
  const res = await fetchWithin(p.requestUrl, { headers }, connectTimeout(deps), 'read', shown);
  if (res.status === 416) {
    // Nothing at or after `start`: the earlier copy is complete if the file is exactly that long.
    void res.body?.cancel();
    const total = /^bytes \*\/(\d+)$/.exec(res.headers.get('content-range') ?? '');
    if (total && Number(total[1]) === start) return { sizeBytes: start, stream: Readable.from([]), start, validator: httpValidator(res) };
    return openHttp(p, deps, 0, { end: options.end });
  }
  checkHttpStatus(res, 'read', shown, p.requestUrl);
  const validator = httpValidator(res);
  if (res.status === 206) {
    const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers.get('content-range') ?? '');
    if (!range || Number(range[1]) !== start) {
      void res.body?.cancel();
      if (start === 0) throw transient(`cannot read ${shown}: the server answered a range it was not asked for`);
      return openHttp(p, deps, 0, { end: options.end });
    }
    const sizeBytes = range[3] === '*' ? null : Number(range[3]);
    return { sizeBytes, stream: bodyStream(res), start, validator };
  }
  // 200: the whole file (the server ignored Range, or If-Range said the file changed).
  const length = res.headers.get('content-length');
  const sizeBytes = length !== null && /^\d+$/.test(length) ? Number(length) : null;
  return { sizeBytes, stream: bodyStream(res), start: 0, validator };
}

/**
 * Writes an http(s) target with one PUT of the bytes `open()` yields: 2xx is done, 409/412 is a refusal
 * (other content there). The bytes are hashed on the way and must match `want.sha256`.
 */
export async function writeHttpTarget(p: HttpImageUrl, deps: UrlDeps, open: () => Promise<Readable>, want: TargetContent): Promise<TargetResult> {
  const shown = redactUrl(p.requestUrl);
  const hash = createHash('sha256');
  // The callback form returns the last stream and destroys every stage on an error, so a failing
  // source fails the request body too (rather than leaving the PUT waiting).
  const body = pipelineCallback(
    await open(),
    stallGuard(deps.stallTimeoutMs ?? DEFAULT_STALL_MS, `writing ${shown}`),
    hashingCounter(want.sizeBytes, hash, want.report),
    () => undefined,
  );
  const headers = {
    ...httpHeaders(p),
    'content-type': 'application/octet-stream',
    'content-length': String(want.sizeBytes),
    'x-vws-sha256': want.sha256,
  };
  let res: Response;
  try {
    res = await fetch(p.requestUrl, { method: 'PUT', headers, body: body as unknown as ReadableStream, duplex: 'half', redirect: 'manual', signal: want.signal } as RequestInit);
  } catch (e) {
    body.destroy();
    throw networkFailure(e, 'write', shown);
  }
  void res.body?.cancel();
  if (res.status === 409 || res.status === 412) throw targetDiffers(shown, `other content (HTTP ${res.status})`);
  checkHttpStatus(res, 'write', shown, p.requestUrl);
  const got = hash.digest('hex');
  if (got !== want.sha256) throw copyMismatch(shown, got, want.sha256);
  return { url: shown, written: true };
}
