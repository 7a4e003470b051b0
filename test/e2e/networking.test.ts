/**
 * Networking on the testbed with real VMs (issue 5): pools per network, DHCP on the node (public) and
 * centrally on the head (private), anti-spoofing nft rules proved by traffic, nothing left after
 * destroy, clean refusals, and an address that stays held while its VM's destroy keeps failing.
 *
 * Addresses: public 10.213.0.30-.32 and .36, private 10.214.0.30-.31 (the testbed's second network).
 */
import { join } from 'node:path';
import { eventually, exec, PRIVATE_NET, startStack, type Stack } from '../helpers/stack';
import { guestShell, received } from '../helpers/guest-shell';
import { deploy, settled, show, type Ws } from '../helpers/workspace';

type Nic = { network: string; ip: string; mac: string; hostname: string; obtainedIp?: string };
const nicsOf = (ws: Ws) => ws.nics as Nic[];
const ipOn = (ws: Ws, network: string) => nicsOf(ws).find((n) => n.network === network)!.ip;

async function destroyAll(stack: Stack, ids: string[]): Promise<void> {
  for (const id of ids) await stack.call('alice', 'DELETE', `/workspaces/${id}`);
  for (const id of ids) await eventually(120, async () => (await show(stack, id)).state === 'Cancelled', `${id} Cancelled`);
}

