/** The `lrm` config fragment: defaults, errors naming the field, and the adapter it builds. */
import { lrmSchema } from '../../src/config/lrm-schema';
import { createBatchSystem } from '../../src/activities/lrm';
import { LocalExecutor } from '../../src/exec/local';

const problems = (raw: unknown) => {
  const r = lrmSchema.safeParse(raw);
  return r.success ? [] : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
};

describe('lrm config', () => {
  it('fills defaults', () => {
    expect(lrmSchema.parse({ kind: 'slurm' })).toEqual({
      kind: 'slurm',
      constraints: [],
      exclusive: true,
      walltimePaddingSeconds: 2,
      commandTimeoutMs: 30_000,
      submitHost: { via: 'local', port: 22, user: 'root' },
    });
  });

  it('names each bad field', () => {
    expect(problems({ kind: 'lsf' })[0]).toMatch(/^kind: /);
    expect(problems({ kind: 'slurm', partition: 'a b' })).toEqual(['partition: must be letters, digits, ".", "_" or "-" (one name)']);
    expect(problems({ kind: 'slurm', constraints: ['ok', 'x&y'] })[0]).toMatch(/^constraints\.1: /);
    expect(problems({ kind: 'slurm', walltimePaddingSeconds: -1 })[0]).toMatch(/^walltimePaddingSeconds: /);
    expect(problems({ kind: 'slurm', slurm: { conf: 'slurm.conf' } })).toEqual(['slurm.conf: must be an absolute path']);
    expect(problems({ kind: 'slurm', pbs: { flavor: 'torque' } })).toEqual(['pbs: is for kind pbs; this batch system is slurm']);
    expect(problems({ kind: 'pbs', slurm: {} })).toEqual(['slurm: is for kind slurm; this batch system is pbs']);
    expect(problems({ kind: 'pbs', pbs: { flavor: 'lsf' } })[0]).toMatch(/^pbs\.flavor: /);
    expect(problems({ kind: 'slurm', submitHost: { via: 'ssh' } })).toEqual(['submitHost.host: is required when submitHost.via is ssh']);
    expect(problems({ kind: 'slurm', queue: 'x' })[0]).toMatch(/queue/);
  });

  it('builds the adapter of its kind with its settings', () => {
    const slurm = createBatchSystem(lrmSchema.parse({ kind: 'slurm', partition: 'vws' }), new LocalExecutor());
    expect(slurm.kind).toBe('slurm');
    expect(slurm.capabilities).toEqual({ signalBeforeEnd: true, walltimeGranularitySeconds: 60 });
    const pbs = createBatchSystem(lrmSchema.parse({ kind: 'pbs', pbs: { flavor: 'pbspro' } }), new LocalExecutor());
    expect(pbs.kind).toBe('pbs');
    expect(pbs.capabilities.signalBeforeEnd).toBe(false);
  });
});
