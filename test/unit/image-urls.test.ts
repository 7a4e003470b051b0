/**
 * Image URLs, the pure rules: parsing and its messages, prefix checks (traversal above all) and the
 * redaction of secrets. No I/O.
 */
import { checkImageUrl, isUnderPrefix, normalizeImageUrl, parseImageUrl, redactUrl } from '../../src/domain/image-url';

describe('parseImageUrl', () => {
  it('parses the four schemes', () => {
    expect(parseImageUrl('file:///var/lib/vws/incoming/a%20b.img')).toEqual({
      scheme: 'file',
      path: '/var/lib/vws/incoming/a b.img',
      normalized: 'file:///var/lib/vws/incoming/a%20b.img',
    });
    expect(parseImageUrl('sftp://root@10.213.0.13/tmp/x.img')).toEqual({
      scheme: 'sftp',
      user: 'root',
      host: '10.213.0.13',
      port: 22,
      path: '/tmp/x.img',
      normalized: 'sftp://root@10.213.0.13/tmp/x.img',
    });
    expect(parseImageUrl('sftp://alice@Example.ORG:2222/d/x')).toMatchObject({ host: 'example.org', port: 2222, normalized: 'sftp://alice@example.org:2222/d/x' });
    expect(parseImageUrl('https://u:p%40ss@Host.example:443/d/x.img?v=1')).toEqual({
      scheme: 'https',
      requestUrl: 'https://host.example/d/x.img?v=1',
      normalized: 'https://host.example/d/x.img?v=1',
      auth: { username: 'u', password: 'p@ss' },
    });
    expect(parseImageUrl('http://h:8080/x')).toMatchObject({ scheme: 'http', requestUrl: 'http://h:8080/x' });
  });

  it('normalises what does not change the file: localhost, default ports, case of scheme and host', () => {
    expect(normalizeImageUrl('FILE://localhost/a/b')).toBe('file:///a/b');
    expect(normalizeImageUrl('sftp://root@HOST:22/a')).toBe('sftp://root@host/a');
    expect(normalizeImageUrl('HTTP://Host:80/a')).toBe('http://host/a');
  });

  it.each([
    ['ftp://host/x', 'unknown scheme ftp: use file://, http(s):// or sftp://'],
    ['sftp://host/dir/file', 'needs a user and an absolute path like sftp://user@host/dir/file'],
    ['sftp://root@host', 'needs a user and an absolute path like sftp://user@host/dir/file'],
    ['sftp://root@host/', 'needs a user and an absolute path'],
    ['sftp://root@host/dir/', 'must name a file by an absolute path'],
    ['sftp://root:secret@host/x', 'must not carry a password'],
    ['sftp://root@host/x?y=1', 'must not have a query string'],
    ['file:///x?y', 'must not have a query string'],
    ['file:///x#y', 'must not have a query string or fragment'],
    ['file://otherhost/x', 'file:// URLs are local to the head'],
    ['file:///dir/', 'must name a file'],
    ['https://host', 'must name a file'],
    ['https://host/dir/', 'must name a file'],
    ['http://h/x#frag', 'must not have a fragment'],
    ['/var/lib/x.img', 'is not a URL'],
    ['x.img', 'is not a URL'],
    ['file:///var/lib/vws/incoming/../../etc/passwd', '. or .. path segment'],
    ['file:///var/lib/vws/incoming/%2e%2e/etc/passwd', '. or .. path segment'],
    ['file:///var/lib/vws/incoming/.%2E/etc/passwd', '. or .. path segment'],
    ['file:///var/lib/vws/incoming/./x', '. or .. path segment'],
    ['sftp://root@h/srv/../etc/shadow', '. or .. path segment'],
    ['http://h/a/../b', '. or .. path segment'],
    ['file:///a%2fb', 'encoded /'],
    ['file:///a%00b', 'encoded /, \\ or NUL'],
    ['http://h/a\\b', 'backslash'],
    ['file:///a b', 'spaces or control characters'],
    ['file:///a\nb', 'spaces or control characters'],
    ['file:///a%zz', 'malformed percent-encoding'],
  ])('refuses %j, saying why', (url, why) => {
    expect(checkImageUrl(url)).toContain(why);
    expect(() => parseImageUrl(url)).toThrow(why);
  });

  it('lets a query string through for http(s) only, and dots inside names', () => {
    expect(checkImageUrl('https://h/x.img?sig=abc&exp=1')).toBeNull();
    expect(checkImageUrl('file:///a/..b/c..d/.e')).toBeNull();
    expect(checkImageUrl('http://h/a?x=../..')).toBeNull();
  });
});

