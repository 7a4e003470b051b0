/**
 * The seed's memory monitor: every second, each node's memory as the pilot changes it (dom0's on a Xen
 * node, `xl list 0`; the host's unreserved memory on a QEMU node, from the pilot's reservation file),
 * appended to a CSV as it is read, so a run that dies still leaves its figure's data.
 */
import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Executor } from '../../src/exec/executor';
import type { MemorySeries } from './memory-plot';

/** How one node's memory is read. */
export interface MemoryProbe {
  node: string;
  read: () => Promise<number>;
}

/** A QEMU node: its configured memory less what the pilot's reservation file holds (no file: nothing reserved). */
export function hostReservationProbe(node: string, nodeDirOnHead: string, configuredMiB: number): MemoryProbe {
  const file = join(nodeDirOnHead, 'pilot', 'reserved-memory.json');
  return {
    node,
    read: async () => (existsSync(file) ? configuredMiB - (JSON.parse(readFileSync(file, 'utf8')) as { reservedMiB: number }).reservedMiB : configuredMiB),
  };
}

/**
 * A Xen node: dom0's memory from `xl list 0` (MiB, 3rd column). Read over SSH to a dom0 under TCG, where a
 * connection was seen to drop under load: a failed read is tried twice more before it counts as failed.
 */
export function dom0Probe(node: string, exec: Executor): MemoryProbe {
  const once = async () => {
    const out = (await exec.run(['xl', 'list', '0'], { timeoutMs: 20_000 })).stdout.trim().split('\n');
    const mib = Number(out[out.length - 1].split(/\s+/)[2]);
    if (!Number.isInteger(mib)) throw new Error(`xl list 0 printed no memory: ${out.join(' | ')}`);
    return mib;
  };
  return {
    node,
    read: async () => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await once();
        } catch (e) {
          if (attempt >= 3) throw e;
          await new Promise((r) => setTimeout(r, 1000));
        }
      }
    },
  };
}

/** A running monitor. */
export interface MemoryMonitor {
  /** The latest value read on `node`. */
  latest(node: string): number | undefined;
  /** Reads `node` now (outside the period), recording the sample too. */
  sample(node: string): Promise<number>;
  /** Stops sampling; answers the series, seconds since the start. */
  stop(): Promise<MemorySeries[]>;
}

/** Starts sampling every `periodMs` into `csvFile` (`seconds,node,memoryMiB`). */
export function startMemoryMonitor(probes: MemoryProbe[], csvFile: string, periodMs = 1000): MemoryMonitor {
  const t0 = Date.now();
  const series = new Map(probes.map((p) => [p.node, [] as Array<[number, number]>]));
  writeFileSync(csvFile, 'seconds,node,memoryMiB\n');
  const record = (node: string, v: number) => {
    const t = (Date.now() - t0) / 1000;
    series.get(node)!.push([t, v]);
    appendFileSync(csvFile, `${t.toFixed(3)},${node},${v}\n`);
    return v;
  };
  const read = async (p: MemoryProbe) => record(p.node, await p.read());
  let stopped = false;
  // One sample at a time per node: a slow read (SSH under load) delays the next instead of piling up.
  const loops = probes.map(async (p) => {
    while (!stopped) {
      const started = Date.now();
      await read(p).catch(() => undefined);
      await new Promise((r) => setTimeout(r, Math.max(0, periodMs - (Date.now() - started))));
    }
  });
  return {
    latest: (node) => series.get(node)?.at(-1)?.[1],
    sample: (node) => read(probes.find((p) => p.node === node)!),
    async stop() {
      stopped = true;
      await Promise.all(loops);
      return probes.map((p) => ({ node: p.node, points: series.get(p.node)! }));
    },
  };
}