describe('networks, DHCP and anti-spoofing on two nodes', () => {
  let stack: Stack;
  let a: Ws;
  let b: Ws;
  let c: Ws;

  beforeAll(async () => {
    stack = await startStack({
      label: 'networking',
      first: '10.213.0.30',
      last: '10.213.0.32',
      nodes: ['vmm1', 'vmm2'],
      networks: [
        {
          name: PRIVATE_NET.name,
          subnet: PRIVATE_NET.subnet,
          gateway: PRIVATE_NET.gateway,
          ranges: [{ first: '10.214.0.30', last: '10.214.0.31', hostnamePrefix: 'priv-' }],
          dhcp: { on: 'head', interface: PRIVATE_NET.headInterface },
        },
      ],
    });
  });

  afterAll(async () => {
    await stack?.stop();
  });

  it('gives three VMs on two nodes exactly their assigned addresses by DHCP, and they reach each other', async () => {
    // 400 MiB each: two fit on vmm1 (1024 MiB), the third goes to vmm2.
    // Each is allocated before the next is asked for, so placement is greedy in this order.
    const ids: string[] = [];
    for (const body of [{ nics: [{ network: 'public' }, { network: 'private' }] }, { nics: [{ network: 'public' }, { network: 'private' }] }, {}]) {
      const id = await deploy(stack, { memoryMiB: 400, ...body });
      await eventually(60, async () => (await show(stack, id)).node, `${id} allocated`);
      ids.push(id);
    }
    [a, b, c] = await Promise.all(ids.map((id) => settled(stack, id, 'Running', 180)));
    expect([a.node, b.node, c.node]).toEqual(['vmm1', 'vmm1', 'vmm2']);
    for (const ws of [a, b, c]) {
      for (const nic of nicsOf(ws)) expect(nic.obtainedIp).toBe(nic.ip);
    }
    expect(nicsOf(c).map((n) => n.network)).toEqual(['public']);
    expect(nicsOf(a)[1]).toMatchObject({ network: 'private', hostname: expect.stringMatching(/^priv-10-214-0-3[01]$/) });

    // Node-side delivery for public (each node's own dnsmasq), central delivery on the head for private.
    const hosts = async (file: string) => (await exec.readFile(file)) ?? '';
    const vmm1Public = await hosts('/var/lib/vws/testbed/hosts/vmm1/node/dhcp/public/hosts');
    const vmm2Public = await hosts('/var/lib/vws/testbed/hosts/vmm2/node/dhcp/public/hosts');
    const headPrivate = await hosts(join(stack.config.stateDir, 'dhcp/private/hosts'));
    expect(vmm1Public).toContain(nicsOf(a)[0].mac);
    expect(vmm1Public).toContain(nicsOf(b)[0].mac);
    expect(vmm1Public).not.toContain(nicsOf(c)[0].mac);
    expect(vmm2Public).toContain(nicsOf(c)[0].mac);
    expect(headPrivate).toContain(nicsOf(a)[1].mac);
    expect(headPrivate).toContain(nicsOf(b)[1].mac);

    // The guests' own view, and traffic between them across nodes and on both networks.
    const fromA = await guestShell(ipOn(a, 'public'), `ip -4 -o addr show; for t in ${ipOn(b, 'public')} ${ipOn(c, 'public')} ${ipOn(b, 'private')}; do ping -c 2 -W 2 $t; done`);
    expect(fromA).toMatch(new RegExp(`eth0\\s+inet ${ipOn(a, 'public').replace(/\./g, '\\.')}/24`));
    expect(fromA).toMatch(new RegExp(`eth1\\s+inet ${ipOn(a, 'private').replace(/\./g, '\\.')}/24`));
    for (const t of [ipOn(b, 'public'), ipOn(c, 'public'), ipOn(b, 'private')]) expect(received(fromA, t)).toBeGreaterThan(0);
    const fromC = await guestShell(ipOn(c, 'public'), `ping -c 2 -W 2 ${ipOn(a, 'public')}`);
    expect(received(fromC, ipOn(a, 'public'))).toBeGreaterThan(0);
  });

  it('cuts off a VM that gives itself another address, and lets it back when it returns to its own', async () => {
    const spoof = '10.213.0.39'; // in the subnet, in no pool
    const own = ipOn(b, 'public');
    const peer = ipOn(c, 'public');
    // The guest changes its address in the background (this connection dies with it), pings the peer from
    // the spoofed address, then takes its own address back.
    const script = [
      `ip addr flush dev eth0; ip addr add ${spoof}/24 dev eth0; ip route replace default via 10.213.0.1 dev eth0`,
      `ping -c 3 -W 1 ${peer} > /tmp/spoof.out 2>&1`,
      `ip addr flush dev eth0; ip addr add ${own}/24 dev eth0; ip route replace default via 10.213.0.1 dev eth0; ip neigh flush all`,
    ].join('; ');
    await guestShell(own, `(sleep 1; ${script}) </dev/null >/dev/null 2>&1 & echo started`);
    // From the head: the spoofed address does not answer while the guest holds it.
    await new Promise((r) => setTimeout(r, 2500));
    const headPing = await exec.run(['ping', '-c', '2', '-W', '1', spoof], { okCodes: [0, 1] });
    expect(headPing.code).toBe(1);
    // Back on its own address, the guest is reachable again and its spoofed pings got nothing.
    const out = await eventually(60, async () => guestShell(own, 'cat /tmp/spoof.out', 10_000).catch(() => null), 'the guest back on its own address');
    expect(received(out, peer)).toBe(0);
    const after = await guestShell(own, `ping -c 2 -W 2 ${peer}`);
    expect(received(after, peer)).toBeGreaterThan(0);
    // The drop rules counted the spoofed frames.
    const table = await exec.run(['ip', 'netns', 'exec', 'vmm1', 'nft', 'list', 'table', 'bridge', `vws_vw${b.id.slice(3)}0`]);
    const drops = [...table.stdout.matchAll(/counter packets (\d+) bytes \d+ drop/g)].map((m) => Number(m[1]));
    expect(drops.some((n) => n > 0)).toBe(true);
  });

  it('removes entries, rules and taps with the VMs, and frees their addresses', async () => {
    await destroyAll(stack, [a.id, b.id, c.id]);
    expect(await stack.grants()).toEqual([]);
    expect(await stack.leftovers()).toEqual([]);
    // The first address of the pool is handed out again.
    const d = await deploy(stack, { targetState: 'Propagated' });
    const ws = await settled(stack, d, 'Propagated');
    expect(ws.network).toMatchObject({ ip: '10.213.0.30' });
    await destroyAll(stack, [d]);
    expect(await stack.leftovers()).toEqual([]);
  });

  it('refuses an exhausted pool, an unknown network and too many NICs clearly, holding nothing', async () => {
    const p = [await deploy(stack, { targetState: 'Propagated', nics: [{ network: 'private' }] }), await deploy(stack, { targetState: 'Propagated', nics: [{ network: 'private' }] })];
    await Promise.all(p.map((id) => settled(stack, id, 'Propagated')));
    // The factory reserves before it starts anything: the refusal is the create's answer, and not even
    // the public address of the request is held.
    const third = await stack.call('alice', 'POST', '/workspaces', { image: 'sample', targetState: 'Propagated', nics: [{ network: 'public' }, { network: 'private' }] });
    expect(third.status).toBe(409);
    expect(third.body).toMatchObject({ type: 'urn:vws:problem:NoCapacity' });
    expect(String(third.body.detail)).toMatch(/network private has no free address \(2 in pool, all held\)/);
    expect(await stack.grants()).toHaveLength(2);

    const unknown = await stack.call('alice', 'POST', '/workspaces', { image: 'sample', nics: [{ network: 'public' }, { network: 'dmz' }] });
    expect(unknown.status).toBe(400);
    expect(JSON.stringify(unknown.body)).toMatch(/nics\.1\.network.*no network dmz at this site/);
    const many = await stack.call('alice', 'POST', '/workspaces', { image: 'sample', nics: Array(5).fill({ network: 'public' }) });
    expect(many.status).toBe(400);
    expect(JSON.stringify(many.body)).toMatch(/"nics".*at most 4/);
    expect(await stack.grants()).toHaveLength(2);

    await destroyAll(stack, p);
    expect(await stack.grants()).toEqual([]);
    expect(await stack.leftovers()).toEqual([]);
  });
});

