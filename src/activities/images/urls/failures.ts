/**
 * Failures of URL transfers, which tell final trouble from passing trouble:
 *  - `ApplicationFailure` of type `SourceUnavailable` (non-retryable): a bad URL, a missing file, HTTP
 *    4xx, a host key that is not pinned, a refused key, an untrusted TLS certificate, a redirect;
 *  - a plain `Error` (Temporal retries it): timeouts, refused or reset connections, HTTP 5xx, a stall.
 * Every message goes through `redactUrl`: no password or signed query ever reaches a log.
 *
 * Here too: how the errors of fetch, the local filesystem and the SSH executor map to those two kinds,
 * and the final failures of a target (other bytes already there, a copy that does not hash right).
 */
import { ApplicationFailure } from '@temporalio/common';
import { FailureType } from '../../../domain/errors';
import { redactUrl } from '../../../domain/image-url';

/** A non-retryable `SourceUnavailable` failure; the message is redacted here. */
export function sourceUnavailable(message: string, details?: Record<string, unknown>): ApplicationFailure {
  return details
    ? ApplicationFailure.nonRetryable(redactUrl(message), FailureType.SourceUnavailable, details)
    : ApplicationFailure.nonRetryable(redactUrl(message), FailureType.SourceUnavailable);
}

/** A retryable failure with a redacted message. */
export function transient(message: string): Error {
  return new Error(redactUrl(message));
}

/** Re-throws `e` with its message redacted (ApplicationFailures are built redacted and pass as they are). */
export function redactError(e: unknown): Error {
  if (e instanceof ApplicationFailure) return e;
  const err = e as Error;
  if (err?.name === 'AbortError') return err;
  const out = new Error(redactUrl(err?.message ?? String(e)));
  out.name = err?.name ?? 'Error';
  return out;
}

/** Maps a fetch error (undici: `TypeError: fetch failed` with a `cause`) to a failure. */
export function networkFailure(e: unknown, verb: string, shown: string): Error {
  const cause = (e as { cause?: { code?: string; message?: string; errors?: Array<{ code?: string }> } }).cause;
  const code = cause?.code ?? cause?.errors?.[0]?.code ?? '';
  const at = `cannot ${verb} ${shown}`;
  if (/CERT|SELF_SIGNED|TLS|SSL/.test(code)) return sourceUnavailable(`${at}: TLS certificate not trusted (${code})`);
  const why: Record<string, string> = {
    ECONNREFUSED: 'connection refused',
    ETIMEDOUT: 'connection timed out',
    UND_ERR_CONNECT_TIMEOUT: 'connection timed out',
    UND_ERR_HEADERS_TIMEOUT: 'timed out waiting for an answer',
    ENOTFOUND: 'unknown host',
    EAI_AGAIN: 'unknown host (DNS lookup failed)',
    ECONNRESET: 'connection reset',
    UND_ERR_SOCKET: 'connection reset',
    EHOSTUNREACH: 'host unreachable',
    ENETUNREACH: 'network unreachable',
  };
  return transient(`${at}: ${why[code] ?? (cause?.message || (e as Error).message)}`);
}

/** Maps a local fs error to a failure: a missing or unreadable file is final, anything else may pass. */
export function fileFailure(e: unknown, verb: string, shown: string): Error {
  if (e instanceof ApplicationFailure) return e;
  const code = (e as NodeJS.ErrnoException).code;
  const at = `cannot ${verb} ${shown}`;
  if (code === 'ENOENT') return sourceUnavailable(`${at}: missing file`);
  if (code === 'EACCES' || code === 'EPERM') return sourceUnavailable(`${at}: permission denied`);
  if (code === 'EISDIR' || code === 'ENOTDIR') return sourceUnavailable(`${at}: not a regular file`);
  return transient(`${at}: ${(e as Error).message}`);
}

/** Maps an SshExecutor error to a failure: host key and authentication problems and "the server said no" are final. */
export function sftpFailure(e: unknown, verb: string, url: string): Error {
  if (e instanceof ApplicationFailure) return e;
  const err = e as NodeJS.ErrnoException & { sftpStatus?: boolean };
  const msg = err.message ?? String(e);
  const at = `cannot ${verb} ${url}`;
  if (/no host key pinned|not pinned|host key changed/.test(msg)) return sourceUnavailable(`${at}: host key not pinned (${msg})`);
  if (/refused key|authentication failed/.test(msg)) return sourceUnavailable(`${at}: the server refused the site's SSH key (${msg})`);
  if (err.code === 'ENOENT') return sourceUnavailable(`${at}: missing file (${msg})`);
  if (err.code === 'EACCES') return sourceUnavailable(`${at}: permission denied (${msg})`);
  if (err.sftpStatus) return sourceUnavailable(`${at}: the server refused (${msg})`);
  if (/ECONNREFUSED/.test(msg)) return transient(`${at}: connection refused (${msg})`);
  if (/within \d+ ms|ETIMEDOUT|timed out/.test(msg)) return transient(`${at}: connection timed out (${msg})`);
  if (/ENOTFOUND|EAI_AGAIN/.test(msg)) return transient(`${at}: unknown host (${msg})`);
  return transient(`${at}: ${msg}`);
}

/** The non-retryable failure for a target that holds other bytes than the ones to write. */
export function targetDiffers(shown: string, why: string): ApplicationFailure {
  return sourceUnavailable(`refusing to overwrite ${shown}: it already exists with ${why}`);
}

/** A copy whose bytes do not hash to the expected digest: the repository file is not what its sidecar says. */
export function copyMismatch(shown: string, got: string, expected: string): ApplicationFailure {
  return ApplicationFailure.nonRetryable(`the copy written to ${redactUrl(shown)} has sha256 ${got}, not the expected ${expected}`, FailureType.DigestMismatch);
}
