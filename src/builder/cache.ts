/**
 * The stage cache: content-addressed stage outputs under one folder
 * (~/.cache/cairn by default).
 *
 *   <root>/entries/<stage>-<key>/   a finished output: meta.json + the stage's files
 *   <root>/tmp/<stage>-<key>.<pid>.<n>/   an output being built
 *   <root>/debs/<debian arch>/      the .deb pool shared by every build
 *
 * A stage builds into a folder under tmp/, the cache hashes the result,
 * writes meta.json last and renames the folder into entries/. A build that is
 * killed leaves at most a folder under tmp/ (removed by the next build), never
 * a half-written entry. Before an entry is used its content is hashed again
 * and compared with meta.json; a corrupt entry is removed and rebuilt.
 */
import { mkdir, readdir, readFile, rename, rm, writeFile, statfs } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import { UserError } from '../errors.js';
import { hashTree } from './hash.js';
import { removeTree } from './fsutil.js';

export const META = 'meta.json';

export interface EntryMeta<D = unknown> {
  stage: string;
  key: string;
  /** What the key was computed from, for people reading the cache. */
  inputs: unknown;
  created: string;
  /** hashTree of the entry without meta.json. */
  sha256: string;
  bytes: number;
  entries: number;
  /** Stage-specific result (kernel release, sizes, ...). */
  data: D;
}

export interface Entry<D = unknown> {
  dir: string;
  meta: EntryMeta<D>;
  /** True when the entry came from the cache rather than being built now. */
  cached: boolean;
}

export function defaultCacheDir(): string {
  const xdg = process.env.XDG_CACHE_HOME;
  return path.join(xdg && path.isAbsolute(xdg) ? xdg : path.join(homedir(), '.cache'), 'cairn');
}

let tmpCounter = 0;

export function isDiskFull(err: unknown): boolean {
  const e = err as { code?: string; stderr?: string; message?: string } | undefined;
  if (!e) return false;
  if (e.code === 'ENOSPC' || e.code === 'EDQUOT') return true;
  const text = `${e.stderr ?? ''}\n${e.message ?? ''}`;
  return /No space left on device|ENOSPC|Disk quota exceeded/i.test(text);
}

export class StageCache {
  readonly root: string;
  /** With reuse off, nothing is read from the cache and entries live only for this build. */
  readonly reuse: boolean;
  private readonly entriesDir: string;
  private readonly tmpDir: string;
  private readonly verified = new Map<string, EntryMeta>();
  private readonly log: (line: string) => void;

  constructor(root: string, opts: { reuse?: boolean; log?: (line: string) => void } = {}) {
    this.root = path.resolve(root);
    this.reuse = opts.reuse ?? true;
    this.log = opts.log ?? (() => {});
    this.tmpDir = path.join(this.root, 'tmp');
    this.entriesDir = this.reuse ? path.join(this.root, 'entries') : path.join(this.tmpDir, `nocache.${process.pid}.${Date.now()}`);
  }

  /** Creates the folders and removes what killed builds left behind. */
  async open(): Promise<void> {
    try {
      await mkdir(this.entriesDir, { recursive: true });
      await mkdir(this.tmpDir, { recursive: true });
    } catch (err) {
      throw new UserError(`cannot use cache folder ${this.root}: ${(err as Error).message}`, 'pass a writable folder with --cache DIR');
    }
    for (const name of await readdir(this.tmpDir)) {
      const pid = Number(/\.(\d+)\.\d+$/.exec(name)?.[1] ?? /^nocache\.(\d+)\./.exec(name)?.[1]);
      if (pid && pid !== process.pid && !alive(pid)) {
        this.log(`cache: removing ${name} left by an interrupted build`);
        await removeTree(path.join(this.tmpDir, name));
      }
    }
  }

  /** Removes this build's private entries (only with reuse off). */
  async close(): Promise<void> {
    if (!this.reuse) await rm(this.entriesDir, { recursive: true, force: true });
  }

  debsDir(debianArch: string): string {
    return path.join(this.root, 'debs', debianArch);
  }

  /** A folder for state that is not a stage output (e.g. the last seen archive index). */
  stateDir(): string {
    return path.join(this.root, 'state');
  }