describe('an address whose VM is not confirmed destroyed is never handed out again (Nimbus bug 101)', () => {
  let stack: Stack;

  beforeAll(async () => {
    // One address, on vmm2 (SSH mode, so the test can inject failures into the node's real commands).
    stack = await startStack({ label: 'networking-destroy', first: '10.213.0.36', last: '10.213.0.36', node: 'vmm2' });
  });

  afterAll(async () => {
    stack?.injectFault(null);
    await stack?.stop();
  });

  it('keeps the address held while destroy fails, and frees it once the VM is confirmed gone', async () => {
    const id = await deploy(stack);
    await settled(stack, id, 'Running');
    // INJECTED FAILURE: every SIGKILL the driver sends fails, so destroyVm cannot confirm the VM gone.
    stack.injectFault((node, argv) => (node === 'vmm2' && argv[0] === 'kill' && argv[1] === '-KILL' ? 'kill refused' : null));
    expect((await stack.call('alice', 'DELETE', `/workspaces/${id}`)).status).toBe(202);
    await new Promise((r) => setTimeout(r, 8000));
    const stuck = await show(stack, id);
    expect(stuck).toMatchObject({ task: 'destroying' });
    expect(await stack.vmStatus(id)).toBe('running');
    expect(((await stack.grants()) as Array<{ holder: string }>).map((g) => g.holder)).toEqual([expect.stringMatching(new RegExp(`${id}$`))]);

    // Another request for the pool is refused: its only address still belongs to a live VM.
    const other = await stack.call('alice', 'POST', '/workspaces', { image: 'sample', targetState: 'Propagated' });
    expect(other.status).toBe(409);
    expect(String(other.body.detail)).toMatch(/network public has no free address/);

    // The node recovers: destroy is confirmed, and only then does the address come back.
    stack.injectFault(null);
    await eventually(90, async () => (await show(stack, id)).state === 'Cancelled', `${id} Cancelled after the fault cleared`);
    expect(await stack.vmStatus(id)).toBe('absent');
    expect(await stack.grants()).toEqual([]);
    expect(await stack.leftovers()).toEqual([]);
    const again = await deploy(stack, { targetState: 'Propagated' });
    expect((await settled(stack, again, 'Propagated')).network).toMatchObject({ ip: '10.213.0.36' });
    await destroyAll(stack, [again]);
    expect(await stack.leftovers()).toEqual([]);
  });
});
