/**
 * Loading the configuration: embedded defaults, then the YAML file named by `VWS_CONFIG` (if any), then
 * a few environment overrides that differ per process on one site (a node worker inside a namespace
 * reaches Temporal at another address than the head does).
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { configSchema, type VwsConfig } from './schema';

/** Raised when the configuration is invalid; the message lists every problem with its path. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Environment variables that override single settings (process-specific, not site-wide). */
const ENV_OVERRIDES: Array<[env: string, path: string[], kind: 'string' | 'number']> = [
  ['VWS_TEMPORAL_ADDRESS', ['temporal', 'address'], 'string'],
  ['VWS_TEMPORAL_NAMESPACE', ['temporal', 'namespace'], 'string'],
  ['VWS_PREFIX', ['temporal', 'prefix'], 'string'],
  ['VWS_API_PORT', ['api', 'port'], 'number'],
];

function setPath(target: Record<string, unknown>, path: string[], value: unknown): void {
  let cur = target;
  for (const key of path.slice(0, -1)) {
    if (typeof cur[key] !== 'object' || cur[key] === null) cur[key] = {};
    cur = cur[key] as Record<string, unknown>;
  }
  cur[path[path.length - 1]] = value;
}

/**
 * Validates a raw configuration object (as read from YAML) and fills in defaults.
 * @throws ConfigError naming each bad field, e.g. `network.first: 10.9.0.1 is outside subnet 10.213.0.0/24`.
 */
export function parseConfig(raw: unknown, source = 'configuration'): VwsConfig {
  const result = configSchema.safeParse(raw ?? {});
  if (!result.success) {
    const lines = result.error.issues.map((i) => {
      const where = i.path.length ? i.path.join('.') : '(top level)';
      const keys = i.code === 'unrecognized_keys' ? ` (unknown: ${i.keys.join(', ')})` : '';
      return `  ${where}: ${i.message}${keys}`;
    });
    throw new ConfigError(`invalid ${source}:\n${lines.join('\n')}`);
  }
  return result.data;
}

/** Loads the configuration for this process from `VWS_CONFIG` (optional) and the environment. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): VwsConfig {
  let raw: Record<string, unknown> = {};
  const file = env.VWS_CONFIG;
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      throw new ConfigError(`cannot read VWS_CONFIG=${file}: ${(e as Error).message}`);
    }
    const parsed: unknown = parseYaml(text);
    if (parsed !== null && (typeof parsed !== 'object' || Array.isArray(parsed))) {
      throw new ConfigError(`${file}: the top level must be a mapping of settings`);
    }
    raw = (parsed as Record<string, unknown>) ?? {};
  }
  for (const [name, path, kind] of ENV_OVERRIDES) {
    const value = env[name];
    if (value === undefined || value === '') continue;
    setPath(raw, path, kind === 'number' ? Number(value) : value);
  }
  return parseConfig(raw, file ?? 'embedded defaults');
}

