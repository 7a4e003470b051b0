import { createWorkspaceSchema, ensembleMemberSchema, fieldProblems } from '../../src/domain/requests';
import { targetForMember } from '../../src/domain/workspace';

function problems(body: unknown) {
  const r = createWorkspaceSchema.safeParse(body);
  if (r.success) throw new Error('expected a validation failure');
  return fieldProblems(r.error);
}

describe('the create-workspace request', () => {
  it('fills in defaults', () => {
    expect(createWorkspaceSchema.parse({ image: 'sample' })).toEqual({
      image: 'sample',
      partitions: [],
      memoryMiB: 128,
      vcpus: 1,
      durationSeconds: 3600,
      count: 1,
      nodeProperties: [],
      targetState: 'Running',
      shutdownMechanism: 'Normal',
      trashAtShutdown: false,
      pilot: false,
    });
  });

  it('names the field of a wrong type', () => {
    expect(problems({ image: 'sample', memoryMiB: '128' })).toEqual([
      { field: 'memoryMiB', message: expect.stringContaining('number') },
    ]);
  });

  it('names a missing image', () => {
    expect(problems({})).toEqual([{ field: 'image', message: expect.any(String) }]);
  });

  it('refuses an image name that is a path', () => {
    expect(problems({ image: '../etc/passwd' })[0].field).toBe('image');
  });

  it('refuses unknown fields by name', () => {
    expect(problems({ image: 'sample', memory: 128 })).toEqual([{ field: 'memory', message: 'unknown field(s): memory' }]);
  });

  it('takes pilot mode for a group, not for an ensemble member (named, with the reason)', () => {
    expect(createWorkspaceSchema.parse({ image: 'sample', pilot: true, count: 3 })).toMatchObject({ pilot: true, count: 3 });
    const r = ensembleMemberSchema.safeParse({ image: 'sample', pilot: true });
    expect(r.success).toBe(false);
    expect(fieldProblems(r.error!)).toEqual([{ field: 'pilot', message: expect.stringContaining('not offered in pilot mode') }]);
  });

  it('refuses out-of-range values', () => {
    expect(problems({ image: 'sample', vcpus: 0 })[0].field).toBe('vcpus');
    expect(problems({ image: 'sample', memoryMiB: 1.5 })[0].field).toBe('memoryMiB');
    expect(problems({ image: 'sample', targetState: 'Paused' })[0].field).toBe('targetState');
  });
});

describe('image references, partitions and targets', () => {
  const problemsOf = (body: object) => {
    const r = createWorkspaceSchema.safeParse(body);
    return r.success ? [] : fieldProblems(r.error);
  };

  it('accepts repository names and file, http(s) and sftp URLs', () => {
    for (const image of ['sample', 'file:///var/lib/vws/incoming/a.raw', 'https://example.org/a.raw', 'sftp://root@10.0.0.1/srv/a.raw']) {
      expect(problemsOf({ image })).toEqual([]);
    }
  });

  it('names the field of an unknown scheme or a path-like name', () => {
    expect(problemsOf({ image: 'ftp://example.org/a.raw' })).toEqual([{ field: 'image', message: expect.stringContaining('scheme') }]);
    expect(problemsOf({ image: '../etc/passwd' })).toEqual([{ field: 'image', message: expect.stringContaining('repository image name') }]);
  });

  it('wants exactly one of image and blankMiB per partition, and sha256 only with a URL', () => {
    expect(problemsOf({ image: 'sample', partitions: [{}] })).toEqual([{ field: 'partitions.0', message: expect.stringContaining('exactly one') }]);
    expect(problemsOf({ image: 'sample', partitions: [{ image: 'data', blankMiB: 8 }] })[0].field).toBe('partitions.0');
    expect(problemsOf({ image: 'sample', partitions: [{ image: 'data', sha256: 'a'.repeat(64) }] })).toEqual([
      { field: 'partitions.0.sha256', message: 'sha256 goes with an image URL' },
    ]);
    expect(problemsOf({ image: 'sample', partitions: [{ blankMiB: 8, filesystem: 'ntfs' }] })[0].field).toBe('partitions.0.filesystem');
    expect(problemsOf({ image: 'sample', imageSha256: 'a'.repeat(64) })).toEqual([{ field: 'imageSha256', message: 'imageSha256 goes with an image URL' }]);
  });

  it('refuses Serialize with partitions (only the root disk and memory are saved)', () => {
    expect(problemsOf({ image: 'sample', shutdownMechanism: 'Serialize', partitions: [{ blankMiB: 8 }] })[0].field).toBe('shutdownMechanism');
  });
});

describe('targetForMember (seed 002: group members get their id appended)', () => {
  it('appends the member index to a name, or before the extension of a URL file name', () => {
    expect(targetForMember('saved', undefined)).toBe('saved');
    expect(targetForMember('saved', 2)).toBe('saved-2');
    expect(targetForMember('sftp://u@h/dir.d/disk.raw', 3)).toBe('sftp://u@h/dir.d/disk-3.raw');
    expect(targetForMember('https://h/out/disk', 0)).toBe('https://h/out/disk-0');
  });
});
