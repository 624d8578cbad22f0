/**
 * The system tree: the cached rootfs with the overlay, runtime, init and
 * prune steps applied, stored as one cache entry (system-<key>/rootfs and
 * system-<key>/vmlinuz). The steps run on a hard-linked copy of the rootfs
 * entry and never write through a link (see fsutil), so the rootfs entry
 * stays intact. They are one entry because each takes seconds while each
 * extra cached copy of the tree would cost a full hash of it.
 */
import { ARCH_MODULES_FILE } from '../arches.js';
import { rename, rm, lstat } from 'node:fs/promises';
import path from 'node:path';
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

/** Bump when the overlay, runtime, init or prune steps change what they make. */
export const SYSTEM_STAGE_VERSION = 2;

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
  },
): Promise<Entry<SystemData>> {
  return cache.get<SystemData>(
    'system',
    systemKey(inputs),
    inputs,
    async (dir) => {
      const root = path.join(dir, 'rootfs');
      const kr = ctx.rootfs.meta.data.kernelRelease;
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
        await rename(kernel, path.join(dir, 'vmlinuz'));
        // tiny-initramfs' hook writes an initrd of its own (with time stamps in it); cairn boots its own.
        await rm(path.join(root, `boot/initrd.img-${kr}`), { force: true });
        return prune(root, ctx.spec, ctx.arch, kr, ctx.log);
      });
      await rm(path.join(root, 'var/cache/apt/archives'), { recursive: true, force: true });
      const sizes = await componentSizes(root, kr);
      sizes.kernel = (await lstat(path.join(dir, 'vmlinuz'))).size;
      return { kernelRelease: kr, sizes, pruned, steps };
    },
    { needBytes: 300 * 1024 ** 2 },
  );
}

/** The payload signing keys an image trusts: a node running it takes only upgrades one of them signed. */
export async function installTrustedKeys(root: string, keys: { fingerprint: string; pem: string }[], log: (l: string) => void): Promise<void> {
  for (const k of keys) {
    await writeFresh(root, `${TRUSTED_KEYS_IN_ROOT}/${k.fingerprint}.pub`, { content: k.pem }, { mode: 0o644, uid: 0, gid: 0 });
  }
  if (keys.length) log(`keys: the image trusts upgrade payloads signed by ${keys.map((k) => k.fingerprint).join(', ')}`);
}
