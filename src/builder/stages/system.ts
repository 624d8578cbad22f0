/**
 * The system tree: the cached rootfs with the overlay, runtime, init and
 * prune steps applied, stored as one cache entry (system-<key>/rootfs and
 * system-<key>/vmlinuz). The steps run on a hard-linked copy of the rootfs
 * entry and never write through a link (see fsutil), so the rootfs entry
 * stays intact. They are one entry because each takes seconds while each
 * extra cached copy of the tree would cost a full hash of it.
 */
import { ARCH_MODULES_FILE } from '../arches.js';
import { copyFile, mkdir, rename, rm, lstat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { execa } from 'execa';
import path from 'node:path';
import { IMAGE_ETC_MANIFEST, manifestOf } from '../../init/apply/persist.js';
import type { Entry, StageCache } from '../cache.js';
import { hashValue } from '../hash.js';
import { linkTree, writeFresh } from '../fsutil.js';
import { TRUSTED_KEYS_IN_ROOT } from '../../upgrade/keys.js';
import type { ImageSpec } from '../spec.js';
import type { Arch } from '../types.js';
import { applyOverlay } from './overlay.js';
import { installRuntime } from './runtime.js';
import { installInit, type InitBundle } from './init.js';
import { componentSizes, prune, type PruneResult } from './prune.js';
import { checkInitSnapshot, type SnapshotCheckFn } from './snapshot.js';

/** Bump when the overlay, runtime, init or prune steps change what they make. */
export const SYSTEM_STAGE_VERSION = 5;

export interface SystemData {
  kernelRelease: string;
  sizes: Record<string, number>;
  pruned: PruneResult;
  /** Seconds per step, for the build record. */
  steps: Record<string, number>;
}

export interface SystemInputs {
  stage: number;
  rootfs: string;
  overlay: unknown;
  runtime: unknown;
  init: string;
  modules: ImageSpec['modules'] & { globs?: unknown };
  /**
   * Public keys the image trusts for upgrade payloads (cairn build --sign),
   * written to /usr/lib/cairn/keys/<fingerprint>.pub. Absent when the build
   * is not signed, which keeps the key of an unsigned build as it was.
   */
  trustedKeys?: { fingerprint: string; pem: string }[];
  /** Which system this root is (/usr/lib/cairn/release.json: what the init and an upgrade's checks read). */
  release?: { name: string; version: string; arch: Arch };
  /** /etc/modules-load.d/cairn-arch.conf: the arch's (and board's) boot-time modules (src/builder/arches.ts). */
  modulesLoad?: string;
  /**
   * A board's vendor kernel (cairn build --bsp): the BSP's sha256, its
   * kernel's release and the module and firmware globs kept beyond the
   * profile. Absent for a Debian kernel, which keeps other keys as they were.
   */
  kernel?: { sha256: string; release: string; keepModules: string[]; keepFirmware: string[] };
  /** An injected snapshot check's name (tests): absent for the real one, which keeps other keys as they were. */
  snapshotCheck?: string;
}

/** A vendor kernel to put in place of the Debian one: its Image and a folder holding lib/modules/<release>/ (and lib/firmware/). */
export interface BoardKernel {
  kernel: string;
  kernelRelease: string;
  supplements: string;
}

export function systemKey(inputs: SystemInputs): string {
  return hashValue(inputs);
}

/** Where the kernel image sits in a Debian root, per arch (all three name it vmlinuz-<release>). */
export const kernelInRoot = (kernelRelease: string) => `boot/vmlinuz-${kernelRelease}`;

export async function buildSystem(
  cache: StageCache,
  inputs: SystemInputs,
  ctx: {
    spec: ImageSpec;
    arch: Arch;
    rootfs: Entry<{ kernelRelease: string }>;
    k3sBinary: string;
    init: InitBundle;
    log: (l: string) => void;
    step: (name: string, seconds: number) => void;
    /** Required when inputs.kernel is set: the unpacked BSP's kernel. */
    boardKernel?: BoardKernel;
    /** Default checkInitSnapshot. */
    snapshotCheck?: SnapshotCheckFn;
  },
): Promise<Entry<SystemData>> {
  if (inputs.kernel && ctx.boardKernel?.kernelRelease !== inputs.kernel.release) throw new Error('buildSystem: inputs.kernel names a vendor kernel that ctx.boardKernel does not hold');
  return cache.get<SystemData>(
    'system',
    systemKey(inputs),
    inputs,
    async (dir) => {
      const root = path.join(dir, 'rootfs');
      let kr = ctx.rootfs.meta.data.kernelRelease;
      const steps: Record<string, number> = {};
      const timed = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
        const t = performance.now();
        const v = await fn();
        steps[name] = (performance.now() - t) / 1000;
        ctx.step(name, steps[name]);
        return v;
      };
      await timed('copy', () => linkTree(path.join(ctx.rootfs.dir, 'rootfs'), root));
      await timed('overlay', async () => {
        await applyOverlay(root, ctx.spec, ctx.log);
        await installTrustedKeys(root, inputs.trustedKeys ?? [], ctx.log);
        if (inputs.modulesLoad !== undefined) await writeFresh(root, ARCH_MODULES_FILE, { content: inputs.modulesLoad }, { mode: 0o644, uid: 0, gid: 0 });
      });
      await timed('runtime', () => installRuntime(root, ctx.spec, ctx.k3sBinary, ctx.log));
      await timed('init', async () => {
        await installInit(root, ctx.init, ctx.log);
        if (inputs.release) await writeFresh(root, 'usr/lib/cairn/release.json', { content: `${JSON.stringify(inputs.release, null, 2)}\n` }, { mode: 0o644, uid: 0, gid: 0 });
      });
      const pruned = await timed('prune', async () => {
        // The kernel is loaded by the bootloader, not read from the root.
        const kernel = path.join(root, kernelInRoot(kr));
        if (!(await lstat(kernel).catch(() => undefined))) throw new Error(`the rootfs has no ${kernelInRoot(kr)}`);
        // tiny-initramfs' hook writes an initrd of its own (with time stamps in it); cairn boots its own.
        await rm(path.join(root, `boot/initrd.img-${kr}`), { force: true });
        if (inputs.kernel && ctx.boardKernel) {
          await replaceKernel(root, kr, ctx.boardKernel);
          await copyFile(ctx.boardKernel.kernel, path.join(dir, 'vmlinuz'));
          kr = ctx.boardKernel.kernelRelease;
          ctx.log(`system: the board's kernel ${kr} and its modules replace Debian's`);
          const { keepModules, keepFirmware } = inputs.kernel;
          const spec = { ...ctx.spec, modules: { ...ctx.spec.modules, include: [...ctx.spec.modules.include, ...keepModules], firmware: [...ctx.spec.modules.firmware, ...keepFirmware] } };
          return prune(root, spec, ctx.arch, kr, ctx.log);
        }
        await rename(kernel, path.join(dir, 'vmlinuz'));
        return prune(root, ctx.spec, ctx.arch, kr, ctx.log);
      });
      await rm(path.join(root, 'var/cache/apt/archives'), { recursive: true, force: true });
      // after pruning: the check runs the node and libraries the image ships
      await timed('snapshot check', () => (ctx.snapshotCheck ?? checkInitSnapshot)(root, ctx.arch, ctx.log));
      // the image's /etc as the etc phase compares it, made once here instead of at every boot
      await writeFresh(root, IMAGE_ETC_MANIFEST.slice(1), { content: `${JSON.stringify(manifestOf(path.join(root, 'etc')))}\n` }, { mode: 0o644, uid: 0, gid: 0 });
      const sizes = await componentSizes(root, kr);
      sizes.kernel = (await lstat(path.join(dir, 'vmlinuz'))).size;
      return { kernelRelease: kr, sizes, pruned, steps };
    },
    { needBytes: 300 * 1024 ** 2 },
  );
}

