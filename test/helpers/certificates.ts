/**
 * Certificates made at test time with the machine's `openssl` (argv arrays, a minimal configuration of
 * our own so the system's openssl.cnf adds nothing): CAs, a server certificate for 127.0.0.1, client
 * certificates with grid-style subjects. Each test keeps them in its own directory and deletes them.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** A minimal OpenSSL configuration: the extensions of a CA, a server (IP 127.0.0.1) and a TLS client. */
const OPENSSL_CNF = `[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
`;

/** Makes certificates in `dir`: `<name>.crt` and `<name>.key` (P-256, valid one day). */
export class CertificateMaker {
  constructor(readonly dir: string) {
    writeFileSync(join(dir, 'openssl.cnf'), OPENSSL_CNF);
  }

  private openssl(args: string[]): void {
    execFileSync('openssl', args, { cwd: this.dir, stdio: ['ignore', 'pipe', 'pipe'] });
  }

  /** The path of `<name>.<ext>`. */
  file(name: string, ext: 'crt' | 'key'): string {
    return join(this.dir, `${name}.${ext}`);
  }

  /** A self-signed CA certificate. */
  ca(name: string, subject: string): void {
    this.openssl(['req', '-x509', '-config', 'openssl.cnf', '-extensions', 'ca', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '1', '-subj', subject]);
  }

  /** A certificate issued by CA `ca`, with the `server` (for 127.0.0.1) or `client` extensions. */
  issue(name: string, subject: string, ca: string, kind: 'server' | 'client'): void {
    this.openssl(['req', '-new', '-config', 'openssl.cnf', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject]);
    this.openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-set_serial', `0x${randomBytes(8).toString('hex')}`, '-days', '1', '-extfile', 'openssl.cnf', '-extensions', kind, '-out', `${name}.crt`]);
  }
}
