/** After the run: the run's shared directory (test/global-setup.js) goes. */
const { rmSync } = require('node:fs');

module.exports = async () => {
  if (process.env.VWS_TEST_RUN_DIR) rmSync(process.env.VWS_TEST_RUN_DIR, { recursive: true, force: true });
};
