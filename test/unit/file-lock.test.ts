/** The file lock on real files (LocalExecutor): mutual exclusion, stale takeover by exactly one waiter. */
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { acquireFileLock, LockWaitAbandoned, withFileLock } from '../../src/activities/file-lock';
import { LocalExecutor } from '../../src/exec/local';

const exec = new LocalExecutor();
let dir: string;
beforeEach(() => {
  dir = mkdtempSync('/tmp/vws-lock-');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

test('concurrent holders never overlap, and the lock file is gone afterwards', async () => {
  const lock = join(dir, 'lock');
  let inside = 0;
  let most = 0;
  const order: number[] = [];
  await Promise.all(
    Array.from({ length: 8 }, (_, i) =>
      withFileLock(exec, lock, `o${i}`, { pollMs: 5 }, async () => {
        most = Math.max(most, ++inside);
        await new Promise((r) => setTimeout(r, 10));
        order.push(i);
        inside--;
      }),
    ),
  );
  expect(most).toBe(1);
  expect(order.sort()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  expect(existsSync(lock)).toBe(false);
});

test('a stale lock is taken over by exactly one of several waiters', async () => {
  const lock = join(dir, 'lock');
  writeFileSync(lock, JSON.stringify({ owner: 'dead', at: 1 }));
  let inside = 0;
  let most = 0;
  await Promise.all(
    Array.from({ length: 6 }, (_, i) =>
      withFileLock(exec, lock, `w${i}`, { pollMs: 1, staleMs: 1_000 }, async () => {
        most = Math.max(most, ++inside);
        await new Promise((r) => setTimeout(r, 20));
        inside--;
      }),
    ),
  );
  expect(most).toBe(1);
  expect(existsSync(lock)).toBe(false);
  expect(existsSync(`${lock}.takeover`)).toBe(false);
});

test('a live holder is waited for; its release lets the waiter in; release is idempotent', async () => {
  const lock = join(dir, 'lock');
  const held = await acquireFileLock(exec, lock, 'a', { pollMs: 10 });
  let waited = 0;
  const next = acquireFileLock(exec, lock, 'b', { pollMs: 10, waiting: () => waited++ });
  await new Promise((r) => setTimeout(r, 100));
  expect(JSON.parse(readFileSync(lock, 'utf8')).owner).toBe('a');
  await held.release();
  await held.release();
  const mine = await next;
  expect(waited).toBeGreaterThan(0);
  expect(JSON.parse(readFileSync(lock, 'utf8')).owner).toBe('b');
  await mine.release();
});

test('a released lock that was taken over is not removed by its old holder', async () => {
  const lock = join(dir, 'lock');
  const old = await acquireFileLock(exec, lock, 'old');
  writeFileSync(lock, JSON.stringify({ owner: 'new', at: Date.now() }));
  await old.release();
  expect(JSON.parse(readFileSync(lock, 'utf8')).owner).toBe('new');
});

test('a waiter that is abandoned (its activity attempt cancelled) gives up and never takes the lock later', async () => {
  const lock = join(dir, 'lock');
  const held = await acquireFileLock(exec, lock, 'a', { pollMs: 10 });
  let cancelled = false;
  let ran = false;
  const late = withFileLock(exec, lock, 'b', { pollMs: 10, abandoned: () => cancelled }, async () => {
    ran = true;
  });
  await new Promise((r) => setTimeout(r, 50));
  cancelled = true;
  await expect(late).rejects.toThrow(LockWaitAbandoned);
  await held.release();
  expect(ran).toBe(false);
  expect(existsSync(lock)).toBe(false);
});
