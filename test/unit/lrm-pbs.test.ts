/**
 * The PBS adapter's pure parts (TORQUE and PBS Pro). No PBS can run on the testbed (Debian has no TORQUE
 * or OpenPBS package), so these are RECORDED-OUTPUT tests only: the files in test/fixtures/pbs/ were
 * written from the TORQUE and PBS Pro documentation's formats (see its README), not captured from a server.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { qsubArgs } from '../../src/activities/lrm/pbs';
import {
  classifyQsubError,
  execHosts,
  formatDuration,
  isPbsAlreadyEnded,
  isPbsUnknownJob,
  parseDuration,
  parseQstatFull,
  parseQsubOutput,
  pbsJobStatus,
  pbsTime,
} from '../../src/activities/lrm/pbs-parse';
import type { PilotJobRequest } from '../../src/activities/lrm/types';

const fx = (f: string) => readFileSync(join(__dirname, '../fixtures/pbs', f), 'utf8');

describe('TORQUE qstat -f (recorded-format output)', () => {
  const jobs = parseQstatFull(fx('torque/qstat-f.txt'));
  const st = new Map(jobs.map((j) => [j['Job Id'], pbsJobStatus(j, 'torque')]));

  it('splits jobs and joins wrapped values without a separator', () => {
    expect(jobs).toHaveLength(8);
    expect(jobs[1].Variable_List).toBe(
      'PBS_O_QUEUE=batch,PBS_O_HOME=/var/lib/vws,PBS_O_LOGNAME=vws,PBS_O_PATH=/usr/local/bin:/usr/bin:/bin,PBS_O_SHELL=/bin/sh,PBS_O_LANG=C.UTF-8,PBS_O_WORKDIR=/tmp,PBS_O_HOST=head.example.org,PBS_O_SERVER=pbs01.example.org,VWS_SLOT=slot-a',
    );
    expect(jobs[1]['Resource_List.walltime']).toBe('00:10:02');
  });

  it('maps each state, exit status and time', () => {
    expect(st.get('1200.pbs01.example.org')).toMatchObject({ state: 'queued', name: 'vws-t1-queued', reason: 'Not Running: Node is busy', rawState: 'Q' });
    expect(st.get('1201.pbs01.example.org')).toMatchObject({ state: 'running', nodes: 'vmm2', startTime: 1796147052 });
    expect(st.get('1202.pbs01.example.org')).toMatchObject({ state: 'ended', outcome: 'completed', exitCode: 0, nodes: 'vmm1', endTime: 1796147066 });
    expect(st.get('1203.pbs01.example.org')).toMatchObject({ state: 'ended', outcome: 'killed', signal: 15 });
    expect(st.get('1204.pbs01.example.org')).toMatchObject({ state: 'ended', outcome: 'timeout' });
    expect(st.get('1205.pbs01.example.org')).toMatchObject({ state: 'queued', rawState: 'H' });
    expect(st.get('1206.pbs01.example.org')).toMatchObject({ state: 'completing', rawState: 'E' });
  });

  it('reads qsub output and tells unknown, finished, refused and unreachable apart', () => {
    expect(parseQsubOutput(fx('torque/qsub.stdout'))).toBe('1201.pbs01.example.org');
    expect(() => parseQsubOutput('qsub: waiting for job to start')).toThrow(/no job id/);
    expect(isPbsUnknownJob(fx('torque/qdel-unknown.stderr'))).toBe(true);
    expect(isPbsUnknownJob(fx('torque/qstat-unknown.stderr'))).toBe(true);
    expect(isPbsAlreadyEnded(fx('torque/qdel-completed.stderr'))).toBe(true);
    expect(isPbsAlreadyEnded(fx('torque/qdel-unknown.stderr'))).toBe(false);
    expect(classifyQsubError(fx('torque/qsub-unknown-queue.stderr'))).toMatchObject({ kind: 'refused', field: 'partition' });
    expect(classifyQsubError(fx('torque/qsub-no-feasible-node.stderr'))).toMatchObject({ kind: 'refused', field: 'node' });
    expect(classifyQsubError(fx('torque/qsub-server-down.stderr'))).toMatchObject({ kind: 'unavailable' });
  });
});

describe('PBS Pro qstat -x -f (recorded-format output)', () => {
  const st = new Map(parseQstatFull(fx('pbspro/qstat-xf.txt')).map((j) => [j['Job Id'], pbsJobStatus(j, 'pbspro')]));

  it('maps running, finished, deleted, timed-out, failed and queued jobs', () => {
    expect(st.size).toBe(6);
    expect(st.get('2001.pbspro01')).toMatchObject({ state: 'running', name: 'vws-t2-pilot-b', nodes: 'vmm2', startTime: pbsTime('Tue Dec  1 17:44:12 2026') });
    expect(st.get('2002.pbspro01')).toMatchObject({ state: 'ended', outcome: 'completed', exitCode: 0, rawState: 'F' });
    expect(st.get('2003.pbspro01')).toMatchObject({ state: 'ended', outcome: 'killed', signal: 15 });
    expect(st.get('2004.pbspro01')).toMatchObject({ state: 'ended', outcome: 'timeout' });
    expect(st.get('2005.pbspro01')).toMatchObject({ state: 'ended', outcome: 'failed', exitCode: 3 });
    expect(st.get('2006.pbspro01')).toMatchObject({ state: 'queued', reason: expect.stringContaining('Insufficient amount of resource') });
  });

  it('a -29 from TORQUE is not a timeout: the codes are per family', () => {
    const job = { 'Job Id': '1.s', job_state: 'C', exit_status: '-29' };
    expect(pbsJobStatus(job, 'torque')).toMatchObject({ state: 'ended', outcome: 'other', exitCode: -29 });
    expect(pbsJobStatus({ ...job, job_state: 'F', Exit_status: '-29' }, 'pbspro')).toMatchObject({ outcome: 'timeout' });
  });

  it('a signal kill past the walltime is a timeout even without the server code', () => {
    const job = { 'Job Id': '1.s', job_state: 'C', exit_status: '271', 'resources_used.walltime': '00:01:05', 'Resource_List.walltime': '00:01:02' };
    expect(pbsJobStatus(job, 'torque')).toMatchObject({ outcome: 'timeout', signal: 15 });
  });

  it('reads its error messages', () => {
    expect(parseQsubOutput(fx('pbspro/qsub.stdout'))).toBe('2001.pbspro01');
    expect(isPbsUnknownJob(fx('pbspro/qdel-unknown.stderr'))).toBe(true);
    expect(isPbsUnknownJob(fx('pbspro/qstat-unknown.stderr'))).toBe(true);
    expect(isPbsAlreadyEnded(fx('pbspro/qdel-finished.stderr'))).toBe(true);
    expect(isPbsAlreadyEnded(fx('pbspro/qstat-finished-without-x.stderr'))).toBe(true);
    expect(classifyQsubError(fx('pbspro/qsub-unknown-queue.stderr'))).toEqual({ kind: 'refused', field: 'partition', message: 'qsub: Unknown queue' });
    expect(classifyQsubError(fx('pbspro/qsub-unknown-resource.stderr'))).toMatchObject({ kind: 'refused', field: 'constraints' });
    expect(classifyQsubError(fx('pbspro/qsub-server-down.stderr'))).toMatchObject({ kind: 'unavailable' });
  });
});

describe('helpers', () => {
  it('durations, times and hosts', () => {
    expect(parseDuration('00:10:02')).toBe(602);
    expect(parseDuration('100:00:00')).toBe(360000);
    expect(parseDuration('1:00:00:00')).toBe(86400);
    expect(parseDuration('N/A')).toBeUndefined();
    expect(formatDuration(602)).toBe('00:10:02');
    expect(formatDuration(360001)).toBe('100:00:01');
    expect(pbsTime('1796147052')).toBe(1796147052);
    expect(pbsTime('Tue Dec  1 17:44:12 2026')).toBe(Math.round(new Date(2026, 11, 1, 17, 44, 12).getTime() / 1000));
    expect(pbsTime('whenever')).toBeUndefined();
    expect(execHosts('vmm1/0-1')).toBe('vmm1');
    expect(execHosts('vmm1/0+vmm1/1+vmm2/0')).toBe('vmm1+vmm2');
    expect(execHosts('vmm2/0*2')).toBe('vmm2');
  });
});

describe('qsub options', () => {
  const base: PilotJobRequest = {
    name: 'vws-p-1',
    command: { kind: 'argv', argv: ['/opt/vws/pilot'] },
    walltimeSeconds: 600,
    node: 'vmm2',
    constraints: ['xen'],
    memoryMiB: 512,
    outputFile: '/var/log/vws/p.out',
    environment: { VWS_SLOT: 'slot-a', B: 'x y' },
  };

  it('TORQUE: not rerunnable, nodes=<node>:ppn:props, mem, padded walltime in seconds, -d', () => {
    expect(qsubArgs(base, { flavor: 'torque', queue: 'batch', account: 'grid', constraints: ['pilot'], walltimePaddingSeconds: 2 })).toEqual([
      '-N', 'vws-p-1', '-r', 'n', '-q', 'batch', '-A', 'grid',
      '-l', 'nodes=vmm2:ppn=1:pilot:xen', '-l', 'mem=512mb',
      '-l', 'walltime=00:10:02',
      '-j', 'oe', '-o', '/var/log/vws/p.out', '-d', '/tmp',
      '-v', 'VWS_SLOT=slot-a,B=x y',
    ]);
    expect(qsubArgs({ ...base, node: undefined, cpus: 4 }, {})).toContain('nodes=1:ppn=4:xen');
    // Node-exclusive (TORQUE's qsub -n), only when asked.
    expect(qsubArgs({ ...base, exclusive: true }, {})).toContain('-n');
    expect(qsubArgs(base, {})).not.toContain('-n');
  });

  it('PBS Pro: select with host and boolean properties; no -d', () => {
    const args = qsubArgs({ ...base, partition: 'workq', cpus: 2 }, { flavor: 'pbspro', queue: 'batch' });
    expect(args).toEqual([
      '-N', 'vws-p-1', '-r', 'n', '-q', 'workq',
      '-l', 'select=1:ncpus=2:mem=512mb:host=vmm2:xen=True',
      '-l', 'walltime=00:10:00',
      '-j', 'oe', '-o', '/var/log/vws/p.out',
      '-v', 'VWS_SLOT=slot-a,B=x y',
    ]);
    expect(qsubArgs({ ...base, exclusive: true }, { flavor: 'pbspro' })).toEqual(expect.arrayContaining(['-l', 'place=excl']));
  });

  it('refuses what PBS cannot carry, naming the field', () => {
    const refused = (job: PilotJobRequest, field: string) => {
      let err: unknown;
      try {
        qsubArgs(job);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ApplicationFailure);
      expect((err as ApplicationFailure).type).toBe('InvalidSpec');
      expect((err as Error).message).toContain(field);
    };
    refused({ ...base, signalBeforeEnd: { signal: 'USR1', seconds: 60 } }, 'signalBeforeEnd');
    refused({ ...base, environment: { A: 'x,y' } }, 'environment.A');
    refused({ ...base, command: { kind: 'script', path: '/opt/p.sh', args: ['x'] } }, 'command.args');
  });
});
