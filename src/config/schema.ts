/**
 * The site configuration: one zod schema with vws's embedded defaults. A site overrides any part in a
 * YAML file (`VWS_CONFIG`); whatever it leaves out keeps the default. The defaults describe the
 * single-machine set-up that `./run.sh start` brings up: the head on 10.213.0.1 and one VMM node, vmm1.
 */
import { z } from 'zod';
import { inSubnet, ipToInt } from '../domain/network';

const ipv4 = z.string().refine((s) => {
  try {
    ipToInt(s);
    return true;
  } catch {
    return false;
  }
}, 'must be an IPv4 address like 10.213.0.100');

const name = z.string().regex(/^[a-z][a-z0-9-]{0,30}$/, 'must be lowercase letters, digits and -, starting with a letter');

/** A client allowed to use the API; its bearer token is read from a file, never written in the config. */
export const clientSchema = z
  .object({
    name,
    /** Grid-style identity, e.g. `/O=Grid/OU=site/CN=alice`. */
    identity: z.string().min(1),
    /** File holding the bearer token (created with a random token if missing). */
    tokenFile: z.string().min(1),
    admin: z.boolean().default(false),
    /**
     * URL prefixes this client may name as an unpropagation target (`sftp://user@host/dir/`,
     * `file:///dir/`, `https://host/dir/`). Repository image names are always allowed; nothing else is.
     */
    stageOutTargets: z.array(z.string().min(1)).default([]),
  })
  .strict();

/** A VMM node as the allocator and the head see it. */
export const nodeSchema = z
  .object({
    name,
    memoryMiB: z.number().int().min(64),
    cpus: z.number().int().min(1),
    /** Hypervisor driver. `bench` does no hypervisor work: for benchmarks of vws itself, never a default. */
    driver: z.enum(['qemu', 'xen', 'bench']).default('qemu'),
    /** Bridge on the node that VM interfaces join. */
    bridge: z.string().min(1).max(15).default('br0'),
    /**
     * How the node's activities run: `worker` = a node worker process on the node; `ssh` = the head serves
     * the node's task queue and runs the same activities over SSH (see `ssh`).
     */
    agent: z.enum(['worker', 'ssh']).default('worker'),
    /** SSH address of the node (required when `agent` is `ssh`). */
    ssh: z
      .object({
        host: z.string().min(1),
        port: z.number().int().min(1).max(65535).default(22),
        user: z.string().min(1).default('root'),
      })
      .strict()
      .optional(),
  })
  .strict()
  .superRefine((n, ctx) => {
    if (n.agent === 'ssh' && !n.ssh) ctx.addIssue({ code: 'custom', path: ['ssh'], message: `node ${n.name} has agent ssh but no ssh.host` });
  });

/** How the head reaches SSH-mode nodes: one key, pinned host keys, bounded waits (never a prompt). */
export const sshSchema = z
  .object({
    /** Private key the head authenticates with (no passphrase: nothing may ever prompt). */
    keyFile: z.string().startsWith('/').default('/var/lib/vws/secrets/ssh/id_ed25519'),
    /** OpenSSH known_hosts file with every node's pinned host key; an unknown or changed key is refused. */
    knownHostsFile: z.string().startsWith('/').default('/var/lib/vws/secrets/ssh/known_hosts'),
    connectTimeoutMs: z.number().int().min(100).default(10_000),
    keepaliveIntervalMs: z.number().int().min(100).default(5_000),
    /** Concurrent channels per connection (OpenSSH's MaxSessions defaults to 10). */
    maxChannels: z.number().int().min(1).max(64).default(8),
  })
  .strict();

/** One network's address pool. */
export const networkSchema = z
  .object({
    name,
    subnet: z.string().regex(/^\d+\.\d+\.\d+\.\d+\/\d{1,2}$/, 'must be a CIDR like 10.213.0.0/24'),
    gateway: ipv4,
    first: ipv4,
    last: ipv4,
    hostnamePrefix: z.string().regex(/^[a-z][a-z0-9-]{0,20}$/).default('ws-'),
  })
  .strict()
  .superRefine((n, ctx) => {
    for (const key of ['gateway', 'first', 'last'] as const) {
      if (!inSubnet(n[key], n.subnet)) {
        ctx.addIssue({ code: 'custom', path: [key], message: `${n[key]} is outside subnet ${n.subnet}` });
      }
    }
    if (ipToInt(n.first) > ipToInt(n.last)) {
      ctx.addIssue({ code: 'custom', path: ['last'], message: `last (${n.last}) comes before first (${n.first})` });
    }
  });

