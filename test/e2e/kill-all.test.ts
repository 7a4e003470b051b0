/**
 * The emergency stop through vws (`vws admin kill-all`, `POST /admin/kill-all`) on a real VM: clients are
 * refused and an unconfirmed request starts nothing; the admin's kill-all destroys the VM on the node,
 * leaves the node's memory at its configured value, destroys the workspace through its workflow, and
 * leaves nothing: no VM, tap, DHCP entry, files or grant. It destroys every VM on the stack's node (vmm1),
 * a demo's too: tests run serially.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { eventually, startStack, type Stack } from '../helpers/stack';
import { deploy, settled } from '../helpers/workspace';

jest.setTimeout(600_000);

const CLI = join(__dirname, '../../dist/cli/vws.js');
let stack: Stack;
beforeAll(async () => {
  // bob is the site's admin; alice a client.
  stack = await startStack({ label: 'kill-all', first: '10.213.0.87', last: '10.213.0.89', clients: { bob: { admin: true } } });
});
afterAll(async () => {
  await stack?.stop();
});

/** The CLI as `who` (its exit code, stdout and stderr). */
async function vws(who: 'alice' | 'bob', ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: '/nonexistent', VWS_API: stack.api, VWS_TOKEN: stack.tokens[who] };
    const r = await promisify(execFile)(process.execPath, [CLI, ...args], { timeout: 300_000, env });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof err.code === 'number' ? err.code : -1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

describe('kill-all', () => {
  it('destroys the running VM on every node, then the workspace, leaving nothing; clients and unconfirmed requests are refused', async () => {
    const id = await deploy(stack);
    await settled(stack, id, 'Running');
    expect(await stack.vmStatus(id)).toBe('running');

    // A client is not an admin (403: exit 8); without --yes the CLI sends nothing (usage: exit 2); an
    // unconfirmed body is 400 naming the field.
    expect((await vws('alice', 'admin', 'kill-all', '--yes')).code).toBe(8);
    expect((await vws('bob', 'admin', 'kill-all')).code).toBe(2);
    const unconfirmed = await stack.call('bob', 'POST', '/admin/kill-all', { confirm: 'yes' });
    expect(unconfirmed.status).toBe(400);
    expect(unconfirmed.body).toMatchObject({ errors: [{ field: 'confirm' }] });
    expect(await stack.vmStatus(id)).toBe('running');

    const killed = await vws('bob', '--json', 'admin', 'kill-all', '--yes');
    expect(killed).toMatchObject({ code: 0 });
    const d = JSON.parse(killed.stdout) as { state: string; report: { nodes: Array<{ node: string; destroyed: string[]; failed: unknown[]; memoryMiB: number; configuredMiB: number }>; workspaces: unknown } };
    expect(d.state).toBe('done');
    expect(d.report.nodes).toEqual([expect.objectContaining({ node: 'vmm1', destroyed: [id], failed: [] })]);
    expect(d.report.nodes[0].memoryMiB).toBe(d.report.nodes[0].configuredMiB);
    expect(d.report.workspaces).toEqual({ destroyed: 1, failed: [] });
    expect(await stack.vmStatus(id)).toBe('absent');
    await eventually(60, async () => (await stack.call('alice', 'GET', `/workspaces/${id}`)).body.state === 'Cancelled', `${id} Cancelled`);
    expect(await stack.leftovers()).toEqual([]);
    expect(await stack.grants()).toEqual([]);
  });
});
