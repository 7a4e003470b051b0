/**
 * Image URLs (stage-in sources, stage-out targets), the pure part: parsing, checking, prefix rules and
 * redaction. No I/O and no node-only imports, so request validation (`requests.ts`, zod refinements)
 * can use it; the transfers themselves live in `activities/images/urls/`.
 *
 * Accepted forms:
 *  - `file:///abs/path/file` (host empty or `localhost`)
 *  - `http(s)://[user:password@]host[:port]/path[?query]`
 *  - `sftp://user@host[:port]/abs/path/file` (no password: the head authenticates with the site key)
 *
 * Every URL must name a file (no trailing `/`), and `.`/`..` path segments are refused outright, also
 * percent-encoded: WHATWG URL parsing would silently resolve them, so `file:///incoming/../../etc/passwd`
 * would compare as `/etc/passwd` at best and escape a prefix check at worst.
 */

/** The schemes vws reads images from and writes them to. */
export type ImageUrlScheme = 'file' | 'http' | 'https' | 'sftp';

/** A `file://` URL: a path on the head. */
export interface FileImageUrl {
  scheme: 'file';
  /** Decoded absolute path. */
  path: string;
  /** Normalised form (see {@link normalizeImageUrl}). */
  normalized: string;
}

/** An `http://` or `https://` URL. */
export interface HttpImageUrl {
  scheme: 'http' | 'https';
  /** The URL to request, without credentials (fetch refuses URLs that carry them). */
  requestUrl: string;
  /** Basic-auth credentials from the URL's `user:password@`, decoded; never logged. */
  auth?: { username: string; password: string };
  normalized: string;
}

/** An `sftp://user@host[:port]/path` URL. */
export interface SftpImageUrl {
  scheme: 'sftp';
  /** Decoded user name. */
  user: string;
  /** Host name or address, lower case, IPv6 without brackets. */
  host: string;
  port: number;
  /** Decoded absolute path on the host. */
  path: string;
  normalized: string;
}

/** A parsed, checked image URL. */
export type ParsedImageUrl = FileImageUrl | HttpImageUrl | SftpImageUrl;

/** A URL that cannot be used as an image source or target; the message says what is wrong and is redacted. */
export class ImageUrlError extends Error {
  override name = 'ImageUrlError';
}

const SCHEME = /^([A-Za-z][A-Za-z0-9+.-]*):/;
const KNOWN: readonly string[] = ['file', 'http', 'https', 'sftp'];

/**
 * Removes secrets from any URLs in `text` (a URL or a whole message): the `user:password@` part of
 * every URL (for http(s) any user info at all, since a lone user name there is often a token), the
 * values of query parameters (signed URLs carry their signature there) and fragments. sftp user names
 * without a password stay: they are not secret and say who connects. A raw `?` or `#` in a lone http
 * user token cannot be told from a query; only the part before it shows then.
 */
