/**
 * Lets plain `node` load this repository's TypeScript (`node -r ./bench/ts-register.js file.ts`), for
 * benchmark processes started outside jest (e.g. `node-workers.ts`, the bench nodes in a child process).
 * Transpiles each file on its own, without type checking: jest and `tsc` check the same files.
 */
const { readFileSync } = require('node:fs');
const { compilerOptions } = require('../tsconfig.json');

let options;
// The compiler is required on each load (from the module cache), not held: a process may drop it once loaded.
require.extensions['.ts'] = (module, filename) => {
  const ts = require('typescript');
  options ??= { ...ts.convertCompilerOptionsFromJson(compilerOptions, '.').options, sourceMap: false, inlineSourceMap: false };
  const { outputText } = ts.transpileModule(readFileSync(filename, 'utf8'), { compilerOptions: options, fileName: filename });
  module._compile(outputText, filename);
};
