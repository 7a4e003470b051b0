import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nodePaths } from '../../src/activities/node-paths';
import {
  checkStatePath,
  driveArgs,
  powerState,
  qemuArgv,
  qemuOptValue,
  restoreUri,
  saveUri,
  stateFileNames,
  vmFiles,
} from '../../src/activities/qemu/driver';
import { sampleVmSpec } from '../helpers/vm-spec';

const paths = nodePaths('/n');
const spec = sampleVmSpec;

describe('qemu driver argv', () => {
  const files = vmFiles(paths, spec.name);

  it('puts every file of the VM in its workspace directory', () => {
    expect(files).toEqual({
      dir: '/n/workspaces/ws-0123456789ab',
      qmp: '/n/workspaces/ws-0123456789ab/qmp.sock',
      pid: '/n/workspaces/ws-0123456789ab/qemu.pid',
      serial: '/n/workspaces/ws-0123456789ab/serial.log',
    });
  });

  it('appends to the serial log so it survives a restore', () => {
    const argv = qemuArgv('qemu-system-x86_64', 'tcg', spec, files);
    expect(argv).toContain('file,id=s0,path=/n/workspaces/ws-0123456789ab/serial.log,append=on');
    expect(argv[argv.indexOf('-serial') + 1]).toBe('chardev:s0');
    expect(argv).toContain('unix:/n/workspaces/ws-0123456789ab/qmp.sock,server=on,wait=off');
    expect(argv).not.toContain('-incoming');
    expect(argv).not.toContain('-no-shutdown'); // qemu must exit when the guest powers off
  });

  it('starts stopped and waiting for migrate-incoming when restoring', () => {
    const argv = qemuArgv('qemu-system-x86_64', 'tcg', spec, files, { incoming: true });
    expect(argv).toContain('-S');
    expect(argv.slice(argv.indexOf('-incoming'), argv.indexOf('-incoming') + 2)).toEqual(['-incoming', 'defer']);
    expect(argv[argv.length - 1]).toBe('-daemonize');
  });

  it('attaches extra disks as further virtio drives after the root, in order, with their formats', () => {
    const withDisks = {
      ...spec,
      disks: [
        { path: '/n/workspaces/ws-0123456789ab/part1.raw', format: 'raw' as const },
        { path: '/n/workspaces/ws-0123456789ab/part2.qcow2', format: 'qcow2' as const },
        { path: '/n/workspaces/ws-0123456789ab/a,b.raw', format: 'raw' as const },
      ],
    };
    const drives = (argv: string[]) => argv.flatMap((a, i) => (argv[i - 1] === '-drive' ? [a] : []));
    const expected = [
      'file=/n/workspaces/ws-0123456789ab/root.qcow2,if=virtio,format=qcow2',
      'file=/n/workspaces/ws-0123456789ab/part1.raw,if=virtio,format=raw',
      'file=/n/workspaces/ws-0123456789ab/part2.qcow2,if=virtio,format=qcow2',
      'file=/n/workspaces/ws-0123456789ab/a,,b.raw,if=virtio,format=raw',
    ];
    const argv = qemuArgv('q', 'tcg', withDisks, files);
    expect(drives(argv)).toEqual(expected);
    // Before the NIC: the disks' PCI slots come first, the same in a restore (migration needs identical devices).
    expect(argv.lastIndexOf('-drive')).toBeLessThan(argv.indexOf('-netdev'));
    expect(drives(qemuArgv('q', 'tcg', withDisks, files, { incoming: true }))).toEqual(expected);
    // No disks (or an empty list) gives exactly the argv of before.
    expect(qemuArgv('q', 'tcg', { ...spec, disks: [] }, files)).toEqual(qemuArgv('q', 'tcg', spec, files));
    expect(driveArgs(spec)).toEqual(['-drive', expected[0]]);
  });

  it.each([
    ['a relative extra disk', { disks: [{ path: 'part1.raw', format: 'raw' as const }] }, /disks\[0\].*must be absolute/],
    ['a protocol as extra disk', { disks: [{ path: 'nbd:evil:1234', format: 'raw' as const }] }, /disks\[0\].*must be absolute/],
    ['a json: root disk', { rootDisk: 'json:{"driver":"file"}' }, /rootDisk.*must be absolute/],
    ['the root attached again', { disks: [{ path: spec.rootDisk, format: 'qcow2' as const }] }, /disks\[0\].*attached twice/],
    ['an unknown format', { disks: [{ path: '/x.vmdk', format: 'vmdk' as 'raw' }] }, /unknown format/],
  ])('refuses %s with InvalidSpec', (_what, patch, message) => {
    expect(() => qemuArgv('q', 'tcg', { ...spec, ...patch }, files)).toThrow(expect.objectContaining({ type: 'InvalidSpec', nonRetryable: true, message: expect.stringMatching(message) }));
  });

  it('escapes commas inside option values', () => {
    expect(qemuOptValue('/a,b/c')).toBe('/a,,b/c');
    const argv = qemuArgv('q', 'tcg', { ...spec, rootDisk: '/x,y.qcow2' }, files);
    expect(argv).toContain('file=/x,,y.qcow2,if=virtio,format=qcow2');
  });
});

