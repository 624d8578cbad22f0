/**
 * What the output writers share: artifact names, running host tools with
 * an error that says which package installs them, the cache folder, and
 * file times fixed to SOURCE_DATE_EPOCH.
 */
import { createHash } from 'node:crypto';
import { constants as fsc, createReadStream } from 'node:fs';
import { copyFile, link, mkdir, readdir, rm, stat, utimes } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import { execa, type Options } from 'execa';
import { UserError } from '../../errors.js';
import { ARCH_TABLE } from '../arches.js';
import type { Arch, SystemArtifacts } from '../types.js';

/** `<name>-<version>-<arch>`: the stem every artifact of one system is named from. */
export function artifactStem(system: Pick<SystemArtifacts, 'name' | 'version' | 'arch'>): string {
  return `${system.name}-${system.version}-${system.arch}`;
}

/** Debian packages that provide the host tools the writers run. */
export const TOOL_PACKAGES: Record<string, string> = {
  'grub-mkrescue': 'grub-common',
  'grub-mkimage': 'grub-common',
  xorriso: 'xorriso',
  mformat: 'mtools',
  mcopy: 'mtools',
  mmd: 'mtools',
  'mkfs.vfat': 'dosfstools',
  sfdisk: 'fdisk',
  mke2fs: 'e2fsprogs',
  debugfs: 'e2fsprogs',
  'qemu-img': 'qemu-utils',
  mmdebstrap: 'mmdebstrap',
  dd: 'coreutils',
  zstd: 'zstd',
};

/** Runs a host tool; a missing tool is a UserError naming the package. */
export async function run(cmd: string, args: readonly string[], opts: Options = {}): Promise<string> {
  try {
    const r = await execa(cmd, args, { stdin: 'ignore', ...opts });
    return typeof r.stdout === 'string' ? r.stdout : '';
  } catch (err) {
    const e = err as { code?: string; stderr?: unknown; shortMessage?: string };
    if (e.code === 'ENOENT') {
      const pkg = TOOL_PACKAGES[cmd];
      throw new UserError(`${cmd} is not installed on this machine`, pkg ? `apt-get install ${pkg}` : `install ${cmd}`);
    }
    const stderr = typeof e.stderr === 'string' ? e.stderr.trim().split('\n').slice(-8).join('\n') : '';
    throw new Error(`${cmd} ${args.join(' ')} failed${stderr ? `:\n${stderr}` : ''}`, { cause: err });
  }
}

/** cairn's cache folder (~/.cache/cairn, $XDG_CACHE_HOME/cairn, or $CAIRN_CACHE). */
export function cacheDir(): string {
  if (process.env.CAIRN_CACHE) return path.resolve(process.env.CAIRN_CACHE);
  const xdg = process.env.XDG_CACHE_HOME;
  return path.join(xdg && xdg !== '' ? xdg : path.join(homedir(), '.cache'), 'cairn');
}

/** Sets the mtime (and atime) of a tree to SOURCE_DATE_EPOCH, for reproducible file systems. */
export async function clampTimes(dir: string, epoch: number): Promise<void> {
  const walk = async (p: string): Promise<void> => {
    const st = await stat(p);
    if (st.isDirectory()) for (const e of await readdir(p)) await walk(path.join(p, e));
    await utimes(p, epoch, epoch);
  };
  await walk(dir);
}

export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/**
 * The seed every id of a system's images is derived from (disk and
 * partition uuids, file system uuids and serials): its release record, which
 * names every input (spec, packages, k3s, squashfs checksum,
 * SOURCE_DATE_EPOCH). The same inputs give the same ids; another image,
 * other ids.
 */
export async function imageSeed(system: Pick<SystemArtifacts, 'name' | 'version' | 'arch' | 'release' | 'sourceDateEpoch'>): Promise<string> {
  return `${artifactStem(system)}/${system.sourceDateEpoch}/${await sha256File(system.release)}`;
}

/** A UUID derived from a seed: the same inputs give the same disk and file-system ids. */
export { stableUuid } from '../../boot/disk.js';

/** The kernel console arguments for each arch: serial and screen. */
export const consoleArgs: Record<Arch, string> = {
  amd64: ARCH_TABLE.amd64.console,
  arm64: ARCH_TABLE.arm64.console,
  armv7: ARCH_TABLE.armv7.console,
};

/**
 * The kernel command line of a boot: the mode, panic=10 (a kernel that
 * panics reboots, so the bootloader's try count and fallback take over),
 * the arch's consoles, the spec's own arguments.
 */
export function kernelArgs(mode: 'state' | 'live' | 'net', arch: Arch, cmdline?: string): string {
  return joinArgs(`cairn.mode=${mode}`, 'panic=10', consoleArgs[arch], cmdline);
}

export function joinArgs(...parts: (string | undefined)[]): string {
  return parts
    .filter((p): p is string => !!p && p.trim() !== '')
    .map((p) => p.trim())
    .join(' ');
}

/** Places a (large, read-only) input file in a tree: a hard link when possible, else a copy. */
export async function placeFile(src: string, dest: string): Promise<void> {
  await mkdir(path.dirname(dest), { recursive: true });
  await rm(dest, { force: true });
  try {
    await link(src, dest);
  } catch {
    await copyFile(src, dest);
  }
}

/** Copies an input into the output folder (a reflink where the file system can), never linking into the cache. */
export async function copyOut(src: string, dest: string): Promise<void> {
  await mkdir(path.dirname(dest), { recursive: true });
  await rm(dest, { force: true });
  await copyFile(src, dest, fsc.COPYFILE_FICLONE);
}
