/**
 * iso: the live medium. An ISO9660 file system labelled CAIRN_LIVE holding
 * /cairn/{vmlinuz,initrd,rootfs.squashfs,version,release.json} and GRUB,
 * bootable from BIOS (El Torito, and as a hybrid MBR disk for USB sticks)
 * and UEFI on amd64, UEFI on arm64. The first stage finds it by its label
 * (cairn.mode=live) and runs the system from RAM-backed layers.
 *
 * Assembled as grub-mkrescue does, but from parts this writer controls, so
 * that the same inputs give the same bytes (grub-mkrescue stamps its images
 * with the current time):
 *   boot/grub/i386-pc/eltorito.img   GRUB for BIOS (grub-mkimage -O i386-pc-eltorito)
 *   boot/grub/efi.img                a FAT image with EFI/BOOT/BOOT{X64,AA64}.EFI
 *   boot/grub/<platform>/            GRUB's modules, for insmod from the menu
 *   cairn/install/                   what `cairn install` puts on a disk: the disk's
 *                                    GRUB (BOOTX64.EFI or BOOTAA64.EFI; boot.img and
 *                                    core.img for BIOS on amd64) and its grub.cfg
 * then xorriso with --modification-date at SOURCE_DATE_EPOCH (also the
 * medium's GRUB uuid, which the core images search for) and every file time
 * set to it.
 */
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { UserError } from '../../errors.js';
import type { Artifact, OutputWriter } from '../types.js';
import { artifactStem, clampTimes, imageSeed, placeFile, run, stableUuid } from './common.js';
import { MIB } from '../../boot/disk.js';
import { type GrubPlatform, diskBootImages, efiBootFile, efiPlatform, grubMkimage, grubModuleDir, renderDiskGrubCfg, renderLiveGrubCfg } from './grub.js';
import { INSTALL_DIR } from '../../boot/disk.js';
import { copyIntoFat, fatSerial, makeFat } from './raw.js';

export const LIVE_LABEL = 'CAIRN_LIVE';

/** The ISO's uuid as GRUB reads it: its modification date, `YYYY-MM-DD-hh-mm-ss-00`. */
export function isoGrubUuid(epoch: number): string {
  const d = new Date(epoch * 1000).toISOString();
  return `${d.slice(0, 4)}-${d.slice(5, 7)}-${d.slice(8, 10)}-${d.slice(11, 13)}-${d.slice(14, 16)}-${d.slice(17, 19)}-00`;
}

/** The same date as xorriso's --modification-date takes it: `YYYYMMDDhhmmss00`. */
export function xorrisoDate(epoch: number): string {
  return `${isoGrubUuid(epoch).replace(/-/g, '').slice(0, 14)}00`;
}

/** The config built into the ISO's core images: find this medium and read its grub.cfg. */
export function renderIsoEmbeddedConfig(epoch: number): string {
  return [
    `search --no-floppy --fs-uuid --set=root ${isoGrubUuid(epoch)}`,
    `if [ -z "$root" ]; then search --no-floppy --label ${LIVE_LABEL} --set=root; fi`,
    'set prefix=($root)/boot/grub',
    '',
  ].join('\n');
}

/** Copies (never links: their times are set afterwards) GRUB's modules and lists into the medium. */
async function copyModules(from: string, to: string): Promise<void> {
  await mkdir(to, { recursive: true });
  for (const f of (await readdir(from)).sort()) {
    if (f.endsWith('.mod') || f.endsWith('.lst')) await copyFile(path.join(from, f), path.join(to, f));
  }
}

