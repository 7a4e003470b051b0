/** The pilot's option checks (each bad value named, nothing guessed) and its exit codes. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exitCodeFor, PILOT_EXIT } from '../../src/pilot/exit-codes';
import { apiOption, endOption, holdOption, intOption, memoryOption, nodeFromBatch, nodeOption, nodeTableOption, numberOption, PilotUsageError, readSecretOption, slotOption, sshHostsOption } from '../../src/pilot/options';

const refusal = (f: () => unknown): { option: string; message: string } => {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(PilotUsageError);
    return { option: (e as PilotUsageError).option, message: (e as Error).message };
  }
  throw new Error('expected a refusal');
};

describe('pilot options', () => {
  it('takes good values', () => {
    expect(slotOption('slot-0123')).toBe('slot-0123');
    expect(nodeOption('vmm1')).toBe('vmm1');
    expect(intOption('--reserve-mib', '256', 0)).toBe(256);
    expect(intOption('--configured-mib', undefined, 1)).toBeUndefined();
    expect(numberOption('--grace-ratio', '0.5', 0, 1, true)).toBe(0.5);
    expect(memoryOption('xen')).toBe('xen');
    expect(endOption('2026-12-01T18:00:00Z', Date.parse('2026-12-01T17:00:00Z'))).toBe(Date.parse('2026-12-01T18:00:00Z'));
    expect(endOption('2026-12-01T19:00:00.5+01:00', Date.parse('2026-12-01T17:00:00Z'))).toBe(Date.parse('2026-12-01T18:00:00.500Z'));
    expect(apiOption('http://10.213.0.1:8080')).toBe('http://10.213.0.1:8080');
    expect(sshHostsOption(['vmm1=10.213.0.11', 'xen1=10.213.0.21'])).toEqual({ vmm1: '10.213.0.11', xen1: '10.213.0.21' });
  });

  it('refuses bad values naming the option', () => {
    expect(refusal(() => slotOption('Slot/../x')).option).toBe('--slot');
    expect(refusal(() => slotOption(undefined)).message).toBe('--slot: required');
    expect(refusal(() => nodeOption('VMM1')).option).toBe('--node');
    expect(refusal(() => intOption('--reserve-mib', '12.5', 0)).message).toMatch(/^--reserve-mib: must be an integer from 0/);
    expect(refusal(() => intOption('--reserve-mib', '-1', 0)).option).toBe('--reserve-mib');
    expect(refusal(() => intOption('--reserve-mib', '1e3', 0)).option).toBe('--reserve-mib');
    expect(refusal(() => numberOption('--grace-ratio', '1', 0, 1, true)).message).toMatch(/\(exclusive\)/);
    expect(refusal(() => numberOption('--grace-seconds', '', 0, 3600)).option).toBe('--grace-seconds');
    expect(refusal(() => memoryOption('kvm')).message).toBe('--memory: must be xen or host, got "kvm"');
    expect(refusal(() => endOption('2026-12-01 18:00', 0)).option).toBe('--end');
    expect(refusal(() => endOption('2026-12-01T18:00:00', 0)).message).toMatch(/with a zone/);
    expect(refusal(() => endOption('2026-02-30T18:00:00Z', 0)).option).toBe('--end');
    expect(refusal(() => endOption('2020-01-01T00:00:00Z')).message).toMatch(/already past/);
    expect(refusal(() => apiOption('ftp://x')).message).toMatch(/http or https/);
    expect(refusal(() => sshHostsOption(['vmm1'])).option).toBe('--ssh');
  });

  it('reads the secret file without ever putting the secret in a message', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vws-pilot-opt-'));
    try {
      writeFileSync(join(dir, 'ok'), 'a'.repeat(64) + '\n');
      writeFileSync(join(dir, 'short'), 'tooshort-secret\n');
      expect(readSecretOption(join(dir, 'ok'))).toBe('a'.repeat(64));
      const short = refusal(() => readSecretOption(join(dir, 'short')));
      expect(short).toEqual({ option: '--secret-file', message: expect.stringMatching(/fewer than 16 bytes/) });
      expect(short.message).not.toContain('tooshort-secret');
      expect(refusal(() => readSecretOption(join(dir, 'missing'))).message).toMatch(/cannot read .*ENOENT/);
      expect(refusal(() => readSecretOption('relative/file')).message).toMatch(/absolute path/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('exit codes: a clean hand-back is 0, a failed slot 5, a failed hand-back 3', () => {
    expect(exitCodeFor('completed')).toBe(0);
    expect(exitCodeFor('early-unreserved')).toBe(0);
    expect(exitCodeFor('cancelled')).toBe(0);
    expect(exitCodeFor('error-reserving')).toBe(PILOT_EXIT.slotFailed);
    expect(exitCodeFor('error-reserved')).toBe(PILOT_EXIT.slotFailed);
    expect(exitCodeFor('error-unreserving')).toBe(PILOT_EXIT.unreserveFailed);
  });
});

describe('a pilot on the node the batch system chose', () => {
  it('takes its node from --node, else SLURMD_NODENAME, else PBS_NODENAME; refuses none', () => {
    expect(nodeFromBatch('vmm1', { SLURMD_NODENAME: 'vmm2' })).toBe('vmm1');
    expect(nodeFromBatch(undefined, { SLURMD_NODENAME: 'vmm2' })).toBe('vmm2');
    expect(nodeFromBatch(undefined, { PBS_NODENAME: 'vmm3' })).toBe('vmm3');
    expect(() => nodeFromBatch(undefined, {})).toThrow(/--node/);
  });

  it('finds its entry in --node-table, naming the option on every bad value', () => {
    const table = JSON.stringify({ vmm1: { memory: 'host', configuredMiB: 4096 }, xen1: { memory: 'xen' } });
    expect(nodeTableOption(table, 'vmm1')).toEqual({ memory: 'host', configuredMiB: 4096 });
    expect(nodeTableOption(table, 'xen1')).toEqual({ memory: 'xen' });
    expect(nodeTableOption(undefined, 'vmm1')).toBeUndefined();
    expect(() => nodeTableOption(table, 'vmm9')).toThrow(/--node-table.*vmm9 is not a pilot node/);
    expect(() => nodeTableOption('{nope', 'vmm1')).toThrow(/--node-table/);
    expect(() => nodeTableOption(JSON.stringify({ vmm1: { memory: 'ram' } }), 'vmm1')).toThrow(/--memory/);
    expect(() => nodeTableOption(JSON.stringify({ vmm1: { memory: 'host', configuredMiB: -1 } }), 'vmm1')).toThrow(/configuredMiB/);
  });

  it('--hold-seconds counts from the pilot\'s own start', () => {
    expect(holdOption('60', 1_000)).toBe(61_000);
    expect(holdOption(undefined)).toBeUndefined();
    expect(() => holdOption('0')).toThrow(/--hold-seconds/);
  });
});
