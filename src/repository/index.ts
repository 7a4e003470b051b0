/**
 * The site image repository on the head: a directory of image files, each with a `<name>.sha256`
 * sidecar written when it was staged in. Nodes pull images from the head's `/repository/<name>`.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { copyFile, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, type Readable } from 'node:stream';
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

/** Why an upload was refused: the HTTP status and a sentence for the node's error. */
export class UploadRefused extends Error {
  constructor(
    readonly status: 400 | 409,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Accepts a staged-out file from a node: streams it to a temporary name, checks its sha256 against the
 * digest the node took, and only then renames it into place. Re-sending identical bytes succeeds
 * (idempotent); a different file under an existing name is refused, never overwritten.
 */
export async function acceptUpload(config: VwsConfig, name: string, body: Readable, sha256: string): Promise<ResolvedImage> {
  if (!imageNameSchema.safeParse(name).success || name.endsWith('.sha256')) throw new UploadRefused(400, `bad image name ${JSON.stringify(name)}`);
  if (!/^[0-9a-f]{64}$/.test(sha256)) throw new UploadRefused(400, 'x-vws-sha256 must be a hex sha256 digest');
  const existing = await resolveImage(config, name);
  if (existing && existing.sha256 !== sha256) throw new UploadRefused(409, `image ${name} already exists with another digest`);
  await mkdir(config.repository.dir, { recursive: true });
  const path = join(config.repository.dir, name);
  const tmp = `${path}.upload-${process.pid}-${Date.now()}`;
  const hash = createHash('sha256');
  try {
    const tap = new Transform({
      transform(chunk: Buffer, _enc, done) {
        hash.update(chunk);
        done(null, chunk);
      },
    });
    await pipeline(body, tap, createWriteStream(tmp, { mode: 0o644 }));
    const got = hash.digest('hex');
    if (got !== sha256) throw new UploadRefused(400, `upload of ${name} has sha256 ${got}, not the announced ${sha256}`);
    if (existing) return existing;
    await writeFile(`${path}.sha256`, `${sha256}\n`);
    await rename(tmp, path);
  } finally {
    await rm(tmp, { force: true });
  }
  const resolved = await resolveImage(config, name);
  if (!resolved) throw new Error(`stored ${name} but cannot resolve it`);
  return resolved;
}
