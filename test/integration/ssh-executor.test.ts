/**
 * The SSH executor against a real sshd: testbed host vmm2 (10.213.0.12). Needs `testbed/testbed.sh up`.
 * Independent checks on the node go through the OpenSSH CLI (`ssh -F $TB/ssh/config vmm2 …`), so a bug in
 * the executor cannot hide itself.
 */
import { execFile, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { promisify } from 'node:util';
import { CommandError } from '../../src/exec/executor';
import { configSchema } from '../../src/config/schema';
import { KnownHosts, SshExecutor, sshExecutorFor, type SshExecutorOptions } from '../../src/exec/ssh';

const TB = process.env.VWS_TESTBED_DIR ?? '/var/lib/vws/testbed';
const KEY = `${TB}/ssh/id_ed25519`;
const KNOWN_HOSTS = `${TB}/ssh/known_hosts`;
const HOST = '10.213.0.12';
const run = promisify(execFile);

/** Runs a command on vmm2 with the OpenSSH client (argv joined by ssh: callers pass one shell string). */
function cli(script: string): { code: number; stdout: string } {
  try {
    return { code: 0, stdout: execFileSync('ssh', ['-F', `${TB}/ssh/config`, 'vmm2', script], { encoding: 'utf8' }) };
  } catch (e) {
    const err = e as { status: number; stdout: string };
    return { code: err.status, stdout: err.stdout };
  }
}

const executors: SshExecutor[] = [];
function vmm2(options: Partial<SshExecutorOptions> = {}): SshExecutor {
  const ex = new SshExecutor({
    host: HOST,
    user: 'root',
    privateKey: KEY,
    knownHosts: KnownHosts.fromFile(KNOWN_HOSTS),
    hostAlias: 'vmm2',
    connectTimeoutMs: 5000,
    keepaliveIntervalMs: 2000,
    maxChannels: 8,
    ...options,
  });
  executors.push(ex);
  return ex;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function drain(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function finish(stream: Writable, data: Buffer): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    stream.once('error', reject).once('close', () => resolve());
    stream.end(data);
  });
}

/** Prints the node-side sshd process serving the connection: the first sshd among the command's ancestors. */
const SSHD_OF_CONNECTION =
  'p=$PPID; while :; do case $(cat /proc/$p/comm) in sshd*) echo $p; exit 0;; esac; p=$(cut -d" " -f4 /proc/$p/stat); [ "$p" -gt 1 ] || exit 1; done';

/** The children of `pid` with their command names (the testbed's hosts share our PID namespace). */
function childrenOf(pid: number): Array<{ pid: number; comm: string }> {
  const out: Array<{ pid: number; comm: string }> = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      // "pid (comm) state ppid …": comm may hold spaces and parentheses, so split at the last ')'.
      const close = stat.lastIndexOf(')');
      const ppid = Number(stat.slice(close + 2).split(' ')[1]);
      if (ppid === pid) out.push({ pid: Number(name), comm: stat.slice(stat.indexOf('(') + 1, close) });
    } catch {
      // Exited while we looked.
    }
  }
  return out;
}

const dir = `/tmp/vws-ssh-test-${randomBytes(4).toString('hex')}`;
const nasty = ['a b', "it's", '"dq"', '$(touch /tmp/vws-pwned)', '`id`', '$HOME', 'a; touch /tmp/vws-pwned', 'x\ny', '*', '[a]?', '\\', '', '-n', '~', '&|<>#!', 'é ünï'];

// Each test's executors are closed after it, so a test sees only its own connections.
afterEach(async () => {
  await Promise.all(executors.splice(0).map((e) => e.close()));
});
afterAll(() => {
  cli(`rm -rf ${dir}`);
});

