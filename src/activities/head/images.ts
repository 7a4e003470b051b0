/**
 * The head's image activities for images outside the site repository (seed 002):
 *  - stage-in (Unstaged → Unpropagated): an image named by URL is copied into the repository as
 *    `staged-<sha256>`, verified against the client's digest when given, before anything else happens;
 *  - stage-out to a URL (StagedOut): a repository image is copied to a target the client may write;
 *  - cleanup: abandoned stage-in copies, intermediate repository images.
 *
 * Stage-in copies into `<repository>/.staging/<workspaceId>-<index>.part`, a stable name: an attempt
 * after a crash hashes what an earlier one left and asks the source for the rest (resume), as long as
 * the source is still the same file (size and validator recorded beside the `.part`). Only a complete,
 * verified copy is renamed to a repository name, sidecar first, so nothing half-copied is ever visible.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { VwsConfig } from '../../config/schema';
import { FailureType } from '../../domain/errors';
import { imageNameSchema } from '../../domain/requests';
import type { ImageSource, ResolvedImage } from '../../domain/workspace';
import { resolveImage } from '../../repository';
import { heartbeatProgress, inActivity, progressCounter, type Progress } from '../images/progress';
import {
  isAllowed,
  openSource,
  parseImageUrl,
  probeSource as probeUrl,
  redactError,
  redactUrl,
  sourceUnavailable,
  stallGuard,
  writeTarget,
  type OpenedSource,
  type UrlDeps,
} from '../images/urls';

/** Dependencies of the head's image activities. */
export interface HeadImageDeps {
  config: VwsConfig;
  /** Reports copy progress; by default the activity heartbeat. */
  progress?: (p: Progress) => void;
  /** A copy that moves no byte for this long fails, retryably (default 60 s). */
  stallTimeoutMs?: number;
}

/** Input of `stageIn`. */
export interface StageInInput {
  workspaceId: string;
  /** Which of the workspace's images (0 = root, then partitions): names the staging file. */
  index: number;
  source: ImageSource;
}

/** What `stageIn` did: the image in the repository, and how many bytes this attempt moved. */
export type StageInResult = ResolvedImage & {
  /** Bytes read from the source by this attempt (0 when the repository already had the image). */
  bytesCopied: number;
  /** Bytes an earlier, interrupted attempt had copied that this one kept (0 if none). */
  resumedFromBytes: number;
};

/** Input of `stageOutToUrl`. */
export interface StageOutToUrlInput {
  image: ResolvedImage;
  /** Target URL; must be under the owning client's `stageOutTargets`. */
  target: string;
  /** Identity of the workspace's owner (a client's `identity`). */
  owner: string;
}

/** What `stageOutToUrl` wrote: the target (redacted) and its content. */
export interface StageOutToUrlResult {
  url: string;
  sha256: string;
  sizeBytes: number;
}

/** What is recorded beside a `.part`: the source it is a prefix of. */
interface PartOrigin {
  source: string;
  sizeBytes: number | null;
  validator?: string;
}

const SHA256 = /^[0-9a-f]{64}$/;
/** Workspace ids name files here: no separators, no leading dot. */
const WORKSPACE_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** Copies running in this process, by `.part` path: a new attempt supersedes an old one still running. */
const running = new Map<string, { abort: AbortController; done: Promise<unknown> }>();

function invalid(message: string): ApplicationFailure {
  return ApplicationFailure.nonRetryable(message, FailureType.InvalidSpec);
}

/** The activity's cancellation signal, if running as an activity. */
function activitySignal(): AbortSignal | undefined {
  return inActivity() ? Context.current().cancellationSignal : undefined;
}

/** The staging directory inside the repository (a dot name: never an image name). */
function stagingDir(config: VwsConfig): string {
  return join(config.repository.dir, '.staging');
}

