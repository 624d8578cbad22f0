/**
 * File helpers for working inside a root filesystem tree that shares its
 * files (hard links) with a cached entry: a file is never written in place;
 * it is unlinked and created anew, so the cached original stays unchanged.
 * Paths inside the tree are resolved the way a chroot would (an absolute
 * symlink such as /lib -> usr/lib points inside the tree, not at the host).
 */
import { chmod, chown, copyFile, lstat, mkdir, readFile, readlink, rm, symlink, writeFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';

/** Resolves `rel` inside `root`, following symlinks of its parent folders within the tree. */
export async function resolveInRoot(root: string, rel: string): Promise<string> {
  const parts = rel.split('/').filter((p) => p && p !== '.');
  let cur = '';
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    if (part === '..') {
      cur = path.posix.dirname(cur === '' ? '/' : cur).replace(/^\/$/, '');
      continue;
    }
    const next = cur ? `${cur}/${part}` : part;
    if (i === parts.length - 1) return path.join(root, next);
    const st = await lstat(path.join(root, next)).catch(() => undefined);
    if (st?.isSymbolicLink()) {
      const target = await readlink(path.join(root, next));
      const base = target.startsWith('/') ? target.slice(1) : path.posix.join(cur, target);
      const resolved = await resolveInRoot(root, base);
      cur = path.relative(root, resolved);
    } else {
      cur = next;
    }
  }
  return path.join(root, cur);
}

export async function mkdirInRoot(root: string, rel: string, mode = 0o755): Promise<string> {
  const dir = await resolveInRoot(root, rel);
  await mkdir(dir, { recursive: true, mode });
  return dir;
}

export interface Ownership {
  mode: number;
  uid: number;
  gid: number;
}

/** Writes a new file at `rel` (replacing whatever was there) with the given content or source file. */
export async function writeFresh(root: string, rel: string, from: { content: string | Buffer } | { file: string }, own: Ownership): Promise<void> {
  const dir = await mkdirInRoot(root, path.posix.dirname(rel));
  const dest = path.join(dir, path.posix.basename(rel));
  await rm(dest, { force: true, recursive: true });
  if ('file' in from) await copyFile(from.file, dest);
  else await writeFile(dest, from.content);
  await chown(dest, own.uid, own.gid);
  await chmod(dest, own.mode);
}

export async function symlinkFresh(root: string, rel: string, target: string): Promise<void> {
  const dir = await mkdirInRoot(root, path.posix.dirname(rel));
  const dest = path.join(dir, path.posix.basename(rel));
  await rm(dest, { force: true, recursive: true });
  await symlink(target, dest);
}

/** A copy of `src` at `dest` whose files are hard links: cheap, and safe with writeFresh. */
export async function linkTree(src: string, dest: string): Promise<void> {
  await execa('cp', ['-a', '--link', src, dest]);
}

/** Every file under `dir` as a path relative to it (folders first, sorted). */
export async function listTree(dir: string): Promise<{ rel: string; kind: 'dir' | 'file' | 'link' }[]> {
  const out: { rel: string; kind: 'dir' | 'file' | 'link' }[] = [];
  const walk = async (rel: string) => {
    for (const name of (await readdir(path.join(dir, rel))).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const st = await lstat(path.join(dir, r));
      if (st.isDirectory()) {
        out.push({ rel: r, kind: 'dir' });
        await walk(r);
      } else if (st.isSymbolicLink()) out.push({ rel: r, kind: 'link' });
      else if (st.isFile()) out.push({ rel: r, kind: 'file' });
    }
  };
  await walk('');
  return out;
}

/** Mount points at or below `dir`, deepest first (from /proc/self/mountinfo). */
export async function mountsUnder(dir: string): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const prefix = path.resolve(dir);
  const points = info
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((p): p is string => !!p)
    .map((p) => p.replace(/\\040/g, ' '))
    .filter((p) => p === prefix || p.startsWith(`${prefix}/`));
  return [...new Set(points)].sort((a, b) => b.length - a.length);
}

/**
 * Removes a tree that a killed mmdebstrap may have left with /proc, /sys or
 * /dev mounted inside: those are unmounted first, so nothing outside the tree
 * is ever touched.
 */
export async function removeTree(dir: string): Promise<void> {
  for (const mp of await mountsUnder(dir)) {
    await execa('umount', ['-l', mp]).catch(() => {});
  }
  const left = await mountsUnder(dir);
  if (left.length) throw new Error(`cannot remove ${dir}: ${left[0]} is still mounted`);
  await rm(dir, { recursive: true, force: true });
}