describe('SshExecutor on testbed host vmm2', () => {
  it('passes every argument literally: spaces, quotes, $(…), ;, newlines, globs', async () => {
    const ex = vmm2();
    expect(ex.where).toBe(`ssh root@${HOST}:22`);
    const r = await ex.run(['printf', '%s\\0', ...nasty]);
    expect(r.stdout.split('\0').slice(0, -1)).toEqual(nasty);
    expect(cli('test -e /tmp/vws-pwned; echo $?').stdout.trim()).toBe('1');

    // A file whose name is all of that, created by a command and seen by SFTP.
    await ex.mkdir(dir);
    const name = `${dir}/${nasty.filter((a) => a !== '' && !a.includes('/')).join(' ')}`;
    await ex.run(['touch', '--', name]);
    expect(await ex.exists(name)).toBe(true);
    expect(await ex.fileSize(name)).toBe(0);
    expect(cli(`ls -1 ${dir} | wc -l`).stdout.trim()).toBe('2'); // the name holds one newline: 2 lines, 1 file
    await ex.remove(name);
    expect(await ex.exists(name)).toBe(false);
    await expect(ex.run(['echo', 'a\0b'])).rejects.toThrow(/NUL/);
  });

  it('feeds stdin, applies okCodes, reports exit codes and missing programs like the local executor', async () => {
    const ex = vmm2();
    await expect(ex.run(['cat'], { input: 'secret\nline 2' })).resolves.toEqual({ code: 0, stdout: 'secret\nline 2', stderr: '' });
    await expect(ex.run(['sh', '-c', 'read x; echo "got $x"'], { input: 'pw\n' })).resolves.toMatchObject({ stdout: 'got pw\n' });
    await expect(ex.run(['cat'])).resolves.toMatchObject({ stdout: '' }); // stdin is closed: no hang
    await expect(ex.run(['sh', '-c', 'echo boom >&2; exit 3'])).rejects.toThrow(/^sh exited with code 3: boom$/);
    const err = await ex.run(['sh', '-c', 'exit 3']).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CommandError);
    expect((err as CommandError).code).toBe(3);
    await expect(ex.run(['sh', '-c', 'exit 3'], { okCodes: [0, 3] })).resolves.toMatchObject({ code: 3 });
    await expect(ex.run(['false'], { okCodes: [0, 1] })).resolves.toMatchObject({ code: 1 });
    await expect(ex.run(['/nonexistent/tool'])).rejects.toThrow(/^\/nonexistent\/tool could not run \(exit 127 on ssh root@10\.213\.0\.12:22\).*No such file/);
  });

  it.each([
    ['GNU coreutils', ['timeout']],
    ['busybox', ['busybox', 'timeout']],
  ])('kills a command past its timeout on the node (%s timeout)', async (_name, timeoutCommand) => {
    const ex = vmm2({ timeoutCommand });
    const marker = `30.${randomBytes(3).readUIntBE(0, 3)}`;
    const t0 = Date.now();
    const err = await ex.run(['sleep', marker], { timeoutMs: 1000 }).catch((e: unknown) => e);
    const elapsed = Date.now() - t0;
    expect(err).toBeInstanceOf(CommandError);
    expect((err as Error).message).toBe('sleep timed out after 1000 ms');
    expect(elapsed).toBeLessThan(2500);
    // Nothing survived on the node (pgrep exits 1 when it finds nothing).
    const left = cli(`pgrep -af '^sleep ${marker}'`);
    expect(left).toEqual({ code: 1, stdout: '' });
    if (timeoutCommand.length === 1) {
      // GNU timeout kills its whole process group, so grandchildren die too (busybox kills only PROG).
      await expect(ex.run(['sh', '-c', `sleep ${marker}; true`], { timeoutMs: 1000 })).rejects.toThrow(/^sh timed out after 1000 ms$/);
      expect(cli(`pgrep -af '^sleep ${marker}'`)).toEqual({ code: 1, stdout: '' });
    }
    // An early exit 137 is the program's own code, not a timeout.
    await expect(ex.run(['sh', '-c', 'exit 137'], { timeoutMs: 5000 })).rejects.toThrow(/^sh exited with code 137$/);
  });

  it('shares one connection among a burst of 30 commands, at most maxChannels at once', async () => {
    const ex = vmm2({ maxChannels: 4 });
    const t0 = Date.now();
    const burst = Promise.all(Array.from({ length: 30 }, (_, i) => ex.run(['sh', '-c', 'sleep 0.2; echo "$0"', String(i)])));
    await new Promise((r) => setTimeout(r, 500));
    // TCP connections to vmm2:22 owned by this process, seen by the kernel mid-burst.
    const ss = await run('ss', ['-tnpH', 'state', 'established', 'dst', `${HOST}:22`]);
    const ours = ss.stdout.split('\n').filter((l) => l.includes(`pid=${process.pid},`));
    const results = await burst;
    expect(results.map((r) => r.stdout)).toEqual(Array.from({ length: 30 }, (_, i) => `${i}\n`));
    expect(ours).toHaveLength(1);
    expect(ex.stats.connects).toBe(1);
    expect(ex.stats.peakChannels).toBe(4);
    expect(ex.stats.activeChannels).toBe(0);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(8 * 200); // ceil(30/4) waves of 0.2 s
  });

  it('reconnects after the connection is killed; a command in flight fails clearly', async () => {
    const ex = vmm2();
    // The node-side sshd process serving our connection: the first sshd among our command's ancestors.
    const { stdout } = await ex.run(['sh', '-c', SSHD_OF_CONNECTION]);
    const sshdPid = Number(stdout.trim());
    expect(sshdPid).toBeGreaterThan(1);
    const inFlight = ex.run(['sleep', '5']).catch((e: unknown) => e);
    await new Promise((r) => setTimeout(r, 300));
    process.kill(sshdPid, 'SIGKILL'); // the testbed's hosts share our PID namespace
    const err = await inFlight;
    expect(err).toBeInstanceOf(CommandError);
    expect((err as Error).message).toMatch(/^sleep did not finish: connection to ssh root@10\.213\.0\.12:22 was lost/);
    await expect(ex.run(['echo', 'again'])).resolves.toMatchObject({ stdout: 'again\n' });
    expect(ex.stats.connects).toBe(2);

    // Same after a silent socket drop on our side, and SFTP comes back too.
    expect(await ex.exists('/etc')).toBe(true);
    ex.dropConnectionForTests();
    await new Promise((r) => setTimeout(r, 50));
    await expect(ex.run(['echo', 'third'])).resolves.toMatchObject({ stdout: 'third\n' });
    expect(await ex.exists('/etc')).toBe(true);
    expect(ex.stats.connects).toBe(3);
  });

  it('fails an SFTP call the server does not answer within sftpTimeoutMs, and the next call gets a fresh session', async () => {
    const ex = vmm2({ sftpTimeoutMs: 1500 });
    const f = `${dir}/stalled/a.txt`;
    await ex.writeFileAtomic(f, 'before\n'); // opens the SFTP session
    // internal-sftp serves the session in a forked child of the connection's sshd; stopping it stalls
    // every SFTP answer while the connection (keepalives, commands) stays alive.
    const sshdPid = Number((await ex.run(['sh', '-c', SSHD_OF_CONNECTION])).stdout.trim());
    const sftpPids = childrenOf(sshdPid).filter((c) => c.comm.startsWith('sshd')).map((c) => c.pid);
    expect(sftpPids).toHaveLength(1);
    process.kill(sftpPids[0], 'SIGSTOP');
    try {
      await expect(ex.readFile(f)).rejects.toMatchObject({
        code: 'ETIMEDOUT',
        message: `ssh root@10.213.0.12:22: read ${f}: no answer from the SFTP server within 1500 ms`,
      });
      await expect(ex.run(['echo', 'alive'])).resolves.toMatchObject({ stdout: 'alive\n' });
      await ex.writeFileAtomic(f, 'after\n');
      expect(await ex.readFile(f)).toBe('after\n');
      expect(ex.stats.connects).toBe(1); // the same connection, a new SFTP session
      expect(childrenOf(sshdPid).filter((c) => c.comm.startsWith('sshd') && c.pid !== sftpPids[0])).toHaveLength(1);
    } finally {
      process.kill(sftpPids[0], 'SIGKILL');
    }
  });

  it('round-trips files: atomic writes, rename over a target, sizes, and MiB streams by sha256', async () => {
    const ex = vmm2();
    const f = `${dir}/files/new/a.txt`;
    expect(await ex.readFile(f)).toBeNull();
    expect(await ex.fileSize(f)).toBeNull();
    expect(await ex.exists(f)).toBe(false);
    await ex.writeFileAtomic(f, 'hello\n'); // parent dirs created
    await ex.writeFileAtomic(f, 'héllo again\n');
    expect(await ex.readFile(f)).toBe('héllo again\n');
    expect(await ex.fileSize(f)).toBe(Buffer.byteLength('héllo again\n'));
    expect(cli(`ls -A ${dir}/files/new`).stdout).toBe('a.txt\n'); // no temporary files left
    expect(cli(`stat -c %a ${f}`).stdout.trim()).toBe('644');

    await ex.writeFileAtomic(`${dir}/files/b.txt`, 'B');
    await ex.rename(`${dir}/files/b.txt`, f); // replaces
    expect(await ex.readFile(f)).toBe('B');
    expect(await ex.exists(`${dir}/files/b.txt`)).toBe(false);

    const data = randomBytes(5 * 1024 * 1024 + 123);
    const big = `${dir}/files/big.bin`;
    await finish(await ex.writeStream(big), data);
    expect(await ex.fileSize(big)).toBe(data.length);
    expect(cli(`sha256sum ${big}`).stdout.split(' ')[0]).toBe(sha256(data));
    expect(sha256(await drain(await ex.readStream(big)))).toBe(sha256(data));
    expect(sha256(await drain(await ex.readStream(big, 4_000_000)))).toBe(sha256(data.subarray(4_000_000)));

    const more = randomBytes(100_000);
    await finish(await ex.writeStream(big, { append: true }), more);
    expect(cli(`sha256sum ${big}`).stdout.split(' ')[0]).toBe(sha256(Buffer.concat([data, more])));
    await finish(await ex.writeStream(big), Buffer.from('short'));
    expect(await ex.readFile(big)).toBe('short'); // truncated

    await expect(ex.readStream(`${dir}/nope`)).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(ex.writeStream(`${dir}/no/such/dir/x`)).rejects.toMatchObject({ code: 'ENOENT' });
    await ex.remove(`${dir}/files`);
    await ex.remove(`${dir}/files`);
    expect(await ex.exists(`${dir}/files`)).toBe(false);
  });

  it('connects to a unix socket on the node', async () => {
    const ex = vmm2();
    await ex.mkdir(dir);
    const sock = `${dir}/echo.sock`;
    // socat serves one connection (an echo) and exits; it runs as a command on the same pooled connection.
    const server = ex.run(['socat', 'UNIX-LISTEN:' + sock, 'EXEC:cat'], { timeoutMs: 20_000 });
    for (let i = 0; i < 50 && !(await ex.exists(sock)); i++) await new Promise((r) => setTimeout(r, 100));
    const conn = await ex.connectUnix(sock);
    const echoed = new Promise<string>((resolve) => {
      let s = '';
      conn.on('data', (d: Buffer) => {
        s += d.toString();
        if (s.endsWith('\n')) resolve(s);
      });
    });
    conn.write('{"execute":"qmp_capabilities"}\n');
    expect(await echoed).toBe('{"execute":"qmp_capabilities"}\n');
    conn.end();
    await expect(server).resolves.toMatchObject({ code: 0 });
    await expect(ex.connectUnix(`${dir}/missing.sock`)).rejects.toThrow(/^ssh root@10\.213\.0\.12:22: cannot connect to unix socket .*missing\.sock/);
  });

  it('refuses a host whose key does not match the pinned one, and runs nothing', async () => {
    const lines = readFileSync(KNOWN_HOSTS, 'utf8').split('\n');
    const vmm1Key = lines.find((l) => l.startsWith('vmm1,'))!.split(' ').slice(1).join(' ');
    const wrong = lines.map((l) => (l.startsWith('vmm2,') ? `vmm2,${HOST} ${vmm1Key}` : l)).join('\n');
    const ex = vmm2({ knownHosts: KnownHosts.parse(wrong, 'wrong_known_hosts') });
    const marker = `/tmp/vws-ssh-refused-${randomBytes(4).toString('hex')}`;
    const err = (await ex.run(['touch', marker]).catch((e: unknown) => e)) as Error;
    expect(err.message).toMatch(/^ssh root@10\.213\.0\.12:22: host key changed or not pinned: 10\.213\.0\.12\/vmm2 presented ssh-ed25519 SHA256:\S+, but known_hosts pins ssh-ed25519 SHA256:\S+ \(wrong_known_hosts:2\); refusing to connect$/);
    expect(ex.stats.connects).toBe(0);
    expect(cli(`test -e ${marker}; echo $?`).stdout.trim()).toBe('1');
    await expect(ex.readFile('/etc/hostname')).rejects.toThrow(/host key changed or not pinned/); // never falls back

    // A host with no pinned key at all is refused before any connection attempt.
    const unpinned = vmm2({ knownHosts: KnownHosts.parse(lines.filter((l) => !l.startsWith('vmm2,')).join('\n')) });
    await expect(unpinned.run(['true'])).rejects.toThrow(/^ssh root@10\.213\.0\.12:22: no host key pinned for 10\.213\.0\.12 or vmm2 in known_hosts; refusing to connect/);
  });

  it('fails within connectTimeoutMs for an unreachable host', async () => {
    const vmm2Key = readFileSync(KNOWN_HOSTS, 'utf8').split('\n').find((l) => l.startsWith('vmm2,'))!.split(' ').slice(1).join(' ');
    const ex = vmm2({ host: '10.213.0.99', hostAlias: undefined, knownHosts: KnownHosts.parse(`10.213.0.99 ${vmm2Key}`), connectTimeoutMs: 1500 });
    const t0 = Date.now();
    const err = (await ex.run(['true']).catch((e: unknown) => e)) as Error;
    const elapsed = Date.now() - t0;
    expect(err.message).toMatch(/^ssh root@10\.213\.0\.99:22: could not connect/);
    expect(elapsed).toBeLessThan(1500 + 700);
    console.log(`unreachable host: "${err.message}" after ${elapsed} ms`);
  });

  it('refuses keys that would prompt or that the server does not accept', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'vws-sshkey-'));
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', 'sesame', '-f', `${tmp}/with-pass`]);
    expect(() => vmm2({ privateKey: `${tmp}/with-pass` })).toThrow(/private key .*with-pass is protected by a passphrase; vws needs a key without one/);
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', `${tmp}/other`]);
    const ex = vmm2({ privateKey: readFileSync(`${tmp}/other`) });
    await expect(ex.run(['true'])).rejects.toThrow(/^ssh root@10\.213\.0\.12:22: the server refused key \(given in memory\) \(publickey authentication failed\)$/);
    writeFileSync(`${tmp}/garbage`, 'not a key');
    expect(() => vmm2({ privateKey: `${tmp}/garbage` })).toThrow(/cannot parse private key/);
  });

  it('is built from the site configuration by sshExecutorFor (node name = host alias)', async () => {
    const config = configSchema.parse({
      ssh: { keyFile: KEY, knownHostsFile: KNOWN_HOSTS, maxChannels: 2 },
      nodes: [{ name: 'vmm2', memoryMiB: 4096, cpus: 4, agent: 'ssh', ssh: { host: HOST } }],
    });
    const ex = sshExecutorFor(config, config.nodes[0]);
    executors.push(ex);
    expect(ex.where).toBe(`ssh root@${HOST}:22`);
    await expect(ex.run(['hostname'])).resolves.toMatchObject({ stdout: 'vmm2\n' });
    expect(() => sshExecutorFor(config, { ...config.nodes[0], ssh: undefined })).toThrow(/node vmm2 has no ssh address/);
  });

  it('measures: `true` over the pooled connection vs a fresh ssh process (median of 50)', async () => {
    const ex = vmm2();
    await ex.run(['true']); // connect first: the pool's point is that later calls skip this
    const pooled: number[] = [];
    for (let i = 0; i < 50; i++) {
      const t = process.hrtime.bigint();
      await ex.run(['true']);
      pooled.push(Number(process.hrtime.bigint() - t) / 1e6);
    }
    const fresh: number[] = [];
    for (let i = 0; i < 50; i++) {
      const t = process.hrtime.bigint();
      await run('ssh', ['-F', `${TB}/ssh/config`, 'vmm2', 'true']);
      fresh.push(Number(process.hrtime.bigint() - t) / 1e6);
    }
    console.log(
      `ssh round trip of \`true\` on vmm2, median of 50: pooled SshExecutor.run ${median(pooled).toFixed(1)} ms ` +
        `(min ${Math.min(...pooled).toFixed(1)}), fresh \`ssh vmm2 true\` ${median(fresh).toFixed(1)} ms (min ${Math.min(...fresh).toFixed(1)})`,
    );
    expect(ex.stats.connects).toBe(1);
  });
});
