#!/usr/bin/env node
/**
 * The `vws` CLI: the reference client, over the HTTP API only: deploy, show, destroy and every
 * workspace operation (start, pause, unpause, reboot, shutdown, shutdown-save).
 */
import { readFileSync } from 'node:fs';
import { Command, Option } from 'commander';

interface Globals {
  api: string;
  tokenFile: string;
  json?: boolean;
}

class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

async function call(g: Globals, method: string, path: string, body?: unknown): Promise<Record<string, unknown>> {
  let token: string;
  try {
    token = readFileSync(g.tokenFile, 'utf8').trim();
  } catch (e) {
    throw new CliError(`cannot read the token file ${g.tokenFile} (${(e as NodeJS.ErrnoException).code}); set --token-file or VWS_TOKEN_FILE`, 2);
  }
  let res: globalThis.Response;
  try {
    res = await fetch(`${g.api}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch (e) {
    throw new CliError(`cannot reach the vws API at ${g.api}: ${(e as Error & { cause?: Error }).cause?.message ?? (e as Error).message}`, 3);
  }
  const data = (await res.json().catch(() => ({}))) as Record<string, unknown>;
  if (!res.ok) {
    const errors = (data.errors as Array<{ field: string; message: string }> | undefined) ?? [];
    const detail = errors.length ? errors.map((e) => `  ${e.field}: ${e.message}`).join('\n') : `  ${String(data.detail ?? res.statusText)}`;
    throw new CliError(`${res.status} ${String(data.title ?? '')}\n${detail}`, res.status === 404 ? 4 : res.status === 409 ? 5 : 1);
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

/** Polls until `done(d)` or the timeout; prints each state change, and copy progress, unless --json. */
async function waitFor(g: Globals, id: string, done: (d: Record<string, unknown>) => boolean, timeoutSeconds: number) {
  const deadline = Date.now() + timeoutSeconds * 1000;
  let last = '';
  for (;;) {
    const d = await call(g, 'GET', `/workspaces/${id}`);
    const p = d.progress as Progress | undefined;
    const now = `${String(d.state)}${d.task ? ` (${String(d.task)})` : ''}`;
    const line = p?.total ? `${now} ${progressLine(p)}` : now;
    if (line !== last && !g.json) console.error(`  ${new Date().toISOString()}  ${line}`);
    last = line;
    if (done(d)) return d;
    if (d.state === 'Corrupted') throw new CliError(`workspace ${id} is Corrupted: ${String(d.reason)}`, 6);
    if (Date.now() > deadline) throw new CliError(`gave up waiting after ${timeoutSeconds} s; state ${now}`, 7);
    await new Promise((r) => setTimeout(r, 500));
  }
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
  .addOption(new Option('--token-file <file>', 'file holding your bearer token').env('VWS_TOKEN_FILE').default('/var/lib/vws/secrets/demo.token'))
  .option('--json', 'print JSON for scripts');

program
  .command('deploy')
  .description('deploy one workspace from an image in the site repository or at a URL')
  .requiredOption('--image <name|url>', 'image name in the site repository, or a file://, http(s):// or sftp:// URL (staged in)')
  .option('--image-sha256 <hex>', 'expected sha256 of an image URL')
  .option('--partition <spec>', 'another partition: an image name or URL, or blank:<MiB>[:ext4|swap|none] (repeatable)', (v: string, all: string[]) => [...all, v], [] as string[])
  .option('--save-to <target>', 'where the disk is saved at shutdown: a repository image name or a URL you may write')
  .option('--memory <MiB>', 'memory in MiB', (v) => Number(v), 128)
  .option('--vcpus <n>', 'virtual CPUs', (v) => Number(v), 1)
  .option('--duration <seconds>', 'DeploymentTime in seconds', (v) => Number(v), 3600)
  .addOption(new Option('--target-state <state>', 'how far to advance it').choices(['Propagated', 'Running']).default('Running'))
  .addOption(new Option('--shutdown-mechanism <m>', 'what happens when the time runs out').choices(['Normal', 'Serialize', 'Trash']).default('Normal'))
  .option('--trash-at-shutdown', 'discard the VM after use instead of unpropagating it')
  .option('--nic <network>', 'a NIC on this network (repeatable, in order: eth0, eth1, …; default: the site default networks)', (v: string, all: string[]) => [...all, v], [] as string[])
  .option('--wait', 'wait until it reaches the target state (Running: with an address)')
  .option('--timeout <seconds>', 'how long --wait waits', (v) => Number(v), 300)
  .addHelpText(
    'after',
    '\nExamples:\n  vws deploy --image sample --memory 128 --wait\n  vws deploy --image https://example.org/img.raw --image-sha256 <hex> --partition blank:1024:ext4 --wait',
  )
  .action(async (o: { image: string; imageSha256?: string; partition: string[]; nic: string[]; saveTo?: string; memory: number; vcpus: number; duration: number; targetState: string; shutdownMechanism: string; trashAtShutdown?: boolean; wait?: boolean; timeout: number }) => {
    const g = program.opts<Globals>();
    const created = await call(g, 'POST', '/workspaces', {
      image: o.image,
      ...(o.imageSha256 ? { imageSha256: o.imageSha256 } : {}),
      ...(o.partition.length ? { partitions: o.partition.map(partitionOption) } : {}),
      ...(o.nic.length ? { nics: o.nic.map((network) => ({ network })) } : {}),
      ...(o.saveTo ? { unpropagationTarget: o.saveTo } : {}),
      memoryMiB: o.memory,
      vcpus: o.vcpus,
      durationSeconds: o.duration,
      targetState: o.targetState,
      shutdownMechanism: o.shutdownMechanism,
      trashAtShutdown: !!o.trashAtShutdown,
    });
    const id = String(created.id);
    if (!g.json) console.error(`created ${id}`);
    const reached = (x: Record<string, unknown>) => (o.targetState === 'Running' ? x.state === 'Running' && !!x.obtainedIp : x.state === o.targetState && x.task === null);
    const d = o.wait ? await waitFor(g, id, reached, o.timeout) : created;
    print(g, d);
  });

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
    if (o.wait) d = await waitFor(g, id, (x) => x.state === 'Cancelled', o.timeout);
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

program.parseAsync().catch((e: Error) => {
  console.error(`vws: ${e.message}`);
  process.exit(e instanceof CliError ? e.exitCode : 1);
});
