/**
 * `lrm.submitHost.via: ssh` for real: the head's pilot-slot and reconciler activities reach the testbed's
 * Slurm through vmm2's sshd (the site's key, the host key pinned in the testbed's known_hosts), not with
 * local commands. The job is a pilot stand-in (a bash script that records `$SLURM_SUBMIT_HOST`, which
 * Slurm sets to the host sbatch ran on: vmm2, a UTS namespace of its own). Whether the job is gone is
 * checked with the `squeue` CLI on this machine, so a bug in the adapter cannot hide a leaked job.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { batchSystemFor, submitHostExecutor } from '../../src/activities/lrm';
import { createPilotSlotActivities, pilotJobName } from '../../src/activities/head/pilot-slot';
import { createReconcileActivities } from '../../src/activities/head/reconcile';
import type { VwsConfig } from '../../src/config/schema';
import { LocalExecutor } from '../../src/exec/local';
import { SshExecutor } from '../../src/exec/ssh';
import { connect, testConfig, type TestConnections } from '../helpers/temporal';

jest.setTimeout(90_000);

const TB = process.env.VWS_TESTBED_DIR ?? '/var/lib/vws/testbed';
const SLURM_CONF = join(TB, 'slurm/slurm.conf');
const NODE = 'vmm1';
const SUBMIT_HOST = '10.213.0.12'; // vmm2

const dir = mkdtempSync(join(tmpdir(), 'vws-lrm-ssh-'));
chmodSync(dir, 0o755);
const PILOT = join(dir, 'pilot.sh');
// Called as `pilot.sh run --slot <id> …`: records where it was submitted from, then idles until TERM.
writeFileSync(
  PILOT,
  `#!/bin/bash
m="${dir}/$3.marker"
trap 'echo "TERM" >> "$m"; exit 143' TERM
printf '%s\n' "$@" > "$m.args"
echo "start $(hostname) submit=$SLURM_SUBMIT_HOST" >> "$m"
while true; do sleep 1 & wait $!; done
`,
  { mode: 0o755 },
);

let conn: TestConnections;
const FALLBACK = { host: '10.213.0.1', keyFile: '/etc/vws/pilot_key', knownHostsFile: '/etc/vws/known_hosts', command: ['/usr/bin/node', '/opt/vws/dist/pilot/main.js', 'receive'] };

function siteConfig(submitHost: Record<string, unknown>): VwsConfig {
  return testConfig({
    stateDir: dir,
    ssh: { keyFile: join(TB, 'ssh/id_ed25519'), knownHostsFile: join(TB, 'ssh/known_hosts'), connectTimeoutMs: 5000 },
    nodes: [{ name: NODE, memoryMiB: 2048, cpus: 4, pilot: true, bridges: { public: 'br0' } }],
    lrm: { kind: 'slurm', partition: 'vws', slurm: { conf: SLURM_CONF }, submitHost },
    pilot: { secretFile: join(dir, 'pilot.secret'), apiUrl: 'http://127.0.0.1:9', command: ['/bin/bash', PILOT], sshFallback: FALLBACK },
    reconciler: { enabled: false },
  });
}

/** Live jobs (CLI, on this machine) whose name starts with `prefix`. */
function liveJobs(prefix: string): string[] {
  const out = execFileSync('squeue', ['-h', '-o', '%i %j %T'], { env: { ...process.env, SLURM_CONF }, encoding: 'utf8' });
  return out.split('\n').filter((l) => l.split(' ')[1]?.startsWith(prefix));
}

async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

beforeAll(async () => {
  conn = await connect();
});

