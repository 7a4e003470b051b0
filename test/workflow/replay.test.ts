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

/**
 * The id the recorded workflow ran under: groups and ensembles derive their members' ids from their own,
 * so they must replay under it. It is `<prefix>-<input.id>`, the prefix being the head task queue's.
 */
function recordedWorkflowId(file: string): string {
  const started = (load(file) as { events: Array<Record<string, any>> }).events[0].workflowExecutionStartedEventAttributes;
  const payload = started?.input?.payloads?.[0]?.data as string | undefined;
  const input = payload ? (JSON.parse(Buffer.from(payload, 'base64').toString('utf8')) as { id?: unknown }) : {};
  const queue = String(started?.taskQueue?.name ?? '');
  return typeof input.id === 'string' && queue.endsWith('-head') ? `${queue.slice(0, -'-head'.length)}-${input.id}` : file;
}

describe('recorded histories', () => {
  it('are decoded by the one protobufjs 8 that the SDK resolves (not a nested copy)', () => {
    const fromSdk = require.resolve('protobufjs/package.json', { paths: [dirname(require.resolve('@temporalio/proto'))] });
    expect(fromSdk).toBe(require.resolve('protobufjs/package.json'));
    expect((require(fromSdk) as { version: string }).version).toMatch(/^8\./);
  });

  it('include every long-lived workflow type', () => {
    for (const kind of ['workspace-', 'allocator-', 'group-', 'ensemble-', 'pilot-slot-']) expect(files.some((f) => f.startsWith(kind))).toBe(true);
  });

  it.each(files)('%s replays against the current workflow code', async (file) => {
    await Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, load(file), recordedWorkflowId(file));
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
