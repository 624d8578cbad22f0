/**
 * GRUB for the ISO and the raw disk: its configuration (pure text), the
 * environment block that holds the version pointers, where its modules come
 * from, and the core images (grub-mkimage) for BIOS and UEFI.
 *
 * Modules come from, in order: the image's root (if its spec installs a
 * grub-*-bin package), the build host (/usr/lib/grub/<platform>), or the
 * Debian package for the target arch unpacked once into the cache with
 * `mmdebstrap --variant=extract` (arm64 and armhf GRUB cannot be installed
 * on an amd64 host).
 */
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Arch, SystemArtifacts } from '../types.js';
import { biosBootCode } from '../../boot/disk.js';
import { renderStateGrubCfg } from '../../boot/grub.js';
import { GRUB_DIR } from '../../boot/state.js';
import { fetchDeb } from '../debfetch.js';
import { joinArgs, kernelArgs, run } from './common.js';

export type GrubPlatform = 'i386-pc' | 'x86_64-efi' | 'arm64-efi' | 'arm-efi';

/** The Debian package (and its arch) holding each platform's modules. */
export const grubPackage: Record<GrubPlatform, { pkg: string; debArch: string }> = {
  'i386-pc': { pkg: 'grub-pc-bin', debArch: 'amd64' },
  'x86_64-efi': { pkg: 'grub-efi-amd64-bin', debArch: 'amd64' },
  'arm64-efi': { pkg: 'grub-efi-arm64-bin', debArch: 'arm64' },
  'arm-efi': { pkg: 'grub-efi-arm-bin', debArch: 'armhf' },
};

export const efiPlatform: Record<Arch, GrubPlatform> = { amd64: 'x86_64-efi', arm64: 'arm64-efi', armv7: 'arm-efi' };
/** The removable-media boot file name UEFI firmware looks for. */
export const efiBootFile: Record<Arch, string> = { amd64: 'BOOTX64.EFI', arm64: 'BOOTAA64.EFI', armv7: 'BOOTARM.EFI' };

/** Modules built into every core image, so nothing is loaded from disk at boot. */
export const CORE_MODULES: readonly string[] = [
  'part_gpt', 'part_msdos', 'fat', 'ext2', 'iso9660', 'search', 'search_label', 'search_fs_uuid', 'search_fs_file',
  'normal', 'configfile', 'linux', 'echo', 'test', 'loadenv', 'gzio', 'xzio', 'zstd', 'ls', 'cat', 'halt',
  'reboot', 'sleep', 'true', 'terminal', 'regexp', 'minicmd',
];
const PLATFORM_MODULES: Record<GrubPlatform, readonly string[]> = {
  'i386-pc': ['biosdisk', 'serial', 'vga', 'video', 'video_bochs', 'video_cirrus'],
  'x86_64-efi': ['serial', 'efi_gop', 'efi_uga', 'all_video'],
  'arm64-efi': ['serial', 'efi_gop', 'all_video'],
  'arm-efi': ['serial', 'efi_gop', 'all_video'],
};

/** Where GRUB's files live on the state partition. */
export const GRUB_DIR_ON_STATE = GRUB_DIR;

export interface GrubDirOptions {
  log?: (line: string) => void;
  /** Debian mirror for fetching the modules (default deb.debian.org). */
  mirror?: string;
  suite?: string;
}

/** The folder with `<platform>`'s modules (…/usr/lib/grub/<platform>). */
export async function grubModuleDir(platform: GrubPlatform, system: Pick<SystemArtifacts, 'rootfs'>, opts: GrubDirOptions = {}): Promise<string> {
  const inRoot = path.join(system.rootfs, 'usr/lib/grub', platform);
  if (existsSync(path.join(inRoot, 'kernel.img'))) return inRoot;
  const onHost = path.join('/usr/lib/grub', platform);
  if (existsSync(path.join(onHost, 'kernel.img'))) return onHost;
  const { pkg, debArch } = grubPackage[platform];
  const root = await fetchDeb({ pkg, debArch, suite: opts.suite, mirror: opts.mirror, expect: `usr/lib/grub/${platform}/kernel.img`, why: `GRUB for ${platform}`, log: opts.log });
  return path.join(root, 'usr/lib/grub', platform);
}

