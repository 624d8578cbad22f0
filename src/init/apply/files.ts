/**
 * Writing files on the node: atomically (a temporary file renamed into
 * place), with owner and mode, owners looked up in the node's own
 * /etc/passwd and /etc/group.
 */
import { closeSync, fchmodSync, fchownSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { decodeContent } from '../../config/write-files.js';
import type { WriteFile } from '../../config/types.js';

interface Account {
  name: string;
  id: number;
  gid: number;
}

function readAccounts(root: string, file: 'passwd' | 'group'): Account[] {
  try {
    return readFileSync(join(root, 'etc', file), 'utf8')
      .split('\n')
      .filter((l) => l && !l.startsWith('#'))
      .map((l) => l.split(':'))
      .map((f) => ({ name: f[0]!, id: Number(f[2]), gid: Number(f[3] ?? f[2]) }));
  } catch {
    return [];
  }
}

/** `user`, `user:group`, or numeric ids, resolved against the node's account files. */
export function resolveOwner(root: string, owner: string | undefined): { uid: number; gid: number } {
  const [user = 'root', group] = (owner ?? 'root:root').split(':');
  const users = readAccounts(root, 'passwd');
  const groups = readAccounts(root, 'group');
  const u = /^\d+$/.test(user) ? { id: Number(user), gid: Number(user) } : users.find((a) => a.name === user);
  if (!u) throw new Error(`owner "${user}" is not a user on this node`);
  if (group === undefined) return { uid: u.id, gid: u.gid };
  const g = /^\d+$/.test(group) ? { id: Number(group) } : groups.find((a) => a.name === group);
  if (!g) throw new Error(`group "${group}" is not a group on this node`);
  return { uid: u.id, gid: g.id };
}

/** Flushes a file or folder to the disk (a folder: so that a rename in it survives a power cut). */
export function fsyncPath(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes a file so that readers see the old content or the new one, never a
 * part, also across a power cut: the new content is flushed before it is
 * renamed into place, and the rename is flushed after.
 */
export function writeFileAtomic(path: string, data: string | Buffer, opts: { mode?: number; uid?: number; gid?: number } = {}): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.${basename(path)}.cairn-tmp`);
  try {
    const fd = openSync(tmp, 'w', opts.mode ?? 0o644);
    try {
      writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
      fchmodSync(fd, opts.mode ?? 0o644);
      if (opts.uid !== undefined && process.getuid?.() === 0) fchownSync(fd, opts.uid, opts.gid ?? opts.uid);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
    fsyncPath(dirname(path));
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/**
 * Applies write_files; returns the problems (one per file that could not be
 * written). The files with cloud-init's `defer` are left for a second call
 * with `deferred` (after users are made). `append` adds the content to the
 * end of the file, once: a file that already ends with it is left as it is
 * (the config applies at every boot, cloud-init's once per instance).
 */
export function applyWriteFiles(root: string, files: WriteFile[], opts: { deferred?: boolean } = {}): string[] {
  const problems: string[] = [];
  for (const f of files) {
    if (Boolean(f.defer) !== Boolean(opts.deferred)) continue;
    try {
      let data = decodeContent(f.content ?? '', f.encoding);
      const { uid, gid } = resolveOwner(root, f.owner);
      const mode = parseInt(f.permissions ?? '0644', 8);
      if (f.append) {
        let existing: Buffer | undefined;
        try {
          existing = readFileSync(join(root, f.path));
        } catch {
          existing = undefined;
        }
        if (existing) {
          if (existing.subarray(existing.length - data.length).equals(data) && data.length > 0) continue;
          data = Buffer.concat([existing, data]);
        }
      }
      writeFileAtomic(join(root, f.path), data, { mode, uid, gid });
    } catch (e) {
      problems.push(`${f.path}: ${(e as Error).message}`);
    }
  }
  return problems;
}
