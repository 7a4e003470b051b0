/**
 * The site image repository on the head: a directory of image files, each with a `<name>.sha256`
 * sidecar written when it was staged in. Nodes pull images from the head's `/repository/<name>`.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { copyFile, mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { VwsConfig } from '../config/schema';
import { imageNameSchema } from '../domain/requests';
import type { ResolvedImage } from '../domain/workspace';

/** sha256 of a file, hex. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

/** Resolves an image name in the repository; `null` if there is no such staged image. */
export async function resolveImage(config: VwsConfig, name: string): Promise<ResolvedImage | null> {
  if (!imageNameSchema.safeParse(name).success || name.endsWith('.sha256')) return null;
  const path = join(config.repository.dir, name);
  try {
    const [st, digest] = await Promise.all([stat(path), readFile(`${path}.sha256`, 'utf8')]);
    if (!st.isFile()) return null;
    return { name, url: `${config.repository.url}/${encodeURIComponent(name)}`, sha256: digest.trim(), sizeBytes: st.size };
  } catch {
    return null;
  }
}

/** Copies a local file into the repository under `name` (temporary name, digest, then rename). */
export async function stageLocalFile(config: VwsConfig, name: string, source: string): Promise<ResolvedImage> {
  imageNameSchema.parse(name);
  await mkdir(config.repository.dir, { recursive: true });
  const path = join(config.repository.dir, name);
  const tmp = `${path}.staging`;
  await copyFile(source, tmp);
  const digest = await sha256File(tmp);
  await writeFile(`${path}.sha256`, `${digest}\n`);
  await rename(tmp, path);
  const resolved = await resolveImage(config, name);
  if (!resolved) throw new Error(`staged ${name} but cannot resolve it`);
  return resolved;
}
