/**
 * The Slurm adapter against the testbed's real Slurm (slurmctld on the head, slurmd in vmm1..vmm3; needs
 * `testbed/testbed.sh up`). The jobs are pilot stand-ins: bash scripts that trap TERM and USR1, write
 * a marker file, and idle in `sleep & wait` (bash runs traps only between foreground commands). Markers
 * live under /tmp, which the hosts' mount namespaces share with the head. Every check that a job is gone
 * uses the `squeue` CLI directly, so a bug in the adapter cannot hide a leaked job.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { SlurmBatchSystem } from '../../src/activities/lrm/slurm';
import type { BatchJobStatus, PilotJobRequest } from '../../src/activities/lrm/types';
import { LocalExecutor } from '../../src/exec/local';

const TB = process.env.VWS_TESTBED_DIR ?? '/var/lib/vws/testbed';
/** The testbed's slurm.conf (what `eval "$(testbed/testbed.sh env)"` exports as SLURM_CONF). */
const SLURM_CONF = join(TB, 'slurm/slurm.conf');

const dir = mkdtempSync(join(tmpdir(), 'vws-lrm-'));
chmodSync(dir, 0o755);
const PILOT = join(dir, 'pilot.sh');
writeFileSync(
  PILOT,
  `#!/bin/bash
# Pilot stand-in: records start, USR1 and TERM in $MARKER; exits 143 on TERM like a pilot that cleaned up.
trap 'echo "TERM $(date +%s.%N)" >> "$MARKER"; exit 143' TERM
trap 'echo "USR1 $(date +%s.%N)" >> "$MARKER"' USR1
echo "start $(hostname) $SLURM_JOB_ID $(date +%s.%N) env=$PILOT_NOTE" >> "$MARKER"
while true; do sleep 1 & wait $!; done
`,
  { mode: 0o755 },
);

const slurm = new SlurmBatchSystem(new LocalExecutor(), { slurmConf: SLURM_CONF, partition: 'vws', walltimePaddingSeconds: 2 });

/** Jobs with this name prefix that squeue (the CLI) still lists as live. */
function liveJobs(prefix: string): string[] {
  const out = execFileSync('squeue', ['-h', '-o', '%i %j %T'], { env: { ...process.env, SLURM_CONF }, encoding: 'utf8' });
  return out.split('\n').filter((l) => l.split(' ')[1]?.startsWith(prefix));
}

async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs: number, everyMs = 200): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

async function waitState(jobId: string, states: Array<BatchJobStatus['state']>, timeoutMs: number): Promise<BatchJobStatus> {
  let last: BatchJobStatus | undefined;
  await waitFor(`job ${jobId} to be ${states.join('/')} (last: ${JSON.stringify(last)})`, async () => states.includes((last = await slurm.status(jobId)).state), timeoutMs);
  return last!;
}

/** Like test/helpers' uniquePrefix, without importing that module (it installs the Temporal runtime, which keeps jest alive). */
const uniquePrefix = () => `t${randomBytes(5).toString('hex')}`;

const marker = (name: string) => join(dir, `${name}.marker`);
const lines = (file: string) => (existsSync(file) ? readFileSync(file, 'utf8').trim().split('\n') : []);

let prefix = '';
beforeEach(() => {
  prefix = `${uniquePrefix()}-`;
});