/** The GRUB core image for a platform: modules built in, the config embedded. */
export async function grubMkimage(opts: {
  platform: GrubPlatform;
  moduleDir: string;
  out: string;
  embeddedConfig: string;
  prefix: string;
  workDir: string;
  /** The image format when it is not the platform's own (i386-pc-eltorito for a CD). */
  format?: string;
}): Promise<void> {
  const cfg = path.join(opts.workDir, `embedded-${opts.format ?? opts.platform}.cfg`);
  await writeFile(cfg, opts.embeddedConfig);
  const available = CORE_MODULES.concat(PLATFORM_MODULES[opts.platform]).filter((m) => existsSync(path.join(opts.moduleDir, `${m}.mod`)));
  const format = opts.format ?? opts.platform;
  await run('grub-mkimage', ['-O', format, '-d', opts.moduleDir, '-p', opts.prefix, '-c', cfg, '-o', opts.out, ...available]);
}

/** The config built into a disk's core images: find CAIRN_STATE and read grub.cfg there. */
export function renderEmbeddedConfig(): string {
  return [
    'search --no-floppy --label CAIRN_STATE --set=root',
    `set prefix=($root)${GRUB_DIR_ON_STATE}`,
    '',
  ].join('\n');
}

function terminalSetup(arch: Arch): string[] {
  const video = ['if [ "$grub_platform" = efi ]; then insmod all_video; fi'];
  if (arch === 'amd64') {
    return [...video, 'serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1', 'terminal_input console serial', 'terminal_output console serial'];
  }
  return [...video, 'terminal_input console', 'terminal_output console'];
}

/** GRUB's menu for the live ISO: the system, and the same with a rescue shell and tracing. */
export function renderLiveGrubCfg(system: Pick<SystemArtifacts, 'name' | 'version' | 'arch' | 'cmdline'>): string {
  const args = kernelArgs('live', system.arch, system.cmdline);
  const title = `cairn ${system.name} ${system.version}`;
  return [
    '# cairn live medium',
    ...terminalSetup(system.arch),
    'set timeout=3',
    'set default=0',
    '',
    `menuentry "${title} (live)" --id cairn-live {`,
    `  linux /cairn/vmlinuz ${args}`,
    '  initrd /cairn/initrd',
    '}',
    `menuentry "${title} (live, rescue shell)" --id cairn-rescue {`,
    `  linux /cairn/vmlinuz ${joinArgs(args, 'cairn.rescue cairn.debug')}`,
    '  initrd /cairn/initrd',
    '}',
    '',
  ].join('\n');
}

/** GRUB's menu on the state partition: see src/boot/grub.ts. */
export function renderDiskGrubCfg(system: Pick<SystemArtifacts, 'arch' | 'cmdline'>): string {
  return renderStateGrubCfg({ terminal: terminalSetup(system.arch), defaultArgs: kernelArgs('state', system.arch, system.cmdline) });
}

export { renderGrubEnv, parseGrubEnv } from '../../boot/grubenv.js';

/** biosBootCode (src/boot/disk.ts) for boot.img and core.img files. */
export async function biosBootSectors(bootImgFile: string, coreImgFile: string, coreSector: number): Promise<{ mbrCode: Buffer; core: Buffer }> {
  return biosBootCode(await readFile(bootImgFile), await readFile(coreImgFile), coreSector);
}

/**
 * The boot loader files of a cairn disk (raw images, and what `cairn
 * install` writes onto a disk from the ISO's cairn/install/): the UEFI
 * removable-media file, and on amd64 GRUB's BIOS boot.img and core.img;
 * each core image finds CAIRN_STATE and reads cairn/grub/grub.cfg there.
 */
export interface DiskBootImages {
  efi: { name: string; file: string };
  bios?: { bootImg: string; coreImg: string };
}

export async function diskBootImages(system: Pick<SystemArtifacts, 'arch' | 'rootfs'>, workDir: string, log: (l: string) => void): Promise<DiskBootImages> {
  const name = efiBootFile[system.arch];
  const efiImage = path.join(workDir, name);
  const efiModules = await grubModuleDir(efiPlatform[system.arch], system, { log });
  await grubMkimage({ platform: efiPlatform[system.arch], moduleDir: efiModules, out: efiImage, embeddedConfig: renderEmbeddedConfig(), prefix: GRUB_DIR_ON_STATE, workDir });
  const images: DiskBootImages = { efi: { name, file: efiImage } };
  if (system.arch === 'amd64') {
    const pcModules = await grubModuleDir('i386-pc', system, { log });
    const coreImg = path.join(workDir, 'core.img');
    await grubMkimage({ platform: 'i386-pc', moduleDir: pcModules, out: coreImg, embeddedConfig: renderEmbeddedConfig(), prefix: GRUB_DIR_ON_STATE, workDir });
    images.bios = { bootImg: path.join(pcModules, 'boot.img'), coreImg };
  }
  return images;
}
