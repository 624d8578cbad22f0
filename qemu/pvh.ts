/**
 * The fast x86 direct-kernel path: QEMU boots an uncompressed ELF vmlinux
 * with a PVH entry note straight into 64-bit code, skipping the bzImage's
 * self-decompression (most of a TCG boot with an xz payload). The vmlinux
 * is cut out of the bzImage's payload and cached beside the kernel, named
 * by the bzImage's hash.
 *
 * Layout (Documentation/arch/x86/boot.rst): setup_sects at 0x1f1, "HdrS" at
 * 0x202, payload_offset and payload_length at 0x248/0x24c, relative to the
 * protected-mode code at (setup_sects + 1) * 512. The payload's last four
 * bytes are the uncompressed size (little endian).
 */
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { access, mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { execa } from 'execa';

export type Compression = 'gzip' | 'xz' | 'zstd' | 'lz4' | 'lzma' | 'bzip2';

export interface Payload {
  /** Byte offset of the compressed kernel in the bzImage. */
  offset: number;
  /** Its length without the trailing size word. */
  length: number;
  compression: Compression;
  /** Size of the decompressed vmlinux. */
  size: number;
}

const MAGICS: [Compression, number[]][] = [
  ['gzip', [0x1f, 0x8b]],
  ['xz', [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]],
  ['zstd', [0x28, 0xb5, 0x2f, 0xfd]],
  ['lz4', [0x02, 0x21, 0x4c, 0x18]],
  ['bzip2', [0x42, 0x5a, 0x68]],
  ['lzma', [0x5d, 0x00, 0x00]],
];

/** Finds the compressed vmlinux in a bzImage; throws with the reason when it is not one. */
export function bzImagePayload(image: Uint8Array): Payload {
  const buf = Buffer.from(image.buffer, image.byteOffset, image.byteLength);
  if (buf.length < 0x260 || buf.toString('latin1', 0x202, 0x206) !== 'HdrS') throw new Error('not an x86 bzImage (no HdrS header)');
  const version = buf.readUInt16LE(0x206);
  if (version < 0x208) throw new Error(`boot protocol ${version.toString(16)} is older than 2.08 and has no payload fields`);
  const setupSects = buf[0x1f1] || 4;
  const start = (setupSects + 1) * 512;
  const offset = start + buf.readUInt32LE(0x248);
  const total = buf.readUInt32LE(0x24c);
  if (total < 8 || offset + total > buf.length) throw new Error('the bzImage payload lies outside the file');
  const head = buf.subarray(offset, offset + 8);
  const found = MAGICS.find(([, m]) => m.every((b, i) => head[i] === b));
  if (!found) throw new Error(`unknown payload compression (starts ${head.toString('hex')})`);
  return { offset, length: total - 4, compression: found[0], size: buf.readUInt32LE(offset + total - 4) };
}

const TOOLS: Record<Exclude<Compression, 'gzip'>, [string, string[]]> = {
  xz: ['xz', ['-dc', '--single-stream']],
  lzma: ['xz', ['--format=lzma', '-dc']],
  zstd: ['zstd', ['-dcq']],
  lz4: ['lz4', ['-dc']],
  bzip2: ['bzip2', ['-dc']],
};

async function decompress(data: Buffer, compression: Compression): Promise<Buffer> {
  if (compression === 'gzip') return gunzipSync(data);
  const [tool, args] = TOOLS[compression];
  try {
    const r = await execa(tool, args, { input: data, encoding: 'buffer', stripFinalNewline: false, maxBuffer: 1024 * 1024 * 1024 });
    return Buffer.from(r.stdout);
  } catch (e) {
    throw new Error(`${tool} could not decompress the kernel: ${(e as Error).message.split('\n')[0]}`);
  }
}

/** Whether an ELF file carries the Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) that QEMU's -kernel needs. */
export function hasPvhNote(elf: Uint8Array): boolean {
  const b = Buffer.from(elf.buffer, elf.byteOffset, elf.byteLength);
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46) return false;
  const is64 = b[4] === 2;
  if (b[5] !== 1) return false; // little endian only (x86)
  const phoff = is64 ? Number(b.readBigUInt64LE(0x20)) : b.readUInt32LE(0x1c);
  const phentsize = b.readUInt16LE(is64 ? 0x36 : 0x2a);
  const phnum = b.readUInt16LE(is64 ? 0x38 : 0x2c);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (ph + phentsize > b.length || b.readUInt32LE(ph) !== 4 /* PT_NOTE */) continue;
    const off = is64 ? Number(b.readBigUInt64LE(ph + 8)) : b.readUInt32LE(ph + 4);
    const size = is64 ? Number(b.readBigUInt64LE(ph + 32)) : b.readUInt32LE(ph + 16);
    let p = off;
    while (p + 12 <= Math.min(off + size, b.length)) {
      const namesz = b.readUInt32LE(p);
      const descsz = b.readUInt32LE(p + 4);
      const type = b.readUInt32LE(p + 8);
      const name = b.toString('latin1', p + 12, p + 12 + Math.max(0, namesz - 1));
      if (name === 'Xen' && type === 18) return true;
      p += 12 + align4(namesz) + align4(descsz);
    }
  }
  return false;
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

/** Decompresses a bzImage's vmlinux in memory and checks it. */
export async function extractVmlinux(bzImage: Uint8Array): Promise<Buffer> {
  const p = bzImagePayload(bzImage);
  const data = Buffer.from(bzImage.buffer, bzImage.byteOffset + p.offset, p.length);
  const elf = await decompress(data, p.compression);
  if (elf.length !== p.size) throw new Error(`decompressed kernel is ${elf.length} bytes, the bzImage says ${p.size}`);
  if (elf.readUInt32BE(0) !== 0x7f454c46) throw new Error('the bzImage payload is not an ELF file');
  return elf;
}

async function writable(dir: string): Promise<boolean> {
  try {
    await access(dir, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** Where extracted kernels go when the kernel's own folder is read-only. */
export function fallbackCacheDir(): string {
  const base = process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache');
  return path.join(base, 'cairn', 'qemu');
}

/**
 * The PVH-bootable vmlinux for a bzImage: `vmlinux-<hash>` beside the kernel
 * (or in ~/.cache/cairn/qemu when that folder is read-only), extracted once.
 * Returns undefined when the kernel has no PVH entry (boot the bzImage then).
 */
export async function pvhKernel(bzImagePath: string): Promise<string | undefined> {
  const image = await readFile(bzImagePath);
  const hash = createHash('sha256').update(image).digest('hex').slice(0, 16);
  const dir = (await writable(path.dirname(bzImagePath))) ? path.dirname(bzImagePath) : fallbackCacheDir();
  const out = path.join(dir, `vmlinux-${hash}`);
  const noPvh = `${out}.no-pvh`;
  if (await exists(out)) return out;
  if (await exists(noPvh)) return undefined;
  await mkdir(dir, { recursive: true });
  const elf = await extractVmlinux(image);
  if (!hasPvhNote(elf)) {
    await writeFile(noPvh, '');
    return undefined;
  }
  const tmp = `${out}.${process.pid}.tmp`;
  try {
    await writeFile(tmp, elf);
    await rename(tmp, out);
  } finally {
    await rm(tmp, { force: true });
  }
  return out;
}

async function exists(file: string): Promise<boolean> {
  try {
    await (await open(file, 'r')).close();
    return true;
  } catch {
    return false;
  }
}
