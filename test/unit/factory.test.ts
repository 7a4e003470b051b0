import { parseConfig } from '../../src/config/load';
import { createWorkspaceSchema, fieldProblems, idempotencyKeySchema } from '../../src/domain/requests';
import { bodyHash, canonicalJson, idDigits, memberIds } from '../../src/api/idempotency';
import { resolveAmount, resolveResources } from '../../src/api/policy';
import { chargedMinutes, usedSecondsOf } from '../../src/api/status';
import { listQuery } from '../../src/api/listing';

const config = parseConfig({
  nodes: [
    { name: 'small', memoryMiB: 1024, cpus: 2, properties: ['pool-a'] },
    { name: 'big', memoryMiB: 4096, cpus: 8, properties: ['pool-a', 'bigmem'] },
  ],
  policies: { maxMemoryMiB: 2048, maxVcpus: 4, maxDurationSeconds: 7200, maxNodesPerRequest: 3 },
});
const request = (r: object) => ({ memoryMiB: 128, vcpus: 1, durationSeconds: 3600, count: 1, nodeProperties: [], ...r });

describe('ranges in the request', () => {
  const parse = (body: object) => createWorkspaceSchema.safeParse({ image: 'sample', ...body });

  it('accept an exact value or { min, max }', () => {
    expect(parse({ memoryMiB: 256 }).data?.memoryMiB).toBe(256);
    expect(parse({ memoryMiB: { min: 256, max: 1024 }, vcpus: { min: 1, max: 2 }, durationSeconds: { min: 60, max: 600 } }).success).toBe(true);
  });

  it('refuse min above max, naming the field', () => {
    const r = parse({ vcpus: { min: 4, max: 2 } });
    expect(fieldProblems(r.error!)).toEqual([{ field: 'vcpus.max', message: 'min must not exceed max' }]);
  });

  it('refuse anything else with a sentence naming the field and both forms', () => {
    for (const memoryMiB of ['lots', 1.5, { min: 128 }, { min: 128, max: 256, step: 2 }]) {
      const problems = fieldProblems(parse({ memoryMiB }).error!);
      expect(problems[0].field).toMatch(/^memoryMiB/);
    }
    expect(fieldProblems(parse({ memoryMiB: 'lots' }).error!)).toEqual([
      { field: 'memoryMiB', message: 'must be a whole number of MiB from 64 to 1048576, or a range { min, max } of them' },
    ]);
    expect(fieldProblems(parse({ durationSeconds: { min: 0, max: 10 } }).error!)[0].field).toBe('durationSeconds.min');
  });

  it('take count and nodeProperties, with defaults', () => {
    expect(parse({}).data).toMatchObject({ count: 1, nodeProperties: [] });
    expect(fieldProblems(parse({ count: 0 }).error!)[0].field).toBe('count');
    expect(fieldProblems(parse({ nodeProperties: ['Big Mem'] }).error!)[0].field).toBe('nodeProperties.0');
  });
});

describe('the factory policy', () => {
  it('takes the largest value within both the range and the limit', () => {
    expect(resolveAmount('m', { min: 100, max: 500 }, { value: 300, why: 'x' }, 'MiB')).toEqual({ value: 300 });
    expect(resolveAmount('m', { min: 100, max: 200 }, { value: 300, why: 'x' }, 'MiB')).toEqual({ value: 200 });
    expect(resolveAmount('m', 250, { value: 300, why: 'x' }, 'MiB')).toEqual({ value: 250 });
    expect(resolveAmount('m', 300, { value: 300, why: 'x' }, 'MiB')).toEqual({ value: 300 });
  });

  it('refuses an exact value or a range min over the limit, naming the field and the limit', () => {
    expect(resolveAmount('memoryMiB', 400, { value: 300, why: 'policies.maxMemoryMiB' }, 'MiB')).toEqual({
      field: 'memoryMiB',
      limit: 300,
      message: '400 MiB is over the limit of 300 MiB (policies.maxMemoryMiB)',
    });
    expect(resolveAmount('memoryMiB', { min: 400, max: 800 }, { value: 300, why: 'y' }, 'MiB')).toMatchObject({ limit: 300, message: expect.stringContaining("the range's min, 400 MiB,") });
  });

  it('resolves every range to exact values under the site policy and the largest node', () => {
    const r = resolveResources(config, request({ memoryMiB: { min: 512, max: 65536 }, vcpus: { min: 1, max: 64 }, durationSeconds: { min: 60, max: 86400 } }));
    // maxMemoryMiB 2048 < the largest node (4096); maxVcpus 4 < 8; maxDurationSeconds 7200.
    expect(r).toEqual({ ok: true, exact: { memoryMiB: 2048, vcpus: 4, durationSeconds: 7200 } });
  });

  it('bounds memory and CPUs by the largest node that has the required properties', () => {
    const onA = resolveResources(config, request({ memoryMiB: { min: 64, max: 8192 }, vcpus: { min: 1, max: 8 }, nodeProperties: ['pool-a'] }));
    expect(onA).toMatchObject({ ok: true, exact: { memoryMiB: 2048, vcpus: 4 } });
    const small = parseConfig({ nodes: [{ name: 'n1', memoryMiB: 512, cpus: 2 }], policies: { maxMemoryMiB: 2048 } });
    const r = resolveResources(small, request({ memoryMiB: 1024 }));
    expect(r).toEqual({
      ok: false,
      invalid: [],
      policy: [{ field: 'memoryMiB', limit: 512, message: '1024 MiB is over the limit of 512 MiB (the largest node, n1, has 512 MiB)' }],
    });
  });

  it('refuses every field over its limit at once, and count over maxNodesPerRequest', () => {
    const r = resolveResources(config, request({ memoryMiB: { min: 3000, max: 4000 }, vcpus: 5, durationSeconds: 7201, count: 4 }));
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.policy.map((p) => [p.field, p.limit])).toEqual([
      ['memoryMiB', 2048],
      ['vcpus', 4],
      ['durationSeconds', 7200],
      ['count', 3],
    ]);
    expect(r.policy[3].message).toBe('4 workspaces is over the limit of 3 per request (policies.maxNodesPerRequest)');
  });

  it('refuses node properties no node has, and combinations no single node has', () => {
    const r = resolveResources(config, request({ nodeProperties: ['gpu'] }));
    expect(r).toMatchObject({ ok: false, invalid: [{ field: 'nodeProperties.0', message: 'no node has the property gpu (properties: bigmem, pool-a)' }] });
    const split = parseConfig({ nodes: [{ name: 'a', memoryMiB: 512, cpus: 1, properties: ['x'] }, { name: 'b', memoryMiB: 512, cpus: 1, properties: ['y'] }] });
    expect(resolveResources(split, request({ nodeProperties: ['x', 'y'] }))).toMatchObject({ ok: false, invalid: [{ field: 'nodeProperties' }] });
  });
});