/**
 * Puts a vendor kernel's modules and firmware in the root in place of the
 * Debian kernel's (its image, modules, device trees and build files go):
 * the squashfs and the initramfs then carry the modules of the kernel that
 * boots. Files already in the tree are unlinked before they are replaced
 * (cp --remove-destination), so nothing is written through a hard link
 * into the rootfs entry.
 */
export async function replaceKernel(root: string, debianRelease: string, k: BoardKernel): Promise<void> {
  for (const rel of [kernelInRoot(debianRelease), `boot/config-${debianRelease}`, `boot/System.map-${debianRelease}`, `usr/lib/modules/${debianRelease}`, `usr/lib/linux-image-${debianRelease}`]) {
    await rm(path.join(root, rel), { recursive: true, force: true });
  }
  await mkdir(path.join(root, 'usr/lib/modules'), { recursive: true });
  await rm(path.join(root, 'usr/lib/modules', k.kernelRelease), { recursive: true, force: true });
  await execa('cp', ['-a', '--no-preserve=ownership', path.join(k.supplements, 'lib/modules', k.kernelRelease), path.join(root, 'usr/lib/modules/')]);
  const fw = path.join(k.supplements, 'lib/firmware');
  if (existsSync(fw)) {
    await mkdir(path.join(root, 'usr/lib/firmware'), { recursive: true });
    await execa('cp', ['-a', '--no-preserve=ownership', '--remove-destination', `${fw}/.`, path.join(root, 'usr/lib/firmware/')]);
  }
}

/** The payload signing keys an image trusts: a node running it takes only upgrades one of them signed. */
export async function installTrustedKeys(root: string, keys: { fingerprint: string; pem: string }[], log: (l: string) => void): Promise<void> {
  for (const k of keys) {
    await writeFresh(root, `${TRUSTED_KEYS_IN_ROOT}/${k.fingerprint}.pub`, { content: k.pem }, { mode: 0o644, uid: 0, gid: 0 });
  }
  if (keys.length) log(`keys: the image trusts upgrade payloads signed by ${keys.map((k) => k.fingerprint).join(', ')}`);
}
