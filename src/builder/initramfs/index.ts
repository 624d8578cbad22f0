/**
 * The initramfs stage: a compressed cpio archive holding busybox, the kernel
 * modules the first stage needs, and /init (see init-script.ts).
 *
 * Deterministic: entries sorted, every mtime SOURCE_DATE_EPOCH, owner 0:0,
 * modules unpacked and the whole archive compressed once (zstd -19 single
 * threaded, or gzip -9 through zlib), so two builds from the same root give
 * the same bytes.
 */
import { constants as fsc } from 'node:fs';
import { access, lstat, mkdir, readFile, readdir, readlink, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { gunzipSync, gzipSync, constants as zc } from 'node:zlib';
import { execa } from 'execa';
import { UserError } from '../../errors.js';
import type { Arch } from '../types.js';
import { KEXEC_ARCHES } from '../../boot/loader-args.js';
import { type CpioEntry, writeCpio } from './cpio.js';
import { renderInitScript, renderUdhcpcScript } from './init-script.js';
import {
  ARCH_MODULES,
  BASE_MODULES,
  alwaysLoaded,
  REQUIRED_MODULES,
  type ModuleIndex,
  type ModuleSelection,
  depmodOrder,
  dropMissing,
  makeIndex,
  modinfoDepends,
  moduleName,
  renderModulesAlias,
  renderModulesDep,
  selectModules,
  unpackedPath,
} from './modules.js';

export { renderInitScript } from './init-script.js';
export { BASE_MODULES, ARCH_MODULES } from './modules.js';

export type InitramfsCompression = 'zstd' | 'gzip';

export interface InitramfsOptions {
  /** The unpacked root filesystem (busybox and /lib/modules/<release> come from here). */
  rootfs: string;
  kernelRelease: string;
  arch: Arch;
  /** The file to write (replaced atomically). */
  out: string;
  sourceDateEpoch: number;
  /** Modules to add to the built-in list (names or aliases). */
  extraModules?: readonly string[];
  /** Default zstd. */
  compression?: InitramfsCompression;
  /** zstd level, 1-19 (default 19: the initramfs is read once per boot, from slow media). */
  level?: number;
}

/** Applets linked into /bin (busybox itself is /bin/busybox). The rescue shell can add the rest with `busybox --install -s`. */
export const APPLETS: readonly string[] = [
  '[', 'ash', 'awk', 'basename', 'cat', 'chroot', 'cp', 'cttyhack', 'cut', 'dd', 'df', 'dmesg', 'du',
  'date', 'echo', 'env', 'false', 'fdisk', 'find', 'findfs', 'free', 'grep', 'halt', 'head', 'hexdump', 'ip', 'kill',
  'less', 'ln', 'losetup', 'ls', 'lsmod', 'mdev', 'mkdir', 'mknod', 'modinfo', 'modprobe', 'insmod', 'rmmod',
  'mount', 'mv', 'ping', 'poweroff', 'printf', 'ps', 'readlink', 'reboot', 'rm', 'rmdir', 'sed',
  'setsid', 'sh', 'sha256sum', 'sleep', 'sort', 'stat', 'switch_root', 'sync', 'tail', 'tee', 'test', 'touch',
  'tr', 'true', 'udhcpc', 'umount', 'uname', 'vi', 'watchdog', 'wc', 'wget', 'xargs',
];

/** Applets that tools look for in /sbin. */
/** The world-usable nodes, with the modes the kernel's devtmpfs gives them (mdev.conf: name uid:gid mode). */
export const MDEV_CONF = ['null', 'zero', 'full', 'random', 'urandom'].map((n) => `${n} 0:0 666\n`).join('') + 'tty 0:5 666\nptmx 0:5 666\n';

const SBIN_APPLETS = new Set(['modprobe', 'insmod', 'rmmod', 'lsmod', 'mdev', 'switch_root', 'reboot', 'poweroff', 'halt', 'findfs']);

/** Builds the initramfs of one system version. */
export async function buildInitramfs(opts: InitramfsOptions): Promise<void> {
  const { rootfs, kernelRelease, arch, out, sourceDateEpoch } = opts;
  if (!Number.isInteger(sourceDateEpoch) || sourceDateEpoch < 0) {
    throw new UserError(`SOURCE_DATE_EPOCH must be a whole number of seconds, not ${sourceDateEpoch}`);
  }
  const busybox = await findBusybox(rootfs);
  const moduleDir = await findModuleDir(rootfs, kernelRelease);
  const index = await loadModuleIndex(moduleDir);
  const wanted = [...BASE_MODULES, ...ARCH_MODULES[arch], ...(opts.extraModules ?? [])];
  const selection = selectModules(wanted, index);
  const have = new Set([...selection.load, ...selection.builtin]);
  const lacking = REQUIRED_MODULES.filter((m) => !have.has(m));
  if (lacking.length > 0) {
    throw new UserError(
      `kernel ${kernelRelease} in ${rootfs} has no ${lacking.join(', ')} (neither a module nor built in): the first stage cannot mount the system`,
      'use a Debian kernel package (linux-image-*) in the image spec, or a kernel built with squashfs, overlay and loop',
    );
  }

  let e2fsck: CpioEntry[];
  try {
    e2fsck = await programWithLibraries(rootfs, 'usr/sbin/e2fsck', 'sbin/e2fsck', arch);
  } catch (err) {
    throw new UserError(
      `the first stage checks CAIRN_STATE with e2fsck, and it cannot be taken from ${rootfs}: ${(err as Error).message}`,
      "add e2fsprogs to the image spec's packages (cairn's base packages have it)",
    );
  }

  // kexec (kexec-tools): boards whose loader does not count tries start a trial with it (src/boot/loader.ts)
  const kexec = KEXEC_ARCHES.includes(arch) && (await resolveInRoot(rootfs, 'usr/sbin/kexec').then((p) => (p ? exists(p) : false)))
    ? await programWithLibraries(rootfs, 'usr/sbin/kexec', 'sbin/kexec', arch)
    : [];

  const entries: CpioEntry[] = [];
  const dir = (p: string, mode = 0o755): void => {
    entries.push({ path: p, type: 'dir', mode });
  };
  for (const d of ['bin', 'dev', 'etc', 'etc/cairn-initramfs', 'lib', 'lib/modules', 'mnt', 'proc', 'root', 'run', 'sbin', 'sys', 'usr', 'usr/bin', 'usr/sbin', 'usr/share', 'usr/share/udhcpc']) dir(d);
  dir('tmp', 0o1777);
  entries.push({ path: 'dev/console', type: 'char', mode: 0o600, major: 5, minor: 1 });
  entries.push({ path: 'dev/null', type: 'char', mode: 0o666, major: 1, minor: 3 });
  entries.push({ path: 'init', type: 'file', mode: 0o755, data: Buffer.from(renderInitScript()) });
  // mdev's modes, for a kernel without devtmpfs (mdev's default, 0660 root:root, locks everyone else out of /dev/null)
  entries.push({ path: 'etc/mdev.conf', type: 'file', mode: 0o644, data: Buffer.from(MDEV_CONF) });
  entries.push({ path: 'bin/busybox', type: 'file', mode: 0o755, data: busybox });
  for (const applet of APPLETS) {
    entries.push(
      SBIN_APPLETS.has(applet)
        ? { path: `sbin/${applet}`, type: 'symlink', target: '../bin/busybox' }
        : { path: `bin/${applet}`, type: 'symlink', target: 'busybox' },
    );
  }
  entries.push({ path: 'etc/cairn-initramfs/udhcpc.script', type: 'file', mode: 0o755, data: Buffer.from(renderUdhcpcScript()) });
  entries.push({ path: 'usr/share/udhcpc/default.script', type: 'symlink', target: '../../../etc/cairn-initramfs/udhcpc.script' });
  entries.push({ path: 'etc/cairn-initramfs/modules', type: 'file', mode: 0o644, data: Buffer.from(selection.load.map((m) => `${m}\n`).join('')) });
  // with it, the first stage loads these and the drivers its devices ask for; without it, the whole list
  const always = alwaysLoaded(selection, index, opts.extraModules);
  if (always.length) entries.push({ path: 'etc/cairn-initramfs/modules-always', type: 'file', mode: 0o644, data: Buffer.from(always.map((m) => `${m}\n`).join('')) });
  entries.push({
    path: 'etc/cairn-initramfs/release',
    type: 'file',
    mode: 0o644,
    data: Buffer.from(`KERNEL_RELEASE=${kernelRelease}\nARCH=${arch}\nSOURCE_DATE_EPOCH=${sourceDateEpoch}\n`),
  });
  entries.push({ path: 'etc/mtab', type: 'symlink', target: '../proc/mounts' });
  entries.push({ path: 'etc/e2fsck.conf', type: 'file', mode: 0o644, data: Buffer.from(E2FSCK_CONF) });
  for (const e of [...e2fsck, ...kexec]) {
    if (entries.some((x) => x.path === e.path)) continue;
    let d = path.posix.dirname(e.path);
    const parents: string[] = [];
    while (d !== '.' && !entries.some((x) => x.path === d) && !parents.includes(d)) {
      parents.unshift(d);
      d = path.posix.dirname(d);
    }
    for (const p of parents) dir(p);
    entries.push(e);
  }

  // modules and the index files modprobe reads
  const modRoot = `lib/modules/${kernelRelease}`;
  const dirs = new Set<string>([modRoot]);
  for (const file of selection.files) {
    let d = path.posix.dirname(unpackedPath(file));
    while (d !== '.' && d !== '') {
      dirs.add(`${modRoot}/${d}`);
      d = path.posix.dirname(d);
    }
  }
  for (const d of dirs) dir(d);
  for (const file of selection.files) {
    const data = await readModule(path.join(moduleDir, file));
    entries.push({ path: `${modRoot}/${unpackedPath(file)}`, type: 'file', mode: 0o644, data });
  }
  entries.push({ path: `${modRoot}/modules.dep`, type: 'file', mode: 0o644, data: Buffer.from(renderModulesDep(selection, index)) });
  entries.push({ path: `${modRoot}/modules.alias`, type: 'file', mode: 0o644, data: Buffer.from(renderModulesAlias(selection, index)) });
  const builtin = await readText(path.join(moduleDir, 'modules.builtin'));
  entries.push({ path: `${modRoot}/modules.builtin`, type: 'file', mode: 0o644, data: Buffer.from(builtin ?? '') });

  const cpio = writeCpio(entries, { mtime: sourceDateEpoch });
  const compressed = await compress(cpio, opts.compression ?? 'zstd', opts.level);
  await mkdir(path.dirname(out), { recursive: true });
  const tmp = `${out}.tmp-${process.pid}`;
  try {
    await writeFile(tmp, compressed);
    await rename(tmp, out);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** The selection the first stage of this root would get (for build records and tests). */
export async function initramfsModules(rootfs: string, kernelRelease: string, arch: Arch, extra: readonly string[] = []): Promise<ModuleSelection> {
  const index = await loadModuleIndex(await findModuleDir(rootfs, kernelRelease));
  return selectModules([...BASE_MODULES, ...ARCH_MODULES[arch], ...extra], index);
}

async function exists(p: string): Promise<boolean> {
  try {
    await access(p, fsc.F_OK);
    return true;
  } catch {
    return false;
  }
}

async function readText(p: string): Promise<string | undefined> {
  try {
    return await readFile(p, 'utf8');
  } catch {
    return undefined;
  }
}

/** Resolves a path inside a root the way the root itself would (absolute symlinks stay inside it). */
async function resolveInRoot(root: string, rel: string, depth = 0): Promise<string | undefined> {
  if (depth > 16) return undefined;
  const parts = rel.split('/').filter(Boolean);
  let cur = '';
  for (let i = 0; i < parts.length; i++) {
    const next = `${cur}/${parts[i]}`;
    let st;
    try {
      st = await lstat(path.join(root, next));
    } catch {
      return undefined;
    }
    if (st.isSymbolicLink()) {
      const target = await readlink(path.join(root, next));
      const base = target.startsWith('/') ? target : path.posix.join(cur || '/', target);
      return resolveInRoot(root, path.posix.join(path.posix.normalize(base), ...parts.slice(i + 1)), depth + 1);
    }
    cur = next;
  }
  return path.join(root, cur);
}

/** True when an ELF file asks for a program interpreter (that is, it is dynamically linked). */
export function elfIsDynamic(elf: Buffer): boolean {
  if (elf.length < 52 || elf.readUInt32BE(0) !== 0x7f454c46) throw new Error('not an ELF file');
  const is64 = elf[4] === 2;
  const le = elf[5] === 1;
  const u16 = (o: number): number => (le ? elf.readUInt16LE(o) : elf.readUInt16BE(o));
  const u32 = (o: number): number => (le ? elf.readUInt32LE(o) : elf.readUInt32BE(o));
  const phoff = is64 ? Number(le ? elf.readBigUInt64LE(0x20) : elf.readBigUInt64BE(0x20)) : u32(0x1c);
  const phentsize = u16(is64 ? 0x36 : 0x2a);
  const phnum = u16(is64 ? 0x38 : 0x2c);
  for (let i = 0; i < phnum; i++) {
    const off = phoff + i * phentsize;
    if (off + 4 > elf.length) break;
    if (u32(off) === 3) return true; // PT_INTERP
  }
  return false;
}

interface ElfInfo {
  /** PT_INTERP: the program interpreter (dynamic loader), if any */
  interp?: string;
  /** DT_NEEDED: the shared libraries it links against */
  needed: string[];
}

/** The program interpreter and the DT_NEEDED libraries of an ELF file (its dynamic section read through its load segments). */
export function elfLinks(elf: Buffer): ElfInfo {
  if (elf.length < 52 || elf.readUInt32BE(0) !== 0x7f454c46) throw new Error('not an ELF file');
  const is64 = elf[4] === 2;
  const le = elf[5] === 1;
  const u16 = (o: number): number => (le ? elf.readUInt16LE(o) : elf.readUInt16BE(o));
  const u32 = (o: number): number => (le ? elf.readUInt32LE(o) : elf.readUInt32BE(o));
  const word = (o: number): number => (is64 ? Number(le ? elf.readBigUInt64LE(o) : elf.readBigUInt64BE(o)) : u32(o));
  const phoff = word(is64 ? 0x20 : 0x1c);
  const phentsize = u16(is64 ? 0x36 : 0x2a);
  const phnum = u16(is64 ? 0x38 : 0x2c);
  const loads: { vaddr: number; offset: number; filesz: number }[] = [];
  let interp: string | undefined;
  let dynamic: { offset: number; size: number } | undefined;
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    const type = u32(ph);
    const offset = word(ph + (is64 ? 0x08 : 0x04));
    const vaddr = word(ph + (is64 ? 0x10 : 0x08));
    const filesz = word(ph + (is64 ? 0x20 : 0x10));
    if (type === 1) loads.push({ vaddr, offset, filesz });
    else if (type === 2) dynamic = { offset, size: filesz };
    else if (type === 3) interp = elf.toString('latin1', offset, offset + filesz).replace(/\0.*$/s, '');
  }
  const needed: number[] = [];
  let strtab: number | undefined;
  if (dynamic) {
    const entsize = is64 ? 16 : 8;
    for (let o = dynamic.offset; o + entsize <= dynamic.offset + dynamic.size; o += entsize) {
      const tag = word(o);
      const val = word(o + entsize / 2);
      if (tag === 0) break;
      if (tag === 1) needed.push(val);
      else if (tag === 5) strtab = val;
    }
  }
  const toOffset = (vaddr: number): number => {
    const seg = loads.find((l) => vaddr >= l.vaddr && vaddr < l.vaddr + l.filesz);
    if (!seg) throw new Error('DT_STRTAB lies outside the load segments');
    return vaddr - seg.vaddr + seg.offset;
  };
  const names = strtab === undefined ? [] : needed.map((n) => {
    const start = toOffset(strtab!) + n;
    return elf.toString('latin1', start, elf.indexOf(0, start));
  });
  return { interp, needed: names };
}

/** Debian's multiarch folder names, where each arch's libraries live. */
export const MULTIARCH: Record<Arch, string> = { amd64: 'x86_64-linux-gnu', arm64: 'aarch64-linux-gnu', armv7: 'arm-linux-gnueabihf' };

/**
 * A dynamically linked program of the root with everything it loads: the
 * program at `dest`, its interpreter at the path the program names, and
 * its libraries (and theirs) under lib/<multiarch>/, where the loader looks
 * without an ld.so.cache.
 */
export async function programWithLibraries(rootfs: string, rel: string, dest: string, arch: Arch): Promise<CpioEntry[]> {
  const file = await resolveInRoot(rootfs, rel);
  if (!file || !(await exists(file))) throw new Error(`${rel} not found in ${rootfs}`);
  const entries: CpioEntry[] = [];
  const program = await readFile(file);
  entries.push({ path: dest, type: 'file', mode: 0o755, data: program });
  const first = elfLinks(program);
  if (first.interp) {
    // an unpacked root whose maintainer scripts never ran has no /lib -> usr/lib link: look under /usr too
    let interp = await resolveInRoot(rootfs, first.interp);
    if (!interp || !(await exists(interp))) interp = await resolveInRoot(rootfs, path.posix.join('usr', first.interp));
    if (!interp || !(await exists(interp))) throw new Error(`${rel} needs ${first.interp}, which ${rootfs} does not have (nor /usr${first.interp})`);
    entries.push({ path: first.interp.replace(/^\/+/, ''), type: 'file', mode: 0o755, data: await readFile(interp) });
  }
  const dirs = [`lib/${MULTIARCH[arch]}`, `usr/lib/${MULTIARCH[arch]}`, 'lib', 'usr/lib'];
  const seen = new Set<string>();
  const queue = [...first.needed];
  while (queue.length > 0) {
    const name = queue.shift()!;
    if (seen.has(name)) continue;
    seen.add(name);
    let found: string | undefined;
    for (const d of dirs) {
      const p = await resolveInRoot(rootfs, `${d}/${name}`);
      if (p && (await exists(p))) {
        found = p;
        break;
      }
    }
    if (!found) throw new Error(`${rel} needs ${name}, which is not in ${rootfs} (looked in ${dirs.map((d) => `/${d}`).join(', ')})`);
    const data = await readFile(found);
    // the loader itself is in the list of libc's needs: it is placed already
    if (first.interp && path.posix.basename(first.interp) === name) continue;
    entries.push({ path: `lib/${MULTIARCH[arch]}/${name}`, type: 'file', mode: 0o644, data });
    queue.push(...elfLinks(data).needed);
  }
  return entries;
}

/** e2fsck's configuration in the initramfs: boards without a battery-backed clock must not fail the check on time stamps. */
export const E2FSCK_CONF = '[options]\n\tbroken_system_clock = 1\n';

async function findBusybox(rootfs: string): Promise<Buffer> {
  for (const rel of ['usr/bin/busybox', 'bin/busybox', 'usr/lib/initramfs-tools/bin/busybox']) {
    const p = await resolveInRoot(rootfs, rel);
    if (!p) continue;
    const data = await readFile(p);
    let dynamic: boolean;
    try {
      dynamic = elfIsDynamic(data);
    } catch {
      continue;
    }
    if (dynamic) {
      throw new UserError(
        `${p} is a dynamically linked busybox: the initramfs needs a static one`,
        'put busybox-static (not busybox) in the image spec\'s packages',
      );
    }
    return data;
  }
  throw new UserError(`the root filesystem ${rootfs} has no busybox (looked in /usr/bin and /bin)`, "add busybox-static to the image spec's packages");
}

async function findModuleDir(rootfs: string, release: string): Promise<string> {
  for (const rel of [`lib/modules/${release}`, `usr/lib/modules/${release}`]) {
    const p = await resolveInRoot(rootfs, rel);
    if (p && (await exists(p))) return p;
  }
  let present: string[] = [];
  const base = await resolveInRoot(rootfs, 'lib/modules');
  if (base) present = await readdir(base).catch(() => []);
  throw new UserError(
    `the root filesystem ${rootfs} has no modules for kernel ${release}` + (present.length ? ` (it has: ${present.join(', ')})` : ''),
    'install the kernel package in the image spec and build the initramfs for the release it holds',
  );
}

async function loadModuleIndex(moduleDir: string): Promise<ModuleIndex> {
  const dep = await readText(path.join(moduleDir, 'modules.dep'));
  const alias = (await readText(path.join(moduleDir, 'modules.alias'))) ?? '';
  const softdep = (await readText(path.join(moduleDir, 'modules.softdep'))) ?? '';
  const builtin = (await readText(path.join(moduleDir, 'modules.builtin'))) ?? '';
  const index = makeIndex({ dep: dep !== undefined && dep.trim() !== '' ? dep : await depFromModinfo(moduleDir), alias, softdep, builtin });
  const present = new Set(await walkModules(moduleDir));
  return dropMissing(index, (f) => present.has(f));
}

async function walkModules(dir: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const ent of await readdir(path.join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${ent.name}` : ent.name;
    if (ent.isDirectory()) out.push(...(await walkModules(dir, r)));
    else if (/\.ko(\.(xz|zst|gz))?$/.test(ent.name)) out.push(r);
  }
  return out.sort();
}

/**
 * A modules.dep built from the modules' own `depends=` fields, for roots
 * where depmod never ran. Only modules reached from the wanted list are read.
 */
async function depFromModinfo(moduleDir: string): Promise<string> {
  const files = await walkModules(moduleDir);
  const byName = new Map(files.map((f) => [moduleName(f), f]));
  const direct = new Map<string, string[]>();
  const wanted = [...BASE_MODULES, ...Object.values(ARCH_MODULES).flat()];
  const queue = wanted.filter((n) => byName.has(n));
  while (queue.length > 0) {
    const name = queue.shift()!;
    if (direct.has(name)) continue;
    const deps = modinfoDepends(await readModule(path.join(moduleDir, byName.get(name)!))).filter((d) => byName.has(d));
    direct.set(name, deps);
    queue.push(...deps);
  }
  return [...direct.keys()]
    .sort()
    .map((name) => {
      const deps = depmodOrder(name, (n) => direct.get(n) ?? []).map((d) => byName.get(d)!);
      return `${byName.get(name)}:${deps.length ? ' ' + deps.join(' ') : ''}\n`;
    })
    .join('');
}

async function readModule(file: string): Promise<Buffer> {
  const raw = await readFile(file);
  if (file.endsWith('.ko.gz')) return gunzipSync(raw);
  if (file.endsWith('.ko.xz')) return Buffer.from((await execa('xz', ['-dc'], { input: raw, encoding: 'buffer', stripFinalNewline: false })).stdout);
  if (file.endsWith('.ko.zst')) return Buffer.from((await execa('zstd', ['-dcq'], { input: raw, encoding: 'buffer', stripFinalNewline: false })).stdout);
  return raw;
}

async function compress(data: Buffer, how: InitramfsCompression, level = 19): Promise<Buffer> {
  if (how === 'gzip') return gzipSync(data, { level: 9, strategy: zc.Z_DEFAULT_STRATEGY });
  if (!Number.isInteger(level) || level < 1 || level > 19) throw new UserError(`the initramfs zstd level must be 1 to 19, not ${level}`);
  try {
    const { stdout } = await execa('zstd', [`-${level}`, '-T1', '-q', '-c', '--no-progress'], { input: data, encoding: 'buffer', stripFinalNewline: false });
    return Buffer.from(stdout);
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') {
      throw new UserError('zstd is not installed on this machine: the initramfs is compressed with it', 'apt-get install zstd');
    }
    throw err;
  }
}