afterAll(async () => {
  await conn.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('lrm.submitHost.via: ssh', () => {
  it('submits, sees and cancels a pilot job through the submit host over SSH, from both the slot and the reconciler', async () => {
    const config = siteConfig({ via: 'ssh', host: SUBMIT_HOST });
    const executor = submitHostExecutor(config);
    expect(executor).toBeInstanceOf(SshExecutor);
    expect(executor.where).toBe(`ssh root@${SUBMIT_HOST}:22`);
    await (executor as SshExecutor).close();
    // One batch system per configuration: the two activity sets share its connection.
    expect(batchSystemFor(config)).toBe(batchSystemFor(config));

    const slot = createPilotSlotActivities({ client: conn.client, config });
    const reconcile = createReconcileActivities({ client: conn.client, config });
    const slotId = 'lrmssh-1';
    const name = pilotJobName(config, slotId);
    try {
      const { jobId } = await slot.submitPilotJob({ slotId, memoryMiB: 64, vcpus: 1, holdSeconds: 300 });
      // Submitting again finds the same job (looked up by name over SSH too).
      expect((await slot.submitPilotJob({ slotId, memoryMiB: 64, vcpus: 1, holdSeconds: 300 })).jobId).toBe(jobId);
      const marker = join(dir, `${slotId}.marker`);
      await waitFor('the stand-in pilot to start', () => existsSync(marker), 20_000);
      // sbatch ran on vmm2: Slurm records the submitting host.
      expect(readFileSync(marker, 'utf8').split('\n')[0]).toBe(`start ${NODE} submit=vmm2`);
      // The pilot is told its SSH fallback (pilot.sshFallback, defaults filled) as one argv element.
      const args = readFileSync(`${marker}.args`, 'utf8').trim().split('\n');
      expect(JSON.parse(args[args.indexOf('--ssh-fallback') + 1])).toEqual({ ...FALLBACK, port: 22, user: 'root', afterHttpAttempts: 2, connectTimeoutMs: 5000 });
      expect(await slot.pilotJobStatus(jobId)).toMatchObject({ state: 'running', name, nodes: NODE });
      expect(await reconcile.reconcileJobStatus({ jobId })).toMatchObject({ state: 'running', name });
      expect(liveJobs(name)).toEqual([`${jobId} ${name} RUNNING`]);

      await reconcile.reconcileCancelJob({ jobId });
      await waitFor('TERM in the marker', () => readFileSync(marker, 'utf8').includes('TERM'), 10_000);
      await waitFor('the job to end', async () => (await slot.pilotJobStatus(jobId)).state === 'ended', 20_000);
      expect(await slot.pilotJobStatus(jobId)).toMatchObject({ state: 'ended', outcome: 'cancelled' });
      await expect(slot.cancelPilotJob(jobId)).resolves.toBeUndefined(); // idempotent, over SSH too
      expect(liveJobs(name)).toEqual([]);
    } finally {
      for (const l of liveJobs(name)) execFileSync('scancel', [l.split(' ')[0]], { env: { ...process.env, SLURM_CONF } });
      await ((batchSystemFor(config) as unknown as { exec?: { close?: () => Promise<void> } }).exec?.close?.() ?? Promise.resolve());
    }
  });

  it('refuses a submit host whose key is not pinned, and names a missing host', async () => {
    // 10.213.0.1 (this machine's bridge address) is in no known_hosts line: never trusted.
    const unpinned = siteConfig({ via: 'ssh', host: '10.213.0.1' });
    const slot = createPilotSlotActivities({ client: conn.client, config: unpinned });
    await expect(slot.pilotJobStatus('1')).rejects.toThrow(/no host key pinned for 10\.213\.0\.1/);

    const local = siteConfig({ via: 'local' });
    expect(submitHostExecutor(local)).toBeInstanceOf(LocalExecutor);
    const noHost = { ...local, lrm: { ...local.lrm!, submitHost: { via: 'ssh' as const, port: 22, user: 'root' } } };
    expect(() => submitHostExecutor(noHost)).toThrow(/^lrm\.submitHost\.host: is required/);
    expect(() => submitHostExecutor({ ...local, lrm: undefined })).toThrow(/^lrm: /);
  });
});
