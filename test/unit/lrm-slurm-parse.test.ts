/**
 * The Slurm adapter's pure parts against outputs recorded from the testbed's real Slurm 22.05
 * (test/fixtures/slurm/README.md says which command produced each file), plus the request checks and the
 * sbatch options built from a request.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { paddedWalltimeSeconds, argvBatchScript, validateJobRequest } from '../../src/activities/lrm/request';
import {
  classifySbatchError,
  decodeWaitStatus,
  isUnknownJobError,
  parseSacct,
  parseSbatchParsable,
  parseScontrolJobs,
  parseScontrolLine,
  parseSqueueJson,
  parseSqueueText,
  slurmJobStatus,
} from '../../src/activities/lrm/slurm-parse';
import { sbatchArgs } from '../../src/activities/lrm/slurm';
import type { PilotJobRequest } from '../../src/activities/lrm/types';

const fx = (f: string) => readFileSync(join(__dirname, '../fixtures/slurm', f), 'utf8');
const byId = (jobs: ReturnType<typeof parseSqueueJson>) => new Map(jobs.map((j) => [j.jobId, slurmJobStatus(j)]));

describe('squeue --json (22.05, recorded)', () => {
  const jobs = byId(parseSqueueJson(fx('squeue-all.json')));

  it('reads every job and maps held, cancelled, completed, failed and timed-out jobs', () => {
    expect([...jobs.keys()].sort()).toEqual(['10', '11', '12', '13', '5', '6', '7', '8']);
    expect(jobs.get('5')).toMatchObject({ state: 'queued', name: 'fx-held', reason: 'JobHeldUser', rawState: 'PENDING' });
    expect(jobs.get('5')).not.toHaveProperty('nodes');
    expect(jobs.get('6')).toMatchObject({ state: 'ended', outcome: 'cancelled', exitCode: 143, nodes: 'vmm2', startTime: 1796147052, endTime: 1796147067 });
    expect(jobs.get('7')).toMatchObject({ state: 'ended', outcome: 'completed', exitCode: 0, nodes: 'vmm3' });
    expect(jobs.get('8')).toMatchObject({ state: 'ended', outcome: 'failed', exitCode: 3, reason: 'NonZeroExitCode' });
    expect(jobs.get('11')).toMatchObject({ state: 'ended', outcome: 'timeout', reason: 'TimeLimit', nodes: 'vmm1' });
    expect(jobs.get('12')).toMatchObject({ state: 'ended', outcome: 'cancelled' });
  });

  it('a job whose TERM trap is still running is completing, not ended; a running job is running', () => {
    const mid = byId(parseSqueueJson(fx('squeue-completing.json')));
    expect(mid.get('12')).toMatchObject({ state: 'completing', rawState: 'COMPLETING', nodes: 'vmm3' });
    expect(mid.get('11')).toMatchObject({ state: 'running', nodes: 'vmm1' });
    expect(mid.get('11')).not.toHaveProperty('reason'); // "None" is no reason
  });

  it('a controller that cannot be reached exits 0 with an errors entry: that is an error, never "no jobs"', () => {
    expect(() => parseSqueueJson(fx('squeue-controller-down.json'))).toThrow(/Failed while looking for jobs/);
    expect(() => parseSqueueJson('slurm_load_jobs error')).toThrow(/no JSON/);
    expect(() => parseSqueueJson('{"errors":[]}')).toThrow(/no "jobs"/);
  });

  it('reads the object shapes of later releases (v0.0.39+: state lists, {set,number} times, exit objects)', () => {
    const later = JSON.stringify({
      errors: [],
      jobs: [
        { job_id: 41, name: 'p-a', job_state: ['RUNNING'], state_reason: 'None', nodes: 'vmm1', start_time: { set: true, infinite: false, number: 100 }, end_time: { set: true, infinite: false, number: 160 }, exit_code: { status: ['PENDING'], return_code: { set: false, number: 0 } } },
        { job_id: 42, name: 'p-b', job_state: ['CANCELLED', 'COMPLETING'], nodes: 'vmm2', exit_code: { status: ['SIGNALED'], return_code: { set: true, number: 0 }, signal: { id: { set: true, number: 15 }, name: 'TERM' } } },
        { job_id: 43, name: 'p-c', job_state: ['TIMEOUT'], nodes: 'vmm3', end_time: { set: false, infinite: false, number: 0 }, exit_code: { status: ['SIGNALED'], return_code: { set: true, number: 0 }, signal: { id: { set: true, number: 9 } } } },
      ],
    });
    const m = byId(parseSqueueJson(later));
    expect(m.get('41')).toMatchObject({ state: 'running', startTime: 100, endTime: 160 });
    expect(m.get('42')).toMatchObject({ state: 'completing' });
    expect(m.get('43')).toMatchObject({ state: 'ended', outcome: 'timeout', signal: 9 });
    expect(m.get('43')).not.toHaveProperty('endTime');
  });

  it('an unheard-of state is unknown rather than a guess', () => {
    expect(slurmJobStatus({ jobId: '1', states: ['WEIRD'] })).toEqual({ state: 'unknown', jobId: '1', rawState: 'WEIRD' });
  });

  it('decodes 22.05 wait statuses', () => {
    expect(decodeWaitStatus(768)).toEqual({ exitCode: 3 });
    expect(decodeWaitStatus(36608)).toEqual({ exitCode: 143 });
    expect(decodeWaitStatus(9)).toEqual({ signal: 9 });
    expect(decodeWaitStatus(0)).toEqual({ exitCode: 0 });
  });
});

describe('scontrol show job -o and the text fallbacks (recorded)', () => {
  const one = (f: string) => slurmJobStatus(parseScontrolJobs(fx(f))[0]);

  it('maps each recorded state with exit codes', () => {
    expect(one('scontrol-held.txt')).toMatchObject({ jobId: '5', state: 'queued', reason: 'JobHeldUser' });
    expect(one('scontrol-running.txt')).toMatchObject({ jobId: '6', name: 'fx-run', state: 'running', nodes: 'vmm2' });
    expect(one('scontrol-cancelled.txt')).toMatchObject({ state: 'ended', outcome: 'cancelled', exitCode: 143 });
    expect(one('scontrol-completing.txt')).toMatchObject({ jobId: '12', state: 'completing' });
    expect(one('scontrol-timeout.txt')).toMatchObject({ jobId: '11', state: 'ended', outcome: 'timeout', reason: 'TimeLimit' });
    expect(one('scontrol-failed.txt')).toMatchObject({ state: 'ended', outcome: 'failed', exitCode: 3 });
  });

  it('splits keys with : and / and keeps values with spaces', () => {
    const kv = parseScontrolLine('JobId=7 AllocNode:Sid=head:12 CPUs/Task=1 Command=/opt/my dir/pilot.sh WorkDir=/tmp');
    expect(kv).toEqual({ JobId: '7', 'AllocNode:Sid': 'head:12', 'CPUs/Task': '1', Command: '/opt/my dir/pilot.sh', WorkDir: '/tmp' });
    const running = parseScontrolJobs(fx('scontrol-running.txt'))[0];
    expect(running.startTime).toBe(Math.round(new Date('2026-12-01T17:44:12').getTime() / 1000));
  });

  it('reads squeue -h -o text and sacct -P lines', () => {
    const text = new Map(parseSqueueText(fx('squeue-text.txt')).map((j) => [j.jobId, slurmJobStatus(j)]));
    expect(text.get('5')).toMatchObject({ state: 'queued', name: 'fx-held', reason: 'JobHeldUser' });
    expect(text.get('11')).toMatchObject({ state: 'ended', outcome: 'timeout', nodes: 'vmm1' });
    expect(text.size).toBe(8);
    const acct = parseSacct('17|p-x|CANCELLED by 0|0:15|vmm2\n18|p-y|COMPLETED|0:0|vmm1\n');
    expect(slurmJobStatus(acct[0])).toMatchObject({ state: 'ended', outcome: 'cancelled', signal: 15, nodes: 'vmm2' });
    expect(slurmJobStatus(acct[1])).toMatchObject({ state: 'ended', outcome: 'completed', exitCode: 0 });
  });

  it('recognises "unknown job" errors', () => {
    expect(isUnknownJobError(fx('scontrol-unknown.stderr'))).toBe(true);
    expect(isUnknownJobError(fx('squeue-unknown.stderr'))).toBe(true);
    expect(isUnknownJobError(fx('scancel-signal-ended.stderr'))).toBe(true);
    expect(isUnknownJobError(fx('scancel-signal-pending.stderr'))).toBe(false);
  });
});

describe('sbatch answers (recorded)', () => {
  it('reads the job id, with or without a cluster', () => {
    expect(parseSbatchParsable('42\n')).toBe('42');
    expect(parseSbatchParsable('42;vws\n')).toBe('42');
    expect(() => parseSbatchParsable('Submitted batch job 42')).toThrow(/no job id/);
  });

  it('names the field of each refusal and tells refusals from an unreachable controller', () => {
    expect(classifySbatchError(fx('sbatch-bad-partition.stderr'))).toEqual({
      kind: 'refused',
      field: 'partition',
      message: 'invalid partition specified: nosuch; Batch job submission failed: Invalid partition name specified',
    });
    expect(classifySbatchError(fx('sbatch-bad-node.stderr'))).toMatchObject({ kind: 'refused', field: 'node' });
    expect(classifySbatchError(fx('sbatch-bad-feature.stderr'))).toMatchObject({ kind: 'refused', field: 'constraints' });
    expect(classifySbatchError(fx('sbatch-bad-memory.stderr'))).toMatchObject({ kind: 'refused', field: 'memoryMiB' });
    expect(classifySbatchError(fx('sbatch-controller-down.stderr'))).toMatchObject({ kind: 'unavailable' });
    expect(classifySbatchError(fx('sbatch-no-conf.stderr'))).toMatchObject({ kind: 'unavailable' });
    expect(classifySbatchError('sbatch: error: something new')).toMatchObject({ kind: 'refused', message: 'something new' });
  });
});

describe('requests and sbatch options', () => {
  const base: PilotJobRequest = { name: 'vws-p-1', command: { kind: 'argv', argv: ['/opt/vws/pilot', '--slot', 'a b'] }, walltimeSeconds: 600 };

  it('rounds the padded time up to whole minutes, never down', () => {
    expect(paddedWalltimeSeconds(600, 0, 60)).toBe(600);
    expect(paddedWalltimeSeconds(600, 2, 60)).toBe(660);
    expect(paddedWalltimeSeconds(20, 0, 60)).toBe(60);
    expect(paddedWalltimeSeconds(61, 0, 1)).toBe(61);
    expect(sbatchArgs({ ...base, walltimeSeconds: 58 }, { walltimePaddingSeconds: 2 })).toContain('--time=1');
    expect(sbatchArgs({ ...base, walltimeSeconds: 59 }, { walltimePaddingSeconds: 2 })).toContain('--time=2');
  });

  it('builds every option from the request, with site defaults underneath; never requeued', () => {
    const args = sbatchArgs(
      { ...base, node: 'vmm2', constraints: ['xen', 'bigmem'], memoryMiB: 512, cpus: 2, signalBeforeEnd: { signal: 'USR1', seconds: 60 }, outputFile: '/var/log/p.out', workDir: '/var/tmp' },
      { partition: 'vws', account: 'grid', constraints: ['pilot', 'xen'], walltimePaddingSeconds: 2 },
    );
    expect(args).toEqual([
      '--job-name=vws-p-1',
      '--nodes=1',
      '--ntasks=1',
      '--no-requeue',
      '--nodelist=vmm2',
      '--partition=vws',
      '--constraint=pilot&xen&bigmem',
      '--account=grid',
      '--time=11',
      '--mem=512M',
      '--cpus-per-task=2',
      '--signal=B:USR1@60',
      '--output=/var/log/p.out',
      '--chdir=/var/tmp',
    ]);
    expect(sbatchArgs({ ...base, partition: 'other', account: 'mine' }, { partition: 'vws', account: 'grid' })).toEqual(expect.arrayContaining(['--partition=other', '--account=mine']));
    // The node to the pilot alone, only when asked.
    expect(sbatchArgs({ ...base, node: 'vmm2', exclusive: true })).toEqual(expect.arrayContaining(['--nodelist=vmm2', '--exclusive']));
    expect(sbatchArgs(base)).not.toContain('--exclusive');
  });

  it('wraps an argv in a script that execs it, quoted', () => {
    expect(argvBatchScript(["/opt/p", "it's", '$HOME'])).toBe("#!/bin/sh\n# generated by vws: runs the pilot as the batch shell itself\nexec '/opt/p' 'it'\\''s' '$HOME'\n");
  });

  it('refuses bad fields with InvalidSpec naming the field', () => {
    const bad = (patch: Partial<PilotJobRequest>, field: string) => {
      let err: unknown;
      try {
        validateJobRequest({ ...base, ...patch } as PilotJobRequest);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ApplicationFailure);
      expect((err as ApplicationFailure).type).toBe('InvalidSpec');
      expect((err as ApplicationFailure).nonRetryable).toBe(true);
      expect((err as Error).message).toContain(field);
    };
    bad({ name: 'a b' }, 'name');
    bad({ command: { kind: 'argv', argv: [] } }, 'command.argv');
    bad({ command: { kind: 'script', path: 'pilot.sh' } }, 'command.path');
    bad({ node: 'vmm[1-2]' }, 'node');
    bad({ partition: 'a,b' }, 'partition');
    bad({ constraints: ['ok', 'x&y'] }, 'constraints[1]');
    bad({ walltimeSeconds: 0 }, 'walltimeSeconds');
    bad({ walltimeSeconds: 1.5 }, 'walltimeSeconds');
    bad({ memoryMiB: -1 }, 'memoryMiB');
    bad({ signalBeforeEnd: { signal: 'SIGUSR1', seconds: 60 } }, 'signalBeforeEnd.signal');
    bad({ signalBeforeEnd: { signal: 'USR1', seconds: 70000 } }, 'signalBeforeEnd.seconds');
    bad({ outputFile: 'out.txt' }, 'outputFile');
    bad({ environment: { 'A-B': 'x' } }, 'environment.A-B');
    expect(() => validateJobRequest(base)).not.toThrow();
  });
});
