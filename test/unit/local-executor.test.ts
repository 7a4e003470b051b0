import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CommandError } from '../../src/exec/executor';
import { LocalExecutor } from '../../src/exec/local';

const exec = new LocalExecutor();

describe('the local executor', () => {
  it('passes arguments untouched, with no shell in between', async () => {
    const r = await exec.run(['printf', '%s|', 'a; touch /tmp/vws-pwned', '$(id)', '*']);
    expect(r.stdout).toBe('a; touch /tmp/vws-pwned|$(id)|*|');
    expect(await exec.exists('/tmp/vws-pwned')).toBe(false);
  });

  it('fails with the program and exit code', async () => {
    await expect(exec.run(['sh', '-c', 'echo boom >&2; exit 3'])).rejects.toThrow(/^sh exited with code 3: boom$/);
    await expect(exec.run(['false'], { okCodes: [0, 1] })).resolves.toMatchObject({ code: 1 });
  });

  it('kills a command that runs past its timeout', async () => {
    const err = await exec.run(['sleep', '5'], { timeoutMs: 200 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CommandError);
    expect((err as Error).message).toBe('sleep timed out after 200 ms');
  });

  it('reports a missing program', async () => {
    await expect(exec.run(['/nonexistent/tool'])).rejects.toThrow(/could not run \(ENOENT\)/);
  });

  it('writes files atomically and removes trees idempotently', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vws-exec-'));
    const f = join(dir, 'a', 'b.txt');
    await exec.writeFileAtomic(f, 'x\n');
    expect(await exec.readFile(f)).toBe('x\n');
    await exec.remove(join(dir, 'a'));
    await exec.remove(join(dir, 'a'));
    expect(await exec.readFile(f)).toBeNull();
  });
});
