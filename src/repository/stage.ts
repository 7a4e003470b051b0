/** Stages a local file into the site repository: `node dist/repository/stage.js NAME FILE`. */
import { loadConfig } from '../config/load';
import { resolveImage, sha256File, stageLocalFile } from './index';

async function main(): Promise<void> {
  const [name, file] = process.argv.slice(2);
  if (!name || !file) throw new Error('usage: stage.js NAME FILE');
  const config = loadConfig();
  const existing = await resolveImage(config, name);
  // Idempotent: staging the same bytes again is a no-op.
  if (existing && existing.sha256 === (await sha256File(file))) {
    console.log(`${name}: already staged (sha256 ${existing.sha256})`);
    return;
  }
  const staged = await stageLocalFile(config, name, file);
  console.log(`${name}: staged ${staged.sizeBytes} bytes, sha256 ${staged.sha256}`);
}

main().catch((e) => {
  console.error(`stage: ${(e as Error).message}`);
  process.exit(1);
});
