/**
 * iso: the live medium. An ISO9660 file system labelled CAIRN_LIVE holding
 * /cairn/{vmlinuz,initrd,rootfs.squashfs,version,release.json} and GRUB,
 * made bootable with grub-mkrescue: BIOS (El Torito and MBR hybrid, for
 * USB sticks) plus UEFI on amd64, UEFI on arm64. The first stage finds it by
 * its label (cairn.mode=live) and runs the system from RAM-backed layers.
 */
import { existsSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { UserError } from '../../errors.js';
import type { Artifact, OutputWriter } from '../types.js';
import { artifactStem, clampTimes, placeFile, run } from './common.js';
import { grubModuleDir, renderLiveGrubCfg } from './grub.js';

export const LIVE_LABEL = 'CAIRN_LIVE';

export const iso: OutputWriter = async (system, ctx) => {
  if (system.arch === 'armv7') {
    throw new UserError('the iso format is not made for armv7 (no UEFI CD boot on those boards)', 'build raw or pxe for armv7');
  }
  const tree = path.join(ctx.workDir, 'iso-tree');
  await rm(tree, { recursive: true, force: true });
  await mkdir(path.join(tree, 'boot/grub'), { recursive: true });
  await placeFile(system.kernel, path.join(tree, 'cairn/vmlinuz'));
  await placeFile(system.initramfs, path.join(tree, 'cairn/initrd'));
  await placeFile(system.squashfs, path.join(tree, 'cairn/rootfs.squashfs'));
  await placeFile(system.release, path.join(tree, 'cairn/release.json'));
  await writeFile(path.join(tree, 'cairn/version'), `${system.version}\n`);
  await writeFile(path.join(tree, 'boot/grub/grub.cfg'), renderLiveGrubCfg(system));

  const args: string[] = [];
  if (system.arch === 'amd64') {
    const missing = ['i386-pc', 'x86_64-efi'].filter((p) => !existsSync(`/usr/lib/grub/${p}/kernel.img`));
    if (missing.length) {
      throw new UserError(`the amd64 ISO needs GRUB for ${missing.join(' and ')} on this machine`, 'apt-get install grub-pc-bin grub-efi-amd64-bin grub-common mtools xorriso');
    }
  } else {
    args.push('-d', await grubModuleDir('arm64-efi', system, { log: ctx.log }));
  }
  await clampTimes(tree, system.sourceDateEpoch);
  const file = `${artifactStem(system)}.iso`;
  const out = path.join(ctx.outDir, file);
  await rm(out, { force: true });
  ctx.log(`iso: grub-mkrescue ${file}`);
  await run(
    'grub-mkrescue',
    [...args, '--fonts=', '--themes=', '--locales=', '--compress=xz', '-o', out, tree, '-volid', LIVE_LABEL, '-sysid', 'LINUX'],
    { env: { SOURCE_DATE_EPOCH: String(system.sourceDateEpoch) } },
  );
  const artifacts: Artifact[] = [{ file, format: 'iso', arch: system.arch }];
  return artifacts;
};
