/**
 * Images end to end on the testbed, with real files, real transports and real VMs (issue 4):
 *
 * - stage-in from http:// and sftp:// URLs with digests, a blank ext4 partition and an image partition;
 *   the VM boots from its qcow2 overlay and writes to its disk while the cached base keeps its digest;
 *   shutdown-save to an alternate sftp:// target (vmm3's sshd) leaves a file whose sha256 the workspace
 *   reports, holding what the guest wrote;
 * - the node cache: two propagations of one new image at once copy it once, a third copies 0 bytes,
 *   in both node modes (vmm1 pulls from the head; vmm2 is pushed to over SFTP);
 * - a wrong digest: Corrupted with the reason, nothing in the repository;
 * - bad input, each refused naming its field, with nothing created;
 * - killing the node worker in the middle of a large copy: the copy resumes where it stopped.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { stageLocalFile, sha256File } from '../../src/repository';
import { eventually, exec, GUEST_DISK, startStack, TESTBED_DIR, testNodes, type Stack } from '../helpers/stack';
import { fileServer, type FileServer } from '../helpers/file-server';
import { deploy, destroyAndCheck, operate, settled, show } from '../helpers/workspace';

const VMM3 = '10.213.0.13';
/** vmm3's node directory as the head sees it (its /var/lib/vws/node is a bind mount of this). */
const VMM3_DIR = join(TESTBED_DIR, 'hosts', 'vmm3', 'node');
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** A TCP port that was free a moment ago. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const port = (server.address() as AddressInfo).port;
  await new Promise((ok) => server.close(ok));
  return port;
}

/** What the repository holds besides the images a test staged itself: partial copies, intermediates. */
function repositoryLeftovers(stack: Stack): string[] {
  const dir = stack.config.repository.dir;
  const staging = join(dir, '.staging');
  return [
    ...readdirSync(dir).filter((f) => /^out-|\.part$|\.upload-/.test(f)),
    ...(statSync(staging, { throwIfNoEntry: false }) ? readdirSync(staging).map((f) => `.staging/${f}`) : []),
  ];
}

