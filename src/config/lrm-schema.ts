/**
 * The `lrm` configuration section: which batch system lends vws its nodes (pilot mode, seed 003) and how
 * pilot jobs are submitted to it. A fragment on its own; `schema.ts` embeds it as an optional section.
 */
import { z } from 'zod';

/** Partition, queue, node property or account: what both Slurm and PBS accept in their options. */
const word = z.string().regex(/^[A-Za-z0-9._-]{1,128}$/, 'must be letters, digits, ".", "_" or "-" (one name)');

/** The site's batch system and the defaults of every pilot job. */
export const lrmSchema = z
  .object({
    kind: z.enum(['slurm', 'pbs']),
    /** Slurm partition / PBS queue of pilot jobs (absent: the batch system's default). */
    partition: word.optional(),
    /** Node properties every pilot job requires (Slurm features, PBS node properties): where VMs may run. */
    constraints: z.array(word).default([]),
    /**
     * Each pilot job has its node to itself (Slurm `--exclusive`, TORQUE `-n`, PBS Pro `place=excl`). A
     * pilot sets the node's memory to absolute values under a node lock: a second pilot the batch system
     * placed beside it refuses at the lock, and its workspace fails. Turn it off only where the site keeps
     * pilot nodes to one job otherwise (e.g. a partition with OverSubscribe=EXCLUSIVE).
     */
    exclusive: z.boolean().default(true),
    /** Account charged for pilot jobs. */
    account: z.string().regex(/^[A-Za-z0-9._@-]{1,128}$/, 'must be an account name').optional(),
    /**
     * Seconds added to each pilot's time before the batch system's rounding (Slurm: whole minutes, up), so
     * the pilot ends its slot itself before the batch system's limit cuts it (Nimbus: 2 s).
     */
    walltimePaddingSeconds: z.number().int().min(0).max(3600).default(2),
    /** Limit for each batch command (sbatch, squeue, qsub, …). */
    commandTimeoutMs: z.number().int().min(1000).max(600_000).default(30_000),
    /**
     * Where batch commands run: `local` = on the head, `ssh` = on a submit host over SSH (with the head's
     * `ssh` key and pinned host keys).
     */
    submitHost: z
      .object({
        via: z.enum(['local', 'ssh']).default('local'),
        host: z.string().min(1).optional(),
        port: z.number().int().min(1).max(65535).default(22),
        user: z.string().min(1).default('root'),
      })
      .strict()
      .prefault({}),
    /** Slurm only. */
    slurm: z
      .object({
        /** `SLURM_CONF` for every command (absent: `/etc/slurm/slurm.conf`). */
        conf: z.string().startsWith('/', 'must be an absolute path').optional(),
      })
      .strict()
      .optional(),
    /** PBS only. */
    pbs: z
      .object({
        /** `torque` (qstat -f keeps completed jobs as C) or `pbspro` (OpenPBS/PBS Professional: qstat -x history). */
        flavor: z.enum(['torque', 'pbspro']).default('torque'),
        /** `PBS_DEFAULT`: the server (absent: the client's default). */
        server: z.string().regex(/^[A-Za-z0-9._:-]{1,253}$/, 'must be a server host name').optional(),
      })
      .strict()
      .optional(),
  })
  .strict()
  .superRefine((l, ctx) => {
    if (l.kind === 'slurm' && l.pbs) ctx.addIssue({ code: 'custom', path: ['pbs'], message: 'is for kind pbs; this batch system is slurm' });
    if (l.kind === 'pbs' && l.slurm) ctx.addIssue({ code: 'custom', path: ['slurm'], message: 'is for kind slurm; this batch system is pbs' });
    if (l.submitHost.via === 'ssh' && !l.submitHost.host) {
      ctx.addIssue({ code: 'custom', path: ['submitHost', 'host'], message: 'is required when submitHost.via is ssh' });
    }
  });

/** The validated `lrm` section. */
export type LrmConfig = z.infer<typeof lrmSchema>;
