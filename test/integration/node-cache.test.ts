/**
 * The node cache and propagation on real files with a real HTTP server (Range requests, as the head's
 * repository serves them): one copy for concurrent propagations of one image, 0 bytes for a cached one,
 * resume of an interrupted copy, LRU eviction that spares bases in use, and overlays that never write
 * the base. The executor is the real LocalExecutor on a temporary node directory.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createNodeCache, cachePaths } from '../../src/activities/images/cache';
import { createImageActivities } from '../../src/activities/images/propagate';
import { nodePaths } from '../../src/activities/node-paths';
import type { ResolvedImage } from '../../src/domain/workspace';
import { LocalExecutor } from '../../src/exec/local';
import { fileServer, type FileServer } from '../helpers/file-server';

const exec = new LocalExecutor();
let dir: string;
let server: FileServer;
let base: string;

function image(name: string, bytes: Buffer): ResolvedImage {
  writeFileSync(join(dir, 'repo', name), bytes);
  return { name, url: `${base}/${name}`, sha256: createHash('sha256').update(bytes).digest('hex'), sizeBytes: bytes.length };
}

beforeAll(async () => {
  dir = mkdtempSync('/tmp/vws-cache-');
  await exec.mkdir(join(dir, 'repo'));
  server = await fileServer(join(dir, 'repo'));
  base = server.url;
});

afterAll(async () => {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

function activities(node: string, cacheMaxBytes = 1 << 30, owner?: () => string) {
  const paths = nodePaths(join(dir, node));
  const acts = createImageActivities({ exec, paths, repositoryToken: () => 't', diskFormat: 'qcow2', cacheMaxBytes, progress: () => undefined, ...(owner ? { owner } : {}) });
  return { acts, paths };
}

test('concurrent propagations of one image to one node copy it once; a later one copies 0 bytes; the base is never written', async () => {
  const img = image('shared.raw', randomBytes(6 * 1024 * 1024));
  const { acts, paths } = activities('n1');
  let n = 0;
  const results = await Promise.all(
    ['ws-000000000001', 'ws-000000000002', 'ws-000000000003'].map((workspaceId) =>
      createImageActivities({ exec, paths, repositoryToken: () => 't', diskFormat: 'qcow2', cacheMaxBytes: 1 << 30, progress: () => undefined, owner: () => `o${++n}` }).propagateImage({
        workspaceId,
        image: img,
      }),
    ),
  );
  expect(results.map((r) => r.bytesCopied).sort((a, b) => a - b)).toEqual([0, 0, img.sizeBytes]);
  const later = await acts.propagateImage({ workspaceId: 'ws-000000000004', image: img });
  expect(later.bytesCopied).toBe(0);
  // Each workspace has its own overlay over the one cached base, which still has its digest.
  const { base: cached } = cachePaths(paths, img.sha256);
  for (const r of [...results, later]) {
    const info = JSON.parse((await exec.run(['qemu-img', 'info', '--output=json', r.rootDisk])).stdout) as { format: string; 'backing-filename': string };
    expect(info).toMatchObject({ format: 'qcow2', 'backing-filename': cached });
  }
  await exec.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x5a 0 1M', results[0].rootDisk]);
  expect(createHash('sha256').update(readFileSync(cached)).digest('hex')).toBe(img.sha256);
  expect(readdirSync(paths.cache).filter((f) => /\.(part|lock)$/.test(f))).toEqual([]);
});

test('an interrupted copy resumes from its .part with a Range request instead of starting over', async () => {
  const bytes = randomBytes(4 * 1024 * 1024);
  const img = image('resume.raw', bytes);
  const { acts, paths } = activities('n2');
  const { part } = cachePaths(paths, img.sha256);
  await exec.mkdir(paths.cache);
  writeFileSync(part, bytes.subarray(0, 1_500_000)); // what a killed worker left
  server.seen.length = 0;
  const r = await acts.propagateImage({ workspaceId: 'ws-000000000010', image: img });
  expect(r).toMatchObject({ resumedFromBytes: 1_500_000, bytesCopied: bytes.length - 1_500_000 });
  expect(server.seen).toEqual([{ path: '/resume.raw', range: 'bytes=1500000-' }]);
  expect(createHash('sha256').update(readFileSync(cachePaths(paths, img.sha256).base)).digest('hex')).toBe(img.sha256);
});

test('a wrong digest removes the partial copy and fails typed, non-retryable', async () => {
  const img = { ...image('bad.raw', randomBytes(1024 * 1024)), sha256: 'a'.repeat(64) };
  const { acts, paths } = activities('n3');
  await expect(acts.propagateImage({ workspaceId: 'ws-000000000020', image: img })).rejects.toMatchObject({ type: 'DigestMismatch', nonRetryable: true });
  expect(readdirSync(paths.cache).filter((f) => !f.endsWith('.used'))).toEqual([]);
});

test('a lock held by another live copier makes a propagation wait; the same owner takes its own lock over', async () => {
  const img = image('locked.raw', randomBytes(1024 * 1024));
  const { paths } = activities('n4');
  const cache = createNodeCache({ exec, paths, maxBytes: 1 << 30 });
  const held = await cache.lock(img.sha256, 'someone-else');
  const { acts } = activities('n4', 1 << 30, () => 'me');
  let done = false;
  const run = acts.propagateImage({ workspaceId: 'ws-000000000030', image: img }).then((r) => ((done = true), r));
  await new Promise((r) => setTimeout(r, 1500));
  expect(done).toBe(false);
  await held.release();
  expect((await run).bytesCopied).toBe(img.sizeBytes);
  // A retried activity (same owner) does not wait for the lock its dead attempt left.
  const again = await cache.lock(img.sha256, 'me');
  const t0 = Date.now();
  const mine = await cache.lock(img.sha256, 'me');
  expect(Date.now() - t0).toBeLessThan(1000);
  await mine.release();
  await again.release();
});

test('eviction removes least recently used bases down to the limit, never one a live workspace uses', async () => {
  const MiB = 1024 * 1024;
  const { paths } = activities('n5');
  let clock = 1_000;
  const propagate = (workspaceId: string, img: ResolvedImage) =>
    createImageActivities({ exec, paths, repositoryToken: () => 't', diskFormat: 'qcow2', cacheMaxBytes: 5 * MiB, progress: () => undefined }).propagateImage({ workspaceId, image: img });
  const cacheAt = () => createNodeCache({ exec, paths, maxBytes: 5 * MiB, now: () => clock });
  const a = image('a.raw', randomBytes(2 * MiB));
  const b = image('b.raw', randomBytes(2 * MiB));
  const c = image('c.raw', randomBytes(2 * MiB));
  await propagate('ws-0000000000a1', a);
  await cacheAt().touch(a.sha256); // a: oldest use
  clock = 2_000;
  await propagate('ws-0000000000b1', b);
  await cacheAt().touch(b.sha256);
  await exec.remove(join(paths.workspaces, 'ws-0000000000b1')); // b is no longer used by anyone
  clock = 3_000;
  // a is the least recently used, but its workspace is live: b goes instead.
  expect(await cacheAt().evictFor(c.sizeBytes)).toEqual([b.sha256]);
  await propagate('ws-0000000000c1', c);
  const left = readdirSync(paths.cache).filter((f) => f.endsWith('.raw'));
  expect(left.sort()).toEqual([`${a.sha256}.raw`, `${c.sha256}.raw`].sort());
  // Nothing unused is left to evict: the cache stays over its limit rather than break a live overlay.
  await exec.remove(join(paths.workspaces, 'ws-0000000000c1'));
  expect(await cacheAt().evictFor(4 * MiB)).toEqual([c.sha256]);
});
