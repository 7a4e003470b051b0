#!/usr/bin/env node
/**
 * The `vws` CLI: the reference client, over the HTTP API only: deploy (one workspace or a group, with
 * ranges and an idempotency key), show, list, destroy and every workspace operation; groups, ensembles,
 * the status service and the admin commands. `--json` prints the API's answer for scripts.
 *
 * `--wait` follows the object's server-sent events (`GET …/events`) and prints one line per change on
 * stderr (time since the command started, state, task, bytes copied, the IP obtained); it polls instead
 * when the stream cannot be had or breaks. The summary (or the JSON answer) goes to stdout alone.
 *
 * Settings: options, then environment variables (`VWS_API`, `VWS_TOKEN` the token itself,
 * `VWS_TOKEN_FILE`, `VWS_CERT`, `VWS_KEY`, `VWS_CA`), then the file named by `--config` or
 * `VWS_CLI_CONFIG` (default `~/.config/vws/cli.yaml` if present; see `config.ts`), then the defaults of
 * a local installation. With a client certificate (`--cert`/`--key`, for an API serving mutual TLS) the
 * certificate is the identity: a token is sent along only when one is configured explicitly, never the
 * local installation's default token file. `--ca` names the CA the API's certificate must chain to; it
 * and the client certificate go with every request, the event stream included.
 *
 * Exit codes: 0 done; 1 any other failure (e.g. the API failed); 2 bad usage or an invalid request
 * (400); 3 the API cannot be reached; 4 not found (404); 5 refused in the current state or for lack of
 * capacity (409), or an idempotency key reused with another request (422); 6 a workspace, group or
 * ensemble failed (Corrupted, or ended with a reason); 7 gave up waiting; 8 refused by the site's policy
 * or a quota (400 PolicyViolation, 403); 9 not authenticated: the API refused the token or the client
 * certificate (401), or TLS trust failed (the API's certificate is not trusted, or the API refused the
 * client certificate in the handshake).
 */
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { CliConfigError, DEFAULT_CLI_CONFIG, readCliConfig } from './config';
import { serverEvents } from './sse';
import { createTransport, readJson, send, TlsSettingsError, TransportError, type TlsFiles, type Transport } from './transport';

interface Globals {
  api: string;
  tokenFile: string;
  config?: string;
  cert?: string;
  key?: string;
  ca?: string;
  json?: boolean;
}

/** Where requests go, with which token (none: the client certificate alone) and TLS, once options, environment and file are combined. */
interface Target {
  api: string;
  token: string | null;
  transport: Transport;
}

class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

/** Exit code of an API error (see the file's comment). */
function exitCodeOf(status: number, type: unknown): number {
  if (status === 401) return 9;
  if (status === 403 || type === 'urn:vws:problem:PolicyViolation') return 8;
  if (status === 400) return 2;
  if (status === 404) return 4;
  if (status === 409 || status === 422) return 5;
  return 1;
}

let resolved: Target | undefined;

/** The API and token (see the file's comment for the order of precedence); read once per command. */
function target(g: Globals): Target {
  if (resolved) return resolved;
  let file;
  try {
    file = g.config ? readCliConfig(g.config, true) : readCliConfig(DEFAULT_CLI_CONFIG, false);
  } catch (e) {
    if (e instanceof CliConfigError) throw new CliError(e.message, 2);
    throw e;
  }
  const from = (key: string) => program.getOptionValueSource(key);
  const readToken = (path: string, how: string) => {
    try {
      return readFileSync(path, 'utf8').trim();
    } catch (e) {
      throw new CliError(`cannot read the token file ${path} (${(e as NodeJS.ErrnoException).code}); ${how}`, 2);
    }
  };
  const fix = 'set --token-file, VWS_TOKEN_FILE or VWS_TOKEN, or tokenFile in the configuration file (or use a client certificate: --cert and --key)';
  const given = (key: 'cert' | 'key' | 'ca', env: string) =>
    from(key) === 'cli' || from(key) === 'env' ? { path: g[key]!, setting: from(key) === 'cli' ? `--${key}` : env } : file[key] ? { path: file[key], setting: `${g.config ?? DEFAULT_CLI_CONFIG}: ${key}` } : undefined;
  const tls: TlsFiles = {};
  for (const [key, env] of [['cert', 'VWS_CERT'], ['key', 'VWS_KEY'], ['ca', 'VWS_CA']] as const) {
    const f = given(key, env);
    if (f) tls[key] = f;
  }
  const envToken = process.env.VWS_TOKEN?.trim();
  let token: string | null;
  if (from('tokenFile') === 'cli') token = readToken(g.tokenFile, fix);
  else if (envToken) token = envToken;
  else if (from('tokenFile') === 'env') token = readToken(g.tokenFile, fix);
  else if (file.token) token = file.token;
  else if (file.tokenFile) token = readToken(file.tokenFile, fix);
  // The certificate is the identity: the local installation's token (another client's, likely) would contradict it.
  else if (tls.cert) token = null;
  else token = readToken(g.tokenFile, fix);
  const api = (from('api') === 'cli' || from('api') === 'env' ? g.api : (file.api ?? g.api)).replace(/\/+$/, '');
  if (!/^https?:$/.test(URL.canParse(api) ? new URL(api).protocol : '')) throw new CliError(`the API URL ${api} is not an http:// or https:// URL (--api, VWS_API or api in the configuration file)`, 2);
  let transport: Transport;
  try {
    transport = createTransport(api, tls);
  } catch (e) {
    if (e instanceof TlsSettingsError) throw new CliError(e.message, 2);
    throw e;
  }
  resolved = { api, token, transport };
  return resolved;
}

