/**
 * The testbed's own parts, which later issues build on: each VMM host is reachable over SSH with its
 * pinned host key only, has its own hostname and node directory, and runs a slurmd of the head's real
 * Slurm, so a job pinned to a host runs there.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { exec, eventually, requireTestbed, TESTBED_DIR } from '../helpers/stack';

const ssh = (host: string, knownHosts: string, ...cmd: string[]) =>
  exec.run(
    [
      'ssh', '-i', join(TESTBED_DIR, 'ssh/id_ed25519'),
      '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=yes', '-o', `UserKnownHostsFile=${knownHosts}`,
      '-o', 'ConnectTimeout=5', `root@${host}`, ...cmd,
    ],
    { okCodes: [0, 255], timeoutMs: 20_000 },
  );
const slurmEnv = { SLURM_CONF: join(TESTBED_DIR, 'slurm/slurm.conf') };

beforeAll(requireTestbed);

describe('the testbed', () => {
  const known = join(TESTBED_DIR, 'ssh/known_hosts');

  it.each([
    ['vmm1', '10.213.0.11'],
    ['vmm2', '10.213.0.12'],
    ['vmm3', '10.213.0.13'],
  ])('%s answers over SSH with its pinned host key, its own hostname and node directory', async (name, ip) => {
    const r = await ssh(ip, known, 'hostname; ls /var/lib/vws/node/kernels/default');
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n')).toEqual([name, 'initrd.gz', 'vmlinuz', '']);
  });

  it('refuses a host whose key does not match the pin', async () => {
    // Pin vmm2's key under vmm1's address: the client must refuse to talk to vmm1.
    const lines = readFileSync(known, 'utf8').split('\n');
    const vmm2Key = lines.find((l) => l.startsWith('vmm2,'))!.split(' ').slice(1).join(' ');
    const wrong = join(mkdtempSync('/tmp/vws-known-'), 'known_hosts');
    writeFileSync(wrong, `10.213.0.11 ${vmm2Key}\n`);
    const r = await ssh('10.213.0.11', wrong, 'hostname');
    expect(r.code).toBe(255);
    expect(r.stderr).toMatch(/Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED/);
  });

  it('runs a Slurm job pinned to vmm2 on vmm2, which sees its own node directory', async () => {
    const dir = mkdtempSync('/tmp/vws-slurm-');
    const out = join(dir, 'job.out');
    const sub = await exec.run(['env', `SLURM_CONF=${slurmEnv.SLURM_CONF}`, 'sbatch', '--parsable', '-w', 'vmm2', '-o', out, '--wrap', 'hostname; ls /var/lib/vws/node/kernels']);
    const jobId = sub.stdout.trim();
    expect(jobId).toMatch(/^\d+$/);
    const state = await eventually(
      30,
      async () => {
        const q = await exec.run(['env', `SLURM_CONF=${slurmEnv.SLURM_CONF}`, 'scontrol', 'show', 'job', '-o', jobId]);
        const s = /JobState=(\S+)/.exec(q.stdout)?.[1];
        return s && !['PENDING', 'RUNNING', 'COMPLETING', 'CONFIGURING'].includes(s) ? s : null;
      },
      `job ${jobId} to finish`,
    );
    expect(state).toBe('COMPLETED');
    expect(readFileSync(out, 'utf8')).toBe('vmm2\ndefault\n');
  });
});
