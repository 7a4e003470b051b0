/**
 * Stage-in and stage-out by URL against real parts: local files, an HTTP server started here (node:http,
 * with Range, If-Range, Basic auth, PUT into a real repository via `acceptUpload`), and SFTP to the
 * testbed's vmm3 (10.213.0.13) with the testbed key and pinned known_hosts. Needs `testbed/testbed.sh up`.
 *
 * The sftp source and targets live under vmm3's own /var/lib/vws/node (a per-host bind mount the head
 * does not see), so they can only have travelled over SFTP; checks on vmm3 go through `testbed.sh exec`.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { basename, join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createHeadImageActivities, probeSource } from '../../src/activities/head/images';
import { closeSftpConnections } from '../../src/activities/images/urls';
import { configSchema, type VwsConfig } from '../../src/config/schema';
import { acceptUpload, sha256File, stageLocalFile, UploadRefused } from '../../src/repository';

const TB = process.env.VWS_TESTBED_DIR ?? '/var/lib/vws/testbed';
const KEY = `${TB}/ssh/id_ed25519`;
const KNOWN_HOSTS = `${TB}/ssh/known_hosts`;
const VMM3 = '10.213.0.13';
const TESTBED = join(__dirname, '../../testbed/testbed.sh');
const OWNER = '/O=Grid/OU=vws/CN=alice';

/** Runs argv inside vmm3 (its network, hostname and mounts). */
function onVmm3(argv: string[]): string {
  return execFileSync(TESTBED, ['exec', 'vmm3', '--', ...argv], { encoding: 'utf8' });
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

const root = mkdtempSync('/tmp/vws-image-urls-');
const incoming = join(root, 'incoming');
const outDir = join(root, 'out');
const putRepo = join(root, 'put-repo');
const remoteDir = `/var/lib/vws/node/vws-image-urls-${randomBytes(4).toString('hex')}`;
const sftpBase = `sftp://root@${VMM3}${remoteDir}`;

// 9 MiB and a bit: large enough for a progress report (every 8 MiB), small enough to be quick.
const data = randomBytes(9 * 1024 * 1024 + 4321);
const digest = sha256(data);
const other = randomBytes(1024 * 1024 + 7);
const otherDigest = sha256(other);

// ------------------------------------------------------------------------------------ HTTP server

let server: Server;
let base: string;
/** Requests the server saw, as "METHOD path range". */
const requests: string[] = [];
/** Paths under /flaky/ already served once (cut off in the middle). */
const cutOnce = new Set<string>();

function etagOf(buf: Buffer): string {
  return `"${sha256(buf).slice(0, 16)}"`;
}

/**
 * GET with Range and If-Range (unless `ignoreRange`); `cut` sends half the file and drops the connection,
 * `stall` sends half and then nothing.
 */
function serveFile(req: IncomingMessage, res: ServerResponse, path: string, ignoreRange: boolean, cut: boolean, stall = false): void {
  if (!existsSync(path)) {
    res.writeHead(404).end('no such file');
    return;
  }
  const buf = readFileSync(path);
  const etag = etagOf(buf);
  if (cut) {
    res.writeHead(200, { 'content-length': buf.length, etag });
    res.write(buf.subarray(0, buf.length >> 1), () => setTimeout(() => req.socket.destroy(), 100));
    return;
  }
  if (stall) {
    res.writeHead(200, { 'content-length': buf.length, etag });
    res.write(buf.subarray(0, buf.length >> 1)); // and then nothing, on an open connection
    return;
  }
  const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
  const ifRange = req.headers['if-range'];
  if (!m || ignoreRange || (ifRange !== undefined && ifRange !== etag)) {
    res.writeHead(200, { 'content-length': buf.length, etag, 'accept-ranges': ignoreRange ? 'none' : 'bytes' }).end(buf);
    return;
  }
  const start = Number(m[1]);
  const end = m[2] ? Math.min(Number(m[2]), buf.length - 1) : buf.length - 1;
  if (start >= buf.length) {
    res.writeHead(416, { 'content-range': `bytes */${buf.length}` }).end();
    return;
  }
  res.writeHead(206, { 'content-length': end - start + 1, 'content-range': `bytes ${start}-${end}/${buf.length}`, etag }).end(buf.subarray(start, end + 1));
}

/** PUT into a real repository, as a vws head's /repository endpoint takes it. */
async function acceptPut(req: IncomingMessage, res: ServerResponse, name: string): Promise<void> {
  const config = configSchema.parse({ repository: { dir: putRepo } });
  try {
    await acceptUpload(config, name, req, String(req.headers['x-vws-sha256'] ?? ''));
    res.writeHead(201).end();
  } catch (e) {
    res.writeHead(e instanceof UploadRefused ? e.status : 500).end((e as Error).message);
  }
}

function handle(req: IncomingMessage, res: ServerResponse): void {
  requests.push(`${req.method} ${req.url} ${req.headers.range ?? ''}`);
  const [, mode, name] = new URL(req.url ?? '/', 'http://x').pathname.split('/');
  const path = join(incoming, basename(name ?? ''));
  if (mode === 'hang') return; // never answers
  if (mode === 'put' && req.method === 'PUT') {
    void acceptPut(req, res, name);
    return;
  }
  if (mode === 'auth' && req.headers.authorization !== `Basic ${Buffer.from('user:s3cret').toString('base64')}`) {
    res.writeHead(401).end();
    return;
  }
  if (mode === 'error') {
    res.writeHead(503).end();
    return;
  }
  const cut = mode === 'flaky' && !cutOnce.has(name);
  if (cut) cutOnce.add(name);
  serveFile(req, res, path, mode === 'norange', cut, mode === 'stall');
}

// ------------------------------------------------------------------------------------ set-up

beforeAll(async () => {
  mkdirSync(incoming);
  mkdirSync(outDir);
  writeFileSync(join(incoming, 'src.img'), data);
  writeFileSync(join(incoming, 'other.img'), other);
  server = createServer(handle);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  onVmm3(['mkdir', '-p', `${remoteDir}/out`]);
  onVmm3(['cp', join(incoming, 'src.img'), `${remoteDir}/src.img`]);
});

afterAll(async () => {
  await closeSftpConnections();
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  onVmm3(['rm', '-rf', remoteDir]);
  rmSync(root, { recursive: true, force: true });
});

/** A configuration with its own empty repository; `over` replaces top-level sections. */
function makeConfig(over: Record<string, unknown> = {}): VwsConfig {
  return configSchema.parse({
    repository: { dir: mkdtempSync(join(root, 'repo-')) },
    images: { sources: [`file://${incoming}/`, `${base}/`, `${sftpBase}/`] },
    clients: [
      {
        name: 'alice',
        identity: OWNER,
        tokenFile: join(root, 'alice.token'),
        stageOutTargets: [`file://${outDir}/`, `${sftpBase}/out/`, `${base}/put/`],
      },
      { name: 'bob', identity: '/O=Grid/OU=vws/CN=bob', tokenFile: join(root, 'bob.token') },
    ],
    ssh: { keyFile: KEY, knownHostsFile: KNOWN_HOSTS, connectTimeoutMs: 5000 },
    ...over,
  });
}

function activities(config: VwsConfig, progress: Array<{ bytes: number; total: number }> = []) {
  return createHeadImageActivities({ config, progress: (p) => progress.push(p) });
}

/** The failure a promise rejects with. */
async function failure(p: Promise<unknown>): Promise<ApplicationFailure> {
  try {
    await p;
  } catch (e) {
    return e as ApplicationFailure;
  }
  throw new Error('expected a failure');
}

function expectFailure(f: unknown, type: string, message: RegExp): void {
  expect(f).toBeInstanceOf(ApplicationFailure);
  const af = f as ApplicationFailure;
  expect({ type: af.type, nonRetryable: af.nonRetryable }).toEqual({ type, nonRetryable: true });
  expect(af.message).toMatch(message);
}

/** Names in the repository dir and in its staging dir. */
function repoState(config: VwsConfig): { repo: string[]; staging: string[] } {
  const dir = config.repository.dir;
  const staging = join(dir, '.staging');
  return {
    repo: readdirSync(dir).filter((n) => n !== '.staging').sort(),
    staging: existsSync(staging) ? readdirSync(staging).sort() : [],
  };
}

/** Checks the repository holds exactly `staged-<sha>` and its sidecar, with the right bytes, and no staging leftovers. */
function expectStaged(config: VwsConfig, sha: string, bytes: Buffer): void {
  expect(repoState(config)).toEqual({ repo: [`staged-${sha}`, `staged-${sha}.sha256`], staging: [] });
  expect(readFileSync(join(config.repository.dir, `staged-${sha}.sha256`), 'utf8').trim()).toBe(sha);
  expect(sha256(readFileSync(join(config.repository.dir, `staged-${sha}`)))).toBe(sha256(bytes));
}

// ------------------------------------------------------------------------------------ stage-in

describe('stageIn', () => {
  it('copies a file:// source into the repository as staged-<sha256>, and not again', async () => {
    const config = makeConfig();
    const progress: Array<{ bytes: number; total: number }> = [];
    const acts = activities(config, progress);
    const r = await acts.stageIn({ workspaceId: 'ws-file', index: 0, source: { url: `file://${incoming}/src.img`, sha256: digest } });
    expect(r).toEqual({
      name: `staged-${digest}`,
      url: `${config.repository.url}/staged-${digest}`,
      sha256: digest,
      sizeBytes: data.length,
      bytesCopied: data.length,
      resumedFromBytes: 0,
    });
    expectStaged(config, digest, data);
    expect(progress.length).toBeGreaterThan(0);
    expect(progress.every((p) => p.total === data.length && p.bytes <= data.length)).toBe(true);

    // With the digest given, an image the repository holds is not copied again.
    const again = await acts.stageIn({ workspaceId: 'ws-file2', index: 0, source: { url: `file://${incoming}/src.img`, sha256: digest } });
    expect(again).toMatchObject({ name: `staged-${digest}`, bytesCopied: 0 });
    // Without it, the copy is made, found identical, and dropped.
    const unchecked = await acts.stageIn({ workspaceId: 'ws-file3', index: 1, source: { url: `file://${incoming}/src.img` } });
    expect(unchecked).toMatchObject({ name: `staged-${digest}`, bytesCopied: data.length });
    expectStaged(config, digest, data);
  });

  it('copies an http:// source, with Basic auth from the URL', async () => {
    const config = makeConfig();
    const acts = activities(config);
    const r = await acts.stageIn({ workspaceId: 'ws-http', index: 0, source: { url: `${base}/files/src.img`, sha256: digest } });
    expect(r).toMatchObject({ sha256: digest, sizeBytes: data.length, bytesCopied: data.length, resumedFromBytes: 0 });
    expectStaged(config, digest, data);

    const config2 = makeConfig();
    const authed = `http://user:s3cret@127.0.0.1:${new URL(base).port}/auth/other.img`;
    const r2 = await activities(config2).stageIn({ workspaceId: 'ws-auth', index: 0, source: { url: authed } });
    expect(r2).toMatchObject({ name: `staged-${otherDigest}`, sizeBytes: other.length });
  });

  it('copies an sftp:// source from vmm3 (a path the head itself does not have)', async () => {
    expect(existsSync(remoteDir)).toBe(false);
    const config = makeConfig();
    const r = await activities(config).stageIn({ workspaceId: 'ws-sftp', index: 2, source: { url: `${sftpBase}/src.img`, sha256: digest } });
    expect(r).toMatchObject({ name: `staged-${digest}`, sha256: digest, bytesCopied: data.length, resumedFromBytes: 0 });
    expectStaged(config, digest, data);
  });

  it('heartbeats its progress inside an activity', async () => {
    const config = makeConfig();
    const env = new MockActivityEnvironment();
    const beats: unknown[] = [];
    env.on('heartbeat', (d: unknown) => beats.push(d));
    const acts = createHeadImageActivities({ config });
    await env.run(acts.stageIn, { workspaceId: 'ws-beat', index: 0, source: { url: `${base}/files/src.img` } });
    expect(beats.length).toBeGreaterThan(0);
    expect(beats[0]).toEqual({ bytes: expect.any(Number), total: data.length });
  });

  it.each([
    ['file', () => `file://${incoming}/src.img`],
    ['http', () => `${base}/files/src.img`],
    ['sftp', () => `${sftpBase}/src.img`],
  ])('refuses a %s copy with another digest, and leaves nothing in the repository', async (_scheme, url) => {
    const config = makeConfig();
    const wrong = 'ab'.repeat(32);
    const f = await failure(activities(config).stageIn({ workspaceId: 'ws-bad', index: 0, source: { url: url(), sha256: wrong } }));
    expectFailure(f, 'DigestMismatch', new RegExp(`sha256 ${digest}, not the expected ${wrong}`));
    expect(repoState(config)).toEqual({ repo: [], staging: [] });
  });

  it.each([
    ['a missing file', () => `file://${incoming}/nope.img`, /missing file/],
    ['a directory', () => `file://${incoming}/sub.img`, /not a regular file/],
    ['HTTP 404', () => `${base}/files/nope.img`, /HTTP 404/],
    ['HTTP 401 (no credentials)', () => `${base}/auth/other.img`, /HTTP 401/],
    ['a missing sftp file', () => `${sftpBase}/nope.img`, /missing file/],
    ['an sftp directory', () => `${sftpBase}/out`, /not a regular file/],
    ['an unknown scheme', () => 'ftp://127.0.0.1/x.img', /unknown scheme ftp/],
  ])('says SourceUnavailable for %s', async (_what, url, why) => {
    mkdirSync(join(incoming, 'sub.img'), { recursive: true });
    const config = makeConfig();
    const f = await failure(activities(config).stageIn({ workspaceId: 'ws-missing', index: 0, source: { url: url() } }));
    expectFailure(f, 'SourceUnavailable', why);
    expect(repoState(config).repo).toEqual([]);
  });

  it('refuses an sftp host whose key is not pinned', async () => {
    const partial = join(root, 'known_hosts.partial');
    writeFileSync(partial, readFileSync(KNOWN_HOSTS, 'utf8').split('\n').filter((l) => !l.includes(VMM3)).join('\n'));
    const config = makeConfig({ ssh: { keyFile: KEY, knownHostsFile: partial, connectTimeoutMs: 5000 } });
    const f = await failure(activities(config).stageIn({ workspaceId: 'ws-hostkey', index: 0, source: { url: `${sftpBase}/src.img` } }));
    expectFailure(f, 'SourceUnavailable', /host key not pinned/);
  });

  it('refuses an sftp host that presents another key than the pinned one', async () => {
    // vmm3's address pinned to vmm1's key: the handshake itself must fail.
    const lines = readFileSync(KNOWN_HOSTS, 'utf8').split('\n');
    const vmm1Key = lines.find((l) => l.startsWith('vmm1,'))?.split(' ').slice(1).join(' ');
    const wrong = join(root, 'known_hosts.wrong');
    writeFileSync(wrong, `${VMM3} ${vmm1Key}\n`);
    const config = makeConfig({ ssh: { keyFile: KEY, knownHostsFile: wrong, connectTimeoutMs: 5000 } });
    const f = await failure(activities(config).stageIn({ workspaceId: 'ws-hostkey2', index: 0, source: { url: `${sftpBase}/src.img` } }));
    expectFailure(f, 'SourceUnavailable', /host key not pinned \(.*presented ssh-ed25519 SHA256:/);
    expect(repoState(config)).toEqual({ repo: [], staging: [] });
  });

  it('treats HTTP 5xx as passing trouble: a plain, retryable error', async () => {
    const config = makeConfig();
    const f = await failure(activities(config).stageIn({ workspaceId: 'ws-503', index: 0, source: { url: `${base}/error/src.img` } }));
    expect(f).not.toBeInstanceOf(ApplicationFailure);
    expect(f.message).toMatch(/HTTP 503/);
  });

  it('refuses a URL outside images.sources before any I/O', async () => {
    const config = makeConfig({ images: { sources: [`file://${incoming}/`] } });
    const acts = activities(config);
    const before = requests.length;
    const f = await failure(acts.stageIn({ workspaceId: 'ws-na', index: 0, source: { url: `${base}/files/src.img` } }));
    expectFailure(f, 'SourceUnavailable', /is under none of the allowed sources/);
    expect(requests.length).toBe(before);
    const traversal = `file://${incoming}/../${basename(root)}/incoming/src.img`;
    expectFailure(await failure(acts.stageIn({ workspaceId: 'ws-na', index: 0, source: { url: traversal } })), 'SourceUnavailable', /\. or \.\. path segment/);
    expect(repoState(config)).toEqual({ repo: [], staging: [] });
  });

  it('refuses a symbolic link in an allowed directory that leads outside it', async () => {
    const outside = join(root, 'secret.img');
    writeFileSync(outside, 'not for clients');
    execFileSync('ln', ['-sf', outside, join(incoming, 'link.img')]);
    const config = makeConfig();
    const f = await failure(activities(config).stageIn({ workspaceId: 'ws-link', index: 0, source: { url: `file://${incoming}/link.img` } }));
    expectFailure(f, 'SourceUnavailable', /is under none of the allowed sources/);
  });

  it('never puts a password in a message', async () => {
    const config = makeConfig();
    const url = `http://user:s3cret@127.0.0.1:${new URL(base).port}/files/nope.img?sig=topsecret`;
    const f = await failure(activities(config).stageIn({ workspaceId: 'ws-secret', index: 0, source: { url } }));
    expectFailure(f, 'SourceUnavailable', /HTTP 404/);
    expect(f.message).not.toMatch(/s3cret|topsecret/);
    const notAllowed = await failure(activities(makeConfig({ images: { sources: [] } })).stageIn({ workspaceId: 'ws-secret', index: 0, source: { url } }));
    expect(notAllowed.message).not.toMatch(/s3cret|topsecret/);
  });
});

describe('stageIn resumes', () => {
  it('from a .part holding the first half of the bytes', async () => {
    const config = makeConfig();
    const staging = join(config.repository.dir, '.staging');
    mkdirSync(staging);
    const half = data.length >> 1;
    writeFileSync(join(staging, 'ws-resume-0.part'), data.subarray(0, half));
    const r = await activities(config).stageIn({ workspaceId: 'ws-resume', index: 0, source: { url: `file://${incoming}/src.img`, sha256: digest } });
    expect(r).toMatchObject({ sha256: digest, resumedFromBytes: half, bytesCopied: data.length - half });
    expectStaged(config, digest, data);
  });

  it('after a connection lost in the middle, asking the server for the rest only', async () => {
    const config = makeConfig();
    const acts = activities(config);
    const url = `${base}/flaky/src.img`;
    const first = await failure(acts.stageIn({ workspaceId: 'ws-cut', index: 0, source: { url } }));
    expect(first).not.toBeInstanceOf(ApplicationFailure); // retryable
    const part = join(config.repository.dir, '.staging', 'ws-cut-0.part');
    const kept = statSync(part).size;
    expect(kept).toBeGreaterThan(0);
    expect(kept).toBeLessThan(data.length);
    const before = requests.length;
    const r = await acts.stageIn({ workspaceId: 'ws-cut', index: 0, source: { url } });
    expect(r).toMatchObject({ sha256: digest, resumedFromBytes: kept, bytesCopied: data.length - kept });
    expect(requests.slice(before)).toEqual([`GET /flaky/src.img bytes=${kept}-`]);
    expectStaged(config, digest, data);
  });

  it('after a server that stopped sending: the copy fails (retryably) instead of waiting forever', async () => {
    const config = makeConfig();
    const acts = createHeadImageActivities({ config, progress: () => undefined, stallTimeoutMs: 500 });
    const started = Date.now();
    const f = await failure(acts.stageIn({ workspaceId: 'ws-stall', index: 0, source: { url: `${base}/stall/src.img` } }));
    expect(f).not.toBeInstanceOf(ApplicationFailure);
    expect(f.message).toMatch(/no data moved for 0.5 s/);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(statSync(join(config.repository.dir, '.staging', 'ws-stall-0.part')).size).toBe(data.length >> 1);
    expect(repoState(config).repo).toEqual([]);
  });

  it('from 0 when the server ignores Range', async () => {
    const config = makeConfig();
    const staging = join(config.repository.dir, '.staging');
    mkdirSync(staging);
    writeFileSync(join(staging, 'ws-norange-0.part'), data.subarray(0, 1000));
    const r = await activities(config).stageIn({ workspaceId: 'ws-norange', index: 0, source: { url: `${base}/norange/src.img`, sha256: digest } });
    expect(r).toMatchObject({ sha256: digest, resumedFromBytes: 0, bytesCopied: data.length });
    expectStaged(config, digest, data);
  });

  it('from 0 when what was left is not a prefix of the source (the digest says so)', async () => {
    const config = makeConfig();
    const staging = join(config.repository.dir, '.staging');
    mkdirSync(staging);
    writeFileSync(join(staging, 'ws-garbage-0.part'), randomBytes(4096));
    const r = await activities(config).stageIn({ workspaceId: 'ws-garbage', index: 0, source: { url: `file://${incoming}/src.img`, sha256: digest } });
    expect(r).toMatchObject({ sha256: digest, resumedFromBytes: 0 });
    expectStaged(config, digest, data);
  });

  it('not from a .part of unknown origin when no digest can check it', async () => {
    const config = makeConfig();
    const staging = join(config.repository.dir, '.staging');
    mkdirSync(staging);
    writeFileSync(join(staging, 'ws-unknown-0.part'), randomBytes(4096));
    const r = await activities(config).stageIn({ workspaceId: 'ws-unknown', index: 0, source: { url: `file://${incoming}/src.img` } });
    expect(r).toMatchObject({ sha256: digest, resumedFromBytes: 0, bytesCopied: data.length });
    expectStaged(config, digest, data);
  });
});

// ------------------------------------------------------------------------------------ cleanup activities

describe('removeStaging and removeRepositoryImage', () => {
  it('removes only the workspace own staging files, idempotently', async () => {
    const config = makeConfig();
    const acts = activities(config);
    await acts.removeStaging({ workspaceId: 'ws-a' }); // no staging dir yet
    const staging = join(config.repository.dir, '.staging');
    mkdirSync(staging);
    for (const n of ['ws-a-0.part', 'ws-a-0.part.json', 'ws-a-1.part', 'ws-a-2-0.part', 'ws-ab-0.part']) writeFileSync(join(staging, n), 'x');
    await acts.removeStaging({ workspaceId: 'ws-a' });
    expect(readdirSync(staging).sort()).toEqual(['ws-a-2-0.part', 'ws-ab-0.part']);
    await acts.removeStaging({ workspaceId: 'ws-a' });
    expectFailure(await failure(acts.removeStaging({ workspaceId: '../x' })), 'InvalidSpec', /bad workspace id/);
  });

  it('deletes an image and its sidecar, idempotently, and refuses names that are not image names', async () => {
    const config = makeConfig();
    const acts = activities(config);
    await stageLocalFile(config, 'intermediate', join(incoming, 'other.img'));
    await acts.removeRepositoryImage({ name: 'intermediate' });
    expect(repoState(config).repo).toEqual([]);
    await acts.removeRepositoryImage({ name: 'intermediate' });
    for (const name of ['../x', '.staging', 'a/b', 'x.sha256']) {
      expectFailure(await failure(acts.removeRepositoryImage({ name })), 'InvalidSpec', /bad image name/);
    }
  });
});

// ------------------------------------------------------------------------------------ stage-out

describe('stageOutToUrl', () => {
  async function twoImages(config: VwsConfig) {
    const a = await stageLocalFile(config, 'out-a', join(incoming, 'src.img'));
    const b = await stageLocalFile(config, 'out-b', join(incoming, 'other.img'));
    return { a, b };
  }

  it('writes an sftp target on vmm3, again identically, and refuses other bytes there', async () => {
    const config = makeConfig();
    const acts = activities(config);
    const { a, b } = await twoImages(config);
    const target = `${sftpBase}/out/sub/a.img`;
    const r = await acts.stageOutToUrl({ image: a, target, owner: OWNER });
    expect(r).toEqual({ url: target, sha256: digest, sizeBytes: data.length });
    expect(onVmm3(['sha256sum', `${remoteDir}/out/sub/a.img`]).split(/\s+/)[0]).toBe(digest);
    await expect(acts.stageOutToUrl({ image: a, target, owner: OWNER })).resolves.toEqual(r);
    const f = await failure(acts.stageOutToUrl({ image: b, target, owner: OWNER }));
    expectFailure(f, 'SourceUnavailable', /refusing to overwrite .*sub\/a\.img: it already exists/);
    expect(onVmm3(['sha256sum', `${remoteDir}/out/sub/a.img`]).split(/\s+/)[0]).toBe(digest);
    expect(onVmm3(['ls', '-A', `${remoteDir}/out/sub`]).trim()).toBe('a.img'); // no .part left
  });

  it('writes a file target, again identically, and refuses other bytes there', async () => {
    const config = makeConfig();
    const progress: Array<{ bytes: number; total: number }> = [];
    const acts = activities(config, progress);
    const { a, b } = await twoImages(config);
    const target = `file://${outDir}/a.img`;
    await expect(acts.stageOutToUrl({ image: a, target, owner: OWNER })).resolves.toEqual({ url: target, sha256: digest, sizeBytes: data.length });
    expect(await sha256File(join(outDir, 'a.img'))).toBe(digest);
    expect(execFileSync('sha256sum', [join(outDir, 'a.img')], { encoding: 'utf8' }).split(/\s+/)[0]).toBe(digest);
    expect(progress.at(-1)).toEqual({ bytes: data.length, total: data.length });
    await expect(acts.stageOutToUrl({ image: a, target, owner: OWNER })).resolves.toMatchObject({ sha256: digest });
    expectFailure(await failure(acts.stageOutToUrl({ image: b, target, owner: OWNER })), 'SourceUnavailable', /refusing to overwrite/);
    expect(readdirSync(outDir)).toEqual(['a.img']);
  });

  it('PUTs to an http target (a repository that checks the digest), and is refused other bytes there', async () => {
    const config = makeConfig();
    const acts = activities(config);
    const { a, b } = await twoImages(config);
    const target = `${base}/put/copy-a`;
    await expect(acts.stageOutToUrl({ image: a, target, owner: OWNER })).resolves.toEqual({ url: target, sha256: digest, sizeBytes: data.length });
    expect(await sha256File(join(putRepo, 'copy-a'))).toBe(digest);
    await expect(acts.stageOutToUrl({ image: a, target, owner: OWNER })).resolves.toMatchObject({ sha256: digest });
    expectFailure(await failure(acts.stageOutToUrl({ image: b, target, owner: OWNER })), 'SourceUnavailable', /HTTP 409/);
  });

  it('refuses targets outside the client own stageOutTargets, and unknown owners', async () => {
    const config = makeConfig();
    const acts = activities(config);
    const { a } = await twoImages(config);
    for (const target of [`file://${root}/elsewhere/a.img`, `${sftpBase}/a.img`, `file://${outDir}/../a.img`, `${base}/files/a.img`]) {
      const f = await failure(acts.stageOutToUrl({ image: a, target, owner: OWNER }));
      expectFailure(f, 'SourceUnavailable', /client alice may not write|path segment/);
    }
    const bob = await failure(acts.stageOutToUrl({ image: a, target: `file://${outDir}/bob.img`, owner: '/O=Grid/OU=vws/CN=bob' }));
    expectFailure(bob, 'SourceUnavailable', /client bob may not write/);
    const nobody = await failure(acts.stageOutToUrl({ image: a, target: `file://${outDir}/x.img`, owner: '/CN=mallory' }));
    expectFailure(nobody, 'SourceUnavailable', /no client has identity/);
    expect(readdirSync(outDir).filter((n) => n !== 'a.img')).toEqual([]);
    expect(existsSync(join(root, 'elsewhere'))).toBe(false);
  });
});

// ------------------------------------------------------------------------------------ probe

describe('probeSource', () => {
  it('answers the size of file, http and sftp sources', async () => {
    const config = makeConfig();
    await expect(probeSource(config, `file://${incoming}/src.img`)).resolves.toEqual({ sizeBytes: data.length });
    await expect(probeSource(config, `${base}/files/src.img`)).resolves.toEqual({ sizeBytes: data.length });
    await expect(probeSource(config, `${base}/norange/src.img`)).resolves.toEqual({ sizeBytes: data.length });
    await expect(probeSource(config, `${sftpBase}/src.img`)).resolves.toEqual({ sizeBytes: data.length });
  });

  async function probeFailure(config: VwsConfig, url: string) {
    const f = await failure(probeSource(config, url));
    expect(f).toBeInstanceOf(ApplicationFailure);
    expect(f.type).toBe('SourceUnavailable');
    return { message: f.message, transient: (f.details?.[0] as { transient: boolean }).transient };
  }

  it('says in one sentence why a source cannot be used, and whether that may pass', async () => {
    const config = makeConfig({
      images: { sources: [`file://${incoming}/`, 'http://', `${sftpBase}/`], probeTimeoutSeconds: 1 },
    });
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const closedPort = (closed.address() as AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));

    expect(await probeFailure(config, `file://${incoming}/nope.img`)).toEqual({ message: expect.stringMatching(/missing file/), transient: false });
    expect(await probeFailure(config, `${base}/files/nope.img`)).toEqual({ message: expect.stringMatching(/HTTP 404/), transient: false });
    expect(await probeFailure(config, `${sftpBase}/nope.img`)).toEqual({ message: expect.stringMatching(/missing file/), transient: false });
    expect(await probeFailure(config, `http://127.0.0.1:${closedPort}/x.img`)).toEqual({ message: expect.stringMatching(/connection refused/), transient: true });
    const started = Date.now();
    expect(await probeFailure(config, `${base}/hang/x.img`)).toEqual({ message: expect.stringMatching(/timed out/), transient: true });
    expect(Date.now() - started).toBeLessThan(3000);
    expect(await probeFailure(config, `file:///etc/passwd`)).toEqual({ message: expect.stringMatching(/under none of the allowed sources/), transient: false });
    expect(await probeFailure(config, 'ftp://h/x.img')).toEqual({ message: expect.stringMatching(/unknown scheme ftp/), transient: false });

    const partial = join(root, 'known_hosts.probe');
    writeFileSync(partial, readFileSync(KNOWN_HOSTS, 'utf8').split('\n').filter((l) => !l.includes(VMM3)).join('\n'));
    const unpinned = makeConfig({ images: { sources: [`${sftpBase}/`] }, ssh: { keyFile: KEY, knownHostsFile: partial } });
    expect(await probeFailure(unpinned, `${sftpBase}/src.img`)).toEqual({ message: expect.stringMatching(/host key not pinned/), transient: false });
  });
});