export function redactUrl(text: string): string {
  return text.replace(/\b([A-Za-z][A-Za-z0-9+.-]*:\/\/)([^\s"'<>]*)/g, (_m, scheme: string, rest: string) => `${scheme}${redactQuery(redactUserinfo(scheme, rest))}`);
}

/** `rest` is a URL after `scheme://`; drops its user info where that may be secret. */
function redactUserinfo(scheme: string, rest: string): string {
  const queryAt = rest.search(/[?#]/);
  const head = queryAt < 0 ? rest : rest.slice(0, queryAt);
  const slash = head.indexOf('/');
  const authority = slash < 0 ? head : head.slice(0, slash);
  const at = authority.lastIndexOf('@');
  if (at >= 0) {
    const userinfo = authority.slice(0, at);
    return /^https?:\/\/$/i.test(scheme) || userinfo.includes(':') ? rest.slice(at + 1) : rest;
  }
  // No '@' before the first '/': either the path has one, or a password contains a '/', '?' or '#',
  // which leaves "user:pa" looking like host:port. The two cannot be told apart (a password may be all
  // digits), so with a ':' there everything up to the last '@' goes: a mangled message beats a leak.
  const lastAt = rest.lastIndexOf('@');
  if (lastAt >= 0 && authority.includes(':')) return `***@${rest.slice(lastAt + 1)}`;
  return rest;
}

/** `path?a=1&b=2&c#f` → `path?a=***&b=***&***#***`: parameter names stay, values and fragments go. */
function redactQuery(rest: string): string {
  const hash = rest.indexOf('#');
  const beforeHash = hash < 0 ? rest : rest.slice(0, hash);
  const fragment = hash < 0 ? '' : '#***';
  const q = beforeHash.indexOf('?');
  if (q < 0) return `${beforeHash}${fragment}`;
  const redacted = beforeHash
    .slice(q + 1)
    .split('&')
    .map((kv) => (kv === '' ? kv : kv.includes('=') ? `${kv.slice(0, kv.indexOf('='))}=***` : '***'))
    .join('&');
  return `${beforeHash.slice(0, q + 1)}${redacted}${fragment}`;
}

/** Refuses what the WHATWG parser would silently rewrite: whitespace, backslashes, dot segments, encoded separators. */
function checkRaw(s: string): void {
  // The parser strips tabs and newlines anywhere and spaces at the ends; refuse rather than guess.
  if (/[\u0000-\u0020\u007f]/.test(s)) throw new ImageUrlError(`URL ${redactUrl(JSON.stringify(s))} contains spaces or control characters; percent-encode them`);
  if (s.includes('\\')) throw new ImageUrlError(`URL ${redactUrl(s)} contains a backslash; use / between path segments`);
  const beforeQuery = s.split(/[?#]/, 1)[0];
  if (/%(2f|5c|00)/i.test(beforeQuery)) throw new ImageUrlError(`URL ${redactUrl(s)} has an encoded /, \\ or NUL in its path`);
  const segments = beforeQuery.replace(/%2e/gi, '.').split('/');
  if (segments.some((seg, i) => i > 0 && (seg === '.' || seg === '..'))) {
    throw new ImageUrlError(`URL ${redactUrl(s)} has a . or .. path segment; name the file by its plain path`);
  }
}

/** Decodes a path or user name, refusing malformed percent-encoding. */
function decode(part: string, what: string, s: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw new ImageUrlError(`URL ${redactUrl(s)} has malformed percent-encoding in its ${what}`);
  }
}

/** The path must name a file: absolute, not ending in `/`. */
function checkFilePath(path: string, s: string, example: string): void {
  if (!path.startsWith('/') || path.endsWith('/') || path === '') {
    throw new ImageUrlError(`URL ${redactUrl(s)} must name a file by an absolute path, like ${example}`);
  }
}

function parseFile(u: URL, s: string): FileImageUrl {
  if (u.host !== '') throw new ImageUrlError(`file URL ${redactUrl(s)} names host ${u.host}; file:// URLs are local to the head: file:///dir/file`);
  if (u.search || u.hash) throw new ImageUrlError(`file URL ${redactUrl(s)} must not have a query string or fragment`);
  checkFilePath(u.pathname, s, 'file:///dir/file');
  return { scheme: 'file', path: decode(u.pathname, 'path', s), normalized: `file://${u.pathname}` };
}

function parseHttp(u: URL, s: string, scheme: 'http' | 'https'): HttpImageUrl {
  if (!u.hostname) throw new ImageUrlError(`URL ${redactUrl(s)} has no host`);
  if (u.hash) throw new ImageUrlError(`URL ${redactUrl(s)} must not have a fragment (#…)`);
  if (u.pathname === '' || u.pathname.endsWith('/')) throw new ImageUrlError(`URL ${redactUrl(s)} must name a file, like ${scheme}://host/dir/file`);
  const requestUrl = `${scheme}://${u.host}${u.pathname}${u.search}`;
  const parsed: HttpImageUrl = { scheme, requestUrl, normalized: requestUrl };
  if (u.username || u.password) parsed.auth = { username: decode(u.username, 'user name', s), password: decode(u.password, 'password', s) };
  return parsed;
}

function parseSftp(u: URL, s: string): SftpImageUrl {
  const example = 'sftp://user@host/dir/file';
  if (!u.username || !u.hostname) throw new ImageUrlError(`sftp URL ${redactUrl(s)} needs a user and an absolute path like ${example}`);
  if (u.password) throw new ImageUrlError(`sftp URL ${redactUrl(s)} must not carry a password: the head authenticates with the site's SSH key`);
  if (u.search || u.hash) throw new ImageUrlError(`sftp URL ${redactUrl(s)} must not have a query string or fragment`);
  if (u.pathname === '' || u.pathname === '/') throw new ImageUrlError(`sftp URL ${redactUrl(s)} needs a user and an absolute path like ${example}`);
  checkFilePath(u.pathname, s, example);
  const port = u.port ? Number(u.port) : 22;
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new ImageUrlError(`sftp URL ${redactUrl(s)} has a bad port`);
  const host = u.hostname.toLowerCase().replace(/^\[(.*)\]$/, '$1');
  const user = decode(u.username, 'user name', s);
  const hostPart = `${u.hostname.toLowerCase()}${port === 22 ? '' : `:${port}`}`;
  return { scheme: 'sftp', user, host, port, path: decode(u.pathname, 'path', s), normalized: `sftp://${u.username}@${hostPart}${u.pathname}` };
}

/**
 * Parses an image URL, or throws an {@link ImageUrlError} whose message says what is wrong (and never
 * contains a password).
 */
export function parseImageUrl(s: string): ParsedImageUrl {
  const m = SCHEME.exec(s);
  if (!m || !s.slice(m[0].length).startsWith('/')) {
    throw new ImageUrlError(`${redactUrl(JSON.stringify(s))} is not a URL: use file:///dir/file, http(s)://host/dir/file or sftp://user@host/dir/file`);
  }
  const scheme = m[1].toLowerCase();
  if (!KNOWN.includes(scheme)) throw new ImageUrlError(`unknown scheme ${scheme}: use file://, http(s):// or sftp://`);
  checkRaw(s);
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    throw new ImageUrlError(`${redactUrl(s)} is not a valid URL`);
  }
  if (scheme === 'file') return parseFile(u, s);
  if (scheme === 'sftp') return parseSftp(u, s);
  return parseHttp(u, s, scheme as 'http' | 'https');
}

/** Why `s` is not a usable image URL, or `null` if it is. Pure: for zod refinements. */
export function checkImageUrl(s: string): string | null {
  try {
    parseImageUrl(s);
    return null;
  } catch (e) {
    if (e instanceof ImageUrlError) return e.message;
    throw e;
  }
}

/**
 * The form URLs are compared in: scheme and host lower case, default ports dropped, `file://localhost`
 * as `file://`, http(s) credentials removed (they say who asks, not what is read); sftp keeps its user
 * (a prefix for `alice@host` must not admit `root@host`).
 */
export function normalizeImageUrl(s: string): string {
  return parseImageUrl(s).normalized;
}

/**
 * Normalises an allowed prefix. A prefix is a URL that may stop anywhere, so it is not always a valid
 * URL itself (`http://`, `sftp://`): scheme-only prefixes are taken as they are; others go through the
 * URL parser like the URLs they are compared with. `null` for a prefix that cannot match anything.
 */
function normalizePrefix(prefix: string): string | null {
  const m = SCHEME.exec(prefix);
  if (!m) return null;
  const scheme = m[1].toLowerCase();
  if (!KNOWN.includes(scheme)) return null;
  if (prefix.slice(m[0].length) === '//') return `${scheme}://`;
  if (/[\u0000-\u0020\u007f\\]/.test(prefix) || /(^|\/)(\.|\.\.|%2e|%2e%2e|\.%2e|%2e\.)(\/|$)/i.test(prefix.slice(m[0].length))) return null;
  let u: URL;
  try {
    u = new URL(prefix);
  } catch {
    return null;
  }
  switch (scheme) {
    case 'file':
      return u.host === '' ? `file://${u.pathname}` : null;
    case 'sftp': {
      if (u.password) return null;
      const port = u.port && u.port !== '22' ? `:${u.port}` : '';
      return `sftp://${u.username ? `${u.username}@` : ''}${u.hostname.toLowerCase()}${port}${u.pathname}`;
    }
    default:
      return `${scheme}://${u.host}${u.pathname}${u.search}`;
  }
}

/**
 * True iff `url` is a valid image URL whose normalised form starts with one of the normalised
 * `prefixes` (an sftp prefix without a user admits any user), at a boundary: a prefix that does not end in `/` only matches up to a `/` (so
 * `file:///in` admits `file:///in/x` but not `file:///incoming/x`). URLs with `.`/`..` segments or
 * encoded separators are never allowed, whatever the prefixes.
 */
export function isUnderPrefix(url: string, prefixes: readonly string[]): boolean {
  let normalized: string;
  try {
    normalized = normalizeImageUrl(url);
  } catch {
    return false;
  }
  return prefixes.some((p) => {
    const prefix = normalizePrefix(p);
    if (prefix === null) return false;
    // An sftp prefix without a user admits any user on that host and path.
    const form = prefix.startsWith('sftp://') && !prefix.includes('@') ? normalized.replace(/^sftp:\/\/[^@/]*@/, 'sftp://') : normalized;
    if (!form.startsWith(prefix)) return false;
    if (prefix.endsWith('/') || form.length === prefix.length) return true;
    return form[prefix.length] === '/';
  });
}
