/** The workflow bundle's entry: every workflow type vws registers. */
export { allocatorWorkflow } from './allocator';
export { workspaceWorkflow } from './workspace';
