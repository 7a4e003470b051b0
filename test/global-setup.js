/**
 * Once per jest run, before any test file: a directory that every test file of this run shares (the workflow
 * bundle is built once into it: test/helpers/temporal.ts `workflowBundle`). Environment set here reaches the
 * test files (they run in this process under --runInBand, or in workers started after it).
 */
const { mkdtempSync } = require('node:fs');
const { tmpdir } = require('node:os');
const { join } = require('node:path');

module.exports = async () => {
  process.env.VWS_TEST_RUN_DIR = mkdtempSync(join(tmpdir(), 'vws-jest-run-'));
};