  entryDir(stage: string, key: string): string {
    return path.join(this.entriesDir, `${stage}-${key}`);
  }

  /** The entry if it exists and its content matches its checksum; a corrupt one is removed. */
  async lookup<D>(stage: string, key: string): Promise<Entry<D> | undefined> {
    const dir = this.entryDir(stage, key);
    const known = this.verified.get(dir);
    if (known) return { dir, meta: known as EntryMeta<D>, cached: true };
    let meta: EntryMeta<D>;
    try {
      meta = JSON.parse(await readFile(path.join(dir, META), 'utf8')) as EntryMeta<D>;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        const exists = await readdir(dir).then(() => true, () => false);
        if (!exists) return undefined;
      }
      this.log(`cache: ${stage} entry ${key.slice(0, 12)} has no valid meta.json; rebuilding it`);
      await rm(dir, { recursive: true, force: true });
      return undefined;
    }
    const summary = await hashTree(dir, [META]);
    if (summary.sha256 !== meta.sha256 || meta.key !== key) {
      this.log(`cache: ${stage} entry ${key.slice(0, 12)} is corrupt (checksum ${summary.sha256.slice(0, 12)}, expected ${String(meta.sha256).slice(0, 12)}); rebuilding it`);
      await rm(dir, { recursive: true, force: true });
      return undefined;
    }
    this.verified.set(dir, meta);
    return { dir, meta, cached: true };
  }

  /**
   * Returns the entry for (stage, key), building it with `build` into a
   * temporary folder when it is missing or corrupt. `build` returns the
   * stage-specific data stored in meta.json.
   */
  async get<D>(
    stage: string,
    key: string,
    inputs: unknown,
    build: (dir: string) => Promise<D>,
    opts: { needBytes?: number } = {},
  ): Promise<Entry<D>> {
    const found = await this.lookup<D>(stage, key);
    if (found) return found;
    await mkdir(this.entriesDir, { recursive: true });
    await mkdir(this.tmpDir, { recursive: true });
    if (opts.needBytes) await this.ensureSpace(opts.needBytes, stage);
    const tmp = path.join(this.tmpDir, `${stage}-${key.slice(0, 16)}.${process.pid}.${tmpCounter++}`);
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { recursive: true });
    const dir = this.entryDir(stage, key);
    try {
      const data = await build(tmp);
      const summary = await hashTree(tmp, [META]);
      const meta: EntryMeta<D> = {
        stage,
        key,
        inputs,
        created: new Date().toISOString(),
        sha256: summary.sha256,
        bytes: summary.bytes,
        entries: summary.entries,
        data,
      };
      await writeFile(path.join(tmp, META), `${JSON.stringify(meta, null, 2)}\n`);
      try {
        await rename(tmp, dir);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
        // Another build finished the same entry first: use that one.
        await rm(tmp, { recursive: true, force: true });
        const other = await this.lookup<D>(stage, key);
        if (other) return { ...other, cached: false };
        throw err;
      }
      this.verified.set(dir, meta);
      return { dir, meta, cached: false };
    } catch (err) {
      await removeTree(tmp).catch((e: unknown) => this.log(`cache: could not remove ${tmp}: ${(e as Error).message}`));
      if (isDiskFull(err)) {
        throw new UserError(
          `disk full while building the ${stage} stage in ${this.root}; the partial output was removed and the cache is unchanged`,
          'free some space (or pass --cache DIR on a larger disk) and run the build again',
        );
      }
      throw err;
    }
  }

  /** Fails before a long stage starts when the cache's file system lacks the room for it. */
  async ensureSpace(bytes: number, what: string): Promise<void> {
    await checkFreeSpace(this.root, bytes, what);
  }
}

export async function checkFreeSpace(dir: string, bytes: number, what: string): Promise<void> {
  const st = await statfs(dir);
  const free = Number(st.bavail) * Number(st.bsize);
  if (free < bytes) {
    throw new UserError(
      `not enough free space in ${dir} for the ${what} stage: ${mib(free)} free, about ${mib(bytes)} needed`,
      'free some space or point --cache / --out at a larger disk',
    );
  }
}

export function mib(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