/** Escapes a string for a RegExp. */
function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Writes a small file atomically (temporary name, then rename). */
async function writeAtomic(path: string, content: string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${Date.now()}`;
  await writeFile(tmp, content, { mode: 0o644 });
  await rename(tmp, path);
}

async function readOrigin(path: string): Promise<PartOrigin | null> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as PartOrigin;
  } catch {
    return null;
  }
}

/** Size of a file, or 0 if it does not exist. */
async function sizeOrZero(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw e;
  }
}

/** Flushes a file to disk: the rename that publishes it must not outlive its bytes in a crash. */
async function fsync(path: string): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Feeds the first `bytes` bytes of `path` into `hash` (what an earlier attempt copied), reporting progress. */
async function hashPrefix(path: string, bytes: number, hash: Hash, total: number, report: (p: Progress) => void): Promise<void> {
  let done = 0;
  let reportedAt = Date.now();
  for await (const chunk of createReadStream(path, { start: 0, end: bytes - 1 })) {
    hash.update(chunk as Buffer);
    done += (chunk as Buffer).length;
    // Hashing gigabytes takes a while: keep heartbeating, but not per chunk.
    if (Date.now() - reportedAt > 2000) {
      reportedAt = Date.now();
      report({ bytes: done, total });
    }
  }
}

/** Checks the input of stageIn; returns the expected digest, if any. */
function checkStageInInput(input: StageInInput): string | undefined {
  if (!WORKSPACE_ID.test(input.workspaceId)) throw invalid(`bad workspace id ${JSON.stringify(input.workspaceId)}`);
  if (!Number.isInteger(input.index) || input.index < 0) throw invalid(`bad image index ${input.index}`);
  const expected = input.source.sha256?.toLowerCase();
  if (expected !== undefined && !SHA256.test(expected)) throw invalid('the source sha256 must be 64 hex digits');
  return expected;
}

/** Refuses a URL under none of `prefixes`, naming it (redacted) and the setting. */
async function requireAllowed(url: string, prefixes: readonly string[], refusal: string): Promise<void> {
  let ok: boolean;
  try {
    parseImageUrl(url);
    ok = await isAllowed(url, prefixes);
  } catch (e) {
    if (e instanceof ApplicationFailure) throw e;
    throw sourceUnavailable((e as Error).message);
  }
  if (!ok) throw sourceUnavailable(refusal);
}

/**
 * Checks that an image source can be used before a request is accepted: its URL is under
 * `images.sources` and it answers within `images.probeTimeoutSeconds`. Resolves with its size (`null`
 * when an HTTP server does not say); rejects with a `SourceUnavailable` ApplicationFailure whose message
 * is a sentence for the client, with details `[{ transient }]` (see {@link probeUrl}). Not an activity.
 */
export async function probeSource(config: VwsConfig, url: string): Promise<{ sizeBytes: number | null }> {
  try {
    await requireAllowed(url, config.images.sources, `image source ${redactUrl(url)} is under none of the allowed sources (images.sources)`);
  } catch (e) {
    throw sourceUnavailable((e as Error).message, { transient: false });
  }
  return probeUrl(url, { config }, config.images.probeTimeoutSeconds * 1000);
}

/** Creates the head's image activities. */
export function createHeadImageActivities(deps: HeadImageDeps) {
  const { config } = deps;
  const report = deps.progress ?? heartbeatProgress;
  const urlDeps: UrlDeps = { config, stallTimeoutMs: deps.stallTimeoutMs };

  /**
   * Opens the source where the `.part` ends, when the `.part` is a prefix of this very source (its
   * recorded origin says so; without a record only when a digest will check the result); otherwise from
   * 0. Returns the opened source, the bytes kept and the hash fed with them.
   */
  async function openResuming(url: string, part: string, originPath: string, checked: boolean): Promise<{ src: OpenedSource; kept: number; hash: Hash }> {
    const normalized = parseImageUrl(url).normalized;
    let kept = await sizeOrZero(part);
    const origin = kept > 0 ? await readOrigin(originPath) : null;
    if (kept > 0 && !(origin ? origin.source === normalized : checked)) kept = 0;
    let hash = createHash('sha256');
    if (kept > 0) await hashPrefix(part, kept, hash, origin?.sizeBytes ?? 0, report);
    let src = await openSource(url, urlDeps, kept, { ifRange: origin?.validator });
    const sameFile = (o: PartOrigin) =>
      src.sizeBytes === o.sizeBytes && (o.validator === undefined || src.validator === undefined || src.validator === o.validator);
    const changed = kept > 0 && (src.start !== kept || (origin !== null && !sameFile(origin)));
    if (changed) {
      // The source is another file now, or cannot resume: start over.
      if (src.start !== 0) {
        src.stream.destroy();
        src = await openSource(url, urlDeps, 0);
      }
      kept = 0;
      hash = createHash('sha256');
    }
    await writeAtomic(originPath, JSON.stringify({ source: normalized, sizeBytes: src.sizeBytes, validator: src.validator } satisfies PartOrigin));
    return { src, kept, hash };
  }

  /** Copies the source into `part` (appending after what is kept), verifies it and publishes it. */
  async function copyIn(input: StageInInput, expected: string | undefined, part: string, signal: AbortSignal): Promise<StageInResult> {
    const url = input.source.url;
    const shown = redactUrl(url);
    const originPath = `${part}.json`;
    const { src, kept, hash } = await openResuming(url, part, originPath, expected !== undefined);
    const total = src.sizeBytes ?? 0;
    const counter = progressCounter(total, (p) => report({ bytes: kept + p.bytes, total }), (chunk) => hash.update(chunk));
    await pipeline(
      src.stream,
      stallGuard(deps.stallTimeoutMs ?? 60_000, `stage-in of ${shown}`),
      counter,
      createWriteStream(part, { flags: kept > 0 ? 'a' : 'w', mode: 0o644 }),
      { signal },
    );
    await fsync(part);
    const size = await sizeOrZero(part);
    if (src.sizeBytes !== null && size !== src.sizeBytes) {
      // Short: the source ended early, keep it for the next attempt. Long: the source shrank; start over.
      if (size > src.sizeBytes) await rm(part, { force: true });
      throw new Error(`stage-in of ${shown} ended at ${size} of ${src.sizeBytes} bytes`);
    }
    const digest = hash.digest('hex');
    if (expected && digest !== expected) {
      await rm(part, { force: true });
      await rm(originPath, { force: true });
      if (kept > 0) {
        // What an earlier attempt left was not a prefix of this source after all: copy it whole, once.
        const again = await copyIn(input, expected, part, signal);
        return { ...again, bytesCopied: again.bytesCopied + counter.bytes() };
      }
      throw ApplicationFailure.nonRetryable(
        `image ${shown} has sha256 ${digest}, not the expected ${expected}; nothing was staged`,
        FailureType.DigestMismatch,
      );
    }
    const resolved = await publish(part, digest);
    await rm(originPath, { force: true });
    return { ...resolved, bytesCopied: counter.bytes(), resumedFromBytes: kept };
  }

  /** Makes a verified `.part` the repository image `staged-<digest>` (or drops it if that exists). */
  async function publish(part: string, digest: string): Promise<ResolvedImage> {
    const name = `staged-${digest}`;
    const path = join(config.repository.dir, name);
    if (!(await resolveImage(config, name))) {
      // Sidecar first: the image's rename is the commit point, and it is only visible with its digest.
      await writeAtomic(`${path}.sha256`, `${digest}\n`);
      await rename(part, path);
    }
    await rm(part, { force: true });
    const resolved = await resolveImage(config, name);
    if (!resolved) throw new Error(`staged ${name} but cannot resolve it`);
    return resolved;
  }

  /** Runs `copy` as the only copy into `part` in this process, aborting a superseded attempt first. */
  async function exclusively<T>(part: string, copy: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const previous = running.get(part);
    if (previous) {
      previous.abort.abort();
      await previous.done.catch(() => undefined);
    }
    const abort = new AbortController();
    const outer = activitySignal();
    const onCancel = () => abort.abort();
    outer?.addEventListener('abort', onCancel);
    const done = copy(abort.signal);
    const entry = { abort, done };
    running.set(part, entry);
    try {
      return await done;
    } finally {
      outer?.removeEventListener('abort', onCancel);
      if (running.get(part) === entry) running.delete(part);
    }
  }

  return {
    /**
     * Stage-in (seed 002 Unstaged → Unpropagated): copies the image at `source.url` into the repository
     * as `staged-<sha256>` and resolves it. The URL must be under `images.sources`. With `source.sha256`,
     * an image the repository already holds is not copied again, and a copy with another digest is
     * refused (DigestMismatch, nothing staged). Resumes a copy an earlier attempt left; heartbeats progress.
     */
    async stageIn(input: StageInInput): Promise<StageInResult> {
      const expected = checkStageInInput(input);
      const url = input.source.url;
      await requireAllowed(url, config.images.sources, `image source ${redactUrl(url)} is under none of the allowed sources (images.sources)`);
      if (expected) {
        const existing = await resolveImage(config, `staged-${expected}`);
        if (existing) return { ...existing, bytesCopied: 0, resumedFromBytes: 0 };
      }
      await mkdir(stagingDir(config), { recursive: true });
      const part = join(stagingDir(config), `${input.workspaceId}-${input.index}.part`);
      try {
        return await exclusively(part, (signal) => copyIn(input, expected, part, signal));
      } catch (e) {
        throw redactError(e);
      }
    },

    /** Removes what stage-in left in the staging directory for the workspace (an abandoned copy). Idempotent. */
    async removeStaging(input: { workspaceId: string }): Promise<void> {
      if (!WORKSPACE_ID.test(input.workspaceId)) throw invalid(`bad workspace id ${JSON.stringify(input.workspaceId)}`);
      const dir = stagingDir(config);
      const mine = new RegExp(`^${escapeRegExp(input.workspaceId)}-\\d+\\.part(\\.json)?$`);
      for (const [part, copy] of running) {
        if (part.startsWith(`${dir}/`) && mine.test(part.slice(dir.length + 1))) {
          copy.abort.abort();
          await copy.done.catch(() => undefined);
        }
      }
      let names: string[];
      try {
        names = await readdir(dir);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw e;
      }
      await Promise.all(names.filter((n) => mine.test(n)).map((n) => rm(join(dir, n), { force: true })));
    },

    /**
     * Stage-out to a URL (StagedOut): copies a repository image to `target`, which must be under the
     * owning client's `stageOutTargets`. Idempotent: a target that already holds the same bytes is
     * success; one with other bytes is refused, never overwritten. Heartbeats progress.
     */
    async stageOutToUrl(input: StageOutToUrlInput): Promise<StageOutToUrlResult> {
      const { image, target, owner } = input;
      if (!imageNameSchema.safeParse(image.name).success) throw invalid(`bad image name ${JSON.stringify(image.name)}`);
      const client = config.clients.find((c) => c.identity === owner);
      if (!client) throw sourceUnavailable(`no client has identity ${owner}, so nobody may write ${redactUrl(target)}`);
      await requireAllowed(target, client.stageOutTargets, `client ${client.name} may not write ${redactUrl(target)} (not under its stageOutTargets)`);
      const path = join(config.repository.dir, image.name);
      const st = await stat(path).catch(() => null);
      if (!st?.isFile()) throw ApplicationFailure.nonRetryable(`image ${image.name} is not in the repository`, FailureType.ImageNotFound);
      if (st.size !== image.sizeBytes) {
        throw ApplicationFailure.nonRetryable(`repository image ${image.name} has ${st.size} bytes, not the ${image.sizeBytes} it was resolved with`, FailureType.DigestMismatch);
      }
      try {
        const written = await writeTarget(target, urlDeps, async () => createReadStream(path), {
          sizeBytes: image.sizeBytes,
          sha256: image.sha256,
          report,
          signal: activitySignal(),
        });
        report({ bytes: image.sizeBytes, total: image.sizeBytes });
        return { url: written.url, sha256: image.sha256, sizeBytes: image.sizeBytes };
      } catch (e) {
        throw redactError(e);
      }
    },

    /** Deletes an intermediate repository image and its sidecar. Idempotent. */
    async removeRepositoryImage(input: { name: string }): Promise<void> {
      const { name } = input;
      if (!imageNameSchema.safeParse(name).success || name.endsWith('.sha256')) throw invalid(`bad image name ${JSON.stringify(name)}`);
      const path = join(config.repository.dir, name);
      // Image first: without it the sidecar alone resolves to nothing.
      await rm(path, { force: true });
      await rm(`${path}.sha256`, { force: true });
    },
  };
}

/** The head's image activities, as registered with the head worker. */
export type HeadImageActivities = ReturnType<typeof createHeadImageActivities>;
