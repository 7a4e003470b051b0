/**
 * The `vws` CLI end to end on the testbed, as a user runs it: the built `dist/cli/vws.js` as a child
 * process (argv arrays), against a real stack and a real VM on vmm1. `--wait` follows the server-sent
 * events and prints each change on stderr while stdout has only the summary (or JSON); settings come
 * from a configuration file (`--config`, `VWS_CLI_CONFIG`) and environment variables (`VWS_API`,
 * `VWS_TOKEN`); exit codes mean what the CLI's help says; another client's token sees nothing; and at
 * the end the node holds nothing and the allocator no grant.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { eventually, startStack, type Stack } from '../helpers/stack';

jest.setTimeout(900_000);

const CLI = join(__dirname, '../../dist/cli/vws.js');
const FIRST = '10.213.0.84';
const LAST = '10.213.0.86';

let stack: Stack;
/** A home without a `~/.config/vws/cli.yaml`, and the settings files the test writes. */
let home: string;
let aliceConfig: string;
/** A proxy to the stack's API that has no event streams (an older API, or a proxy that drops them). */
let noEvents: Server;
let noEventsUrl: string;

beforeAll(async () => {
  stack = await startStack({ label: 'cli', first: FIRST, last: LAST });
  home = mkdtempSync('/tmp/vws-cli-home-');
  aliceConfig = join(home, 'alice.yaml');
  // A relative tokenFile is read from the configuration file's directory.
  writeFileSync(join(home, 'alice.token'), `${stack.tokens.alice}\n`, { mode: 0o600 });
  writeFileSync(aliceConfig, stringify({ api: stack.api, tokenFile: 'alice.token' }));
  const api = new URL(stack.api);
  noEvents = createServer((req, res) => {
    if (/\/events$/.test(req.url ?? '')) {
      res.writeHead(404, { 'content-type': 'application/problem+json' }).end(JSON.stringify({ type: 'about:blank', title: 'Not Found', status: 404, detail: 'no route' }));
      return;
    }
    const upstream = request({ host: api.hostname, port: api.port, path: req.url, method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  });
  await new Promise<void>((ok) => noEvents.listen(0, '127.0.0.1', ok));
  noEventsUrl = `http://127.0.0.1:${(noEvents.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await new Promise((ok) => noEvents?.close(ok));
  await stack?.stop();
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI with `args` and only the environment given (plus PATH and a clean HOME). */
function vws(args: string[], env: Record<string, string> = {}, timeoutMs = 400_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** As alice, through her configuration file. */
const alice = (...args: string[]) => vws(['--config', aliceConfig, ...args]);
/** As bob, through environment variables only. */
const bob = (...args: string[]) => vws(args, { VWS_API: stack.api, VWS_TOKEN: stack.tokens.bob });

/** Fails with the whole run when the exit code is not `code`. */
function expectExit(r: Run, code: number): void {
  expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({ code, stdout: expect.any(String), stderr: expect.any(String) });
}

/** The progress lines `--wait` printed on stderr (`  +12.3s  State (task)  …`). */
const progressLines = (stderr: string) => stderr.split('\n').filter((l) => /^ {2}\+ *\d+\.\ds {2}\S/.test(l));

describe('the vws CLI on a real VM', () => {
  it('deploys with live progress, shows, lists, pauses, unpauses and destroys, with exit codes that mean something', async () => {
    expect(await stack.leftovers()).toEqual([]);

    // deploy --wait: progress on stderr, from the event stream; the summary with the IP on stdout.
    const deployed = await alice('deploy', '--image', 'sample', '--memory', '128', '--wait');
    expectExit(deployed, 0);
    const id = /^workspace {2}(ws-[0-9a-f]{12})$/m.exec(deployed.stdout)?.[1];
    expect(id).toBeDefined();
    expect(deployed.stderr).toContain(`created ${id} (128 MiB`);
    expect(deployed.stderr).not.toContain('live events unavailable');
    const lines = progressLines(deployed.stderr);
    expect(lines.length).toBeGreaterThanOrEqual(2);
    // The first line is the workspace on its way (booting a VM takes seconds), the last one Running with its IP.
    expect(lines[0]).not.toMatch(/ {2}Running/);
    expect(lines[lines.length - 1]).toMatch(/ {2}Running {2}copied [\d.]+ MiB {2}ip 10\.213\.0\.8[4-6]$/);
    // One line per change: never the same line twice in a row.
    const bodies = lines.map((l) => l.replace(/^ {2}\+ *\d+\.\ds {2}/, ''));
    for (let i = 1; i < bodies.length; i++) expect(bodies[i]).not.toBe(bodies[i - 1]);
    expect(deployed.stdout).toMatch(/^state {6}Running$/m);
    expect(deployed.stdout).toMatch(/^DHCP lease 10\.213\.0\.8[4-6]$/m);
    expect(deployed.stdout).toMatch(/^Temporal {3}http\S+\/workflows\/\S+$/m);
    expect(deployed.stdout).not.toMatch(/^ {2}\+/m);
    console.log(`vws deploy --wait, stderr:\n${deployed.stderr}`);

    // show --json: the API's answer, nothing else on stdout.
    const shown = await alice('--json', 'show', id!);
    expectExit(shown, 0);
    const ws = JSON.parse(shown.stdout) as { id: string; state: string; obtainedIp: string; network: { ip: string } };
    expect(ws).toMatchObject({ id, state: 'Running', node: 'vmm1' });
    expect(ws.obtainedIp).toBe(ws.network.ip);
    expect(deployed.stdout).toContain(`DHCP lease ${ws.obtainedIp}`);

    // list --json, with the configuration file named by VWS_CLI_CONFIG (visibility lags a little).
    const listed = await eventually(
      30,
      async () => {
        const r = await vws(['--json', 'list'], { VWS_CLI_CONFIG: aliceConfig });
        expectExit(r, 0);
        const all = (JSON.parse(r.stdout) as { workspaces: Array<{ id: string; state?: string }> }).workspaces;
        return all.some((w) => w.id === id) ? all : null;
      },
      'the workspace in the list',
      1000,
    );
    expect(listed.map((w) => w.id)).toContain(id);

    // Another client: its token does not see alice's workspace (404 → exit 4), nor lists it.
    const foreign = await bob('show', id!);
    expectExit(foreign, 4);
    expect(foreign.stderr).toContain(`404 Not Found\n  no workspace ${id}`);
    expect(foreign.stdout).toBe('');
    const bobs = await bob('--json', 'list');
    expectExit(bobs, 0);
    expect((JSON.parse(bobs.stdout) as { workspaces: Array<{ id: string }> }).workspaces.map((w) => w.id)).not.toContain(id);
    expectExit(await bob('pause', id!), 4);

    // pause and unpause --wait: each transition on stderr, the settled state on stdout. The pause goes
    // through an API without event streams: the CLI says so and polls instead.
    const paused = await alice('--api', noEventsUrl, 'pause', id!, '--wait');
    expectExit(paused, 0);
    expect(paused.stderr).toContain('live events unavailable: GET /workspaces/');
    expect(paused.stderr).toContain('answered 404; polling');
    expect(progressLines(paused.stderr).pop()).toMatch(/ {2}Paused {2}/);
    expect(paused.stdout).toMatch(/^state {6}Paused$/m);
    expect(await stack.vmStatus(id!)).toBe('paused');
    // Refused in this state: 409 → exit 5, naming the state.
    const refused = await alice('reboot', id!);
    expectExit(refused, 5);
    expect(refused.stderr).toContain('Paused');
    const unpaused = await alice('unpause', id!, '--wait');
    expectExit(unpaused, 0);
    expect(progressLines(unpaused.stderr).pop()).toMatch(/ {2}Running {2}/);
    expect(unpaused.stdout).toMatch(/^state {6}Running$/m);
    expect(unpaused.stderr).not.toContain('live events unavailable');
    expect(await stack.vmStatus(id!)).toBe('running');

    // Bad input: refused naming the field, exit 2, nothing created.
    const grants = (await stack.grants()).length;
    const negative = await alice('deploy', '--image', 'sample', '--memory', '-5');
    expectExit(negative, 2);
    expect(negative.stderr).toMatch(/--memory/);
    const zero = await alice('deploy', '--image', 'sample', '--memory', '0');
    expectExit(zero, 2);
    expect(zero.stderr).toMatch(/400 Invalid request\n {2}memoryMiB: /);
    const unknown = await alice('show', 'ws-000000000000');
    expectExit(unknown, 4);
    expect((await stack.grants()).length).toBe(grants);

    // destroy --wait --json: progress on stderr, stdout is exactly the final JSON.
    const destroyed = await alice('--json', 'destroy', id!, '--wait');
    expectExit(destroyed, 0);
    expect(JSON.parse(destroyed.stdout)).toMatchObject({ id, state: 'Cancelled', task: null });
    expect(progressLines(destroyed.stderr).pop()).toMatch(/ {2}Cancelled {2}copied [\d.]+ MiB$/);
    expect(destroyed.stderr).not.toContain('live events unavailable');

    // Nothing is left: no VM, tap, DHCP entry or lease, nft table, files, and no grant (tests run serially,
    // so anything new on vmm1 since the stack started is this test's).
    expect(await stack.leftovers()).toEqual([]);
    expect(await stack.grants()).toEqual([]);
    expect(await stack.vmStatus(id!)).toBe('absent');
    // A second destroy is refused in state Cancelled (exit 5).
    const again = await alice('destroy', id!);
    expectExit(again, 5);
    expect(again.stderr).toContain('Cancelled');
  });

  it('reports a configuration it cannot use, naming the file and the field (exit 2)', async () => {
    const bad = join(home, 'bad.yaml');
    writeFileSync(bad, stringify({ api: 'not a url', colour: 'red' }));
    const r = await vws(['--config', bad, 'list']);
    expectExit(r, 2);
    expect(r.stderr).toContain(bad);
    expect(r.stderr).toMatch(/api: /);
    expect(r.stderr).toMatch(/colour/);
    const missing = await vws(['list'], { VWS_CLI_CONFIG: join(home, 'nothing.yaml') });
    expectExit(missing, 2);
    expect(missing.stderr).toContain('nothing.yaml');
    // The API cannot be reached: exit 3.
    expectExit(await vws(['list'], { VWS_API: 'http://127.0.0.1:59999', VWS_TOKEN: 'x' }), 3);
  });
});
