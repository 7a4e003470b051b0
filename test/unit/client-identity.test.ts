/**
 * Who a request comes from: the grid DN of a certificate subject (as node prints it), the decision over
 * certificate and token, hashed tokens in the configuration and the tool that makes them.
 */
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lookup, type Principal } from '../../src/api/auth';
import { decideClient, gridDn, identityIndex, TOKEN_REQUIRED, type ClientAuthInput } from '../../src/api/client-identity';
import { loadTokens } from '../../src/api/tokens';
import { tokenSha256Of } from '../../src/config/hash-token';
import { parseConfig } from '../../src/config/load';
import { tokenDigest } from '../../src/config/secrets';

describe('gridDn', () => {
  it('joins the RDNs with / in the certificate order', () => {
    expect(gridDn('O=Grid\nOU=site\nCN=alice')).toEqual({ dn: '/O=Grid/OU=site/CN=alice' });
    expect(gridDn('DC=org\nDC=example\nO=Grid\nOU=site\nOU=second\nCN=alice\nemailAddress=a@b.org')).toEqual({ dn: '/DC=org/DC=example/O=Grid/OU=site/OU=second/CN=alice/emailAddress=a@b.org' });
  });

  it('unescapes RFC 2253 escapes and keeps UTF-8', () => {
    // As node prints CN=`Jörg + "q" <a>;b\c # x` and CN=` lead`.
    expect(gridDn('O=Grid\nCN=Jörg \\+ \\"q\\" \\<a\\>\\;b\\\\c # x\nCN=\\ lead')).toEqual({ dn: '/O=Grid/CN=Jörg + "q" <a>;b\\c # x/CN= lead' });
    expect(gridDn('O=Grid\nCN=Doe\\, John')).toEqual({ dn: '/O=Grid/CN=Doe, John' });
  });

  it('refuses what would let one certificate pass for another DN', () => {
    expect(gridDn('O=Grid\nCN=bob/CN=root')).toEqual({ error: expect.stringContaining('"/" in CN') });
    expect(gridDn('O=Grid\nCN=alice + UID=x')).toEqual({ error: expect.stringContaining('multi-valued RDN') });
    expect(gridDn('O=Grid\nCN=alice\\0Aroot')).toEqual({ error: expect.stringContaining('control character in CN') });
    expect(gridDn('O=Grid\nCN=al\u0007ice')).toEqual({ error: expect.stringContaining('control character in CN') });
    expect(gridDn('')).toEqual({ error: 'the client certificate has an empty subject' });
    expect(gridDn('O=Grid\n=alice')).toEqual({ error: expect.stringContaining('unreadable part') });
    expect(gridDn('O=Grid\nCN=alice\\')).toEqual({ error: expect.stringContaining('unreadable part') });
  });
});

