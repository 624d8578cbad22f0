/**
 * Content hashes: of values (cache keys), of files, and of whole trees
 * (names, types, modes, owners, link targets and file contents), the last
 * being how a cached stage output is checked before it is used.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { Transform } from 'node:stream';
import { lstat, readdir, readlink } from 'node:fs/promises';
import path from 'node:path';

/** sha256 of a JSON value with sorted object keys, so key order never changes a hash. */
export function hashValue(value: unknown): string {
  return createHash('sha256').update(stableJson(value)).digest('hex');
}

export function stableJson(value: unknown): string {
  if (value === undefined) return 'null';
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(stableJson).join(',')}]`;
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj).filter((k) => obj[k] !== undefined).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${stableJson(obj[k])}`).join(',')}}`;
}

export async function hashFile(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

export interface TreeSummary {
  sha256: string;
  /** Bytes in regular files (hard links counted once per name). */
  bytes: number;
  entries: number;
}

/**
 * Hashes a tree: every entry's relative path, type, mode, owner, size, link
 * target and content, in sorted order. `skip` names top-level entries left out.
 */
export async function hashTree(root: string, skip: string[] = []): Promise<TreeSummary> {
  const h = createHash('sha256');
  let bytes = 0;
  let entries = 0;
  const walk = async (rel: string): Promise<void> => {
    const dir = path.join(root, rel);
    const names = (await readdir(dir)).sort();
    for (const name of names) {
      if (rel === '' && skip.includes(name)) continue;
      const relPath = rel ? `${rel}/${name}` : name;
      const full = path.join(root, relPath);
      const st = await lstat(full);
      entries++;
      const head = `${relPath}\0${st.mode.toString(8)}\0${st.uid}:${st.gid}\0`;
      if (st.isSymbolicLink()) {
        h.update(`${head}L${await readlink(full)}\n`);
      } else if (st.isDirectory()) {
        h.update(`${head}D\n`);
        await walk(relPath);
      } else if (st.isFile()) {
        h.update(`${head}F${st.size}\0${await hashFile(full)}\n`);
        bytes += st.size;
      } else {
        h.update(`${head}S${st.rdev}\n`);
      }
    }
  };
  await walk('');
  return { sha256: h.digest('hex'), bytes, entries };
}

/** Bytes used by regular files under a folder (apparent size, hard links counted once). */
export async function treeSize(root: string): Promise<number> {
  const seen = new Set<string>();
  let total = 0;
  const walk = async (dir: string): Promise<void> => {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return;
    }
    for (const name of names) {
      const full = path.join(dir, name);
      const st = await lstat(full);
      if (st.isDirectory()) await walk(full);
      else if (st.isFile()) {
        const id = `${st.dev}:${st.ino}`;
        if (seen.has(id)) continue;
        seen.add(id);
        total += st.size;
      }
    }
  };
  const st = await lstat(root).catch(() => undefined);
  if (!st) return 0;
  if (st.isFile()) return st.size;
  await walk(root);
  return total;
}

/**
 * A pass-through stream that hashes (sha256) and counts what goes through
 * it; `limit` fails the stream with the error it returns once more than that
 * many bytes arrived.
 */
export function hashingStream(limit?: { bytes: number; error: () => Error }): { stream: Transform; hex: () => string; bytes: () => number } {
  const hash = createHash('sha256');
  let bytes = 0;
  const stream = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      bytes += chunk.length;
      if (limit && bytes > limit.bytes) return cb(limit.error());
      hash.update(chunk);
      cb(null, chunk);
    },
  });
  return { stream, hex: () => hash.digest('hex'), bytes: () => bytes };
}
