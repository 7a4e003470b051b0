/**
 * Where the CLI finds the API and its token: command-line options, then environment variables, then a
 * configuration file, then the defaults of a local installation.
 *
 * The file (YAML or JSON) is named by `--config` or `VWS_CLI_CONFIG`, else `~/.config/vws/cli.yaml` is
 * read when it exists. It is not `VWS_CONFIG`: that names the site configuration the vws processes read,
 * which an operator's shell often has set, and whose `api` is a listener, not a URL.
 *
 * ```yaml
 * api: https://vws.example.org:8080
 * tokenFile: ~/.vws/token        # or token: <the token itself>; a relative path is from this file's directory
 * cert: ~/.vws/alice.crt         # a client certificate (PEM) for an API with mutual TLS, with its key
 * key: ~/.vws/alice.key
 * ca: /etc/vws/site-ca.crt       # the CA the API's certificate chains to, when the system does not trust it
 * ```
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { parse } from 'yaml';
import { z } from 'zod';

/** The settings a file may give. */
const fileSchema = z.strictObject({
  api: z.url({ protocol: /^https?$/, error: 'give the API base URL, e.g. http://127.0.0.1:8080' }).optional(),
  token: z.string().min(1, 'give the token, or use tokenFile').optional(),
  tokenFile: z.string().min(1, 'give a path').optional(),
  cert: z.string().min(1, 'give the path of your client certificate (PEM)').optional(),
  key: z.string().min(1, "give the path of your client certificate's private key (PEM)").optional(),
  ca: z.string().min(1, 'give the path of the CA certificate(s) (PEM) the API is signed by').optional(),
});

/** The settings of the file that are paths, resolved against the file's directory when relative. */
const PATHS = ['tokenFile', 'cert', 'key', 'ca'] as const;

/** The CLI's settings from a configuration file. */
export type CliFileConfig = z.infer<typeof fileSchema>;

/** The file read when neither `--config` nor `VWS_CLI_CONFIG` names one. */
export const DEFAULT_CLI_CONFIG = join(homedir(), '.config', 'vws', 'cli.yaml');

/** A configuration that cannot be used; the message names the file and the field. */
export class CliConfigError extends Error {}

const expandHome = (p: string) => (p === '~' || p.startsWith('~/') ? join(homedir(), p.slice(1)) : p);

/**
 * Reads a configuration file. `explicit`: it was named (by option or environment), so a missing file is
 * an error; the default file is simply skipped when absent. A relative path (`tokenFile`, `cert`, `key`,
 * `ca`) is resolved against the file's directory.
 */
export function readCliConfig(file: string, explicit: boolean): CliFileConfig {
  let text: string;
  try {
    text = readFileSync(expandHome(file), 'utf8');
  } catch (e) {
    if (!explicit && (e as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new CliConfigError(`cannot read the configuration file ${file} (${(e as NodeJS.ErrnoException).code})`);
  }
  let raw: unknown;
  try {
    raw = parse(text);
  } catch (e) {
    throw new CliConfigError(`${file} is not valid YAML or JSON: ${(e as Error).message.split('\n')[0]}`);
  }
  const parsed = fileSchema.safeParse(raw ?? {});
  if (!parsed.success) {
    throw new CliConfigError(`${file}: ${parsed.error.issues.map((i) => `${i.path.join('.') || (i.code === 'unrecognized_keys' ? i.keys.join(', ') : '(file)')}: ${i.message}`).join('; ')}`);
  }
  const c = parsed.data;
  if (c.token && c.tokenFile) throw new CliConfigError(`${file}: token, tokenFile: give one of them, not both`);
  const base = dirname(resolve(expandHome(file)));
  const out: CliFileConfig = { ...c };
  for (const k of PATHS) {
    const p = c[k];
    if (p !== undefined) out[k] = isAbsolute(expandHome(p)) ? expandHome(p) : join(base, p);
  }
  return out;
}