describe('decideClient', () => {
  const alice: Principal = { name: 'alice', identity: '/O=Grid/OU=site/CN=alice', admin: false };
  const bob: Principal = { name: 'bob', identity: '/O=Grid/OU=site/CN=bob', admin: false };
  const root: Principal = { name: 'root', identity: '/O=Grid/OU=site/CN=root', admin: true };
  const byIdentity = identityIndex([alice, bob, root]);
  const certOf = (subject: string) => ({ presented: true, verified: true, subject });
  const base: ClientAuthInput = { certificate: null, tokenGiven: false, tokenPrincipal: null, byIdentity, requireClientCert: false };

  it('without TLS, is the token check as before', () => {
    expect(decideClient({ ...base, tokenGiven: true, tokenPrincipal: alice })).toEqual({ principal: alice, via: 'token' });
    expect(decideClient({ ...base, tokenGiven: true })).toEqual({ refused: TOKEN_REQUIRED });
    expect(decideClient(base)).toEqual({ refused: TOKEN_REQUIRED });
  });

  it('maps a verified certificate to the client with that identity, admin role included', () => {
    expect(decideClient({ ...base, certificate: certOf('O=Grid\nOU=site\nCN=alice') })).toEqual({ principal: alice, via: 'certificate' });
    expect(decideClient({ ...base, certificate: certOf('O=Grid\nOU=site\nCN=root') })).toEqual({ principal: root, via: 'certificate' });
    // The same RDNs in another order are another DN.
    expect(decideClient({ ...base, certificate: certOf('CN=alice\nOU=site\nO=Grid') })).toEqual({ refused: expect.stringContaining('/CN=alice/OU=site/O=Grid is not a client of this site') });
    expect(decideClient({ ...base, certificate: certOf('O=Grid\nOU=site\nCN=mallory') })).toEqual({ refused: expect.stringContaining('/O=Grid/OU=site/CN=mallory is not a client') });
    expect(decideClient({ ...base, certificate: certOf('O=Grid\nOU=site\nCN=bob/CN=root') })).toEqual({ refused: expect.stringContaining('"/"') });
  });

  it('wants a token sent with a certificate to be the same client', () => {
    const cert = certOf('O=Grid\nOU=site\nCN=alice');
    expect(decideClient({ ...base, certificate: cert, tokenGiven: true, tokenPrincipal: alice })).toEqual({ principal: alice, via: 'certificate' });
    expect(decideClient({ ...base, certificate: cert, tokenGiven: true, tokenPrincipal: root })).toEqual({ refused: expect.stringContaining('belongs to another client') });
    expect(decideClient({ ...base, certificate: cert, tokenGiven: true, tokenPrincipal: null })).toEqual({ refused: expect.stringContaining('token sent with the client certificate is not valid') });
  });

  it('refuses a certificate that did not verify, even with a good token', () => {
    const forged = { presented: true, verified: false, verifyError: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', subject: 'O=Grid\nOU=site\nCN=alice' };
    expect(decideClient({ ...base, certificate: forged, tokenGiven: true, tokenPrincipal: alice })).toEqual({ refused: expect.stringContaining('not accepted (UNABLE_TO_VERIFY_LEAF_SIGNATURE)') });
  });

  it('with requireClientCert, refuses a token alone', () => {
    const none = { presented: false, verified: false };
    expect(decideClient({ ...base, certificate: none, tokenGiven: true, tokenPrincipal: alice, requireClientCert: true })).toEqual({ refused: expect.stringContaining('client certificate') });
    expect(decideClient({ ...base, certificate: none, tokenGiven: true, tokenPrincipal: alice })).toEqual({ principal: alice, via: 'token' });
    expect(decideClient({ ...base, certificate: certOf('O=Grid\nOU=site\nCN=bob'), requireClientCert: true })).toEqual({ principal: bob, via: 'certificate' });
  });
});

describe('hashed tokens', () => {
  it('hash-token prints the digest the API compares, trimming a trailing newline', () => {
    expect(tokenSha256Of('s3cret-token\n')).toBe(tokenDigest('s3cret-token'));
    expect(tokenSha256Of('s3cret-token')).toMatch(/^[0-9a-f]{64}$/);
    expect(() => tokenSha256Of(' \n')).toThrow(/no token on stdin/);
    expect(() => tokenSha256Of('two words')).toThrow(/whitespace/);
  });

  it('a client with tokenSha256 is found by its token, and no token file is made for it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vws-hashed-'));
    const config = parseConfig({
      repository: { nodeTokenFile: join(dir, 'node.token') },
      clients: [
        { name: 'alice', identity: '/O=Grid/CN=alice', tokenSha256: tokenSha256Of('alice-token\n').toUpperCase() },
        { name: 'bob', identity: '/O=Grid/CN=bob', tokenFile: join(dir, 'bob.token') },
      ],
    });
    const tokens = loadTokens(config);
    expect(lookup(tokens.clients, 'alice-token')).toEqual({ name: 'alice', identity: '/O=Grid/CN=alice', admin: false });
    expect(lookup(tokens.clients, 'alice-token2')).toBeNull();
    expect(existsSync(join(dir, 'bob.token'))).toBe(true);
    expect(tokens.clients).toHaveLength(2);
  });
});
