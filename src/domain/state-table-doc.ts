/**
 * Renders the state table as Markdown, so the documentation is generated from the same table the
 * workflow and the API read (`docs/states.md`; a unit test fails when it is stale).
 */
import { ALLOWED_OPERATIONS, OPERATION_TARGET, WORKSPACE_OPERATIONS, WORKSPACE_STATES } from './states';

/** The Markdown of docs/states.md. */
export function stateTableMarkdown(): string {
  const header = ['state', ...WORKSPACE_OPERATIONS];
  const rows = WORKSPACE_STATES.map((s) => [s, ...WORKSPACE_OPERATIONS.map((op) => (ALLOWED_OPERATIONS[s].includes(op) ? 'yes' : '–'))]);
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [
    '# Workspace states and operations',
    '',
    'Generated from `src/domain/states.ts` (`npm run docs:states`); the workflow\'s Update validators and the',
    'API\'s early refusals read the same table. An operation also waits for nothing else to be in flight',
    '(the `task` field), except destroy, which stops whatever is in flight.',
    '',
    line(header),
    line(header.map(() => '---')),
    ...rows.map(line),
    '',
    'Where each operation takes the workspace:',
    '',
    ...WORKSPACE_OPERATIONS.map((op) => `- \`${op}\` → ${OPERATION_TARGET[op]}`),
    '',
    '`start` from StagedOut works only for a workspace serialized at its deadline (it resumes from the saved',
    'state, with new running time). When an operation fails for good the workspace becomes Corrupted, with',
    '`heading` naming the state it was heading to, and `reason`.',
    '',
  ].join('\n');
}

if (require.main === module) process.stdout.write(stateTableMarkdown());