describe('images on vmm1 (node worker)', () => {
  let stack: Stack;
  let src: FileServer;
  let srcDir: string;
  /** A port where nothing listens (an unreachable source). */
  let closedPort: number;
  const exportsDir = join(VMM3_DIR, 'exports');
  const sftpImages = join(VMM3_DIR, 'images');

  beforeAll(async () => {
    mkdirSync(exportsDir, { recursive: true });
    mkdirSync(sftpImages, { recursive: true });
    srcDir = mkdtempSync('/tmp/vws-sources-');
    writeFileSync(join(srcDir, 'guest.raw'), readFileSync(GUEST_DISK));
    src = await fileServer(srcDir);
    closedPort = await freePort();
    stack = await startStack({
      label: 'images',
      first: '10.213.0.180',
      last: '10.213.0.185',
      node: 'vmm1',
      aliceStageOutTargets: [`sftp://root@${VMM3}/var/lib/vws/node/exports/`],
      config: {
        images: {
          // The test's file server, a port where nothing listens, and a directory on vmm3.
          sources: [`${src.url}/`, `http://127.0.0.1:${closedPort}/`, `sftp://root@${VMM3}/var/lib/vws/node/images/`],
          maxBlankMiB: 1024,
          maxExtraPartitions: 2,
          probeTimeoutSeconds: 5,
        },
      },
    });
  });
  afterAll(async () => {
    await src?.close();
    await stack?.stop();
    rmSync(exportsDir, { recursive: true, force: true });
    rmSync(sftpImages, { recursive: true, force: true });
    rmSync(srcDir, { recursive: true, force: true });
  });

  test('URL stage-in with digests, partitions, an overlay the guest writes, and shutdown-save to an sftp target', async () => {
    const guestDigest = await sha256File(GUEST_DISK);
    const data = randomBytes(4 * 1024 * 1024);
    writeFileSync(join(sftpImages, 'data.raw'), data);
    const id = await deploy(stack, {
      image: `${src.url}/guest.raw`,
      imageSha256: guestDigest,
      partitions: [{ blankMiB: 64, filesystem: 'ext4' }, { image: `sftp://root@${VMM3}/var/lib/vws/node/images/data.raw`, sha256: sha256(data) }],
    });
    const ws = await settled(stack, id, 'Running', 180);
    expect(ws.stagedIn).toEqual([
      { index: 0, name: `staged-${guestDigest}`, sha256: guestDigest, bytesCopied: statSync(GUEST_DISK).size },
      { index: 2, name: `staged-${sha256(data)}`, sha256: sha256(data), bytesCopied: data.length },
    ]);
    // The guest saw both partitions: the blank ext4 one (64 MiB = 131072 sectors) and the image one.
    const console = await eventually(30, async () => ((await stack.console(id)).includes('disk vdc') ? stack.console(id) : null), 'the guest to list its disks');
    expect(console).toMatch(/VWS-GUEST: disk vdb sectors=131072 fs=ext4/);
    expect(console).toMatch(new RegExp(`VWS-GUEST: disk vdc sectors=${data.length / 512} fs=none`));

    // The guest wrote boots.log to its root disk, in its overlay: the cached base is unchanged.
    const base = join(stack.nodeDir, 'cache', `${guestDigest}.raw`);
    expect(await sha256File(base)).toBe(guestDigest);

    const target = `sftp://root@${VMM3}/var/lib/vws/node/exports/${id}.raw`;
    const { ws: saved } = await operate(stack, id, 'shutdown-save', 'StagedOut', { target });
    const file = join(exportsDir, `${id}.raw`);
    const digest = (await exec.run(['sha256sum', file])).stdout.split(' ')[0];
    expect(saved.saved).toEqual({ disk: target, sha256: digest, sizeBytes: statSync(file).size });
    expect(digest).not.toBe(guestDigest);
    const boots = (await exec.run(['debugfs', '-R', 'cat /boots.log', file])).stdout;
    expect(boots).toContain(`host=${saved.network!.hostname}`);
    expect(await sha256File(base)).toBe(guestDigest);
    expect(repositoryLeftovers(stack)).toEqual([]);
    await destroyAndCheck(stack, id);
    await stack.recordHistory(id, 'images-url-stage-in-sftp-target');
    // Cancelled removed the workspace's files on the node, and nothing shared.
    expect(await sha256File(base)).toBe(guestDigest);
  });

  test('a wrong digest makes the workspace Corrupted with the reason and leaves nothing in the repository', async () => {
    const before = readdirSync(stack.config.repository.dir).sort();
    const id = await deploy(stack, { image: `${src.url}/guest.raw`, imageSha256: 'f'.repeat(64) });
    const ws = await settled(stack, id, 'Corrupted', 60);
    expect(ws).toMatchObject({ heading: 'Unpropagated' });
    expect(ws.reason).toMatch(/sha256/);
    expect(ws.reason).toContain('f'.repeat(64));
    // Nothing new under a repository name (the .staging directory may now exist, empty).
    expect(readdirSync(stack.config.repository.dir).filter((f) => f !== '.staging').sort()).toEqual(before.filter((f) => f !== '.staging'));
    expect(repositoryLeftovers(stack)).toEqual([]);
    await destroyAndCheck(stack, id);
    await stack.recordHistory(id, 'images-stage-in-digest-mismatch');
  });

  test('bad input is refused naming the field, and nothing is created', async () => {
    const cases: Array<[Record<string, unknown>, string, RegExp]> = [
      [{ image: 'ftp://example.org/x.raw' }, 'image', /scheme/],
      [{ image: `${src.url}/missing.raw` }, 'image', /404|not found|missing/i],
      [{ image: `http://127.0.0.1:${closedPort}/x.raw` }, 'image', /refused|unreachable|connect/i],
      [{ image: 'https://example.org/x.raw' }, 'image', /not under an allowed image source/],
      [{ image: 'sample', unpropagationTarget: `sftp://root@${VMM3}/etc/x.raw` }, 'unpropagationTarget', /not under a target this client may write/],
      [{ image: 'sample', partitions: [{ blankMiB: 4096 }] }, 'partitions.0.blankMiB', /over the site's limit/],
      [{ image: 'sample', partitions: [{ blankMiB: 8 }, { blankMiB: 8 }, { blankMiB: 8 }] }, 'partitions', /at most 2/],
      [{ image: 'sample', imageSha256: 'f'.repeat(64) }, 'imageSha256', /goes with an image URL/],
      [{ image: 'sample', partitions: [{ blankMiB: 8 }], shutdownMechanism: 'Serialize' }, 'shutdownMechanism', /partitions/],
    ];
    for (const [body, field, message] of cases) {
      const r = await stack.call('alice', 'POST', '/workspaces', { memoryMiB: 128, ...body });
      expect({ body, status: r.status }).toEqual({ body, status: 400 });
      const errors = r.body.errors as Array<{ field: string; message: string }>;
      expect(errors.map((e) => e.field)).toContain(field);
      expect(errors.find((e) => e.field === field)!.message).toMatch(message);
    }
    // A shutdown-save to a target alice may not write is refused before the workspace is touched.
    const id = await deploy(stack, { targetState: 'Propagated' });
    await settled(stack, id, 'Propagated');
    const r = await stack.call('alice', 'POST', `/workspaces/${id}/shutdown-save`, { target: `sftp://root@${VMM3}/tmp/elsewhere.raw` });
    expect(r.status).toBe(400);
    expect((r.body.errors as Array<{ field: string }>)[0].field).toBe('target');
    expect(await show(stack, id)).toMatchObject({ state: 'Propagated', task: null });
    await destroyAndCheck(stack, id);
    expect(repositoryLeftovers(stack)).toEqual([]);
  });
});

const CACHE_RANGES = { vmm1: ['10.213.0.186', '10.213.0.188'], vmm2: ['10.213.0.189', '10.213.0.191'], xen1: ['10.213.0.250', '10.213.0.252'] } as const;

describe.each(testNodes(['vmm1', 'vmm2', 'xen1']))('node cache on %s', (node) => {
  let stack: Stack;
  /** The node's cache directory, through the executor that reaches it (local for namespaces, SSH for xen1). */
  let cache: string;
  beforeAll(async () => {
    stack = await startStack({ label: `cache-${node}`, first: CACHE_RANGES[node as keyof typeof CACHE_RANGES][0], last: CACHE_RANGES[node as keyof typeof CACHE_RANGES][1], node });
    cache = node === 'xen1' ? '/var/lib/vws/node/cache' : join(stack.nodeDir, 'cache');
  });
  afterAll(() => stack?.stop());

  test('two propagations of one new image at once copy it once; a later one copies 0 bytes', async () => {
    const name = `blob-${stack.config.temporal.prefix}`;
    const file = join(stack.config.stateDir, `${name}.raw`);
    writeFileSync(file, randomBytes(16 * 1024 * 1024));
    const image = await stageLocalFile(stack.config, name, file);
    const ids = await Promise.all([0, 1].map(() => deploy(stack, { image: name, targetState: 'Propagated' })));
    const copied = (await Promise.all(ids.map((id) => settled(stack, id, 'Propagated')))).map((ws) => (ws.propagation as { bytesCopied: number }).bytesCopied);
    expect(copied.sort((a, b) => a - b)).toEqual([0, image.sizeBytes]);
    // The first two go (xen1 has room for two); their base stays cached, so a third copies nothing.
    for (const id of ids) expect((await stack.call('alice', 'DELETE', `/workspaces/${id}`)).status).toBe(202);
    for (const id of ids) await settled(stack, id, 'Cancelled');
    const third = await deploy(stack, { image: name, targetState: 'Propagated' });
    expect((await settled(stack, third, 'Propagated')).propagation).toEqual({ bytesCopied: 0, resumedFromBytes: 0 });
    expect((await stack.call('alice', 'DELETE', `/workspaces/${third}`)).status).toBe(202);
    await settled(stack, third, 'Cancelled');
    expect(await stack.leftovers()).toEqual([]);
    expect(await stack.grants()).toEqual([]);
    // The shared base stays in the cache for the next workspace; only per-workspace files went.
    expect(await stack.nodeExec.exists(join(cache, `${image.sha256}.raw`))).toBe(true);
    await stack.nodeExec.remove(join(cache, `${image.sha256}.raw`));
    await stack.nodeExec.remove(join(cache, `${image.sha256}.used`));
  });
});

describe('resume after the node worker dies mid-copy', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ label: 'resume', first: '10.213.0.192', last: '10.213.0.193', node: 'vmm1' });
  });
  afterAll(() => stack?.stop());

  test('killing the node worker in the middle of a large copy resumes it instead of starting over', async () => {
    const name = `large-${stack.config.temporal.prefix}`;
    const file = join(stack.config.stateDir, `${name}.raw`);
    // Random bytes, so nothing along the way can shortcut the copy; large enough to be caught mid-way.
    const size = 512 * 1024 * 1024;
    await exec.run(['dd', 'if=/dev/urandom', `of=${file}`, 'bs=4M', `count=${size / (4 * 1024 * 1024)}`, 'status=none'], { timeoutMs: 120_000 });
    const image = await stageLocalFile(stack.config, name, file);
    rmSync(file);
    const part = join(stack.nodeDir, 'cache', `${image.sha256}.raw.part`);
    try {
      const id = await deploy(stack, { image: name, targetState: 'Propagated' });
      // The copy's progress (its heartbeat) is visible through the API while it runs.
      const progress = await eventually(60, async () => {
        const p = (await show(stack, id)).progress as { bytes: number; total: number } | undefined;
        return p && p.bytes > 0 ? p : null;
      }, 'copy progress in GET /workspaces/:id', 100);
      expect(progress.total).toBe(size);
      const before = await eventually(120, async () => {
        const n = statSync(part, { throwIfNoEntry: false })?.size ?? 0;
        return n > size / 5 ? n : null;
      }, 'a fifth of the copy', 20);
      stack.killNodeWorker();
      const atKill = statSync(part).size;
      expect(atKill).toBeGreaterThanOrEqual(before);
      expect(atKill).toBeLessThan(size);
      await stack.startNodeWorker();
      const ws = await settled(stack, id, 'Propagated', 240);
      const p = ws.propagation as { bytesCopied: number; resumedFromBytes: number };
      expect(p.resumedFromBytes).toBeGreaterThanOrEqual(atKill);
      expect(p.bytesCopied + p.resumedFromBytes).toBe(size);
      expect(await sha256File(join(stack.nodeDir, 'cache', `${image.sha256}.raw`))).toBe(image.sha256);
      await destroyAndCheck(stack, id);
    } finally {
      await exec.remove(join(stack.nodeDir, 'cache', `${image.sha256}.raw`));
      await exec.remove(join(stack.nodeDir, 'cache', `${image.sha256}.used`));
      await exec.remove(part);
      await exec.remove(join(stack.config.repository.dir, name));
    }
  });
});