export const iso: OutputWriter = async (system, ctx) => {
  if (system.arch === 'armv7') {
    throw new UserError('the iso format is not made for armv7 (no UEFI CD boot on those boards)', 'build raw or pxe for armv7');
  }
  const epoch = system.sourceDateEpoch;
  const work = path.join(ctx.workDir, 'iso');
  const tree = path.join(work, 'tree');
  await rm(work, { recursive: true, force: true });
  await mkdir(path.join(tree, 'boot/grub'), { recursive: true });
  await placeFile(system.kernel, path.join(tree, 'cairn/vmlinuz'));
  await placeFile(system.initramfs, path.join(tree, 'cairn/initrd'));
  await placeFile(system.squashfs, path.join(tree, 'cairn/rootfs.squashfs'));
  await placeFile(system.release, path.join(tree, 'cairn/release.json'));
  await writeFile(path.join(tree, 'cairn/version'), `${system.version}\n`);
  await writeFile(path.join(tree, 'boot/grub/grub.cfg'), renderLiveGrubCfg(system));
  // what `cairn install` writes onto a disk besides the version's files: the disk's boot loader and its menu
  const installDir = path.join(tree, INSTALL_DIR);
  await mkdir(installDir, { recursive: true });
  const diskWork = path.join(work, 'disk-boot');
  await mkdir(diskWork, { recursive: true });
  const boot = await diskBootImages(system, diskWork, ctx.log);
  await copyFile(boot.efi.file, path.join(installDir, boot.efi.name));
  if (boot.bios) {
    await copyFile(boot.bios.bootImg, path.join(installDir, 'boot.img'));
    await copyFile(boot.bios.coreImg, path.join(installDir, 'core.img'));
  }
  await writeFile(path.join(installDir, 'grub.cfg'), renderDiskGrubCfg(system));

  if (system.arch === 'amd64') {
    const missing = ['i386-pc', 'x86_64-efi'].filter((p) => !existsSync(`/usr/lib/grub/${p}/kernel.img`));
    if (missing.length) {
      throw new UserError(`the amd64 ISO needs GRUB for ${missing.join(' and ')} on this machine`, 'apt-get install grub-pc-bin grub-efi-amd64-bin grub-common mtools xorriso');
    }
  }
  const embedded = renderIsoEmbeddedConfig(epoch);
  const seed = await imageSeed(system);
  const xorrisoArgs: string[] = [];

  // BIOS: El Torito core image and the hybrid MBR
  if (system.arch === 'amd64') {
    const pc = await grubModuleDir('i386-pc', system, { log: ctx.log });
    await copyModules(pc, path.join(tree, 'boot/grub/i386-pc'));
    await grubMkimage({ platform: 'i386-pc', format: 'i386-pc-eltorito', moduleDir: pc, out: path.join(tree, 'boot/grub/i386-pc/eltorito.img'), embeddedConfig: embedded, prefix: '/boot/grub', workDir: work });
    xorrisoArgs.push(
      '-b', 'boot/grub/i386-pc/eltorito.img', '-no-emul-boot', '-boot-load-size', '4', '-boot-info-table', '--grub2-boot-info',
      '--grub2-mbr', path.join(pc, 'boot_hybrid.img'),
    );
  }

  // UEFI: a FAT image with the removable-media boot file
  const platform: GrubPlatform = efiPlatform[system.arch];
  const efiModules = await grubModuleDir(platform, system, { log: ctx.log });
  await copyModules(efiModules, path.join(tree, 'boot/grub', platform));
  const efiBinary = path.join(work, efiBootFile[system.arch]);
  await grubMkimage({ platform, moduleDir: efiModules, out: efiBinary, embeddedConfig: embedded, prefix: '/boot/grub', workDir: work });
  const efiImg = path.join(tree, 'boot/grub/efi.img');
  const efiBytes = Math.max(4, Math.ceil(((await stat(efiBinary)).size + MIB) / MIB)) * MIB;
  await makeFat(efiImg, { label: 'CAIRN_EFI', serial: fatSerial(stableUuid(`${seed}/iso-efi`)), bytes: efiBytes });
  await copyIntoFat(efiImg, [{ src: efiBinary, dest: `EFI/BOOT/${efiBootFile[system.arch]}` }], epoch);
  xorrisoArgs.push('--efi-boot', 'boot/grub/efi.img', '-efi-boot-part', '--efi-boot-image', '--protective-msdos-label');

  await clampTimes(tree, epoch);
  const file = `${artifactStem(system)}.iso`;
  const out = path.join(ctx.outDir, file);
  await rm(out, { force: true });
  ctx.log(`iso: xorriso ${file}`);
  await run(
    'xorriso',
    [
      '-as', 'mkisofs', '-graft-points', '-quiet',
      `--modification-date=${xorrisoDate(epoch)}`, '--set_all_file_dates', 'set_to_mtime', '--gpt_disk_guid', stableUuid(`${seed}/iso-gpt`),
      '-volid', LIVE_LABEL, '-sysid', 'LINUX', '-r',
      ...xorrisoArgs,
      '-o', out, tree,
    ],
    { env: { SOURCE_DATE_EPOCH: String(epoch), TZ: 'UTC' } },
  );
  await rm(work, { recursive: true, force: true });
  const artifacts: Artifact[] = [{ file, format: 'iso', arch: system.arch }];
  return artifacts;
};

