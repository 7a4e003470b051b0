/**
 * The site configuration: one zod schema with vws's embedded defaults. A site overrides any part in a
 * YAML file (`VWS_CONFIG`); whatever it leaves out keeps the default. The defaults describe the
 * single-machine set-up that `./run.sh start` brings up: the head on 10.213.0.1 and one VMM node, vmm1.
 */
import { z } from 'zod';
import { lrmSchema } from './lrm-schema';
import { pilotSshFallbackSchema } from './pilot-fallback-schema';
import type { PoolAddress } from '../domain/allocation';
import { inSubnet, ipToInt } from '../domain/network';
import { DEFAULT_NODE_HEARTBEAT_SECONDS, DEFAULT_NODE_STEP_SECONDS } from '../domain/workspace';
import { poolAddresses } from './pools';

const ipv4 = z.string().refine((s) => validIp(s), 'must be an IPv4 address like 10.213.0.100');

function validIp(s: string): boolean {
  try {
    ipToInt(s);
    return true;
  } catch {
    return false;
  }
}

const mac = z
  .string()
  .regex(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/, 'must be a MAC like 52:54:0a:d5:00:64 (lowercase hex)')
  .refine((m) => (parseInt(m.slice(0, 2), 16) & 1) === 0, 'must be a unicast MAC (the first octet must be even)');

const hostname = z.string().regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, 'must be a hostname label: lowercase letters, digits and -');

const name = z.string().regex(/^[a-z][a-z0-9-]{0,30}$/, 'must be lowercase letters, digits and -, starting with a letter');

/** A client allowed to use the API; its bearer token is read from a file, never written in the config. */
export const clientSchema = z
  .object({
    name,
    /** Grid-style identity, e.g. `/O=Grid/OU=site/CN=alice`. */
    identity: z.string().min(1),
    /** File holding the bearer token (created with a random token if missing). Give this or `tokenSha256`. */
    tokenFile: z.string().min(1).optional(),
    /**
     * The sha256 of the bearer token, as 64 hex digits (`node dist/config/hash-token.js < token`): the
     * token itself then lives only with the client. Give this or `tokenFile`.
     */
    tokenSha256: z
      .string()
      .regex(/^[0-9a-fA-F]{64}$/, 'must be the sha256 of the token as 64 hex digits; make it with: node dist/config/hash-token.js < token-file')
      .transform((h) => h.toLowerCase())
      .optional(),
    admin: z.boolean().default(false),
    /**
     * URL prefixes this client may name as an unpropagation target (`sftp://user@host/dir/`,
     * `file:///dir/`, `https://host/dir/`). Repository image names are always allowed; nothing else is.
     */
    stageOutTargets: z.array(z.string().min(1)).default([]),
    /** Limits the allocator enforces when it grants (absent: only the site's capacity limits the client). */
    quota: z
      .object({
        /** Most workspaces (slots) the client may hold at once; group and ensemble members each count. */
        maxWorkspaces: z.number().int().min(0).optional(),
        /** Most running time the client may hold reserved at once, over its live workspaces, in minutes. */
        maxReservedMinutes: z.number().int().min(0).optional(),
      })
      .strict()
      .optional(),
  })
  .strict()
  .superRefine((c, ctx) => {
    // Exactly one source for the token: two could disagree, and none would lock the client out unnoticed.
    if (c.tokenFile !== undefined && c.tokenSha256 !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['tokenSha256'], message: `client ${c.name} has both tokenFile and tokenSha256: keep one of them` });
    } else if (c.tokenFile === undefined && c.tokenSha256 === undefined) {
      ctx.addIssue({ code: 'custom', path: ['tokenFile'], message: `client ${c.name} has no token: give tokenFile (a file holding the token) or tokenSha256 (its sha256, from node dist/config/hash-token.js)` });
    }
  });