describe('isUnderPrefix', () => {
  const incoming = ['file:///var/lib/vws/incoming/'];

  it('admits a file under the prefix', () => {
    expect(isUnderPrefix('file:///var/lib/vws/incoming/a.img', incoming)).toBe(true);
    expect(isUnderPrefix('file:///var/lib/vws/incoming/sub/a.img', incoming)).toBe(true);
    expect(isUnderPrefix('file://localhost/var/lib/vws/incoming/a.img', incoming)).toBe(true);
  });

  it.each([
    'file:///var/lib/vws/incoming/../../etc/passwd',
    'file:///var/lib/vws/incoming/%2e%2e/%2e%2e/etc/passwd',
    'file:///var/lib/vws/incoming/%2E%2e/x',
    'file:///var/lib/vws/incoming/.%2e/x',
    'file:///var/lib/vws/incoming%2f..%2f..%2fetc/passwd',
    'file:///var/lib/vws/incoming/..\\..\\etc\\passwd',
    'file:///var/lib/vws/incoming/sub/../../../etc/passwd',
    'file:////etc/passwd',
    'file:///etc/passwd',
    'file:///var/lib/vws/incomingx/a.img',
    'FILE:///VAR/lib/vws/incoming/a.img',
  ])('refuses %j', (url) => {
    expect(isUnderPrefix(url, incoming)).toBe(false);
  });

  it('matches a prefix without a trailing / only at a / boundary', () => {
    expect(isUnderPrefix('file:///srv/in/a', ['file:///srv/in'])).toBe(true);
    expect(isUnderPrefix('file:///srv/incoming/a', ['file:///srv/in'])).toBe(false);
    expect(isUnderPrefix('https://h.example/a', ['https://h.example'])).toBe(true);
    expect(isUnderPrefix('https://h.example.evil.org/a', ['https://h.example'])).toBe(false);
    expect(isUnderPrefix('https://h.example:8443/a', ['https://h.example'])).toBe(false);
  });

  it('compares normalised forms', () => {
    expect(isUnderPrefix('HTTPS://H.Example:443/Dir/x', ['https://h.example/Dir/'])).toBe(true);
    expect(isUnderPrefix('https://h.example/dir/x', ['https://h.example/Dir/'])).toBe(false);
    expect(isUnderPrefix('sftp://root@H:22/srv/x', ['sftp://root@h/srv/'])).toBe(true);
  });

  it('ignores http credentials but not an sftp user', () => {
    expect(isUnderPrefix('https://u:p@h/dir/x', ['https://h/dir/'])).toBe(true);
    expect(isUnderPrefix('sftp://root@h/srv/x', ['sftp://alice@h/srv/'])).toBe(false);
    expect(isUnderPrefix('sftp://alice@h/srv/x', ['sftp://alice@h/srv/'])).toBe(true);
    expect(isUnderPrefix('sftp://anyone@h/srv/x', ['sftp://h/srv/'])).toBe(true);
    expect(isUnderPrefix('sftp://anyone@h/other/x', ['sftp://h/srv/'])).toBe(false);
  });

  it('takes scheme-only prefixes, and nothing for another scheme', () => {
    expect(isUnderPrefix('http://anything/x', ['http://'])).toBe(true);
    expect(isUnderPrefix('https://anything/x', ['http://'])).toBe(false);
    expect(isUnderPrefix('sftp://u@h/x', ['sftp://'])).toBe(true);
    expect(isUnderPrefix('file:///etc/passwd', ['http://', 'https://'])).toBe(false);
  });

  it('never admits an invalid URL, and ignores prefixes that cannot match', () => {
    expect(isUnderPrefix('ftp://h/x', ['ftp://'])).toBe(false);
    expect(isUnderPrefix('file:///srv/x', ['file:///srv/../'])).toBe(false);
    expect(isUnderPrefix('file:///srv/x', ['not a prefix', ''])).toBe(false);
    expect(isUnderPrefix('file:///srv/x', [])).toBe(false);
  });
});

