/**
 * Three projects, run serially (`--runInBand`) against one shared Temporal dev server:
 *   unit      pure code and local commands; no server
 *   workflow  workflows on the real dev server (TEMPORAL_ADDRESS), each test with its own task queues
 *   e2e       the walking skeleton on the testbed: API → Temporal → node worker in vmm1 → a real VM
 *   integration  single components against the testbed's hosts (e.g. the SSH executor on vmm2); no server
 */
/*
 * ts-jest transpiles only (tsconfig.jest.json sets isolatedModules): type checking every test file and its
 * imports in ts-jest's language service cost more CPU than running many of the tests (cold cache, loaded
 * 2-core machine: unit project 139 s → 49 s, four workflow files 269 s → 145 s). Types are still checked,
 * once for the whole project: `./run.sh test` runs `npx tsc -p tsconfig.json --noEmit` first and fails on
 * any error. Run it yourself before pushing (`npm run typecheck`).
 */
const common = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.jest.json' }] },
};
module.exports = {
  projects: [
    { ...common, displayName: 'unit', testMatch: ['<rootDir>/test/unit/**/*.test.ts'] },
    { ...common, displayName: 'workflow', testMatch: ['<rootDir>/test/workflow/**/*.test.ts'] },
    { ...common, displayName: 'e2e', testMatch: ['<rootDir>/test/e2e/**/*.test.ts'] },
    { ...common, displayName: 'integration', testMatch: ['<rootDir>/test/integration/**/*.test.ts'] },
    // Benchmarks print numbers and assert nothing about time; only with VWS_BENCH=1 (see bench/README.md).
    ...(process.env.VWS_BENCH ? [{ ...common, displayName: 'bench', testMatch: ['<rootDir>/bench/**/*.bench.ts'] }] : []),
  ],
  testTimeout: 180_000,
  // One directory shared by the run's test files (the workflow bundle is built once: test/helpers/temporal.ts).
  globalSetup: '<rootDir>/test/global-setup.js',
  globalTeardown: '<rootDir>/test/global-teardown.js',
};
