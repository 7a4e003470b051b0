/**
 * Replays recorded histories (test/fixtures/histories/*.json, recorded from real runs by the end-to-end
 * tests with VWS_RECORD_HISTORIES) against today's workflow code. A change that would break running
 * workflows fails here. This also guards the protobufjs pin: without protobufjs ^8 as a direct
 * dependency, JSON-history replay fails with "type must be a Type" (research/temporal-practice.md).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { DeterminismViolationError } from '@temporalio/workflow';
import { bundleWorkflowCode, Worker } from '@temporalio/worker';
import { workflowBundle } from '../helpers/temporal';

const dir = join(__dirname, '../fixtures/histories');
const files = readdirSync(dir).filter((f) => f.endsWith('.json'));
const load = (f: string) => JSON.parse(readFileSync(join(dir, f), 'utf8')) as unknown;

describe('recorded histories', () => {
  it('are decoded by the one protobufjs 8 that the SDK resolves (not a nested copy)', () => {
    const fromSdk = require.resolve('protobufjs/package.json', { paths: [dirname(require.resolve('@temporalio/proto'))] });
    expect(fromSdk).toBe(require.resolve('protobufjs/package.json'));
    expect((require(fromSdk) as { version: string }).version).toMatch(/^8\./);
  });

  it('include both workflow types', () => {
    expect(files.some((f) => f.startsWith('workspace-'))).toBe(true);
    expect(files.some((f) => f.startsWith('allocator-'))).toBe(true);
  });

  it.each(files)('%s replays against the current workflow code', async (file) => {
    await Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, load(file), file);
  });

  it('fail to replay against incompatible workflow code', async () => {
    const broken = await bundleWorkflowCode({
      workflowsPath: require.resolve('../fixtures/broken-workflows'),
      logger: { trace: () => undefined, debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined, log: () => undefined },
    });
    const file = files.find((f) => f.startsWith('workspace-'))!;
    await expect(Worker.runReplayHistory({ workflowBundle: broken }, load(file), file)).rejects.toBeInstanceOf(DeterminismViolationError);
  });
});
