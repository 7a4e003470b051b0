import { createWorkspaceSchema, fieldProblems } from '../../src/domain/requests';

function problems(body: unknown) {
  const r = createWorkspaceSchema.safeParse(body);
  if (r.success) throw new Error('expected a validation failure');
  return fieldProblems(r.error);
}

describe('the create-workspace request', () => {
  it('fills in defaults', () => {
    expect(createWorkspaceSchema.parse({ image: 'sample' })).toEqual({
      image: 'sample',
      memoryMiB: 128,
      vcpus: 1,
      durationSeconds: 3600,
      targetState: 'Running',
      shutdownMechanism: 'Normal',
      trashAtShutdown: false,
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

  it('refuses out-of-range values', () => {
    expect(problems({ image: 'sample', vcpus: 0 })[0].field).toBe('vcpus');
    expect(problems({ image: 'sample', memoryMiB: 1.5 })[0].field).toBe('memoryMiB');
    expect(problems({ image: 'sample', targetState: 'Paused' })[0].field).toBe('targetState');
  });
});
