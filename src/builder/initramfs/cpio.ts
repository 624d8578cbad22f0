/**
 * A writer for the cpio "newc" format (070701), the one the Linux kernel
 * unpacks as an initramfs. Pure: entries in, bytes out.
 *
 * Determinism is the caller's choice of inputs plus two rules here: entries
 * are written in the order given after sorting by path (so a folder always
 * precedes what it holds), and inode numbers are assigned in that order.
 */

export type CpioEntry =
  | { path: string; type: 'dir'; mode: number }
  | { path: string; type: 'file'; mode: number; data: Buffer }
  | { path: string; type: 'symlink'; target: string }
  | { path: string; type: 'char' | 'block'; mode: number; major: number; minor: number };

export interface CpioOptions {
  /** mtime of every entry (seconds since the epoch). */
  mtime: number;
  uid?: number;
  gid?: number;
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new RangeError(`cpio field out of range: ${n}`);
  return n.toString(16).padStart(8, '0');
}

function pad4(len: number): Buffer {
  const rest = (4 - (len % 4)) % 4;
  return Buffer.alloc(rest);
}

/** Normalises an archive path: no leading "/" or "./", no trailing "/", no "." or ".." parts. */
export function normalisePath(p: string): string {
  const parts = p.split('/').filter((s) => s !== '' && s !== '.');
  if (parts.length === 0) throw new Error(`cpio: empty path "${p}"`);
  if (parts.includes('..')) throw new Error(`cpio: path "${p}" leaves the archive`);
  return parts.join('/');
}

function header(
  ino: number,
  mode: number,
  uid: number,
  gid: number,
  nlink: number,
  mtime: number,
  size: number,
  rdevMajor: number,
  rdevMinor: number,
  nameSize: number,
): Buffer {
  const fields = [ino, mode, uid, gid, nlink, mtime, size, 0, 0, rdevMajor, rdevMinor, nameSize, 0];
  return Buffer.from('070701' + fields.map(hex8).join(''), 'ascii');
}

function record(h: Buffer, name: string, data: Buffer): Buffer[] {
  const nameBuf = Buffer.from(name + '\0', 'utf8');
  return [h, nameBuf, pad4(h.length + nameBuf.length), data, pad4(data.length)];
}

/** Compares paths byte-wise (as C strcmp does), so the order never depends on the locale. */
export function comparePaths(a: string, b: string): number {
  const ba = Buffer.from(a, 'utf8');
  const bb = Buffer.from(b, 'utf8');
  return Buffer.compare(ba, bb);
}

/**
 * Writes a complete newc archive (with its TRAILER!!! record). Paths are
 * normalised; duplicates are an error; every parent folder must be listed.
 */
export function writeCpio(entries: CpioEntry[], opts: CpioOptions): Buffer {
  const uid = opts.uid ?? 0;
  const gid = opts.gid ?? 0;
  const normalised = entries.map((e) => ({ ...e, path: normalisePath(e.path) }));
  normalised.sort((a, b) => comparePaths(a.path, b.path));
  const seen = new Set<string>();
  for (const e of normalised) {
    if (seen.has(e.path)) throw new Error(`cpio: duplicate entry "${e.path}"`);
    const slash = e.path.lastIndexOf('/');
    if (slash > 0 && !seen.has(e.path.slice(0, slash))) {
      throw new Error(`cpio: "${e.path}" is listed without its folder "${e.path.slice(0, slash)}"`);
    }
    seen.add(e.path);
  }
  const chunks: Buffer[] = [];
  let ino = 1;
  for (const e of normalised) {
    const nameSize = Buffer.byteLength(e.path, 'utf8') + 1;
    switch (e.type) {
      case 'dir':
        chunks.push(...record(header(ino++, S_IFDIR | (e.mode & 0o7777), uid, gid, 2, opts.mtime, 0, 0, 0, nameSize), e.path, Buffer.alloc(0)));
        break;
      case 'file':
        chunks.push(
          ...record(header(ino++, S_IFREG | (e.mode & 0o7777), uid, gid, 1, opts.mtime, e.data.length, 0, 0, nameSize), e.path, e.data),
        );
        break;
      case 'symlink': {
        const target = Buffer.from(e.target, 'utf8');
        chunks.push(...record(header(ino++, S_IFLNK | 0o777, uid, gid, 1, opts.mtime, target.length, 0, 0, nameSize), e.path, target));
        break;
      }
      case 'char':
      case 'block': {
        const kind = e.type === 'char' ? S_IFCHR : S_IFBLK;
        chunks.push(
          ...record(header(ino++, kind | (e.mode & 0o7777), uid, gid, 1, opts.mtime, 0, e.major, e.minor, nameSize), e.path, Buffer.alloc(0)),
        );
        break;
      }
    }
  }
  chunks.push(...record(header(0, 0, 0, 0, 1, 0, 0, 0, 0, 'TRAILER!!!'.length + 1), 'TRAILER!!!', Buffer.alloc(0)));
  return Buffer.concat(chunks);
}