describe('idempotency', () => {
  it('hashes bodies independently of key order', () => {
    expect(canonicalJson({ b: 1, a: [{ d: 2, c: 3 }], u: undefined })).toBe('{"a":[{"c":3,"d":2}],"b":1}');
    expect(bodyHash({ a: 1, b: 2 })).toBe(bodyHash({ b: 2, a: 1 }));
    expect(bodyHash({ a: 1 })).not.toBe(bodyHash({ a: 2 }));
  });

  it('derives the same id from the same owner and key, and another for another owner, key or scope', () => {
    const a = idDigits('workspaces', '/CN=alice', 'k1');
    expect(a).toMatch(/^[0-9a-f]{12}$/);
    expect(idDigits('workspaces', '/CN=alice', 'k1')).toBe(a);
    expect(idDigits('workspaces', '/CN=bob', 'k1')).not.toBe(a);
    expect(idDigits('workspaces', '/CN=alice', 'k2')).not.toBe(a);
    expect(idDigits('ensembles', '/CN=alice', 'k1')).not.toBe(a);
    expect(idDigits('workspaces', '/CN=alice', undefined)).not.toBe(idDigits('workspaces', '/CN=alice', undefined));
  });

  it('derives distinct, stable member ids from the group id', () => {
    const ids = memberIds('grp-0123456789ab', 5);
    expect(new Set(ids).size).toBe(5);
    ids.forEach((id) => expect(id).toMatch(/^ws-[0-9a-f]{12}$/));
    expect(memberIds('grp-0123456789ab', 5)).toEqual(ids);
    expect(memberIds('grp-0123456789ac', 1)[0]).not.toBe(ids[0]);
  });

  it('takes keys of printable characters up to 200', () => {
    expect(idempotencyKeySchema.safeParse('a'.repeat(200)).success).toBe(true);
    expect(idempotencyKeySchema.safeParse('a'.repeat(201)).success).toBe(false);
    expect(idempotencyKeySchema.safeParse('tab\there').success).toBe(false);
    expect(idempotencyKeySchema.safeParse('').success).toBe(false);
  });
});

describe('status and listing', () => {
  it('charges whole units of the granularity, rounded up', () => {
    expect(chargedMinutes(0, 60)).toBe(0);
    expect(chargedMinutes(1, 60)).toBe(1);
    expect(chargedMinutes(61, 60)).toBe(2);
    expect(chargedMinutes(61, 900)).toBe(15);
    expect(chargedMinutes(1, 1)).toBeCloseTo(1 / 60);
  });

  it('counts running time from the first start only', () => {
    expect(usedSecondsOf({ durationSeconds: 600, runningTimeLeftSeconds: 600 })).toBe(0);
    expect(usedSecondsOf({ firstStartedAt: '2026-01-01T00:00:00Z', durationSeconds: 600, runningTimeLeftSeconds: 450 })).toBe(150);
  });

  it("lists a client's own workspaces, and every owner's for an admin", () => {
    const alice = { name: 'alice', identity: '/O=Grid/CN=alice "x"', admin: false };
    const q = listQuery(config, alice, { state: 'Running', group: 'grp-0123456789ab' });
    expect(q).toBe(
      'WorkflowType = "workspaceWorkflow" AND WorkflowId STARTS_WITH "vws-ws-" AND VwsOwner = "/O=Grid/CN=alice \\"x\\"" AND VwsState = "Running" AND VwsGroup = "grp-0123456789ab"',
    );
    expect(listQuery(config, { ...alice, admin: true }, {})).not.toContain('VwsOwner');
  });
});
