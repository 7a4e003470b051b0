/** The e2e helper that runs scenarios side by side: order, meeting, and failures reported where they belong. */
import { Lanes, type Stage } from '../helpers/lanes';

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

describe('Lanes', () => {
  it('runs lanes side by side, stages in turn, and a stage together up to its meeting', async () => {
    const log: string[] = [];
    const lanes = new Lanes(['a', 'b'] as const, (lane): Stage[] => [
      {
        slow: async (meet) => {
          await tick(30);
          log.push(`${lane} slow done`);
          await meet();
          log.push(`${lane} slow checks`);
        },
        quick: async (meet) => {
          log.push(`${lane} quick done`);
          await meet();
          log.push(`${lane} quick checks`);
        },
      },
      { after: async () => void log.push(`${lane} after`) },
    ]);
    await Promise.all([lanes.run('a', 'after'), lanes.run('b', 'after')]);
    for (const lane of ['a', 'b']) {
      const at = (what: string) => log.indexOf(`${lane} ${what}`);
      // quick waits at the meeting for slow; the next stage starts only when both ended.
      expect(at('quick done')).toBeLessThan(at('slow done'));
      expect(at('slow done')).toBeLessThan(at('quick checks'));
      expect(Math.max(at('quick checks'), at('slow checks'))).toBeLessThan(at('after'));
    }
    // Side by side: both lanes were done with their first work before either finished its slow one.
    expect(log.indexOf('b quick done')).toBeLessThan(log.indexOf('a slow done'));
  });

  it('reports a failure to its own test only, and a failed scenario never holds the meeting', async () => {
    const lanes = new Lanes(['n'] as const, (): Stage[] => [
      {
        fails: async () => {
          throw new Error('boom');
        },
        waits: async (meet) => {
          await meet();
        },
      },
      { next: async () => undefined },
    ]);
    await expect(lanes.run('n', 'fails')).rejects.toThrow('boom');
    await expect(lanes.run('n', 'waits')).resolves.toBeUndefined();
    await expect(lanes.run('n', 'next')).resolves.toBeUndefined();
    await lanes.settled();
    expect(() => lanes.run('n', 'missing')).toThrow('lane n has no scenario missing');
  });
});
