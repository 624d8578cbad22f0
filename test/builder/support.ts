/**
 * Helpers for the builder tests: a small fake root filesystem planted in a
 * cache as the rootfs stage's entry (so everything after mmdebstrap runs for
 * real in seconds), a spec written to a temp folder, and stand-in writers.
 */
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { StageCache } from '../../src/builder/cache.js';
import { loadSpec, type ImageSpec } from '../../src/builder/spec.js';
import { rootfsInputs, rootfsKey } from '../../src/builder/stages/rootfs.js';
import type { Arch, Format, OutputWriter } from '../../src/builder/types.js';
import type { InitramfsFn } from '../../src/builder/writers.js';
import { createReporter } from '../../src/builder/progress.js';
import { SNAPSHOT_ENTRY_PATH, type SnapshotCheckFn } from '../../src/builder/stages/snapshot.js';

export const REPO = path.resolve(new URL('../..', import.meta.url).pathname);
export const K3S_DOUBLE = path.join(REPO, 'test/fixtures/k3s-double');
export const KR = '6.12.0-test-amd64';
export const SNAPSHOT = '20250101T000000Z';

export async function tempDir(prefix = 'cairn-test-'): Promise<string> {
  return mkdtemp(path.join(tmpdir(), prefix));
}

/** A spec with a pinned snapshot (no network needed to key the rootfs). */
/**
 * A fresh, empty cairn cache for one test (CAIRN_CACHE points at it until
 * the test ends, then the variable is as it was and the folder is gone).
 */
export async function withTempCache(t: { teardown(fn: () => unknown): void }, prefix: string): Promise<string> {
  const cache = await mkdtemp(path.join(tmpdir(), prefix));
  const before = process.env.CAIRN_CACHE;
  process.env.CAIRN_CACHE = cache;
  t.teardown(async () => {
    if (before === undefined) delete process.env.CAIRN_CACHE;
    else process.env.CAIRN_CACHE = before;
    await rm(cache, { recursive: true, force: true });
  });
  return cache;
}

export async function writeSpec(dir: string, extra: Record<string, unknown> = {}, name = 'test.yaml'): Promise<string> {
  const spec = {
    name: 'test',
    version: '0.0.1',
    arches: ['amd64', 'arm64'],
    debian: { suite: 'trixie', snapshot: SNAPSHOT },
    k3s: { version: 'v1.33.5+k3s1' },
    config: { hostname: 'test-node' },
    cmdline: 'console=ttyS0',
    formats: ['pxe'],
    ...extra,
  };
  const file = path.join(dir, name);
  await writeFile(file, stringify(spec));
  return file;
}

/** A tree shaped like a Debian root, with fake modules, a kernel and a dpkg status. */
export async function makeFakeRoot(root: string, opts: { bigFile?: number } = {}): Promise<void> {
  const mod = `usr/lib/modules/${KR}`;
  const files: Record<string, string> = {
    [`${mod}/kernel/fs/squashfs/squashfs.ko.xz`]: 'squashfs module',
    [`${mod}/kernel/fs/overlayfs/overlay.ko.xz`]: 'overlay module',
    [`${mod}/kernel/net/netfilter/nf_conntrack.ko.xz`]: 'conntrack module',
    [`${mod}/kernel/net/netfilter/nf_defrag.ko.xz`]: 'defrag module',
    [`${mod}/kernel/drivers/gpu/drm/huge/huge.ko.xz`]: 'x'.repeat(4096),
    [`${mod}/kernel/sound/core/snd.ko.xz`]: 'sound module',
    [`${mod}/modules.dep`]:
      'kernel/fs/squashfs/squashfs.ko.xz:\nkernel/fs/overlayfs/overlay.ko.xz:\nkernel/net/netfilter/nf_conntrack.ko.xz: kernel/net/netfilter/nf_defrag.ko.xz\nkernel/net/netfilter/nf_defrag.ko.xz:\nkernel/drivers/gpu/drm/huge/huge.ko.xz:\nkernel/sound/core/snd.ko.xz:\n',
    [`boot/vmlinuz-${KR}`]: 'fake kernel image',
    [`boot/config-${KR}`]: 'CONFIG_SQUASHFS=m\n',
    [`boot/System.map-${KR}`]: 'symbols',
    'usr/share/doc/tini/copyright': 'copyright text',
    'usr/share/doc/tini/changelog.gz': 'changelog',
    'usr/share/man/man1/tini.1.gz': 'man page',
    'usr/share/locale/de/LC_MESSAGES/x.mo': 'german',
    'usr/lib/firmware/rtl_nic/rtl8168.fw': 'kept firmware',
    'usr/lib/firmware/amdgpu/big.bin': 'dropped firmware',
    'usr/bin/busybox': '#!/bin/sh\n',
    'usr/bin/node': 'node',
    'usr/bin/tini': 'tini',
    'etc/hostname': 'cairn\n',
    'etc/os-release': 'ID=debian\n',
    // what only a package manager uses: gone from the image
    'usr/bin/perl': 'perl binary',
    'usr/lib/x86_64-linux-gnu/perl-base/strict.pm': 'package strict;',
    'usr/sbin/adduser': '#!/usr/bin/perl\nuse strict;\n',
    'usr/bin/dpkg': 'dpkg binary',
    'usr/lib/x86_64-linux-gnu/gconv/UTF-16.so': 'iconv module',
    'usr/share/nodejs/corepack/dist/corepack.js': 'corepack',
    // what stays: node's shared builtins, a shell script
    'usr/share/nodejs/undici/index.js': 'undici',
    'usr/bin/keep-me': '#!/bin/sh\necho kept\n',
    'var/lib/dpkg/status':
      'Package: tini\nStatus: install ok installed\nVersion: 0.19.0-1\n\nPackage: nodejs\nStatus: install ok installed\nVersion: 20.19.2+dfsg-1\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n',
  };
  for (const [rel, content] of Object.entries(files)) {
    await mkdir(path.join(root, path.dirname(rel)), { recursive: true });
    await writeFile(path.join(root, rel), content);
  }
  await chmod(path.join(root, 'usr/bin/busybox'), 0o755);
  await symlink('usr/lib', path.join(root, 'lib'));
  await symlink('usr/bin', path.join(root, 'bin'));
  await symlink('perl', path.join(root, 'usr/bin/perl-alias'));
  await symlink('/usr/bin/keep-me', path.join(root, 'usr/bin/keep-alias'));
  await mkdir(path.join(root, 'var/lib/chrony'), { recursive: true });
  if (opts.bigFile) await writeFile(path.join(root, 'usr/lib/big.bin'), randomBytes(opts.bigFile));
}