/** Image policy: where images may come from and how big a workspace's disks may be. */
export const imagesSchema = z
  .object({
    /**
     * URL prefixes stage-in may read (file://, http(s)://, sftp://). A URL under none of them is refused
     * before anything is fetched: the head must not read arbitrary files or hosts for a client.
     */
    sources: z.array(z.string().min(1)).default(['http://', 'https://', 'file:///var/lib/vws/incoming/']),
    /** Largest blank partition a request may ask for, in MiB. */
    maxBlankMiB: z.number().int().min(1).default(65_536),
    /** Most partitions per workspace besides the root. */
    maxExtraPartitions: z.number().int().min(0).max(8).default(4),
    /** Seconds the API waits when it checks that a source URL answers, before it accepts a request. */
    probeTimeoutSeconds: z.number().int().min(1).default(10),
  })
  .strict();

/** Settings of the node side (node worker): where it keeps files and how it runs VMs. */
export const nodeSideSchema = z
  .object({
    /** Node-local directory: image cache, workspace files, DHCP host entries, kernels. */
    dir: z.string().startsWith('/').default('/var/lib/vws/node'),
    /** Name of the site-provided kernel under `<dir>/kernels/`. */
    kernel: name.default('default'),
    qemuBinary: z.string().default('qemu-system-x86_64'),
    /** TCG: KVM on these machines only runs special guest kernels (research/testbed-qemu-vms.md). */
    accel: z.enum(['tcg', 'kvm']).default('tcg'),
    /**
     * Size limit of the node's image cache in MiB. Before a new base is copied in, least recently used
     * bases no live workspace uses are evicted until it fits.
     */
    cacheMaxMiB: z.number().int().min(1).default(20_480),
  })
  .strict();

/** Refuses two entries with the same `name` in a list, naming the second. */
function uniqueNames(what: string) {
  return (items: Array<{ name: string }>, ctx: z.RefinementCtx) => {
    const seen = new Set<string>();
    items.forEach((item, i) => {
      if (seen.has(item.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `duplicate ${what} name ${item.name}` });
      seen.add(item.name);
    });
  };
}

/** The whole configuration. */
export const configSchema = z
  .object({
    stateDir: z.string().startsWith('/').default('/var/lib/vws'),
    temporal: z
      .object({
        address: z.string().default('127.0.0.1:7233'),
        namespace: z.string().default('default'),
        /** Prefix of every task queue and workflow id, so several installations (or tests) share one server. */
        prefix: z.string().regex(/^[a-z][a-z0-9-]{0,40}$/).default('vws'),
        /** Base URL of the Temporal Web UI, for links. */
        uiUrl: z.string().default('http://127.0.0.1:8233'),
      })
      .strict()
      .prefault({}),
    api: z
      .object({
        host: z.string().default('0.0.0.0'),
        port: z.number().int().min(0).max(65535).default(8080),
      })
      .strict()
      .prefault({}),
    repository: z
      .object({
        dir: z.string().startsWith('/').default('/var/lib/vws/repo'),
        /** URL the nodes pull images from (the head's API, reachable from the nodes). */
        url: z.string().url().default('http://10.213.0.1:8080/repository'),
        /** Bearer token that node workers present to the repository. */
        nodeTokenFile: z.string().default('/var/lib/vws/secrets/node.token'),
      })
      .strict()
      .prefault({}),
    clients: z
      .array(clientSchema)
      .min(1)
      .superRefine(uniqueNames('client'))
      .default([{ name: 'demo', identity: '/O=Grid/OU=vws/CN=demo', tokenFile: '/var/lib/vws/secrets/demo.token', admin: false, stageOutTargets: ['file:///var/lib/vws/exports/'] }]),
    network: networkSchema.default({
      name: 'public',
      subnet: '10.213.0.0/24',
      gateway: '10.213.0.1',
      first: '10.213.0.100',
      last: '10.213.0.199',
      hostnamePrefix: 'ws-',
    }),
    nodes: z.array(nodeSchema).min(1).superRefine(uniqueNames('node')).default([{ name: 'vmm1', memoryMiB: 2048, cpus: 4, driver: 'qemu', bridge: 'br0', agent: 'worker' }]),
    node: nodeSideSchema.prefault({}),
    images: imagesSchema.prefault({}),
    ssh: sshSchema.prefault({}),
    timeouts: z
      .object({
        /** Seconds a booted VM has to obtain its DHCP address. */
        addressSeconds: z.number().int().min(1).default(120),
        /** Seconds a guest has to power off on a graceful shutdown before it is destroyed. */
        shutdownSeconds: z.number().int().min(1).default(30),
      })
      .strict()
      .prefault({}),
  })
  .strict();

/** A validated configuration with every default filled in. */
export type VwsConfig = z.infer<typeof configSchema>;
/** One configured node. */
export type NodeConfig = VwsConfig['nodes'][number];
