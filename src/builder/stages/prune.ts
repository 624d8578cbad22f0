/**
 * prune: documentation, man pages, locales, package caches, and kernel
 * modules and firmware outside the spec's module profile (plus what the kept
 * modules depend on, from modules.dep). depmod runs again afterwards (the
 * host's depmod reads modules of any arch).
 *
 * An immutable root is never changed by a package manager, so what only
 * dpkg, apt and their maintainer scripts use goes too: the dpkg database
 * (its package list is kept as /usr/lib/cairn/packages.json and in the
 * release record), dpkg and debconf, perl and every perl script (nothing at
 * run time is one), glibc's iconv modules (Node.js converts with ICU), and
 * what the nodejs package carries for developers (corepack, TypeScript
 * types). Returns what each pruning removed; the build log lists it.
 */
import { lstat, mkdir, open, readdir, readFile, readlink, rm, rmdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { treeSize } from '../hash.js';
import { matcher, moduleProfile } from '../profiles.js';
import type { ImageSpec } from '../spec.js';
import type { Arch } from '../types.js';
import { parseDpkgStatus } from '../record.js';

export interface PruneResult {
  /** Bytes removed per category. */
  removed: Record<string, number>;
  modulesKept: number;
  modulesRemoved: number;
  /** The installed packages (name → version), read from the dpkg database before it went. */
  packages: Record<string, string>;
}

/** Where the package list goes in the root, in place of the dpkg database. */
export const PACKAGES_IN_ROOT = 'usr/lib/cairn/packages.json';

/** What only a package manager uses, per category; `<triplet>` is the arch's library folder. */
const PACKAGE_MANAGER: Record<string, string[]> = {
  dpkg: [
    'var/lib/dpkg',
    'var/lib/apt',
    'etc/apt',
    'etc/dpkg',
    'var/cache/debconf',
    'usr/share/debconf',
    'usr/share/dpkg',
    'usr/lib/dpkg',
    'usr/bin/dpkg',
    'usr/bin/dpkg-*',
    'usr/sbin/dpkg-*',
    'usr/bin/debconf*',
    'usr/bin/deb-systemd-*',
    'usr/bin/update-alternatives',
    'usr/share/perl5/Debconf',
  ],
  perl: ['usr/bin/perl', 'usr/bin/perl5*', 'usr/lib/<triplet>/perl-base', 'usr/lib/<triplet>/perl', 'usr/lib/<triplet>/perl5', 'usr/share/perl5', 'usr/share/perl'],
  gconv: ['usr/lib/<triplet>/gconv'],
  nodejs_extras: ['usr/share/nodejs/corepack', 'usr/bin/corepack', 'usr/share/nodejs/@types', 'usr/share/nodejs/undici-types'],
};

/** Executables in usr/bin and usr/sbin whose interpreter is perl: they cannot run once perl is gone. */
async function prunePerlScripts(root: string): Promise<{ bytes: number; names: string[] }> {
  let bytes = 0;
  const names: string[] = [];
  for (const dir of ['usr/bin', 'usr/sbin']) {
    for (const name of await readdir(path.join(root, dir)).catch(() => [] as string[])) {
      const full = path.join(root, dir, name);
      const st = await lstat(full);
      if (!st.isFile() || st.size < 4) continue;
      const head = await readHead(full);
      if (!/^#!\s*\S*\bperl\b/.test(head)) continue;
      bytes += st.size;
      names.push(name);
      await rm(full, { force: true });
    }
  }
  return { bytes, names };
}

async function readHead(file: string): Promise<string> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(64);
    const { bytesRead } = await fh.read(buf, 0, 64, 0);
    return buf.subarray(0, bytesRead).toString('latin1').split('\n')[0]!;
  } finally {
    await fh.close();
  }
}

/** Symbolic links left pointing at nothing in the command folders (alternatives of removed programs). */
async function pruneDanglingLinks(root: string): Promise<number> {
  let n = 0;
  for (const dir of ['usr/bin', 'usr/sbin', 'etc/alternatives']) {
    for (const name of await readdir(path.join(root, dir)).catch(() => [] as string[])) {
      const full = path.join(root, dir, name);
      const st = await lstat(full);
      if (!st.isSymbolicLink()) continue;
      const target = await readlink(full);
      const resolved = target.startsWith('/') ? path.join(root, target) : path.join(path.dirname(full), target);
      if (await exists(resolved, root)) continue;
      await rm(full, { force: true });
      n++;
    }
  }
  return n;
}

/** Whether a path inside the root exists, following links inside the root (an absolute link target is read as inside it). */
async function exists(p: string, root: string, depth = 0): Promise<boolean> {
  const st = await lstat(p).catch(() => undefined);
  if (!st) return false;
  if (!st.isSymbolicLink()) return true;
  if (depth > 8) return false;
  const target = await readlink(p);
  return exists(target.startsWith('/') ? path.join(root, target) : path.join(path.dirname(p), target), root, depth + 1);
}