/** A VMM node as the allocator and the head see it. */
export const nodeSchema = z
  .object({
    name,
    memoryMiB: z.number().int().min(64),
    cpus: z.number().int().min(1),
    /** Hypervisor driver. `bench` does no hypervisor work: for benchmarks of vws itself, never a default. */
    driver: z.enum(['qemu', 'xen', 'bench']).default('qemu'),
    /**
     * The bridge VM interfaces join on this node, per network (`{ public: br0, private: br1 }`). Every
     * network the node carries needs one; with node-side DHCP the bridge must hold an address in the subnet.
     */
    bridges: z.record(z.string(), z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/, 'must be an interface name')).default({ public: 'br0' }),
    /** Anti-spoofing nft rules on every VM interface (needs nft and the kernel's bridge nf_tables). */
    antiSpoofing: z.boolean().default(true),
    /** Properties (node pools) a request may require with `nodeProperties`, e.g. `[pool-a, bigmem]`. */
    properties: z.array(name).default([]),
    /**
     * A pilot node (seed 003): the site's batch system (`lrm`) owns it; vws places VMs on it only inside
     * node time a pilot job obtained (pilot mode), never otherwise.
     */
    pilot: z.boolean().optional(),
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
    /**
     * Bound on one file operation over SFTP (a read, write, stat, rename) and on opening a session or
     * stream; past it the call fails and the next one opens a fresh SFTP session.
     */
    sftpTimeoutMs: z.number().int().min(100).default(30_000),
  })
  .strict();

/** Addresses of a network pool given as a range: every IP from `first` to `last`, hostnames made from the IP. */
export const addressRangeSchema = z
  .object({
    first: ipv4,
    last: ipv4,
    /** Hostnames are `<prefix><ip with dashes>`, e.g. `ws-10-213-0-100`: unique per address (seed 000). */
    hostnamePrefix: z.string().regex(/^[a-z][a-z0-9-]{0,20}$/, 'must be lowercase letters, digits and -, starting with a letter').default('ws-'),
  })
  .strict();

/** One explicit pool entry (Nimbus's pool file line): hostname, IP and, where they differ from the network's, its options. */
export const poolEntrySchema = z
  .object({
    hostname: hostname,
    ip: ipv4,
    /** A MAC for this address; absent, one is generated from the IP and stays bound to it. */
    mac: mac.optional(),
    gateway: ipv4.optional(),
    broadcast: ipv4.optional(),
    netmask: ipv4.optional(),
    dns: z.array(ipv4).optional(),
  })
  .strict();

/**
 * One network (seed 001: public, private, …): its subnet and options, its address pool, where its DHCP
 * server runs, and whether its VMs may reach each other.
 */
export const networkSchema = z
  .object({
    name,
    subnet: z.string().regex(/^\d+\.\d+\.\d+\.\d+\/(?:[0-9]|[12][0-9]|3[0-2])$/, 'must be a CIDR like 10.213.0.0/24'),
    gateway: ipv4,
    /** Defaults to the subnet's broadcast address. */
    broadcast: ipv4.optional(),
    dns: z.array(ipv4).default([]),
    /** Pool addresses as ranges… */
    ranges: z.array(addressRangeSchema).default([]),
    /** …and as explicit entries (both may be given). */
    entries: z.array(poolEntrySchema).default([]),
    /**
     * Where DHCP delivers the addresses: `node` = a server on each node, on the network's bridge there;
     * `head` = one central server on the head, on `interface`. `server` picks dnsmasq or ISC dhcpd.
     */
    dhcp: z
      .object({
        server: z.enum(['dnsmasq', 'isc-dhcpd']).default('dnsmasq'),
        on: z.enum(['node', 'head']).default('node'),
        /** The head's interface on this network (required with `on: head`); it must hold an address in the subnet. */
        interface: z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/, 'must be an interface name').optional(),
      })
      .strict()
      .prefault({}),
    /**
     * When true, a VM on this network reaches only the gateway (and the DHCP server), never another VM
     * on it: for networks shared by workspaces of different users.
     */
    isolated: z.boolean().default(false),
    /** Nodes that carry this network (default: every node); each needs a bridge for it (`nodes[].bridges`). */
    nodes: z.array(name).optional(),
  })
  .strict()
  .superRefine((n, ctx) => {
    const check = (path: Array<string | number>, ip: string | undefined) => {
      if (ip !== undefined && validIp(ip) && !inSubnet(ip, n.subnet)) ctx.addIssue({ code: 'custom', path, message: `${ip} is outside subnet ${n.subnet}` });
    };
    check(['gateway'], n.gateway);
    check(['broadcast'], n.broadcast);
    n.ranges.forEach((r, i) => {
      check(['ranges', i, 'first'], r.first);
      check(['ranges', i, 'last'], r.last);
      if (validIp(r.first) && validIp(r.last) && ipToInt(r.first) > ipToInt(r.last)) {
        ctx.addIssue({ code: 'custom', path: ['ranges', i, 'last'], message: `last (${r.last}) comes before first (${r.first})` });
      }
    });
    n.entries.forEach((e, i) => {
      check(['entries', i, 'ip'], e.ip);
      check(['entries', i, 'gateway'], e.gateway);
    });
    if (n.ranges.length + n.entries.length === 0) ctx.addIssue({ code: 'custom', path: ['ranges'], message: `network ${n.name} has no addresses: give ranges or entries` });
    if (n.dhcp.on === 'head' && !n.dhcp.interface) {
      ctx.addIssue({ code: 'custom', path: ['dhcp', 'interface'], message: `network ${n.name} has DHCP on the head: name the head's interface on it (e.g. interface: vwsbr1)` });
    }
  });

