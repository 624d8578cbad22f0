/**
 * What the stage cache holds and how it is kept bounded (`cairn cache`,
 * `cairn cache prune`, and the prune every build ends with).
 *
 * Kinds of things in the cache, each with a size and a last use:
 * - stage entries (entries/<stage>-<key>/): last use from .use.json;
 * - the .deb pool (debs/<arch>/): one item per package name; when the pool
 *   holds several versions of a package, the older ones are superseded;
 * - unpacked packages the writers use (debs-unpacked/<name>/).
 *
 * Pruning removes superseded .debs first, then entries and unpacked
 * packages unused for longer than --older-than, then the least recently
 * used until the cache fits --max-size. It never removes what a running
 * build uses (inuse/<pid> of a live process) or the .debs of the newest
 * version of a package.
 */
import { lstat, readdir, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { UserError } from '../errors.js';
import { META, alive, readUse, type EntryMeta } from './cache.js';
import { removeTree } from './fsutil.js';
import { treeSize } from './hash.js';

/** A build prunes the cache to this size by itself unless told otherwise (cairn build --cache-max-size, CAIRN_CACHE_MAX_SIZE). */
export const DEFAULT_CACHE_MAX_BYTES = 10 * 1024 ** 3;

export interface CacheItem {
  /** entries/<name>, debs/<arch>/<file>, debs-unpacked/<name>: relative to the cache root. */
  rel: string;
  kind: 'stage' | 'deb' | 'unpacked';
  /** The stage (rootfs, system, squashfs, ...), "debs" or "unpacked". */
  group: string;
  arch: string;
  /** On disk: allocated blocks for entries made by this version (their apparent size for older ones). */
  bytes: number;
  lastUsed: Date;
  /** A .deb of a package the pool has a newer version of. */
  superseded?: boolean;
  /** Used by a build that is running now. */
  inUse?: boolean;
}

const DEB_ARCH: Record<string, string> = { amd64: 'amd64', arm64: 'arm64', armhf: 'armv7', all: 'all' };

/** The arch an entry is for, from what its key was computed from. */
function entryArch(meta: EntryMeta): string {
  let found: string | undefined;
  const visit = (v: unknown, depth: number): void => {
    if (found || depth > 4 || v === null || typeof v !== 'object') return;
    const o = v as Record<string, unknown>;
    if (typeof o.arch === 'string') found = o.arch;
    else for (const x of Object.values(o)) visit(x, depth + 1);
  };
  visit(meta.inputs, 0);
  return found ?? (meta.data as { arch?: string } | undefined)?.arch ?? '-';
}

/** Entry folder names that running builds use; the lists of builds that are gone are removed. */
export async function entriesInUse(root: string): Promise<Set<string>> {
  const used = new Set<string>();
  const dir = path.join(root, 'inuse');
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid <= 0) continue;
    if (pid !== process.pid && !alive(pid)) {
      await rm(path.join(dir, name), { force: true });
      continue;
    }
    const text = await readFile(path.join(dir, name), 'utf8').catch(() => '');
    for (const line of text.split('\n')) if (line) used.add(line);
  }
  return used;
}

/** Package name, version and arch of a pool file (name_version_arch.deb, the version %-escaped). */
export function parseDebName(file: string): { name: string; version: string; arch: string } | undefined {
  const m = /^([^_]+)_([^_]+)_([^_]+)\.deb$/.exec(file);
  return m ? { name: m[1]!, version: decodeURIComponent(m[2]!), arch: m[3]! } : undefined;
}