/** The Authorization header of the target's token, if it has one. */
const authorization = (t: Target): Record<string, string> => (t.token !== null ? { authorization: `Bearer ${t.token}` } : {});

/** A transport failure as the CLI reports it: exit 9 for TLS trust, 3 for an API that cannot be reached. */
const transportFailure = (e: TransportError) => new CliError(e.message, e.kind === 'trust' ? 9 : 3);

async function call(g: Globals, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Record<string, unknown>> {
  const t = target(g);
  let res;
  try {
    res = await send(t.transport, t.api, path, {
      method,
      headers: { ...authorization(t), accept: 'application/json', ...(body ? { 'content-type': 'application/json' } : {}), ...headers },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
  } catch (e) {
    if (e instanceof TransportError) throw transportFailure(e);
    throw e;
  }
  const data = await readJson(res).catch(() => ({}) as Record<string, unknown>);
  if (res.status < 200 || res.status > 299) {
    const errors = (data.errors as Array<{ field: string; message: string }> | undefined) ?? [];
    const detail = errors.length ? errors.map((e) => `  ${e.field}: ${e.message}`).join('\n') : `  ${String(data.detail ?? res.statusText)}`;
    throw new CliError(`${res.status} ${String(data.title ?? '')}\n${detail}`, exitCodeOf(res.status, data.type));
  }
  return data;
}

function print(g: Globals, d: Record<string, unknown>): void {
  if (g.json) {
    console.log(JSON.stringify(d, null, 2));
    return;
  }
  const net = d.network as { ip?: string; hostname?: string } | undefined;
  const nics = (d.nics as NicLine[] | undefined) ?? [];
  const lines = [
    `workspace  ${String(d.id)}`,
    `state      ${String(d.state)}${d.task ? ` (${String(d.task)})` : ''}`,
    d.node ? `node       ${String(d.node)}` : '',
    // One line per NIC: eth<i>, network, assigned IP, hostname, MAC, and the IP DHCP gave the VM.
    ...(nics.length ? nics.map((n, i) => `eth${i}       ${nicLine(n, d.state !== 'Cancelled')}`) : [net?.ip ? `address    ${net.ip} (${net.hostname ?? ''})` : '']),
    d.obtainedIp && d.state !== 'Cancelled' ? `DHCP lease ${String(d.obtainedIp)}` : '',
    d.heading ? `heading    ${String(d.heading)}` : '',
    d.reason ? `reason     ${String(d.reason)}` : '',
    d.runningTimeLeftSeconds !== undefined && d.state !== 'Cancelled' ? `time left  ${String(d.runningTimeLeftSeconds)} s` : '',
    d.saved ? `saved as   ${savedLine(d.saved as { disk: string; sha256?: string })}` : '',
    d.progress ? `progress   ${progressLine(d.progress as Progress)}` : '',
    d.propagation ? `copied     ${mib((d.propagation as { bytesCopied: number }).bytesCopied)} to the node` : '',
    (d.links as { temporalUi?: string } | undefined)?.temporalUi ? `Temporal   ${(d.links as { temporalUi: string }).temporalUi}` : '',
  ];
  console.log(lines.filter(Boolean).join('\n'));
}

interface NicLine {
  network: string;
  ip: string;
  hostname: string;
  mac: string;
  obtainedIp?: string;
}

function nicLine(n: NicLine, live: boolean): string {
  const obtained = live && n.obtainedIp ? (n.obtainedIp === n.ip ? ', leased' : `, but DHCP gave ${n.obtainedIp}`) : '';
  return `${n.network} ${n.ip} (${n.hostname}) ${n.mac}${obtained}`;
}

interface Progress {
  bytes: number;
  total: number;
  image?: string;
}
const mib = (bytes: number) => `${(bytes / 1048576).toFixed(1)} MiB`;
const progressLine = (p: Progress) =>
  `${mib(p.bytes)} of ${mib(p.total)}${p.total ? ` (${Math.floor((100 * p.bytes) / p.total)}%)` : ''}${p.image ? ` ${p.image}` : ''}`;
const savedLine = (s: { disk: string; sha256?: string }) => `${s.disk}${s.sha256 ? ` (sha256 ${s.sha256})` : ''}`;

type Described = Record<string, unknown>;

/** How to follow an object until it is where the command wants it. */
interface FollowSpec {
  /** The object's path (`/workspaces/ws-…`); its events are at `<path>/events`. */
  path: string;
  /** True when the command's wait is over. */
  done(d: Described): boolean;
  /** A failure to report instead (checked first), or null. */
  fail(d: Described): CliError | null;
  /** The progress line of a description (printed when it differs from the last one). */
  line(d: Described): string;
  timeoutSeconds: number;
  /** Interval of the polling fallback. */
  pollMs: number;
}

/**
 * Waits for `spec.done`, printing a line on stderr for each change: from the object's event stream,
 * or by polling when the stream cannot be had, breaks, or ends before the wait is over (e.g. destroying
 * a Corrupted workspace: its stream ends at Corrupted, the destroy goes on).
 */
async function follow(g: Globals, spec: FollowSpec): Promise<Described> {
  const t0 = Date.now();
  const deadline = t0 + spec.timeoutSeconds * 1000;
  let last = '';
  const seen = (d: Described): Described | null => {
    const line = spec.line(d);
    if (line !== last) console.error(`  +${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s  ${line}`);
    last = line;
    const failure = spec.fail(d);
    if (failure) throw failure;
    return spec.done(d) ? d : null;
  };
  const gaveUp = () => new CliError(`gave up waiting after ${spec.timeoutSeconds} s; state ${last || 'unknown'}`, 7);
  try {
    const reached = await followEvents(g, spec.path, seen, deadline);
    if (reached) return reached;
  } catch (e) {
    if (e instanceof CliError) throw e;
    if (e instanceof TransportError && e.kind === 'trust') throw transportFailure(e);
    if (Date.now() >= deadline) throw gaveUp();
    console.error(`  (live events unavailable: ${(e as Error).message}; polling)`);
  }
  for (;;) {
    const d = seen(await call(g, 'GET', spec.path));
    if (d) return d;
    if (Date.now() >= deadline) throw gaveUp();
    await new Promise((r) => setTimeout(r, spec.pollMs));
  }
}

/**
 * Reads `<path>/events` until `seen` says done (returns the description) or the stream ends (null).
 * Throws a plain Error when the stream cannot be had or breaks, and what `seen` throws.
 */
async function followEvents(g: Globals, path: string, seen: (d: Described) => Described | null, deadline: number): Promise<Described | null> {
  const t = target(g);
  const stop = new AbortController();
  const timer = setTimeout(() => stop.abort(), Math.max(0, deadline - Date.now()));
  try {
    const res = await send(t.transport, t.api, `${path}/events`, { method: 'GET', headers: { ...authorization(t), accept: 'text/event-stream' }, signal: stop.signal });
    if (res.status === 401) {
      // Not a broken stream: polling would be refused the same way; say why now.
      const d = await readJson(res);
      throw new CliError(`401 ${String(d.title ?? 'Unauthorized')}\n  ${String(d.detail ?? '')}`, 9);
    }
    if (res.status !== 200 || !res.contentType.startsWith('text/event-stream')) {
      res.body.destroy();
      throw new Error(`GET ${path}/events answered ${res.status}`);
    }
    for await (const e of serverEvents(res.body)) {
      if (e.event === 'error') throw new Error(`the stream reported: ${String((JSON.parse(e.data) as Described).detail)}`);
      if (!['workspace', 'group', 'ensemble', 'end'].includes(e.event)) continue;
      const d = seen(JSON.parse(e.data) as Described);
      if (d) return d;
      if (e.event === 'end') return null;
    }
    throw new Error('the stream closed before the end');
  } finally {
    clearTimeout(timer);
    stop.abort(); // closes the connection: the server stops following at once
  }
}

/** A workspace's progress line: state, task, bytes copied, the IP it obtained. */
function workspaceLine(d: Described): string {
  const p = d.progress as Progress | undefined;
  const copied = (d.propagation as { bytesCopied?: number } | undefined)?.bytesCopied;
  return [
    `${String(d.state)}${d.task ? ` (${String(d.task)})` : ''}`,
    p?.total ? progressLine(p) : copied !== undefined ? `copied ${mib(copied)}` : '',
    d.obtainedIp && d.state !== 'Cancelled' ? `ip ${String(d.obtainedIp)}` : '',
    d.state === 'Corrupted' && d.reason ? `reason: ${String(d.reason)}` : '',
  ]
    .filter(Boolean)
    .join('  ');
}

/**
 * Waits until `done(d)` on a workspace. A workspace that becomes Corrupted or Cancelled on the way is a
 * failure (exit 6), unless `destroying`: then Corrupted is a step on the way to Cancelled, the goal.
 */
async function waitFor(g: Globals, id: string, done: (d: Described) => boolean, timeoutSeconds: number, destroying = false): Promise<Described> {
  return follow(g, {
    path: `/workspaces/${id}`,
    done,
    fail: (d) =>
      destroying || (d.state !== 'Corrupted' && d.state !== 'Cancelled')
        ? null
        : new CliError(`workspace ${id} is ${String(d.state)}${d.reason ? `: ${String(d.reason)}` : ''}`, 6),
    line: workspaceLine,
    timeoutSeconds,
    pollMs: 500,
  });
}

/** `--partition` values: `blank:<MiB>[:fs]` or an image reference (the API checks the details). */
function partitionOption(v: string): Record<string, unknown> {
  const blank = /^blank:(\d+)(?::(\w+))?$/.exec(v);
  if (blank) return { blankMiB: Number(blank[1]), ...(blank[2] ? { filesystem: blank[2] } : {}) };
  return { image: v };
}

const program = new Command('vws')
  .description('Client for the vws Virtual Workspace Service')
  .addOption(new Option('--api <url>', 'vws API base URL').env('VWS_API').default('http://127.0.0.1:8080'))
  .addOption(new Option('--token-file <file>', 'file holding your bearer token (or set VWS_TOKEN to the token)').env('VWS_TOKEN_FILE').default('/var/lib/vws/secrets/demo.token'))
  .addOption(new Option('--config <file>', `settings file (YAML or JSON: api, token or tokenFile, cert, key, ca); default ${DEFAULT_CLI_CONFIG} if present`).env('VWS_CLI_CONFIG'))
  .addOption(new Option('--cert <file>', 'client certificate (PEM) for an API with mutual TLS: its subject is your identity; needs --key').env('VWS_CERT'))
  .addOption(new Option('--key <file>', "the client certificate's private key (PEM)").env('VWS_KEY'))
  .addOption(new Option('--ca <file>', "CA certificate(s) (PEM) the API's https certificate must chain to, instead of the system's").env('VWS_CA'))
  .option('--json', 'print JSON for scripts')
  // Commander's own usage errors (unknown option, bad value) exit 2; help stays 0. Inherited by every subcommand.
  .exitOverride((e) => process.exit(e.exitCode === 0 ? 0 : 2))
  .addHelpText(
    'after',
    `
Exit codes: 0 done; 1 other failure; 2 bad usage or invalid request (400); 3 API unreachable; 4 not found;
5 refused in this state, no capacity, or idempotency key reused (409, 422); 6 Corrupted or ended with a reason;
7 gave up waiting; 8 refused by site policy or quota (400 PolicyViolation, 403); 9 not authenticated (401:
token or client certificate refused) or TLS trust failed (the API's certificate not trusted: give --ca).

--wait prints one line per change on stderr (seconds since start, state, task, bytes copied, IP); stdout
has only the summary, or the JSON answer with --json.

Settings, first found wins: options; VWS_API, VWS_TOKEN (the token itself), VWS_TOKEN_FILE, VWS_CERT,
VWS_KEY, VWS_CA; the file named by --config or VWS_CLI_CONFIG (else ~/.config/vws/cli.yaml if present), e.g.
  api: https://vws.example.org:8080
  tokenFile: ~/.vws/token
  ca: /etc/vws/site-ca.crt
  cert: ~/.vws/alice.crt     # with key: mutual TLS; then no token is needed
  key: ~/.vws/alice.key
then the local installation's defaults.

Examples:
  vws list --api https://vws.example.org:8080 --ca site-ca.crt --cert alice.crt --key alice.key
  VWS_CERT=alice.crt VWS_KEY=alice.key vws deploy --image sample --wait`,
  );

/** `--memory 512` or `--memory 256-1024`: an exact value or a range the factory picks from. */
function amountOption(v: string): number | { min: number; max: number } {
  const m = /^(\d+)(?:-(\d+))?$/.exec(v.trim());
  if (!m) throw new InvalidArgumentError('give a whole number, or a range like 256-1024');
  return m[2] === undefined ? Number(m[1]) : { min: Number(m[1]), max: Number(m[2]) };
}

const wholeNumber = (v: string): number => {
  if (!/^\d+$/.test(v)) throw new InvalidArgumentError('give a whole number');
  return Number(v);
};
const repeat = (v: string, all: string[]) => [...all, v];

/** The options of a deployment request, shared by `deploy` and `ensemble add`. */
function deploymentOptions(c: Command): Command {
  return c
    .requiredOption('--image <name|url>', 'image name in the site repository, or a file://, http(s):// or sftp:// URL (staged in)')
    .option('--image-sha256 <hex>', 'expected sha256 of an image URL')
    .option('--partition <spec>', 'another partition: an image name or URL, or blank:<MiB>[:ext4|swap|none] (repeatable)', repeat, [] as string[])
    .option('--save-to <target>', 'where the disk is saved at shutdown: a repository image name or a URL you may write')
    .option('--memory <MiB|min-max>', 'memory in MiB per workspace, or a range (the site picks the most it allows)', amountOption, 128)
    .option('--vcpus <n|min-max>', 'virtual CPUs, or a range', amountOption, 1)
    .option('--duration <seconds|min-max>', 'DeploymentTime in seconds, or a range', amountOption, 3600)
    .option('--count <n>', 'how many identical workspaces (more than 1 makes a group; seed NodeNumber)', wholeNumber, 1)
    .option('--node-property <p>', 'a property the node must have, e.g. a node pool (repeatable)', repeat, [] as string[])
    .addOption(new Option('--shutdown-mechanism <m>', 'what happens when the time runs out').choices(['Normal', 'Serialize', 'Trash']).default('Normal'))
    .option('--trash-at-shutdown', 'discard the VM after use instead of unpropagating it')
    .option('--nic <network>', 'a NIC on this network (repeatable, in order: eth0, eth1, …; default: the site default networks)', repeat, [] as string[]);
}

interface DeploymentOpts {
  image: string;
  imageSha256?: string;
  partition: string[];
  nic: string[];
  saveTo?: string;
  memory: unknown;
  vcpus: unknown;
  duration: unknown;
  count: number;
  nodeProperty: string[];
  targetState?: string;
  shutdownMechanism: string;
  trashAtShutdown?: boolean;
}

/** The API body of a deployment request from the options. */
function deploymentBody(o: DeploymentOpts): Record<string, unknown> {
  return {
    image: o.image,
    ...(o.imageSha256 ? { imageSha256: o.imageSha256 } : {}),
    ...(o.partition.length ? { partitions: o.partition.map(partitionOption) } : {}),
    ...(o.nic.length ? { nics: o.nic.map((network) => ({ network })) } : {}),
    ...(o.saveTo ? { unpropagationTarget: o.saveTo } : {}),
    memoryMiB: o.memory,
    vcpus: o.vcpus,
    durationSeconds: o.duration,
    ...(o.count !== 1 ? { count: o.count } : {}),
    ...(o.nodeProperty.length ? { nodeProperties: o.nodeProperty } : {}),
    ...(o.targetState ? { targetState: o.targetState } : {}),
    shutdownMechanism: o.shutdownMechanism,
    trashAtShutdown: !!o.trashAtShutdown,
  };
}

const keyHeader = (key?: string): Record<string, string> => (key ? { 'idempotency-key': key } : {});

deploymentOptions(program.command('deploy').description('deploy one workspace, or a group of --count identical ones'))
  .addOption(new Option('--target-state <state>', 'how far to advance it').choices(['Propagated', 'Running']).default('Running'))
  .option('--idempotency-key <key>', 'repeat the command with the same key to get the same answer, never a second deployment')
  .option('--wait', 'wait until it reaches the target state (Running: with an address)')
  .option('--timeout <seconds>', 'how long --wait waits', (v) => Number(v), 300)
  .addHelpText(
    'after',
    `
Examples:
  vws deploy --image sample --memory 128 --wait
  vws deploy --image sample --memory 256-1024 --duration 600-3600 --idempotency-key run-42
  vws deploy --image sample --count 3 --node-property pool-a --wait
  vws deploy --image https://example.org/img.raw --image-sha256 <hex> --partition blank:1024:ext4 --wait`,
  )
  .action(async (o: DeploymentOpts & { idempotencyKey?: string; wait?: boolean; timeout: number; targetState: string }) => {
    const g = program.opts<Globals>();
    const created = await call(g, 'POST', '/workspaces', deploymentBody(o), keyHeader(o.idempotencyKey));
    const id = String(created.id);
    if (!g.json) console.error(`created ${id} (${exactLine(created)})`);
    if (created.kind === 'group') {
      const d = o.wait ? await waitForGang(g, `/groups/${id}`, o.timeout) : await call(g, 'GET', `/groups/${id}`).catch(() => created);
      printGang(g, d);
      return;
    }
    const reached = (x: Record<string, unknown>) => (o.targetState === 'Running' ? x.state === 'Running' && !!x.obtainedIp : x.state === o.targetState && x.task === null);
    const d = o.wait ? await waitFor(g, id, reached, o.timeout) : created;
    print(g, d);
  });

/** The exact values the factory chose. */
const exactLine = (d: Record<string, unknown>) =>
  `${String(d.memoryMiB)} MiB, ${String(d.vcpus)} vCPU(s), ${String(d.durationSeconds)} s${d.count && d.count !== 1 ? `, ${String(d.count)} members` : ''}`;

interface MemberLine {
  id: string;
  state: string;
  task?: string | null;
  node?: string;
  ip?: string;
  reason?: string;
}

/** Prints a group's description or an ensemble's report. */
function printGang(g: Globals, d: Record<string, unknown>): void {
  if (g.json) {
    console.log(JSON.stringify(d, null, 2));
    return;
  }
  const kind = String(d.id).startsWith('ens-') ? 'ensemble' : 'group';
  const member = (m: MemberLine) => `  ${m.id}  ${m.state}${m.task ? ` (${m.task})` : ''}${m.node ? `  ${m.node}` : ''}${m.ip ? `  ${m.ip}` : ''}${m.reason ? `  ${m.reason}` : ''}`;
  const lines = [`${kind.padEnd(10)} ${String(d.id)}`, `state      ${String(d.state)}`, d.reason ? `reason     ${String(d.reason)}` : ''];
  if (kind === 'group') {
    lines.push(`members    ${String(d.count ?? (d.members as unknown[] | undefined)?.length ?? '')}`, ...((d.members as MemberLine[] | undefined) ?? []).map(member));
  } else {
    if (d.lastRefusal) lines.push(`waiting    ${String(d.attempts)} attempt(s); last: ${String(d.lastRefusal)}`);
    const started = d.started as { first: string; last: string; skewMs: number } | undefined;
    if (started) lines.push(`started    ${started.first} … ${started.last} (spread ${started.skewMs} ms)`);
    for (const m of (d.members as Array<{ memberId: string; count: number; workspaces: MemberLine[] }> | undefined) ?? []) {
      lines.push(`member     ${m.memberId} (${m.count})`, ...m.workspaces.map(member));
    }
  }
  console.log(lines.filter(Boolean).join('\n'));
}

/** A group's or ensemble's progress line: its state and each member's. */
function gangLine(d: Described): string {
  const members = ((d.members as MemberLine[] | undefined) ?? []).concat(((d.members as Array<{ workspaces?: MemberLine[] }> | undefined) ?? []).flatMap((m) => m.workspaces ?? []));
  const member = (m: MemberLine) => `${m.id} ${m.state}${m.task ? ` (${m.task})` : ''}${m.ip && m.state !== 'Cancelled' ? ` ${m.ip}` : ''}`;
  return [String(d.state), ...members.filter((m) => m.state).map(member)].join('  ');
}

/** Follows a group or ensemble until Ready; Ended is a failure (exit 6). */
async function waitForGang(g: Globals, path: string, timeoutSeconds: number): Promise<Described> {
  return follow(g, {
    path,
    done: (d) => d.state === 'Ready',
    fail: (d) => (d.state === 'Ended' ? new CliError(`${path.slice(1)} ended: ${String(d.reason ?? 'destroyed')}`, 6) : null),
    line: gangLine,
    timeoutSeconds,
    pollMs: 1000,
  });
}

program
  .command('show <id>')
  .description('show a workspace: state, node, address, the IP it obtained')
  .action(async (id: string) => {
    const g = program.opts<Globals>();
    print(g, await call(g, 'GET', `/workspaces/${id}`));
  });

program
  .command('destroy <id>')
  .description('destroy a workspace and release everything it held')
  .option('--wait', 'wait until Cancelled')
  .option('--timeout <seconds>', 'how long --wait waits', (v) => Number(v), 120)
  .action(async (id: string, o: { wait?: boolean; timeout: number }) => {
    const g = program.opts<Globals>();
    let d = await call(g, 'DELETE', `/workspaces/${id}`);
    if (o.wait) d = await waitFor(g, id, (x) => x.state === 'Cancelled', o.timeout, true);
    print(g, d);
  });

/** One command per operation: POST /workspaces/:id/<operation>; --wait follows until nothing is in flight. */
const OPERATIONS: Array<{ name: string; help: string; options?: (c: Command) => Command; body?: (o: Record<string, unknown>) => object }> = [
  {
    name: 'start',
    help: 'start a workspace (from Propagated, or a serialized one from StagedOut)',
    options: (c) => c.option('--duration <seconds>', 'new running time from now', (v) => Number(v)),
    body: (o) => (o.duration ? { durationSeconds: o.duration } : {}),
  },
  { name: 'pause', help: 'pause a running workspace (unscheduled, not serialized)' },
  { name: 'unpause', help: 'resume a paused workspace' },
  { name: 'reboot', help: 'reboot a running workspace' },
  { name: 'shutdown', help: 'shut a workspace down gracefully (back to Propagated; start it again later)' },
  {
    name: 'shutdown-save',
    help: 'shut down and unpropagate: the disk is saved to the site repository or a URL (seed --shutdown-save)',
    options: (c) => c.option('--target <image|url>', 'save the disk under this repository image name, or to a URL you may write'),
    body: (o) => (o.target ? { target: o.target } : {}),
  },
];
for (const op of OPERATIONS) {
  let c = program.command(`${op.name} <id>`).description(op.help).option('--wait', 'wait until the operation is done').option('--timeout <seconds>', 'how long --wait waits', (v) => Number(v), 300);
  if (op.options) c = op.options(c);
  c.action(async (id: string, o: Record<string, unknown>) => {
    const g = program.opts<Globals>();
    let d = await call(g, 'POST', `/workspaces/${id}/${op.name}`, op.body ? op.body(o) : {});
    if (o.wait) d = await waitFor(g, id, (x) => x.task === null, Number(o.timeout));
    print(g, d);
  });
}

program
  .command('list')
  .description('list your workspaces (admins: everyone\'s), newest first')
  .option('--state <state>', 'only workspaces in this state, e.g. Running')
  .option('--group <id>', 'only members of this group')
  .option('--ensemble <id>', 'only members of this ensemble')
  .action(async (o: { state?: string; group?: string; ensemble?: string }) => {
    const g = program.opts<Globals>();
    const q = new URLSearchParams(Object.entries(o).filter(([, v]) => typeof v === 'string') as Array<[string, string]>).toString();
    const d = await call(g, 'GET', `/workspaces${q ? `?${q}` : ''}`);
    if (g.json) return void console.log(JSON.stringify(d, null, 2));
    const rows = (d.workspaces as Array<Record<string, unknown>>).map((w) => [w.id, w.state ?? '', w.node ?? '', w.group ?? w.ensemble ?? '', w.createdAt ?? ''].map(String));
    printTable(['ID', 'STATE', 'NODE', 'GROUP/ENSEMBLE', 'CREATED'], rows);
  });

/** Prints rows under a header, in aligned columns. */
function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  for (const r of [header, ...rows]) console.log(r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd());
}

const group = program.command('group').description('show, operate on and destroy groups (create one with deploy --count N)');
group
  .command('show <id>')
  .description('a group and its members')
  .action(async (id: string) => {
    const g = program.opts<Globals>();
    printGang(g, await call(g, 'GET', `/groups/${id}`));
  });
for (const op of ['start', 'pause', 'unpause', 'reboot', 'shutdown', 'shutdown-save']) {
  let c = group.command(`${op} <id>`).description(`${op} every live member of the group`);
  if (op === 'start') c = c.option('--duration <seconds>', 'new running time from now', wholeNumber);
  if (op === 'shutdown-save') c = c.option('--target <image|url>', 'save the disks under this name (each member gets its index appended)');
  c.action(async (id: string, o: { duration?: number; target?: string }) => {
    const g = program.opts<Globals>();
    const body = { ...(o.duration ? { durationSeconds: o.duration } : {}), ...(o.target ? { target: o.target } : {}) };
    printOperation(g, await call(g, 'POST', `/groups/${id}/${op}`, body));
  });
}
group
  .command('destroy <id>')
  .description('destroy every member of the group; the group ends')
  .option('--wait', 'wait until the group has ended')
  .option('--timeout <seconds>', 'how long --wait waits', (v) => Number(v), 180)
  .action(async (id: string, o: { wait?: boolean; timeout: number }) => {
    const g = program.opts<Globals>();
    const d = await call(g, 'DELETE', `/groups/${id}`);
    if (o.wait) return void printGang(g, await waitUntilEnded(g, `/groups/${id}`, o.timeout));
    printOperation(g, d);
  });

/** Prints what a fanned-out operation did on each member; a member that refused makes the exit code 5. */
function printOperation(g: Globals, d: Record<string, unknown>): void {
  const members = (d.members as Array<{ id: string; ok: boolean; error?: string; state?: string }> | undefined) ?? [];
  if (g.json) console.log(JSON.stringify(d, null, 2));
  else for (const m of members) console.log(`${m.id}  ${m.ok ? 'ok' : 'refused'}${m.state ? `  ${m.state}` : ''}${m.error ? `  ${m.error}` : ''}`);
  if (members.some((m) => !m.ok)) process.exitCode = 5;
}

/** Follows a group or ensemble until it has ended. */
async function waitUntilEnded(g: Globals, path: string, timeoutSeconds: number): Promise<Described> {
  return follow(g, { path, done: (d) => d.state === 'Ended', fail: () => null, line: gangLine, timeoutSeconds, pollMs: 1000 });
}

const ensemble = program.command('ensemble').description('co-scheduled ensembles: register members, then done starts them all at once or none');
ensemble
  .command('create')
  .description('create an empty ensemble; prints its id')
  .option('--idempotency-key <key>', 'repeat with the same key to get the same ensemble')
  .action(async (o: { idempotencyKey?: string }) => {
    const g = program.opts<Globals>();
    const d = await call(g, 'POST', '/ensembles', {}, keyHeader(o.idempotencyKey));
    console.log(g.json ? JSON.stringify(d, null, 2) : String(d.id));
  });
deploymentOptions(ensemble.command('add <ensemble>').description('register a member (a workspace, or a group with --count); it is not launched until done'))
  .option('--done', 'this is the last member: co-schedule every member now')
  .option('--idempotency-key <key>', 'repeat with the same key to register once')
  .addHelpText('after', '\nExamples:\n  E=$(vws ensemble create)\n  vws ensemble add $E --image sample --count 2\n  vws ensemble add $E --image sample --count 3 --done')
  .action(async (id: string, o: DeploymentOpts & { done?: boolean; idempotencyKey?: string }) => {
    const g = program.opts<Globals>();
    const d = await call(g, 'POST', `/ensembles/${id}/members`, { ...deploymentBody(o), ...(o.done ? { done: true } : {}) }, keyHeader(o.idempotencyKey));
    if (g.json) return void console.log(JSON.stringify(d, null, 2));
    console.log(`${String(d.memberId)}  ${(d.workspaceIds as string[]).join(' ')}  (${exactLine(d)})`);
  });
ensemble
  .command('done <ensemble>')
  .description('the done trigger: allocate every member at once, propagate all, start all together')
  .option('--wait', 'wait until every member runs (or the ensemble gives up)')
  .option('--timeout <seconds>', 'how long --wait waits', (v) => Number(v), 900)
  .action(async (id: string, o: { wait?: boolean; timeout: number }) => {
    const g = program.opts<Globals>();
    const d = await call(g, 'POST', `/ensembles/${id}/done`, {});
    printGang(g, o.wait ? await waitForGang(g, `/ensembles/${id}`, o.timeout) : d);
  });
ensemble
  .command('report <ensemble>')
  .description("the ensemble's report: state, members, start spread")
  .action(async (id: string) => {
    const g = program.opts<Globals>();
    printGang(g, await call(g, 'GET', `/ensembles/${id}`));
  });
ensemble
  .command('destroy <ensemble>')
  .description('destroy-all: every member is destroyed and the ensemble ends')
  .option('--wait', 'wait until the ensemble has ended')
  .option('--timeout <seconds>', 'how long --wait waits', (v) => Number(v), 300)
  .action(async (id: string, o: { wait?: boolean; timeout: number }) => {
    const g = program.opts<Globals>();
    const d = await call(g, 'DELETE', `/ensembles/${id}`);
    printGang(g, o.wait ? await waitUntilEnded(g, `/ensembles/${id}`, o.timeout) : d);
  });

program
  .command('status')
  .description('your usage: current workspaces, used and reserved minutes, quotas')
  .action(async () => {
    const g = program.opts<Globals>();
    const d = await call(g, 'GET', '/status');
    if (g.json) return void console.log(JSON.stringify(d, null, 2));
    const quota = d.quota as { maxWorkspaces?: number; maxReservedMinutes?: number } | undefined;
    console.log(
      [
        `client     ${String(d.owner)}`,
        `used       ${String(d.usedMinutes)} min (charged per ${String(d.chargeGranularitySeconds)} s)`,
        `reserved   ${String(d.reservedMinutes)} min; held now ${String(d.heldMinutes)} min by ${String(d.liveGrants)} workspace(s)`,
        quota ? `quota      ${quota.maxWorkspaces ?? '∞'} workspaces, ${quota.maxReservedMinutes ?? '∞'} reserved min` : '',
      ]
        .filter(Boolean)
        .join('\n'),
    );
    const rows = (d.workspaces as Array<Record<string, unknown>>).map((w) => [w.id, w.state, w.node ?? '', `${String(w.usedMinutes)} min`, `${String(w.runningTimeLeftSeconds)} s`].map(String));
    if (rows.length) printTable(['ID', 'STATE', 'NODE', 'USED', 'LEFT'], rows);
  });

const admin = program.command('admin').description('site administration (admin clients only)');
admin
  .command('nodes')
  .description('every node: capacity, use, drain flag')
  .action(async () => {
    const g = program.opts<Globals>();
    const d = await call(g, 'GET', '/admin/nodes');
    if (g.json) return void console.log(JSON.stringify(d, null, 2));
    printNodes(d.nodes as Array<Record<string, unknown>>);
  });

function printNodes(nodes: Array<Record<string, unknown>>): void {
  printTable(
    ['NODE', 'MEMORY MiB', 'vCPUs', 'GRANTS', 'DRAINED', 'PROPERTIES'],
    nodes.map((n) => [n.name, `${String(n.usedMemoryMiB)}/${String(n.memoryMiB)}`, `${String(n.usedVcpus)}/${String(n.cpus)}`, n.grants, n.drained ? 'yes' : 'no', (n.properties as string[] | undefined)?.join(',') ?? ''].map(String)),
  );
}
for (const action of ['drain', 'undrain'] as const) {
  admin
    .command(`${action} <node>`)
    .description(action === 'drain' ? 'no new grants on the node; live workspaces stay' : 'let the node take new grants again')
    .action(async (node: string) => {
      const g = program.opts<Globals>();
      const d = await call(g, 'POST', `/admin/nodes/${encodeURIComponent(node)}/${action}`, {});
      if (g.json) return void console.log(JSON.stringify(d, null, 2));
      printNodes(d.nodes as Array<Record<string, unknown>>);
    });
}
admin
  .command('leases')
  .description("the allocator's live grants (holder, node, slot, addresses, owner), then the pilot leases of node time")
  .action(async () => {
    const g = program.opts<Globals>();
    const d = await call(g, 'GET', '/admin/leases');
    if (g.json) return void console.log(JSON.stringify(d, null, 2));
    const rows = (d.leases as Array<Record<string, unknown>>).map((l) => {
      const nics = (l.nics as Array<{ address: { ip: string } }> | undefined) ?? [];
      return [l.holder, l.node, `${String(l.memoryMiB)} MiB/${String(l.vcpus)}`, nics.map((n) => n.address.ip).join(','), l.owner ?? '', l.gang ?? '', l.lease ?? '', l.grantedAt].map(String);
    });
    printTable(['HOLDER', 'NODE', 'SLOT', 'ADDRESSES', 'OWNER', 'GANG', 'IN LEASE', 'GRANTED'], rows);
    // An API from before pilot leases answers without them: nothing more to show.
    const pilot = d.pilotLeases as Array<Record<string, unknown>> | undefined;
    if (!pilot?.length) return;
    console.log('');
    printTable(
      ['PILOT LEASE', 'NODE', 'USED MiB', 'USED vCPUs', 'GRANTS', 'JOB', 'LEASED', 'UNTIL'],
      pilot.map((l) => [l.holder, l.node, `${String(l.usedMemoryMiB ?? 0)}/${String(l.memoryMiB)}`, `${String(l.usedVcpus ?? 0)}/${String(l.vcpus)}`, l.grants ?? 0, l.jobId ?? '', l.leasedAt ?? '', l.until].map(String)),
    );
  });

admin
  .command('kill-all')
  .description('EMERGENCY STOP: every node destroys every VM and resets its memory; then every open workspace is destroyed')
  .requiredOption('--yes', 'confirm: this destroys every VM on every node')
  .option('--timeout <seconds>', 'how long to wait for the report', (v) => Number(v), 300)
  .addHelpText(
    'after',
    `
Goes through vws (its workflows and node workers). When vws itself is down, run the pilot's direct
version on the head instead: node dist/pilot/main.js kill-all (over SSH to every node).`,
  )
  .action(async (o: { timeout: number }) => {
    const g = program.opts<Globals>();
    const started = await call(g, 'POST', '/admin/kill-all', { confirm: 'kill-all' });
    const path = `/admin/kill-all/${String(started.id)}`;
    const deadline = Date.now() + o.timeout * 1000;
    let d = started;
    while (d.state === 'running') {
      if (Date.now() > deadline) throw new CliError(`gave up waiting after ${o.timeout} s; follow ${path}`, 7);
      await new Promise((r) => setTimeout(r, 1000));
      d = await call(g, 'GET', path);
    }
    if (g.json) console.log(JSON.stringify(d, null, 2));
    if (d.state !== 'done') throw new CliError(`kill-all ${String(started.id)} failed: ${String(d.reason)}`, 6);
    const report = d.report as { nodes: Array<Record<string, unknown>>; workspaces: { destroyed: number; failed: Array<{ id: string; error: string }> } };
    const failedNodes = report.nodes.filter((n) => n.error || (n.failed as unknown[] | undefined)?.length);
    if (!g.json) {
      printTable(
        ['NODE', 'VMS DESTROYED', 'MEMORY MiB', 'ERROR'],
        report.nodes.map((n) => [n.node, (n.destroyed as string[] | undefined)?.length ?? '-', n.memoryMiB !== undefined ? `${String(n.memoryMiB)}/${String(n.configuredMiB)}` : '-', n.error ?? ((n.failed as unknown[] | undefined)?.length ? JSON.stringify(n.failed) : '')].map(String)),
      );
      console.log(`workspaces destroyed: ${report.workspaces.destroyed}${report.workspaces.failed.length ? `; refused: ${report.workspaces.failed.map((f) => `${f.id} (${f.error})`).join(', ')}` : ''}`);
    }
    if (failedNodes.length || report.workspaces.failed.length) throw new CliError(`kill-all incomplete: ${failedNodes.map((n) => String(n.node)).join(', ') || 'some workspaces refused'}`, 6);
  });

program.parseAsync().catch((e: Error) => {
  console.error(`vws: ${e.message}`);
  process.exit(e instanceof CliError ? e.exitCode : 1);
});