/** How many NICs a workspace may have, and on which networks when the request names none. */
export const nicPolicySchema = z
  .object({
    max: z.number().int().min(1).max(8).default(4),
    /** Networks of a request that names none: one NIC each. */
    defaultNetworks: z.array(name).min(1).default(['public']),
  })
  .strict();

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

/**
 * HTTPS for the API and, with `clientCaFile`, mutual TLS: a client certificate that verifies against
 * that CA identifies its holder by its subject DN (grid style, `/O=Grid/OU=site/CN=alice`), which must
 * equal a configured `clients[].identity`.
 */
export const apiTlsSchema = z
  .object({
    /** PEM certificate of the API (with its chain, if an intermediate CA issued it). */
    certFile: z.string().startsWith('/'),
    /** PEM private key of that certificate. */
    keyFile: z.string().startsWith('/'),
    /** PEM CA certificate(s) client certificates must verify against; absent: no client certificates are asked for. */
    clientCaFile: z.string().startsWith('/').optional(),
    /**
     * Refuse (401) every client request without a verified client certificate; a bearer token alone is
     * then not enough. Node workers' repository requests still use their node token.
     */
    requireClientCert: z.boolean().default(false),
  })
  .strict()
  .superRefine((t, ctx) => {
    if (t.requireClientCert && !t.clientCaFile) {
      ctx.addIssue({ code: 'custom', path: ['clientCaFile'], message: 'requireClientCert needs clientCaFile: the CA that client certificates must verify against' });
    }
  });

/**
 * With client certificates, a subject DN must name one client: two clients with one identity would make
 * a certificate's client (and its admin role) ambiguous.
 */
function checkClientIdentities(c: { api: { tls?: { clientCaFile?: string } }; clients: Array<{ identity: string }> }, ctx: z.RefinementCtx): void {
  if (!c.api.tls?.clientCaFile) return;
  const seen = new Map<string, number>();
  c.clients.forEach((client, i) => {
    const first = seen.get(client.identity);
    if (first !== undefined) ctx.addIssue({ code: 'custom', path: ['clients', i, 'identity'], message: `identity ${client.identity} is also clients.${first}'s: with client certificates (api.tls.clientCaFile) each identity must name one client` });
    else seen.set(client.identity, i);
  });
}

/** Pilot nodes need a batch system and the pilot's settings; with those, the pilots need an API URL to report to. */
function checkPilotMode(c: { nodes: Array<{ pilot?: boolean }>; lrm?: unknown; pilot?: { apiUrl?: string } }, ctx: z.RefinementCtx): void {
  const pilotNodes = c.nodes.map((n, i) => (n.pilot ? i : -1)).filter((i) => i >= 0);
  if (!pilotNodes.length) return;
  const at = ['nodes', pilotNodes[0], 'pilot'];
  if (!c.lrm) ctx.addIssue({ code: 'custom', path: at, message: 'a pilot node needs the batch system that lends it: add the lrm section' });
  if (!c.pilot) ctx.addIssue({ code: 'custom', path: at, message: 'a pilot node needs the pilot section (secretFile, apiUrl)' });
  else if (!c.pilot.apiUrl) ctx.addIssue({ code: 'custom', path: ['pilot', 'apiUrl'], message: 'is required with pilot nodes: the URL at which pilots reach vws' });
}

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

