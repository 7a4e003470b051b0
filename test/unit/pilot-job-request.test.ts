/** The pilot's batch job as the head builds it from the site configuration (src/activities/head/pilot-slot.ts). */
import { pilotJobRequest } from '../../src/activities/head/pilot-slot';
import { parseConfig } from '../../src/config/load';

const site = (lrm: Record<string, unknown>, pilot: Record<string, unknown> = {}) =>
  parseConfig({
    nodes: [{ name: 'vmm1', memoryMiB: 2048, cpus: 4, pilot: true }],
    lrm,
    pilot: { secretFile: '/var/lib/vws/secrets/pilot.secret', apiUrl: 'http://10.213.0.1:8080', ...pilot },
  });
const argv = (config: ReturnType<typeof site>) => {
  const r = pilotJobRequest(config, { slotId: 'ws-1', memoryMiB: 256, vcpus: 1, holdSeconds: 600 });
  if (r.command.kind !== 'argv') throw new Error('expected an argv command');
  return r.command.argv;
};

describe('the pilot job: --end-if-orphaned (the pilot hands back when its parent dies)', () => {
  it('is on with Slurm, where the parent is the job step manager', () => {
    expect(argv(site({ kind: 'slurm' }))).toContain('--end-if-orphaned');
  });
  it('is off with PBS, whose pbs_mom may restart under running jobs', () => {
    expect(argv(site({ kind: 'pbs' }))).not.toContain('--end-if-orphaned');
  });
  it('follows pilot.endIfOrphaned when the site sets it', () => {
    expect(argv(site({ kind: 'slurm' }, { endIfOrphaned: false }))).not.toContain('--end-if-orphaned');
    expect(argv(site({ kind: 'pbs' }, { endIfOrphaned: true }))).toContain('--end-if-orphaned');
  });
  it('carries the slot, the reservation (VM + overhead) and the hold', () => {
    const a = argv(site({ kind: 'slurm' }));
    expect(a.slice(a.indexOf('--slot'), a.indexOf('--slot') + 2)).toEqual(['--slot', 'ws-1']);
    expect(a.slice(a.indexOf('--reserve-mib'), a.indexOf('--reserve-mib') + 2)).toEqual(['--reserve-mib', '320']);
    expect(a.slice(a.indexOf('--hold-seconds'), a.indexOf('--hold-seconds') + 2)).toEqual(['--hold-seconds', '600']);
  });
});