/** Folders removed whole (relative to the root). */
const DROP = [
  'usr/share/man',
  'usr/share/info',
  'usr/share/lintian',
  'usr/share/linda',
  'usr/share/bug',
  'usr/share/menu',
  'usr/share/bash-completion',
  'usr/share/zsh',
  'var/cache/apt',
  'var/lib/apt/lists',
  'var/cache/debconf/templates.dat-old',
  'var/cache/debconf/config.dat-old',
  'var/log/apt',
  'var/log/dpkg.log',
  'var/log/alternatives.log',
  'var/log/bootstrap.log',
  'etc/initramfs-tools',
  'usr/share/initramfs-tools',
  'boot/System.map-*',
  'vmlinuz',
  'vmlinuz.old',
  'initrd.img',
  'initrd.img.old',
];

async function removeMatching(root: string, rel: string): Promise<number> {
  const dir = path.dirname(rel);
  const base = path.basename(rel);
  let total = 0;
  const names = base.includes('*') ? await readdir(path.join(root, dir)).catch(() => [] as string[]) : [base];
  const re = new RegExp(`^${base.replace(/[.+^$()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`);
  for (const name of names) {
    if (!re.test(name)) continue;
    const full = path.join(root, dir, name);
    const st = await lstat(full).catch(() => undefined);
    if (!st) continue;
    total += await treeSize(full);
    await rm(full, { recursive: true, force: true });
  }
  return total;
}

/** Keeps only copyright files under usr/share/doc. */
async function pruneDocs(root: string): Promise<number> {
  const docs = path.join(root, 'usr/share/doc');
  let removed = 0;
  for (const pkg of await readdir(docs).catch(() => [] as string[])) {
    const dir = path.join(docs, pkg);
    const st = await lstat(dir);
    if (!st.isDirectory()) continue;
    for (const name of await readdir(dir)) {
      if (name === 'copyright') continue;
      removed += await treeSize(path.join(dir, name));
      await rm(path.join(dir, name), { recursive: true, force: true });
    }
  }
  return removed;
}

/** Keeps no translations: the console speaks C.UTF-8. */
async function pruneLocales(root: string): Promise<number> {
  let removed = 0;
  for (const dir of ['usr/share/locale', 'usr/share/i18n']) {
    const full = path.join(root, dir);
    for (const name of await readdir(full).catch(() => [] as string[])) {
      if (name === 'locale.alias') continue;
      removed += await treeSize(path.join(full, name));
      await rm(path.join(full, name), { recursive: true, force: true });
    }
  }
  return removed;
}

/** modules.dep as a map from module path to the paths it needs. */
export function parseModulesDep(text: string): Map<string, string[]> {
  const deps = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i < 0) continue;
    deps.set(line.slice(0, i).trim(), line.slice(i + 1).trim().split(/\s+/).filter(Boolean));
  }
  return deps;
}

