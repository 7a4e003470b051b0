/**
 * Three projects, run serially (`--runInBand`) against one shared Temporal dev server:
 *   unit      pure code and local commands; no server
 *   workflow  workflows on the real dev server (TEMPORAL_ADDRESS), each test with its own task queues
 *   e2e       the walking skeleton on the testbed: API → Temporal → node worker in vmm1 → a real VM
 *   integration  single components against the testbed's hosts (e.g. the SSH executor on vmm2); no server
 */
const common = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json', diagnostics: { warnOnly: false } }] },
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
};
