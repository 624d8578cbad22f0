/**
 * rootfs: a Debian root filesystem from packages, through mmdebstrap, for
 * any of the three arches on any host (foreign maintainer scripts run under
 * qemu-user-static through binfmt). Debian's initramfs-tools is skipped
 * (INITRD=No): cairn writes its own initramfs. Downloaded .debs are kept in
 * the cache's shared pool and handed to the next build.
 *
 * Output entry: rootfs/ (the tree). Data: the kernel release.
 */
import { mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import { execa, ExecaError } from 'execa';
import { UserError } from '../../errors.js';
import { enableForeignArch } from '../binfmt.js';
import { hashValue } from '../hash.js';
import type { StageCache, Entry } from '../cache.js';
import type { StageProgress } from '../progress.js';
import type { ImageSpec } from '../spec.js';
import { debianArch, type Arch } from '../types.js';
import { packageList } from '../debian.js';

/** Bump when the way the rootfs is made changes. */
const ROOTFS_STAGE_VERSION = 2;

/** Every cached root filesystem is made with this fixed time; the squashfs stage sets the build's own. */
export const ROOTFS_EPOCH = 1_700_000_000;

export interface RootfsData {
  kernelRelease: string;
  packages: string[];
}

export interface RootfsInputs {
  stage: number;
  arch: Arch;
  suite: string;
  mirror: string;
  components: string[];
  archive: string;
  packages: string[];
}

export function rootfsInputs(spec: ImageSpec, arch: Arch, archive: string): RootfsInputs {
  return {
    stage: ROOTFS_STAGE_VERSION,
    arch,
    suite: spec.debian.suite,
    mirror: spec.debian.mirror,
    components: spec.debian.components,
    archive,
    packages: packageList(spec, arch),
  };
}

export function rootfsKey(inputs: RootfsInputs): string {
  return hashValue(inputs);
}

/** mmdebstrap's phases, in order, with the share of the stage's time they take. */
const PHASES: [RegExp, number, string][] = [
  [/running apt-get update/, 0.03, 'apt update'],
  [/downloading packages/, 0.1, 'download'],
  [/extracting archives/, 0.3, 'extract'],
  [/installing essential packages/, 0.4, 'essential'],
  [/installing remaining packages/, 0.55, 'install'],
  [/running --customize-hook/, 0.9, 'customize'],
  [/cleaning package lists/, 0.95, 'clean'],
];

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

export async function buildRootfs(
  cache: StageCache,
  inputs: RootfsInputs,
  progress: StageProgress,
  log: (l: string) => void,
  signal?: AbortSignal,
): Promise<Entry<RootfsData>> {
  const key = rootfsKey(inputs);
  return cache.get<RootfsData>(
    'rootfs',
    key,
    inputs,
    async (dir) => {
      const target = path.join(dir, 'rootfs');
      const debs = cache.debsDir(debianArch[inputs.arch]);
      await mkdir(debs, { recursive: true });
      const undo = await enableForeignArch(inputs.arch, log);
      const args = [
        '--mode=root',
        '--variant=essential',
        `--architectures=${debianArch[inputs.arch]}`,
        `--components=${inputs.components.join(',')}`,
        `--include=${inputs.packages.join(',')}`,
        '--aptopt=Acquire::Retries "3"',
        '--aptopt=APT::Install-Recommends "false"',
        '--dpkgopt=path-exclude=/usr/share/doc/*',
        '--dpkgopt=path-include=/usr/share/doc/*/copyright',
        '--dpkgopt=path-exclude=/usr/share/man/*',
        '--dpkgopt=path-exclude=/usr/share/info/*',
        // Keep the debs the pool already has and hand new ones back to it
        // (hard links: the pool and the build share one file system).
        '--skip=essential/unlink',
        `--setup-hook=mkdir -p "$1/var/cache/apt/archives" && find ${q(debs)} -maxdepth 1 -name '*.deb' -exec cp -l -t "$1/var/cache/apt/archives/" {} + 2>/dev/null || find ${q(debs)} -maxdepth 1 -name '*.deb' -exec cp -t "$1/var/cache/apt/archives/" {} +`,
        `--customize-hook=find "$1/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -exec cp -ln -t ${q(debs)} {} + 2>/dev/null || find "$1/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -exec cp -n -t ${q(debs)} {} +`,
        // Files that differ per build host or per build are made on the node
        // by the init: DNS, host name, SSH host keys (never shared by images).
        `--customize-hook=rm -f "$1/etc/resolv.conf" "$1/vmlinuz.old" "$1/initrd.img.old" "$1"/etc/ssh/ssh_host_*_key "$1"/etc/ssh/ssh_host_*_key.pub "$1/var/lib/dbus/machine-id" && echo cairn > "$1/etc/hostname"`,
        inputs.suite,
        target,
        inputs.mirror,
      ];
      log(`rootfs: mmdebstrap ${inputs.arch} ${inputs.suite} (${inputs.packages.length} packages)`);
      const output: string[] = [];
      try {
        const proc = execa('mmdebstrap', args, {
          env: { INITRD: 'No', SOURCE_DATE_EPOCH: String(ROOTFS_EPOCH), LC_ALL: 'C.UTF-8', DEBIAN_FRONTEND: 'noninteractive' },
          all: true,
          buffer: false,
          stdin: 'ignore',
          cancelSignal: signal,
          forceKillAfterDelay: 20_000,
        });
        proc.all?.setEncoding('utf8');
        let rest = '';
        proc.all?.on('data', (chunk: string) => {
          const lines = (rest + chunk).split('\n');
          rest = lines.pop() ?? '';
          for (const line of lines) {
            output.push(line);
            if (output.length > 4000) output.shift();
            const phase = PHASES.find(([re]) => re.test(line));
            if (phase) progress.update(phase[1], phase[2]);
          }
        });
        await proc;
      } catch (err) {
        throw mmdebstrapError(err, output, inputs);
      } finally {
        await undo();
      }
      const kernelRelease = await findKernelRelease(target);
      return { kernelRelease, packages: inputs.packages };
    },
    { needBytes: 1.5 * 1024 ** 3 },
  );
}

export async function findKernelRelease(root: string): Promise<string> {
  const releases = await readdir(path.join(root, 'usr/lib/modules')).catch(() => [] as string[]);
  if (releases.length !== 1) {
    throw new Error(`expected one kernel in ${root}/usr/lib/modules, found ${releases.length ? releases.join(', ') : 'none'}`);
  }
  return releases[0]!;
}

/** Turns mmdebstrap's failure into a message that names the cause. */
export function mmdebstrapError(err: unknown, output: string[], inputs: RootfsInputs): Error {
  const text = output.join('\n');
  const missing = [...text.matchAll(/Unable to locate package (\S+)|Package '?([^'\s]+)'? has no installation candidate/g)].map((m) => m[1] ?? m[2]);
  if (missing.length > 0) {
    return new UserError(
      `Debian package not found in ${inputs.suite} (${debianArch[inputs.arch]}): ${[...new Set(missing)].join(', ')}`,
      'check the name in the spec\'s packages list (apt-cache search NAME, or packages.debian.org)',
    );
  }
  if (/No space left on device/.test(text)) {
    return Object.assign(new Error('mmdebstrap: No space left on device'), { code: 'ENOSPC' });
  }
  const tail = output.filter((l) => /^(E|W):|error/i.test(l)).slice(-8).join('\n') || output.slice(-15).join('\n');
  if (/(Could not resolve|Failed to fetch|Temporary failure resolving|Connection failed)/.test(text)) {
    return new UserError(`cannot download Debian packages from ${inputs.mirror}:\n${tail}`, 'check the network or the spec\'s debian.mirror');
  }
  const exit = err instanceof ExecaError ? ` (exit ${err.exitCode ?? err.signal})` : '';
  return new Error(`mmdebstrap failed${exit}:\n${tail}`);
}