/**
 * Site-wide network checks, each naming the field to change: unique IPs, hostnames and MACs over every
 * pool (generated MACs included), a bridge on every node for every network it carries, known networks.
 */
function checkNetworks(c: { networks: Array<z.infer<typeof networkSchema>>; nodes: Array<z.infer<typeof nodeSchema>>; nics: z.infer<typeof nicPolicySchema> }, ctx: z.RefinementCtx): void {
  const networkNames = new Set(c.networks.map((n) => n.name));
  const nodeNames = new Set(c.nodes.map((n) => n.name));
  const seen = { ip: new Map<string, string>(), hostname: new Map<string, string>(), mac: new Map<string, string>() };
  const claim = (kind: keyof typeof seen, value: string, where: string, path: Array<string | number>) => {
    const first = seen[kind].get(value);
    if (first) ctx.addIssue({ code: 'custom', path, message: `duplicate ${kind} ${value}: also at ${first}` });
    else seen[kind].set(value, where);
  };
  c.networks.forEach((n, ni) => {
    // Range or entry problems were reported by the network's own checks; skip what cannot be expanded.
    let addresses: ReturnType<typeof poolAddresses>;
    try {
      addresses = poolAddresses(n);
    } catch {
      return;
    }
    if (addresses.length > 65_536) {
      ctx.addIssue({ code: 'custom', path: ['networks', ni, 'ranges'], message: `network ${n.name} has ${addresses.length} addresses; at most 65536` });
      return;
    }
    for (const a of addresses) {
      const path = a.origin.kind === 'entry' ? ['networks', ni, 'entries', a.origin.index] : ['networks', ni, 'ranges', a.origin.index];
      const where = `networks.${ni} (${n.name}) ${a.origin.kind === 'entry' ? `entries.${a.origin.index}` : `ranges.${a.origin.index}`}`;
      claim('ip', a.ip, where, [...path, 'ip']);
      claim('hostname', a.hostname, where, [...path, 'hostname']);
      claim('mac', a.mac, `${where}${a.origin.kind === 'entry' && n.entries[a.origin.index].mac ? '' : ` (generated for ${a.ip})`}`, [...path, 'mac']);
    }
    for (const node of n.nodes ?? []) {
      if (!nodeNames.has(node)) ctx.addIssue({ code: 'custom', path: ['networks', ni, 'nodes'], message: `network ${n.name} names node ${node}, which is not in nodes` });
    }
  });
  c.nodes.forEach((node, i) => {
    for (const n of c.networks) {
      if ((n.nodes ?? [...nodeNames]).includes(node.name) && !node.bridges[n.name]) {
        ctx.addIssue({
          code: 'custom',
          path: ['nodes', i, 'bridges'],
          message: `node ${node.name} has no bridge for network ${n.name}: add bridges: { ${n.name}: <bridge> }${n.nodes ? '' : `, or list the nodes that carry it in networks.${n.name}.nodes`}`,
        });
      }
    }
    for (const net of Object.keys(node.bridges)) {
      if (!networkNames.has(net)) ctx.addIssue({ code: 'custom', path: ['nodes', i, 'bridges', net], message: `network ${net} is not in networks (known: ${[...networkNames].join(', ')})` });
    }
  });
  c.nics.defaultNetworks.forEach((net, i) => {
    if (!networkNames.has(net)) ctx.addIssue({ code: 'custom', path: ['nics', 'defaultNetworks', i], message: `network ${net} is not in networks (known: ${[...networkNames].join(', ')})` });
  });
  if (c.nics.defaultNetworks.length > c.nics.max) ctx.addIssue({ code: 'custom', path: ['nics', 'defaultNetworks'], message: `more default networks than nics.max (${c.nics.max})` });
}