/** The modules to keep: those matching the globs, and every module they depend on. */
export function modulesToKeep(all: string[], deps: Map<string, string[]>, keep: (rel: string) => boolean): Set<string> {
  const kept = new Set<string>();
  const stack = all.filter((m) => keep(m.replace(/^kernel\//, '')));
  while (stack.length) {
    const m = stack.pop()!;
    if (kept.has(m)) continue;
    kept.add(m);
    for (const d of deps.get(m) ?? []) stack.push(d);
  }
  return kept;
}

async function removeEmptyDirs(dir: string): Promise<boolean> {
  let empty = true;
  for (const name of await readdir(dir)) {
    const full = path.join(dir, name);
    const st = await lstat(full);
    if (st.isDirectory() && (await removeEmptyDirs(full))) await rmdir(full);
    else empty = false;
  }
  return empty;
}

async function pruneModules(root: string, kernelRelease: string, spec: ImageSpec, arch: Arch): Promise<{ removed: number; kept: number; dropped: number }> {
  const base = path.join(root, 'usr/lib/modules', kernelRelease);
  const deps = parseModulesDep(await readFile(path.join(base, 'modules.dep'), 'utf8'));
  const all = [...deps.keys()];
  const profile = moduleProfile(spec.modules.profile, arch);
  const keep = modulesToKeep(all, deps, matcher([...profile.modules, ...spec.modules.include]));
  let removed = 0;
  let dropped = 0;
  for (const m of all) {
    if (keep.has(m)) continue;
    const full = path.join(base, m);
    const st = await lstat(full).catch(() => undefined);
    if (!st) continue;
    removed += st.size;
    dropped++;
    await rm(full, { force: true });
  }
  await removeEmptyDirs(path.join(base, 'kernel')).catch(() => false);
  await execa('depmod', ['-b', root, kernelRelease]);
  return { removed, kept: keep.size, dropped };
}

async function pruneFirmware(root: string, spec: ImageSpec, arch: Arch): Promise<number> {
  const fw = path.join(root, 'usr/lib/firmware');
  const keep = matcher([...moduleProfile(spec.modules.profile, arch).firmware, ...spec.modules.firmware]);
  let removed = 0;
  const walk = async (rel: string): Promise<void> => {
    for (const name of await readdir(path.join(fw, rel)).catch(() => [] as string[])) {
      const r = rel ? `${rel}/${name}` : name;
      const st = await lstat(path.join(fw, r));
      if (st.isDirectory() && !keep(r) && !keep(`${r}/`)) await walk(r);
      else if (!st.isDirectory() && !keep(r)) {
        removed += st.size;
        await rm(path.join(fw, r), { force: true });
      }
    }
  };
  await walk('');
  await removeEmptyDirs(fw).catch(() => false);
  return removed;
}

export async function prune(root: string, spec: ImageSpec, arch: Arch, kernelRelease: string, log: (l: string) => void): Promise<PruneResult> {
  const removed: Record<string, number> = { docs: 0, locales: 0, caches: 0, modules: 0, firmware: 0, dpkg: 0, perl: 0, gconv: 0, nodejs_extras: 0 };
  // the package list outlives the dpkg database
  const status = await readFile(path.join(root, 'var/lib/dpkg/status'), 'utf8').catch(() => undefined);
  const packages = status === undefined ? {} : parseDpkgStatus(status);
  if (status !== undefined) {
    await mkdir(path.join(root, path.dirname(PACKAGES_IN_ROOT)), { recursive: true });
    await writeFile(path.join(root, PACKAGES_IN_ROOT), `${JSON.stringify(packages, null, 2)}\n`, { mode: 0o644 });
  }
  const triplet = (await readdir(path.join(root, 'usr/lib')).catch(() => [] as string[])).find((d) => /-linux-gnu/.test(d));
  for (const [category, rels] of Object.entries(PACKAGE_MANAGER)) {
    for (const rel of rels) {
      if (rel.includes('<triplet>') && !triplet) continue;
      removed[category]! += await removeMatching(root, rel.replace('<triplet>', triplet ?? ''));
    }
  }
  const scripts = await prunePerlScripts(root);
  removed.perl! += scripts.bytes;
  const links = await pruneDanglingLinks(root);
  removed.docs! += await pruneDocs(root);
  removed.locales = await pruneLocales(root);
  for (const rel of DROP) {
    const n = await removeMatching(root, rel);
    if (rel.startsWith('usr/share/')) removed.docs! += n;
    else removed.caches! += n;
  }
  const mods = await pruneModules(root, kernelRelease, spec, arch);
  removed.modules = mods.removed;
  removed.firmware = await pruneFirmware(root, spec, arch);
  const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
  log(`prune: kept ${mods.kept} kernel modules, removed ${mods.dropped}; removed ${mib(Object.values(removed).reduce((a, b) => a + b, 0))}`);
  log(`prune: ${Object.entries(removed).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${mib(n)}`).join(', ')}`);
  if (scripts.names.length || links) log(`prune: ${scripts.names.length} perl scripts (${scripts.names.slice(0, 6).join(', ')}${scripts.names.length > 6 ? ', ...' : ''}) and ${links} links to removed programs`);
  log(`prune: ${Object.keys(packages).length} packages listed in /${PACKAGES_IN_ROOT} (the dpkg database is not in the image)`);
  return { removed, modulesKept: mods.kept, modulesRemoved: mods.dropped, packages };
}

/** Size of each component of a finished root filesystem, in bytes. */
export async function componentSizes(root: string, kernelRelease: string): Promise<Record<string, number>> {
  const size = (rel: string) => treeSize(path.join(root, rel));
  const libDirs = await readdir(path.join(root, 'usr/lib')).catch(() => [] as string[]);
  const triplet = libDirs.find((d) => /-linux-gnu/.test(d));
  let node = (await size('usr/bin/node')) + (await size('usr/share/nodejs')) + (await size('usr/lib/node_modules'));
  if (triplet) {
    for (const name of await readdir(path.join(root, 'usr/lib', triplet))) {
      if (/^(libnode|libicu|libuv|libv8)/.test(name)) node += await size(`usr/lib/${triplet}/${name}`);
    }
  }
  const sizes: Record<string, number> = {
    modules: await size(`usr/lib/modules/${kernelRelease}`),
    firmware: await size('usr/lib/firmware'),
    nodejs: node,
    k3s: await size('usr/local/bin/k3s'),
    manifests: await size('usr/lib/cairn/manifests'),
    airgap_images: await size('usr/lib/cairn/images'),
    init: await size('usr/lib/cairn/init.js'),
    docs: (await size('usr/share/doc')) + (await size('usr/share/common-licenses')),
  };
  const total = await treeSize(root);
  sizes.other = total - Object.values(sizes).reduce((a, b) => a + b, 0);
  sizes.total = total;
  return sizes;
}