describe('qemu power states', () => {
  it('maps query-status', () => {
    expect(powerState({ status: 'running', running: true })).toBe('running');
    expect(powerState({ status: 'paused', running: false })).toBe('paused');
    expect(powerState({ status: 'postmigrate', running: false })).toBe('paused');
    expect(powerState({ status: 'inmigrate', running: false })).toBe('paused');
    expect(powerState({ status: 'shutdown', running: false })).toBe('shutoff');
    expect(powerState({ status: 'guest-panicked', running: false })).toBe('shutoff');
  });
});

describe('state file paths', () => {
  it('accepts plain paths below the workspaces directory', () => {
    expect(() => checkStatePath(paths, '/n/workspaces/ws-0123456789ab/vmstate')).not.toThrow();
  });

  it.each([
    'vmstate',
    '/n/vmstate',
    '/n/workspaces/../etc/x',
    '/n/workspaces/ws-0123456789ab/../../x',
    '/n/workspaces/ws-0123456789ab/a b',
    '/n/workspaces/ws-0123456789ab/a;rm -rf x',
    "/n/workspaces/ws-0123456789ab/a'b",
    '/n/workspaces/ws-0123456789ab/$(id)',
    '/n/workspacesX/vmstate',
    '/n/workspaces//vmstate',
  ])('refuses %s', (p) => {
    expect(() => checkStatePath(paths, p)).toThrow(/refusing state file/);
  });

  it('builds exec: URIs for migrate and migrate-incoming', () => {
    expect(restoreUri('/n/workspaces/ws-0123456789ab/vmstate')).toBe('exec:cat /n/workspaces/ws-0123456789ab/vmstate');
    expect(saveUri('/n/workspaces/ws-0123456789ab/vmstate')).toMatch(/^exec:/);
  });
});

describe('the save writer shell', () => {
  // Runs the URI's command as qemu does (/bin/sh -c, stdin a pipe) and checks that the shell exits before
  // the data arrives (qemu would SIGTERM a shell that lingers) while the background writer still gets
  // every byte, fsyncs and renames to .done.
  it('detaches, reads the whole pipe and renames to .done', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vws-save-'));
    try {
      const state = join(dir, 'vmstate');
      const f = stateFileNames(state);
      const script =
        '{ sleep 0.5; head -c 8388608 /dev/zero; } | { /bin/sh -c "$1"; [ -e "$2" ] || : > "$3"; }';
      await new Promise<void>((resolve, reject) =>
        execFile('/bin/bash', ['-c', script, 'x', saveUri(state).slice('exec:'.length), f.done, join(dir, 'early')], (e) =>
          e ? reject(e) : resolve(),
        ),
      );
      for (let i = 0; i < 100 && !existsSync(f.done); i++) await new Promise((r) => setTimeout(r, 50));
      expect(existsSync(join(dir, 'early'))).toBe(true);
      expect(readFileSync(f.done).length).toBe(8 << 20);
      expect(existsSync(f.part)).toBe(false);
      expect(existsSync(f.failed)).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 20_000);
});
