/** The workflow bundle's entry: every workflow type vws registers. */
export { allocatorWorkflow } from './allocator';
export { workspaceWorkflow } from './workspace';
export { groupWorkflow } from './group';
export { ensembleWorkflow } from './ensemble';
export { reconcilerWorkflow } from './reconciler';
export { killAllWorkflow } from './kill-all';
export { pilotSlotWorkflow } from './pilot-slot';