afterEach(async () => {
  // Clean up through the CLI too, then prove nothing of this test is left.
  for (const l of liveJobs(prefix)) execFileSync('scancel', [l.split(' ')[0]], { env: { ...process.env, SLURM_CONF } });
  await waitFor(`no live job named ${prefix}*`, () => liveJobs(prefix).length === 0, 20_000);
  expect(liveJobs(prefix)).toEqual([]);
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

function job(name: string, patch: Partial<PilotJobRequest> = {}, namePrefix = prefix): PilotJobRequest {
  return {
    name: `${namePrefix}${name}`,
    command: { kind: 'script', path: PILOT },
    walltimeSeconds: 300,
    memoryMiB: 64,
    outputFile: join(dir, `${name}.out`),
    environment: { MARKER: marker(`${namePrefix}${name}`), PILOT_NOTE: 'a,b c' },
    ...patch,
  };
}

describe('Slurm adapter on the testbed', () => {
  // The time-limit job must run for Slurm's minimum limit of 1 minute plus up to one ~30 s enforcement
  // tick, whatever we do: it is submitted first and checked last, so the other tests run meanwhile. It
  // runs on vmm2, which no other test fills (vmm1 and vmm3 get 4-CPU blockers), under a prefix of its own.
  const shortPrefix = `${uniquePrefix()}-`;
  let short: { jobId: string } | undefined;
  beforeAll(async () => {
    short = await slurm.submit(job('short', { node: 'vmm2', walltimeSeconds: 30, signalBeforeEnd: { signal: 'USR1', seconds: 30 } }, shortPrefix));
    await waitState(short.jobId, ['running'], 15_000);
  });
  afterAll(async () => {
    for (const l of liveJobs(shortPrefix)) execFileSync('scancel', [l.split(' ')[0]], { env: { ...process.env, SLURM_CONF } });
    await waitFor(`no live job named ${shortPrefix}*`, () => liveJobs(shortPrefix).length === 0, 20_000);
    expect(liveJobs(shortPrefix)).toEqual([]);
  });

  it('queues a job behind a full node, runs it on the pinned node, cancels it with SIGTERM, and cancels twice', async () => {
    // The blocker takes all 4 CPUs of vmm3, so the pilot pinned to vmm3 must wait: a real queued state.
    const blocker = await slurm.submit(job('blocker', { node: 'vmm3', cpus: 4 }));
    await waitState(blocker.jobId, ['running'], 15_000);
    const pilot = await slurm.submit(job('pilot', { node: 'vmm3' }));
    const queued = await waitState(pilot.jobId, ['queued'], 5_000);
    expect(queued).toMatchObject({ state: 'queued', name: `${prefix}pilot` });
    expect(liveJobs(prefix)).toContain(`${pilot.jobId} ${prefix}pilot PENDING`);

    await slurm.cancel(blocker.jobId);
    const running = await waitState(pilot.jobId, ['running'], 15_000);
    expect(running).toMatchObject({ state: 'running', nodes: 'vmm3', name: `${prefix}pilot` });
    // Never requeued (a pilot is for one slot): Slurm holds the submission's --no-requeue.
    expect(execFileSync('scontrol', ['show', 'job', pilot.jobId], { env: { ...process.env, SLURM_CONF } }).toString()).toMatch(/\bRequeue=0\b/);
    const m = marker(`${prefix}pilot`);
    await waitFor('the pilot to start', () => lines(m).length > 0, 5_000);
    // Pinned node, the job's own id, and only the environment we gave (a comma survives).
    expect(lines(m)[0]).toMatch(new RegExp(`^start vmm3 ${pilot.jobId} [0-9.]+ env=a,b c$`));

    const t0 = Date.now() / 1000;
    await slurm.cancel(pilot.jobId);
    await waitFor('TERM in the marker', () => lines(m).some((l) => l.startsWith('TERM')), 5_000, 50);
    const term = Number(lines(m).find((l) => l.startsWith('TERM'))!.split(' ')[1]);
    expect(term - t0).toBeLessThan(3); // measured ~10 ms; generous for a loaded 2-core machine
    const ended = await waitState(pilot.jobId, ['ended'], 15_000);
    expect(ended).toMatchObject({ state: 'ended', outcome: 'cancelled', exitCode: 143, nodes: 'vmm3' });

    await expect(slurm.cancel(pilot.jobId)).resolves.toBeUndefined(); // idempotent on an ended job
    await expect(slurm.cancel('987654321')).resolves.toBeUndefined(); // and on one Slurm never had
    expect(await slurm.status('987654321')).toEqual({ state: 'unknown', jobId: '987654321' });
    expect(await slurm.status(pilot.jobId)).toMatchObject({ state: 'ended', outcome: 'cancelled' });
  });

  it('signals the pilot itself without cancelling it; signalling a queued or ended job is a no-op', async () => {
    const blocker = await slurm.submit(job('blocker', { node: 'vmm1', cpus: 4, command: { kind: 'argv', argv: ['/bin/bash', PILOT] } }));
    await waitState(blocker.jobId, ['running'], 15_000);
    const waiting = await slurm.submit(job('waiting', { node: 'vmm1' }));
    await waitState(waiting.jobId, ['queued'], 5_000);
    await expect(slurm.cancel(waiting.jobId, { signal: 'USR1' })).resolves.toBeUndefined();
    expect((await slurm.status(waiting.jobId)).state).toBe('queued');

    const m = marker(`${prefix}blocker`);
    await waitFor('the argv pilot to start', () => lines(m).length > 0, 5_000);
    await slurm.cancel(blocker.jobId, { signal: 'USR1' });
    await waitFor('USR1 in the marker', () => lines(m).some((l) => l.startsWith('USR1')), 5_000, 50);
    await new Promise((r) => setTimeout(r, 1500));
    expect(await slurm.status(blocker.jobId)).toMatchObject({ state: 'running' });
    expect(lines(m).some((l) => l.startsWith('TERM'))).toBe(false);

    await slurm.cancel(blocker.jobId);
    await slurm.cancel(waiting.jobId);
    await waitState(blocker.jobId, ['ended'], 15_000);
    await expect(slurm.cancel(blocker.jobId, { signal: 'USR1' })).resolves.toBeUndefined();
  });

  it('lists its jobs by name prefix, live ones only unless asked for ended ones too', async () => {
    const a = await slurm.submit(job('a', { node: 'vmm2' }));
    const b = await slurm.submit(job('b', { node: 'vmm2' }));
    await waitState(a.jobId, ['running'], 15_000);
    const live = await slurm.listByPrefix(prefix);
    expect(live.map((j) => j.jobId).sort()).toEqual([a.jobId, b.jobId].sort());
    expect(live.every((j) => j.name?.startsWith(prefix))).toBe(true);
    expect(await slurm.listByPrefix(`${prefix}a`)).toEqual([expect.objectContaining({ jobId: a.jobId })]);
    expect(await slurm.listByPrefix(`${uniquePrefix()}-`)).toEqual([]);

    await slurm.cancel(a.jobId);
    await slurm.cancel(b.jobId);
    await waitState(a.jobId, ['ended'], 15_000);
    await waitState(b.jobId, ['ended'], 15_000);
    expect(await slurm.listByPrefix(prefix)).toEqual([]);
    const all = await slurm.listByPrefix(prefix, { includeEnded: true });
    expect(all.map((j) => [j.jobId, j.state]).sort()).toEqual([[a.jobId, 'ended'], [b.jobId, 'ended']].sort());
  });

  it('refuses a bad partition, node or feature with BatchSubmitRefused naming it, and submits nothing', async () => {
    const refusal = async (patch: Partial<PilotJobRequest>): Promise<ApplicationFailure> => {
      const e = await slurm.submit(job('bad', patch)).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(e).toBeInstanceOf(ApplicationFailure);
      return e as ApplicationFailure;
    };
    const part = await refusal({ partition: 'nosuchpart' });
    expect(part.type).toBe('BatchSubmitRefused');
    expect(part.nonRetryable).toBe(true);
    expect(part.message).toContain('partition "nosuchpart"');
    expect(part.message).toContain('Invalid partition name specified');
    const node = await refusal({ node: 'vmm9' });
    expect(node.type).toBe('BatchSubmitRefused');
    expect(node.message).toContain('node "vmm9"');
    const feature = await refusal({ constraints: ['bigmem'] });
    expect(feature.message).toContain('constraints "bigmem"');
    const invalid = await refusal({ partition: 'a b' });
    expect(invalid.type).toBe('InvalidSpec');
    expect(await slurm.listByPrefix(prefix, { includeEnded: true })).toEqual([]);
  });

  it('a controller that does not answer is BatchSystemUnavailable, never "unknown job"', async () => {
    const conf = join(dir, 'unreachable.conf');
    writeFileSync(conf, readFileSync(SLURM_CONF, 'utf8').replace(/^SlurmctldPort=\d+$/m, 'SlurmctldPort=16899'));
    const down = new SlurmBatchSystem(new LocalExecutor(), { slurmConf: conf });
    const e = await down.status('12345').then(
      () => undefined,
      (err: unknown) => err as ApplicationFailure,
    );
    expect(e).toBeInstanceOf(ApplicationFailure);
    expect(e!.type).toBe('BatchSystemUnavailable');
    expect(e!.nonRetryable).toBe(false);
  }, 60_000);

  it('a too-short time limit ends the job by limit, after the pre-end signal to the batch shell', async () => {
    // Submitted in beforeAll (above). 30 s + 2 s padding rounds up to Slurm's 1 minute; the limit is
    // enforced on a ~30 s tick (≤ ~95 s).
    expect(short).toBeDefined();
    const ended = await waitState(short!.jobId, ['ended'], 140_000);
    expect(ended).toMatchObject({ state: 'ended', outcome: 'timeout', reason: 'TimeLimit', nodes: 'vmm2' });
    // Slurm's limit is 1 minute; its ~30 s enforcement tick ends the job up to ~35 s later.
    const ran = ended.state === 'ended' ? ended.endTime! - ended.startTime! : NaN;
    expect(ran).toBeGreaterThanOrEqual(60);
    expect(ran).toBeLessThan(100);
    const m = lines(marker(`${shortPrefix}short`));
    const usr1 = m.findIndex((l) => l.startsWith('USR1'));
    const term = m.findIndex((l) => l.startsWith('TERM'));
    expect(usr1).toBeGreaterThan(0);
    expect(term).toBeGreaterThan(usr1);
    expect(readFileSync(join(dir, 'short.out'), 'utf8')).toMatch(/DUE TO TIME LIMIT/);
  }, 170_000);
});
