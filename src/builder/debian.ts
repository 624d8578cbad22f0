/**
 * What the Debian side of a build depends on: the package list per arch, and
 * the state of the archive (its signed InRelease file) so that a cached root
 * filesystem is rebuilt when the archive changes and reused while it does not.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { ARCH_TABLE } from './arches.js';
import type { Arch } from './types.js';
import type { ImageSpec } from './spec.js';

export const kernelPackage: Record<Arch, string> = {
  amd64: ARCH_TABLE.amd64.kernelPackage,
  arm64: ARCH_TABLE.arm64.kernelPackage,
  armv7: ARCH_TABLE.armv7.kernelPackage,
};

/** What every cairn system has: the init's runtime, services, and what k3s needs on the host. */
export const BASE_PACKAGES = [
  // Satisfies the kernel's "initramfs-tools | linux-initramfs-tool" without
  // initramfs-tools, which would pull in udev and systemd (35 MB, and minutes
  // of hwdb generation under qemu-user). It never runs: INITRD=No, and cairn
  // writes its own initramfs.
  'tiny-initramfs',
  // openssh-server needs a sysusers tool, not systemd itself (PID 1 is tini).
  'systemd-standalone-sysusers',
  'nodejs',
  'tini',
  'openssh-server',
  // the console login (agetty runs login) and the cairn user's password (chpasswd), sudo for the cairn user
  'login',
  'passwd',
  'sudo',
  'chrony',
  'sqlite3',
  'iproute2',
  'iputils-ping',
  'wpasupplicant',
  'ca-certificates',
  'kmod',
  'e2fsprogs',
  'dosfstools',
  'iptables',
  'nftables',
  'ipset',
  'conntrack',
  'mount',
  'util-linux',
  // sfdisk: the first boot grows CAIRN_STATE to the end of its disk (src/init/grow.ts)
  'fdisk',
  'procps',
  'busybox-static',
  // cairn upgrade applies delta payloads with zstd --patch-from (src/upgrade/delta.ts)
  'zstd',
];

/**
 * Packages of one arch beyond the base: on arm64, the boards whose loader
 * does not count tries (the Raspberry Pi's firmware, Jetson's L4TLauncher)
 * start a trial version from the first stage with kexec
 * (src/boot/loader.ts). Not on armv7: Debian's armmp-lpae kernel faults in
 * its own kexec (__soft_restart jumps to the relocation code at a physical
 * address it has not mapped), see KEXEC_ARCHES.
 */
export const ARCH_PACKAGES: Record<Arch, readonly string[]> = { amd64: [], arm64: ['kexec-tools'], armv7: [] };

export function packageList(spec: ImageSpec, arch: Arch): string[] {
  return [...new Set([kernelPackage[arch], ...BASE_PACKAGES, ...ARCH_PACKAGES[arch], ...spec.packages])].sort();
}

/**
 * sha256 of the suite's InRelease: identifies the archive state. A snapshot
 * pins it by itself. When the mirror cannot be reached the last value seen is
 * used, so an offline rebuild still finds its cached root filesystem.
 */
export async function archiveState(spec: ImageSpec, stateDir: string, log: (l: string) => void): Promise<string> {
  if (spec.debian.snapshot) return `snapshot:${spec.debian.snapshot}`;
  const url = `${spec.debian.mirror.replace(/\/$/, '')}/dists/${spec.debian.suite}/InRelease`;
  const stateFile = path.join(stateDir, `inrelease-${createHash('sha256').update(url).digest('hex').slice(0, 16)}.txt`);
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(20_000) });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const body = Buffer.from(await res.arrayBuffer());
    const state = `inrelease:${createHash('sha256').update(body).digest('hex')}`;
    await mkdir(stateDir, { recursive: true });
    await writeFile(stateFile, state);
    return state;
  } catch (err) {
    const last = await readFile(stateFile, 'utf8').catch(() => undefined);
    if (last) {
      log(`debian: cannot read ${url} (${(err as Error).message}); using the archive state seen last`);
      return last;
    }
    log(`debian: cannot read ${url} (${(err as Error).message})`);
    return 'unknown';
  }
}