describe('redactUrl', () => {
  it('removes http(s) credentials and query values, keeps an sftp user', () => {
    expect(redactUrl('http://u:p@h/x')).toBe('http://h/x');
    expect(redactUrl('https://token@h/x')).toBe('https://h/x');
    expect(redactUrl('https://h/x?sig=abc&exp=12&flag#frag')).toBe('https://h/x?sig=***&exp=***&***#***');
    expect(redactUrl('sftp://root@h/x')).toBe('sftp://root@h/x');
    expect(redactUrl('sftp://root:pw@h/x')).toBe('sftp://h/x');
    expect(redactUrl('file:///x')).toBe('file:///x');
  });

  it('redacts every URL in a message', () => {
    expect(redactUrl('copy from "https://a:b@h1/x" to sftp://u:v@h2/y failed: http://c:d@h3/z, retry')).toBe(
      'copy from "https://h1/x" to sftp://h2/y failed: http://h3/z, retry',
    );
  });

  it('redacts passwords holding / ? # @ that make the URL ambiguous', () => {
    expect(redactUrl('http://u:pa/ss@h/x')).toBe('http://***@h/x');
    expect(redactUrl('http://u:12/34@h/x')).toBe('http://***@h/x');
    expect(redactUrl('http://u:a?b@h/x')).toBe('http://***@h/x');
    expect(redactUrl('http://u:a#b@h/x')).toBe('http://***@h/x');
    expect(redactUrl('http://u:a@b@h/x')).toBe('http://h/x');
  });

  it('hides what follows a raw ? in a lone token, which reads as a query', () => {
    expect(redactUrl('https://tok?en@host/x')).toBe('https://tok?***');
  });

  /** A small deterministic generator (no fast-check in this project): the same cases on every run. */
  function* secrets(n: number, chars = 'abcXYZ0189/?#@:%;=&+$!~-._'): Generator<string> {
    let seed = 0x2545f491;
    const next = () => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) / 2 ** 32;
    };
    for (let i = 0; i < n; i++) {
      const len = 6 + Math.floor(next() * 10);
      let s = 'S3';
      for (let j = 0; j < len; j++) s += chars[Math.floor(next() * chars.length)];
      yield `${s}Q9`;
    }
  }

  it('never lets a password through, in URLs or in parse errors (500 generated passwords)', () => {
    const shapes = (pw: string) => [
      `http://user:${pw}@host/dir/x.img`,
      `https://user:${pw}@host:8443/x`,
      `sftp://root:${pw}@host/x`,
      `ftp://user:${pw}@host/x`,
      `http://user:${pw}@host/dir/`,
      `http://user:${pw}@host/a/../b`,
    ];
    for (const pw of secrets(500)) {
      for (const url of shapes(pw)) {
        expect(redactUrl(url)).not.toContain(pw.slice(2, -2));
        const why = checkImageUrl(url);
        if (why !== null) expect(why).not.toContain(pw.slice(2, -2));
        expect(redactUrl(`failed: ${url} (x)`)).not.toContain(pw.slice(2, -2));
      }
    }
    // A lone token as user name, as a valid URL carries it (no raw / ? # @).
    for (const token of secrets(200, 'abcXYZ0189%;=&+$!~-._:')) {
      for (const url of [`https://${token}@host/x`, `http://${token}@host:8080/d/`]) {
        expect(redactUrl(url)).not.toContain(token.slice(2, -2));
        const why = checkImageUrl(url);
        if (why !== null) expect(why).not.toContain(token.slice(2, -2));
      }
    }
  });
});