/**
 * The head worker's default workflow cache (`workers.head.maxCachedWorkflows`): the active set, not the
 * live set. Every reader of many workspaces reads the view each workflow keeps in its memo (one
 * DescribeWorkflowExecution, `src/clients/workspace-view.ts`): `GET /workspaces/:id`, the operations'
 * refusal checks, the event streams, `GET /status`, group and ensemble fan-outs, the reconciler. So a
 * Running workspace needs no cache slot; only workflows with work in flight do (creations, operations,
 * a 100-member ensemble with its groups, the allocator); 100 holds that, and an evicted workflow is
 * replayed when it next has work.
 *
 * Measured by the API benchmark (bench/api.bench.ts, 1,000 live workspaces on bench nodes, the head run
 * from the compiled dist/ in a process of its own as `./run.sh start` runs it, a quiet 2-core machine),
 * head rss with 1,000 live: with MALLOC_ARENA_MAX=2 and `--max-semi-space-size=2`, 326 MiB at a cache
 * of 250 and 264 MiB at 100; adding MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ (glibc gives freed
 * memory back), 295 MiB at 250 and 210-271 MiB at 100 (three runs); adding V8's `--optimize-for-size`,
 * 197-203 MiB at 100 (three runs; idle 155-159 MiB). Those last settings are `./run.sh start`'s. Each cached
 * workspace workflow costs ~0.5 MiB (the workflow thread's isolate and the native core's state), the
 * rest is fixed (Temporal's native core, protobuf definitions, the workflow bundle). The cost of the
 * smaller cache, measured by bench/ensemble.bench.ts: a 100-member ensemble's start skew 42-59 ms
 * instead of 28-40 ms; lifecycles per second unchanged within the noise.
 */
export const HEAD_MAX_CACHED_WORKFLOWS = 100;

