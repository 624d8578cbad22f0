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
 * a half-written entry. Before an entry is used it is checked against
 * meta.json: its content is hashed again when its files are not exactly as
 * they were when last checked (name, size, modification time, inode: the
 * fingerprint in .use.json); a corrupt entry is removed and rebuilt.
 *
 *   <root>/entries/<stage>-<key>/.use.json   last use, and that fingerprint
 *   <root>/inuse/<pid>                       the entries a running build uses (cache-admin.ts never prunes them)
 */
import { createHash } from 'node:crypto';
import { lstat, mkdir, readdir, readFile, rename, rm, writeFile, statfs } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import { UserError } from '../errors.js';
import { hashTree } from './hash.js';
import { removeTree } from './fsutil.js';

export const META = 'meta.json';
/** Last use and the fingerprint of the files when last checked; not part of the entry's content. */
export const USE = '.use.json';

export interface EntryUse {
  lastUsed: string;
  fingerprint: string;
}

/** What a file tree looks like to lstat: names, types, sizes, times, inodes (no content read). */
export async function treeFingerprint(root: string, skip: string[] = [META, USE]): Promise<string> {
  const h = createHash('sha256');
  const walk = async (rel: string): Promise<void> => {
    for (const name of (await readdir(path.join(root, rel))).sort()) {
      if (rel === '' && (skip.includes(name) || name.startsWith(`${USE}.`))) continue;
      const r = rel ? `${rel}/${name}` : name;
      const st = await lstat(path.join(root, r), { bigint: true });
      h.update(`${r}\0${st.mode}\0${st.size}\0${st.mtimeNs}\0${st.ino}\0${st.uid}:${st.gid}\n`);
      if (st.isDirectory()) await walk(r);
    }
  };
  await walk('');
  return h.digest('hex');
}

export async function readUse(dir: string): Promise<EntryUse | undefined> {
  try {
    const u = JSON.parse(await readFile(path.join(dir, USE), 'utf8')) as EntryUse;
    return typeof u.lastUsed === 'string' && typeof u.fingerprint === 'string' ? u : undefined;
  } catch {
    return undefined;
  }
}

async function writeUse(dir: string, use: EntryUse): Promise<void> {
  const tmp = path.join(dir, `${USE}.${process.pid}`);
  await writeFile(tmp, `${JSON.stringify(use)}\n`);
  await rename(tmp, path.join(dir, USE));
}

export interface EntryMeta<D = unknown> {
  stage: string;
  key: string;
  /** What the key was computed from, for people reading the cache. */
  inputs: unknown;
  created: string;
  /** hashTree of the entry without meta.json. */
  sha256: string;
  bytes: number;
  /** Bytes it takes on disk (allocated blocks: a sparse disk image counts what it holds); what pruning counts. */
  diskBytes?: number;
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
  /** The entries this build used (their folder names), in <root>/inuse/<pid>. */
  private readonly used = new Set<string>();

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

  /** Removes this build's private entries (only with reuse off) and its in-use list. */
  async close(): Promise<void> {
    if (!this.reuse) await rm(this.entriesDir, { recursive: true, force: true });
    await rm(this.inUseFile(), { force: true });
  }

  inUseFile(pid = process.pid): string {
    return path.join(this.root, 'inuse', String(pid));
  }

  /** The entries this build has used so far. */
  usedEntries(): string[] {
    return [...this.used];
  }

  /** Records a use: the entry's last use, its fingerprint, and this build's in-use list. */
  private async markUsed(dir: string, fingerprint: string): Promise<void> {
    await writeUse(dir, { lastUsed: new Date().toISOString(), fingerprint }).catch(() => undefined);
    if (!this.reuse || this.used.has(path.basename(dir))) return;
    this.used.add(path.basename(dir));
    await mkdir(path.dirname(this.inUseFile()), { recursive: true });
    await writeFile(this.inUseFile(), `${[...this.used].join('\n')}\n`);
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
    // Unchanged since it was last checked (same files, sizes, times, inodes): not read again.
    const fingerprint = await treeFingerprint(dir);
    if ((await readUse(dir))?.fingerprint !== fingerprint || meta.key !== key) {
      const summary = await hashTree(dir, [META, USE]);
      if (summary.sha256 !== meta.sha256 || meta.key !== key) {
        this.log(`cache: ${stage} entry ${key.slice(0, 12)} is corrupt (checksum ${summary.sha256.slice(0, 12)}, expected ${String(meta.sha256).slice(0, 12)}); rebuilding it`);
        await rm(dir, { recursive: true, force: true });
        return undefined;
      }
    }
    await this.markUsed(dir, fingerprint);
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
      const summary = await hashTree(tmp, [META, USE]);
      const meta: EntryMeta<D> = {
        stage,
        key,
        inputs,
        created: new Date().toISOString(),
        sha256: summary.sha256,
        bytes: summary.bytes,
        diskBytes: await diskUsage(tmp),
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
      await this.markUsed(dir, await treeFingerprint(dir));
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

/** Allocated bytes of the files under a folder (hard links counted once). */
export async function diskUsage(root: string): Promise<number> {
  const seen = new Set<number>();
  let total = 0;
  const walk = async (dir: string): Promise<void> => {
    for (const name of await readdir(dir)) {
      const st = await lstat(path.join(dir, name));
      if (st.isDirectory()) await walk(path.join(dir, name));
      else if (!seen.has(st.ino)) {
        seen.add(st.ino);
        total += st.blocks * 512;
      }
    }
  };
  await walk(root);
  return total;
}

/** Whether a process is running (a build that holds a folder of the cache). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