/** Everything the cache at `root` holds. */
export async function cacheItems(root: string): Promise<CacheItem[]> {
  const items: CacheItem[] = [];
  const inUse = await entriesInUse(root);
  for (const name of await readdir(path.join(root, 'entries')).catch(() => [] as string[])) {
    const dir = path.join(root, 'entries', name);
    let meta: EntryMeta | undefined;
    try {
      meta = JSON.parse(await readFile(path.join(dir, META), 'utf8')) as EntryMeta;
    } catch {
      meta = undefined;
    }
    const use = await readUse(dir);
    const st = await stat(dir);
    items.push({
      rel: `entries/${name}`,
      kind: 'stage',
      group: meta?.stage ?? name.replace(/-[0-9a-f]+$/, ''),
      arch: meta ? entryArch(meta) : '-',
      bytes: meta?.diskBytes ?? meta?.bytes ?? (await treeSize(dir)),
      lastUsed: new Date(use?.lastUsed ?? meta?.created ?? st.mtime),
      ...(inUse.has(name) ? { inUse: true } : {}),
    });
  }
  for (const debArch of await readdir(path.join(root, 'debs')).catch(() => [] as string[])) {
    const dir = path.join(root, 'debs', debArch);
    const debs: CacheItem[] = [];
    const newest = new Map<string, { item: CacheItem; mtime: number }>();
    for (const file of await readdir(dir).catch(() => [] as string[])) {
      const st = await lstat(path.join(dir, file));
      if (!st.isFile()) continue;
      const deb = parseDebName(file);
      // a build links every .deb of the pool into its root (which changes the file's ctime): the last use
      const item: CacheItem = { rel: `debs/${debArch}/${file}`, kind: 'deb', group: 'debs', arch: DEB_ARCH[debArch] ?? debArch, bytes: st.size, lastUsed: st.ctime };
      debs.push(item);
      // the newest file of a package is its current version: the archive published it last
      const pkg = deb ? `${deb.name}_${deb.arch}` : file;
      const prev = newest.get(pkg);
      if (!prev || prev.mtime < st.mtimeMs) newest.set(pkg, { item, mtime: st.mtimeMs });
    }
    const current = new Set([...newest.values()].map((v) => v.item));
    for (const d of debs) if (!current.has(d)) d.superseded = true;
    items.push(...debs);
  }
  for (const name of await readdir(path.join(root, 'debs-unpacked')).catch(() => [] as string[])) {
    const dir = path.join(root, 'debs-unpacked', name);
    const st = await stat(dir);
    if (!st.isDirectory()) continue;
    const arch = /_(amd64|arm64|armhf)_/.exec(name)?.[1];
    items.push({ rel: `debs-unpacked/${name}`, kind: 'unpacked', group: 'unpacked', arch: arch ? DEB_ARCH[arch]! : '-', bytes: await treeSize(dir), lastUsed: st.mtime });
  }
  return items;
}

export interface PruneOptions {
  /** Prune until the cache holds at most this many bytes. */
  maxBytes?: number;
  /** Remove entries unused for longer than this. */
  olderThanMs?: number;
  /** Entry folder names never removed (the running build's). */
  keep?: Iterable<string>;
  now?: Date;
  dryRun?: boolean;
}

export interface PruneResult {
  removed: CacheItem[];
  removedBytes: number;
  /** What the cache holds after pruning. */
  bytes: number;
  /** What could not be removed to reach maxBytes: in use, or current .debs. */
  keptOverLimit: boolean;
}

/** Removes superseded .debs, then what is too old, then the least recently used until the cache fits. */
export async function pruneCache(root: string, opts: PruneOptions): Promise<PruneResult> {
  const items = await cacheItems(root);
  const keep = new Set(opts.keep ?? []);
  const now = (opts.now ?? new Date()).getTime();
  const protectedItem = (i: CacheItem) => i.inUse === true || (i.kind === 'stage' && keep.has(path.basename(i.rel)));
  const removed: CacheItem[] = [];
  let bytes = items.reduce((a, i) => a + i.bytes, 0);
  const remove = async (i: CacheItem) => {
    if (!opts.dryRun) {
      if (i.kind === 'deb') await rm(path.join(root, i.rel), { force: true });
      else await removeTree(path.join(root, i.rel));
    }
    removed.push(i);
    bytes -= i.bytes;
  };
  for (const i of items.filter((x) => x.superseded)) await remove(i);
  const candidates = items.filter((i) => !i.superseded && i.kind !== 'deb' && !protectedItem(i)).sort((a, b) => a.lastUsed.getTime() - b.lastUsed.getTime());
  if (opts.olderThanMs !== undefined) {
    for (const i of candidates.filter((x) => now - x.lastUsed.getTime() > opts.olderThanMs!)) await remove(i);
  }
  if (opts.maxBytes !== undefined) {
    for (const i of candidates) {
      if (bytes <= opts.maxBytes) break;
      if (!removed.includes(i)) await remove(i);
    }
  }
  return { removed, removedBytes: removed.reduce((a, i) => a + i.bytes, 0), bytes, keptOverLimit: opts.maxBytes !== undefined && bytes > opts.maxBytes };
}

const UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, kb: 1000, kib: 1024, m: 1024 ** 2, mb: 1e6, mib: 1024 ** 2, g: 1024 ** 3, gb: 1e9, gib: 1024 ** 3, t: 1024 ** 4, tb: 1e12, tib: 1024 ** 4 };

/** "10G", "512M", "1.5GiB", "2GB", "1048576": bytes. K, M, G and T alone are binary. */
export function parseSize(text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new UserError(`${what} "${text}" is not a size`, 'write a number with an optional unit: 500M, 10G, 1.5GiB, 2GB');
  return Math.round(Number(m[1]) * unit);
}

const PERIODS: Record<string, number> = { s: 1000, m: 60_000, min: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** "30d", "12h", "2w", "90m": milliseconds. */
export function parseDuration(text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(s|min|m|h|d|w)\s*$/.exec(text);
  if (!m) throw new UserError(`${what} "${text}" is not a length of time`, 'write a number and a unit: 90m, 12h, 30d, 2w');
  return Math.round(Number(m[1]) * PERIODS[m[2]!]!);
}

export function formatBytes(n: number): string {
  if (n >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(1)} GiB`;
  if (n >= 1024 ** 2) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

function ago(d: Date, now: Date): string {
  const s = Math.max(0, Math.round((now.getTime() - d.getTime()) / 1000));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  if (s < 172_800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86_400)} days ago`;
}

/** `cairn cache`: size and last use per stage and arch, then the total. */
export function renderCacheReport(root: string, items: CacheItem[], now = new Date(), limit?: number): string {
  const groups = new Map<string, { group: string; arch: string; n: number; bytes: number; last: Date; superseded: number; inUse: number }>();
  for (const i of items) {
    const k = `${i.group}\0${i.arch}`;
    const g = groups.get(k) ?? { group: i.group, arch: i.arch, n: 0, bytes: 0, last: new Date(0), superseded: 0, inUse: 0 };
    g.n++;
    g.bytes += i.bytes;
    if (i.lastUsed > g.last) g.last = i.lastUsed;
    if (i.superseded) g.superseded += i.bytes;
    if (i.inUse) g.inUse++;
    groups.set(k, g);
  }
  const order = ['k3s', 'rootfs', 'system', 'squashfs', 'initramfs', 'init', 'output', 'debs', 'unpacked'];
  const rank = (g: string) => (order.includes(g) ? order.indexOf(g) : order.length);
  const rows = [...groups.values()].sort((a, b) => rank(a.group) - rank(b.group) || a.group.localeCompare(b.group) || a.arch.localeCompare(b.arch));
  const table = [
    ['WHAT', 'ARCH', 'ITEMS', 'SIZE', 'LAST USE', ''],
    ...rows.map((g) => [g.group, g.arch, String(g.n), formatBytes(g.bytes), ago(g.last, now), [g.superseded ? `${formatBytes(g.superseded)} superseded` : '', g.inUse ? `${g.inUse} in use` : ''].filter(Boolean).join(', ')]),
  ];
  const widths = table[0]!.map((_, c) => Math.max(...table.map((r) => r[c]!.length)));
  const lines = table.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd());
  const total = items.reduce((a, i) => a + i.bytes, 0);
  lines.push('');
  lines.push(`${root}: ${formatBytes(total)} in ${items.length} items${limit !== undefined ? ` (builds prune it to ${formatBytes(limit)})` : ''}`);
  return `${lines.join('\n')}\n`;
}

/** The size a build prunes the cache to: --cache-max-size, else $CAIRN_CACHE_MAX_SIZE, else the default; "off": no limit. */
export function cacheLimit(option?: string): number | undefined {
  const text = option ?? process.env.CAIRN_CACHE_MAX_SIZE;
  if (text === undefined || text === '') return DEFAULT_CACHE_MAX_BYTES;
  if (text === 'off') return undefined;
  return parseSize(text, option !== undefined ? '--cache-max-size' : 'CAIRN_CACHE_MAX_SIZE');
}
