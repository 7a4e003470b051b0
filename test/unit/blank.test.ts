/**
 * createBlankPartition: the commands it runs (recorded through a wrapping executor), and real partitions
 * made on this machine with the same tools as the vmm hosts (Debian's coreutils, e2fsprogs, util-linux).
 * xen1's dom0 runs the same code with busybox truncate/mkswap; test/integration/xen-driver.test.ts covers it.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createBlankPartition, formatArgv } from '../../src/activities/images/blank';
import { FailureType } from '../../src/domain/errors';
import type { CommandResult, Executor, RunOptions } from '../../src/exec/executor';
import { LocalExecutor } from '../../src/exec/local';

/** A LocalExecutor that records every argv it runs and can make one program fail. */
function recording(failing?: string): { exec: Executor; runs: string[][] } {
  const local = new LocalExecutor();
  const runs: string[][] = [];
  const exec = Object.create(local) as Executor;
  exec.run = async (argv: readonly string[], options?: RunOptions): Promise<CommandResult> => {
    runs.push([...argv]);
    if (argv[0] === failing) return local.run(['sh', '-c', 'echo "simulated failure" >&2; exit 1'], options);
    return local.run(argv, options);
  };
  return { exec, runs };
}

const MiB = 1024 * 1024;
const dump = (file: string) => execFileSync('dumpe2fs', ['-h', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });

describe('createBlankPartition', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'vws-blank-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  test('ext4: a sparse file of exactly the size, formatted under a temporary name, then renamed', async () => {
    const { exec, runs } = recording();
    const file = join(dir, 'part1.raw');
    await createBlankPartition(exec, file, 64, 'ext4', 'part1');
    const tmp = runs[0][3];
    expect(tmp).toMatch(new RegExp(`^${file}\\.tmp-[0-9a-f]{8}$`));
    expect(runs).toEqual([
      ['truncate', '-s', String(64 * MiB), tmp],
      ['mkfs.ext4', '-q', '-F', '-E', 'nodiscard,assume_storage_prezeroed=1', '-L', 'part1', tmp],
      ['sync', tmp],
    ]);
    expect(readdirSync(dir)).toEqual(['part1.raw']);
    const st = statSync(file);
    expect(st.size).toBe(64 * MiB);
    // Sparse: a few MiB of metadata, not 64 (no journal or inode table zeroing).
    expect(st.blocks * 512).toBeLessThan(8 * MiB);
    const h = dump(file);
    expect(h).toMatch(/Filesystem volume name:\s+part1\n/);
    expect(h).toMatch(/Filesystem features:.*\bextent\b/);
    execFileSync('e2fsck', ['-fn', file], { stdio: 'ignore' }); // throws unless clean
  });

  test('idempotent: a complete partition is kept as is, nothing runs', async () => {
    const file = join(dir, 'p.raw');
    await createBlankPartition(new LocalExecutor(), file, 8, 'ext4');
    const before = statSync(file);
    const { exec, runs } = recording();
    await createBlankPartition(exec, file, 8, 'ext4');
    expect(runs).toEqual([]);
    expect(statSync(file).ino).toBe(before.ino);
    expect(statSync(file).mtimeMs).toBe(before.mtimeMs);
  });

  test('swap: mkswap with the label; the swap signature is at the end of the first page', async () => {
    const { exec, runs } = recording();
    const file = join(dir, 'swap.raw');
    await createBlankPartition(exec, file, 16, 'swap', 'part2');
    expect(runs[1]).toEqual(['mkswap', '-L', 'part2', runs[0][3]]);
    const head = readFileSync(file).subarray(0, 4096);
    expect(head.subarray(4086).toString()).toBe('SWAPSPACE2');
    expect(statSync(file).size).toBe(16 * MiB);
  });

  test('none: zeros only, no format command', async () => {
    const { exec, runs } = recording();
    const file = join(dir, 'none.raw');
    await createBlankPartition(exec, file, 2, 'none', 'ignored');
    expect(runs.map((r) => r[0])).toEqual(['truncate', 'sync']);
    const data = readFileSync(file);
    expect(data.length).toBe(2 * MiB);
    expect(data.every((b) => b === 0)).toBe(true);
  });

  test('a crash mid-format leaves only a temporary file, which the retry does not trust', async () => {
    const file = join(dir, 'p.raw');
    // What a worker killed during mkfs leaves: a full-size but unformatted temporary file.
    writeFileSync(`${file}.tmp-deadbeef`, Buffer.alloc(4096));
    await createBlankPartition(new LocalExecutor(), file, 8, 'ext4', 'p');
    expect(dump(file)).toMatch(/Filesystem volume name:\s+p\n/);
    expect(statSync(`${file}.tmp-deadbeef`).size).toBe(4096); // another attempt's file: not touched
  });

  test('a failed format removes its temporary file and leaves no final file', async () => {
    const { exec } = recording('mkfs.ext4');
    const file = join(dir, 'p.raw');
    await expect(createBlankPartition(exec, file, 8, 'ext4')).rejects.toThrow(/simulated failure/);
    expect(readdirSync(dir)).toEqual([]);
  });

  test('a file of another size is refused, not replaced (it may hold data)', async () => {
    const file = join(dir, 'p.raw');
    writeFileSync(file, 'data');
    await expect(createBlankPartition(new LocalExecutor(), file, 8, 'ext4')).rejects.toMatchObject({
      type: FailureType.InvalidSpec,
      nonRetryable: true,
      message: expect.stringContaining('exists with 4 bytes'),
    });
    expect(readFileSync(file, 'utf8')).toBe('data');
  });

  test.each([
    ['a relative path', 'p.raw', 8, 'ext4', undefined],
    ['a path that is an option', '-rf', 8, 'ext4', undefined],
    ['a path with ..', '/x/../p.raw', 8, 'ext4', undefined],
    ['zero size', '/x/p.raw', 0, 'ext4', undefined],
    ['a fractional size', '/x/p.raw', 1.5, 'ext4', undefined],
    ['an unknown filesystem', '/x/p.raw', 8, 'xfs', undefined],
    ['a label of 17 characters', '/x/p.raw', 8, 'ext4', 'a'.repeat(17)],
    ['a label that is an option', '/x/p.raw', 8, 'swap', '-f'],
  ])('refuses %s with InvalidSpec before running anything', async (_what, path, size, fs, label) => {
    const { exec, runs } = recording();
    await expect(createBlankPartition(exec, path, size, fs as 'ext4', label)).rejects.toMatchObject({ type: FailureType.InvalidSpec, nonRetryable: true });
    expect(runs).toEqual([]);
  });

  test('formatArgv without a label', () => {
    expect(formatArgv('ext4', '/f')).toEqual(['mkfs.ext4', '-q', '-F', '-E', 'nodiscard,assume_storage_prezeroed=1', '/f']);
    expect(formatArgv('swap', '/f')).toEqual(['mkswap', '/f']);
    expect(formatArgv('none', '/f')).toBeNull();
  });
});