/** Puts a fake root into `cacheDir` as the rootfs stage's entry for this spec and arch. */
export async function plantRootfs(cacheDir: string, spec: ImageSpec | string, arch: Arch = 'amd64', opts: { bigFile?: number } = {}): Promise<string> {
  const s = typeof spec === 'string' ? loadSpec(spec) : spec;
  const cache = new StageCache(cacheDir);
  await cache.open();
  const inputs = rootfsInputs(s, arch, `snapshot:${s.debian.snapshot}`);
  const entry = await cache.get('rootfs', rootfsKey(inputs), inputs, async (dir) => {
    await makeFakeRoot(path.join(dir, 'rootfs'), opts);
    return { kernelRelease: KR, packages: inputs.packages };
  });
  return entry.dir;
}

/** A deterministic stand-in for the initramfs builder. */
export const fakeInitramfs: InitramfsFn = async (req) => {
  await writeFile(req.out, `initramfs ${req.arch} ${req.kernelRelease} ${req.sourceDateEpoch}\n`);
};

/** A stand-in pxe writer: kernel, initrd and squashfs under the image's name. */
export const fakePxe: OutputWriter = async (sys, ctx) => {
  const base = `${sys.name}-${sys.version}-${sys.arch}`;
  const out = [];
  for (const [src, suffix] of [[sys.kernel, 'vmlinuz'], [sys.initramfs, 'initrd'], [sys.squashfs, 'squashfs']] as const) {
    await copyFile(src, path.join(ctx.outDir, `${base}.${suffix}`));
    out.push({ file: `${base}.${suffix}`, format: 'pxe' as Format, arch: sys.arch });
  }
  return out;
};

export const fakeWriters = { pxe: fakePxe };

/**
 * A stand-in for the snapshot check (the fake root's node does not run):
 * it checks that the system stage calls it on a tree that holds the init's
 * snapshot entry, after the prune (the man pages are gone by then).
 */
export const fakeSnapshotCheck: SnapshotCheckFn = async (root, arch, log) => {
  if (!existsSync(path.join(root, SNAPSHOT_ENTRY_PATH))) throw new Error(`fake snapshot check: no /${SNAPSHOT_ENTRY_PATH} in the tree`);
  if (existsSync(path.join(root, 'usr/share/man/man1/tini.1.gz'))) throw new Error('fake snapshot check: called before the prune');
  log(`init snapshot: checked (${arch}, test stand-in)`);
};

/** Options for build() that run everything after the rootfs for real, quietly. */
export function quickBuild(spec: string, cacheDir: string, outDir: string, extra: Record<string, unknown> = {}) {
  const lines: string[] = [];
  return {
    lines,
    opts: {
      spec,
      arches: ['amd64' as Arch],
      formats: ['pxe' as Format],
      cacheDir,
      outDir,
      k3s: K3S_DOUBLE,
      sourceDateEpoch: 1_700_000_000,
      squashfs: { level: 1 },
      outputs: fakeWriters,
      initramfs: fakeInitramfs,
      snapshotCheck: fakeSnapshotCheck,
      skipHostCheck: true,
      reporter: createReporter({ tty: false, write: (s: string) => void lines.push(s) }),
      ...extra,
    },
  };
}
