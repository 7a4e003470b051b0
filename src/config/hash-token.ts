/**
 * `node dist/config/hash-token.js < token-file`: prints the sha256 of a bearer token as 64 hex digits,
 * the value of `clients[].tokenSha256`, so the configuration holds the digest and never the token.
 * The token is read from stdin (never from an argument, which `ps` and shell history would show) and
 * trimmed as the API trims token files, so a file's trailing newline does not change the digest.
 */
import { tokenDigest } from './secrets';

/** The `tokenSha256` of a token as read from stdin or a file (trimmed); refuses an empty or multi-line one. */
export function tokenSha256Of(text: string): string {
  const token = text.trim();
  if (!token) throw new Error('no token on stdin: pipe the token in, e.g. node dist/config/hash-token.js < alice.token');
  // A bearer token is one word (Authorization: Bearer <token>); anything else is not one.
  if (/\s/.test(token)) throw new Error('the token on stdin contains whitespace: a bearer token is a single word');
  return tokenDigest(token);
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

if (require.main === module) {
  if (process.stdin.isTTY) process.stderr.write('type the token, then Ctrl-D:\n');
  readStdin()
    .then((text) => process.stdout.write(`${tokenSha256Of(text)}\n`))
    .catch((e: unknown) => {
      process.stderr.write(`hash-token: ${(e as Error).message}\n`);
      process.exitCode = 1;
    });
}