/** Dom0's floor when the site sets none (`pilot.minDom0MiB`'s default): less and dom0's own tools fail. */
export const DEFAULT_MIN_DOM0_MIB = 128;

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
    /**
     * Where workers serve the Temporal SDK's worker metrics and vws's activity counters (Prometheus,
     * `host:port`, path /metrics). Off unless set: several workers on one host need distinct ports.
     */
    telemetry: z
      .object({
        headWorkerMetrics: z.string().regex(/^[^\s:]+:\d{1,5}$/, 'a host:port to listen on, e.g. 127.0.0.1:9464').optional(),
        nodeWorkerMetrics: z.string().regex(/^[^\s:]+:\d{1,5}$/, 'a host:port to listen on, e.g. 0.0.0.0:9465').optional(),
      })
      .strict()
      .prefault({}),
    /** Settings of the worker processes (issue 8: the head's memory with many live workspaces). */
    workers: z
      .object({
        head: z
          .object({
            /**
             * How many workflows the head worker keeps in memory between their tasks. Each cached workspace
             * workflow costs about 0.5 MiB of the head's resident memory; a workflow not in the cache is
             * replayed from its history when it next has work (a timer, an operation), which costs CPU,
             * never correctness. Reads do not need it (they read the view in the workflow's memo), so the
             * cache holds the active set, not every live workspace (see HEAD_MAX_CACHED_WORKFLOWS).
             */
            maxCachedWorkflows: z
              .number()
              .int()
              .min(40, 'at least 40: the head runs up to 40 workflow tasks at once, each needs a cache slot')
              .default(HEAD_MAX_CACHED_WORKFLOWS)
              .describe(
                "workflows the head worker keeps in memory between their tasks (about 0.5 MiB of resident memory each): the active set (creations and operations in flight, ensembles being started), not every live workspace, since reads use the view in each workflow's memo; an evicted one is replayed from its history when it next has work, costing CPU, not correctness. Default 100 (1,000 live workspaces: head rss 197-203 MiB with ./run.sh start's memory settings, 155 MiB idle)",
              ),
            /**
             * How long the server holds a cached workflow's next task for the head that cached it before
             * any head may take it (the SDK's `stickyQueueScheduleToStartTimeout`). After a head dies, each
             * workflow it had cached waits this long before the restarted head replays it; a head that is
             * merely slow loses the cache and replays (CPU, never correctness).
             */
            stickyTaskSeconds: z
              .number()
              .min(0.1, 'at least 0.1 s')
              .max(60, 'at most 60 s')
              .default(10)
              .describe("how long a cached workflow's next task waits for the head that cached it before any head takes it (after a head's crash, every workflow it had cached waits this long). Default 10, the Temporal SDK's"),
            /**
             * A workflow bundle prebuilt from these same workflows (`bundleWorkflowCode`, its code written to
             * this file) that the head process loads instead of bundling them at every start (webpack takes
             * seconds, more on a loaded machine: restarts and crash tests wait for it). Absent: bundle at start.
             */
            workflowBundleFile: z
              .string()
              .min(1)
              .optional()
              .describe('a prebuilt workflow bundle the head loads instead of bundling its workflows at start; built from the same workflows'),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .prefault({}),
    api: z
      .object({
        host: z.string().default('0.0.0.0'),
        port: z.number().int().min(0).max(65535).default(8080),
        /**
         * Serve `GET /metrics` to anyone (a scraper without a token). Off by default: the metrics show the
         * site's use and nodes, so only an admin token may read them unless the site opts in.
         */
        metricsPublic: z.boolean().default(false),
        /** Serve HTTPS, optionally with client certificates (mutual TLS); absent: plain HTTP. */
        tls: apiTlsSchema.optional(),
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
    networks: z
      .array(networkSchema)
      .min(1)
      .superRefine(uniqueNames('network'))
      .default([{ name: 'public', subnet: '10.213.0.0/24', gateway: '10.213.0.1', ranges: [{ first: '10.213.0.100', last: '10.213.0.199', hostnamePrefix: 'ws-' }], dns: [], entries: [], dhcp: { server: 'dnsmasq', on: 'node' }, isolated: false }]),
    nics: nicPolicySchema.prefault({}),
    nodes: z
      .array(nodeSchema)
      .min(1)
      .superRefine(uniqueNames('node'))
      .default([{ name: 'vmm1', memoryMiB: 2048, cpus: 4, driver: 'qemu', bridges: { public: 'br0' }, antiSpoofing: true, properties: [], agent: 'worker' }]),
    node: nodeSideSchema.prefault({}),
    images: imagesSchema.prefault({}),
    ssh: sshSchema.prefault({}),
    /** How the allocator places workspaces on nodes. */
    allocator: z
      .object({
        /** `greedy` fills the first node that fits before the next; `round-robin` rotates over the nodes. */
        placement: z.enum(['greedy', 'round-robin']).default('greedy'),
      })
      .strict()
      .prefault({}),
    /** Site policy the factory applies to every request: ranges become exact values within these. */
    policies: z
      .object({
        /** Longest DeploymentTime a request may get, in seconds. */
        maxDurationSeconds: z.number().int().min(1).default(7 * 24 * 3600),
        /** Most memory one workspace may get, in MiB (also never more than the largest node). */
        maxMemoryMiB: z.number().int().min(64).default(65_536),
        /** Most vCPUs one workspace may get. */
        maxVcpus: z.number().int().min(1).default(64),
        /** Seed 002 NodeNumber: most workspaces one request (a group) may ask for. */
        maxNodesPerRequest: z.number().int().min(1).default(64),
        /** How long an ensemble may wait for capacity after `done` before it gives up, in seconds. */
        ensembleDeadlineSeconds: z.number().int().min(1).default(600),
      })
      .strict()
      .prefault({}),
    /** Accounting for the status service. */
    accounting: z
      .object({
        /** Used and reserved time are charged in whole units of this many seconds, rounded up. */
        chargeGranularitySeconds: z.number().int().min(1).default(60),
      })
      .strict()
      .prefault({}),
    /** The reconciler: a Temporal Schedule comparing grants, workflows and what the nodes really run. */
    reconciler: z
      .object({
        enabled: z.boolean().default(true),
        /** Seconds between two runs; a lost slot is never kept longer than this (plus one run). */
        periodSeconds: z.number().int().min(5).default(60),
        /**
         * A VM no workspace owns is reported at once and destroyed only after it has been seen unowned
         * for this long; a grant no live workflow holds is released once it is this old.
         */
        graceSeconds: z.number().int().min(0).default(120),
      })
      .strict()
      .prefault({}),
    /**
     * The workspace pilot (issue 7): pilots on the nodes sign their notifications with the shared secret
     * in `secretFile` (created with a random secret if missing, mode 0600; copy it to the nodes). Absent:
     * `POST /pilot/notifications` answers 503.
     */
    /** The site's batch system that lends vws its pilot nodes (pilot mode); absent: no pilot mode. */
    lrm: lrmSchema.optional(),
    pilot: z
      .object({
        secretFile: z.string().startsWith('/'),
        /** A notification is accepted within this many seconds of its timestamp, either way. */
        windowSeconds: z.number().int().min(1).max(3600).default(60),
        /**
         * vws's API as the pilots on the nodes reach it (their notifications go to `<apiUrl>/pilot/notifications`).
         * Required for pilot mode (workspaces deployed with `pilot: true`).
         */
        apiUrl: z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' }).optional(),
        /**
         * The pilot program on the nodes, as an argv prefix (`run` and its options follow). Absent: this
         * installation's Node.js and `dist/pilot/main.js`, which suits nodes that share the head's install path.
         */
        command: z.array(z.string().min(1)).min(1).optional(),
        /** A pilot job that has not reported `reserved` this long after submission is cancelled; the workspace is refused. */
        reserveTimeoutSeconds: z.number().int().min(5).default(900),
        /** The batch system's SIGTERM→SIGKILL grace (Slurm KillWait, PBS kill_delay), seconds. */
        graceSeconds: z.number().int().min(1).max(3600).default(30),
        /** Share of that grace the pilot gives vws to trash its VMs before it destroys what is left (Nimbus's earlywaitratio). */
        graceRatio: z.number().min(0).max(0.95).default(0.5),
        /** The pilot starts handing the node back this long before its slot ends, seconds. */
        marginSeconds: z.number().int().min(0).default(10),
        /** vws evacuates a slot's VMs this long before the pilot starts handing the node back, seconds. */
        evacuateSeconds: z.number().int().min(0).default(20),
        /**
         * What a pilot's hold allows beyond the workspace's running time for deploying it once the node is
         * reserved (staging the image, booting), seconds: the job's walltime is running time + this +
         * `evacuateSeconds` + `marginSeconds`.
         */
        startupSeconds: z.number().int().min(0).max(86_400).default(300),
        /** Memory the pilot reserves beyond the VM's own (QEMU's or Xen's overhead), MiB. */
        overheadMiB: z.number().int().min(0).default(64),
        /**
         * On Xen pilot nodes, dom0 is never ballooned below this, MiB (Nimbus's `minmem`): a pilot whose
         * share would leave less refuses before it touches dom0, and vws refuses the workspace. What dom0
         * needs depends on the site's dom0 (its tools, a root file system in RAM): below it, dom0's OOM killer
         * kills `xl` in the middle of creating a guest.
         */
        minDom0MiB: z.number().int().min(64).default(DEFAULT_MIN_DOM0_MIB),
        /** How often a slot asks the batch system whether its job still exists, seconds. */
        pollSeconds: z.number().int().min(1).default(30),
        /** Where pilots send a notification over SSH when HTTP fails (`pilot-fallback-schema.ts`); absent: HTTP only. */
        sshFallback: pilotSshFallbackSchema.optional(),
        /**
         * A pilot whose parent process dies (Slurm's slurmstepd for the job) hands the node back as on
         * SIGTERM, even while vws is down (`vws-pilot run --end-if-orphaned`). Absent: on with Slurm, off with
         * PBS/TORQUE, where a pbs_mom restarted with its jobs kept leaves running jobs without their parent.
         */
        endIfOrphaned: z.boolean().optional(),
      })
      .strict()
      .optional(),
    timeouts: z
      .object({
        /** Seconds a booted VM has to obtain its DHCP address. */
        addressSeconds: z.number().int().min(1).default(120),
        /** Seconds a guest has to power off on a graceful shutdown before it is destroyed. */
        shutdownSeconds: z.number().int().min(1).default(30),
        /**
         * Seconds a node's short step (boot, destroy, pause...) may run; the server only notices a node
         * worker killed in the middle of one by this timeout, so it is also how soon the step is retried.
         */
        nodeStepSeconds: z.number().int().min(5).max(600).default(DEFAULT_NODE_STEP_SECONDS),
        /**
         * Seconds of silence after which a node's long step (a copy, booting, waiting for a lease) counts as
         * dead and is retried. Long steps beat every 5 s and the SDK sends a beat at most every 0.8 × this,
         * so below ~15 s a loaded node risks a live step counted dead (and run twice).
         */
        nodeHeartbeatSeconds: z.number().int().min(10).max(600).default(DEFAULT_NODE_HEARTBEAT_SECONDS),
      })
      .strict()
      .prefault({}),
  })
  .strict()
  .superRefine(checkNetworks)
  .superRefine(checkClientIdentities)
  .superRefine(checkPilotMode);

/** A validated configuration with every default filled in. */
export type VwsConfig = z.infer<typeof configSchema>;
/** One configured node. */
export type NodeConfig = VwsConfig['nodes'][number];
