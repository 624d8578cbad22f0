/**
 * Raspberry Pi 4 (Model B, Pi 400, CM4): the boot partition of its SD card.
 *
 * The Pi's firmware (start4*.elf, from Debian's raspi-firmware) reads the
 * first FAT partition of an MBR disk: config.txt, then the kernel, the
 * initramfs, the device tree and cmdline.txt. Each version has its own
 * folder there, cairn/<version>/, and config.txt points at one with
 * `os_prefix` through the one-sector file cairn-active.txt:
 *
 *   config.txt               arm_64bit (arm64), enable_uart, upstream_kernel,
 *                            kernel, initramfs, include cairn-active.txt
 *   cairn-active.txt         os_prefix=cairn/<version>/, padded to 512 bytes
 *   start4*.elf, fixup4*.dat the firmware
 *   cairn/<version>/         vmlinuz, initrd, cmdline.txt, bcm2711-*.dtb
 *
 * The device trees come from the kernel package of the image itself
 * (/usr/lib/linux-image-<release>/[broadcom/]), so they match its kernel.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { BoardData, BoardProfile, BootFile } from '../../src/builder/boards.js';
import { fetchDeb } from '../../src/builder/debfetch.js';
import { debianArch, type SystemArtifacts } from '../../src/builder/types.js';
import { UserError } from '../../src/errors.js';
import { boardCmdline, loaderCmdline, loaderRecord } from '../../src/boot/loader-args.js';
import data from './board.json' with { type: 'json' };
import { ACTIVE_FILE, renderActiveFile, versionPrefix } from './boot.js';

export { ACTIVE_FILE, ACTIVE_FILE_BYTES, renderActiveFile, versionPrefix } from './boot.js';

const board = data as BoardData & {
  firmware: { package: string; components: string[]; dir: string; files: string[] };
  deviceTrees: string[];
};

/** config.txt: the same for every version; the version comes from cairn-active.txt. */
export function renderConfigTxt(system: Pick<SystemArtifacts, 'arch'>): string {
  return [
    '# Raspberry Pi firmware settings, written by cairn build (boards/rpi4).',
    '# The version that boots is named in cairn-active.txt: the last one that',
    '# booted well. Its first stage starts a version on trial with kexec.',
    '[pi4]',
    ...(system.arch === 'arm64' ? ['arm_64bit=1'] : []),
    'enable_uart=1',
    'upstream_kernel=1',
    'disable_overscan=1',
    'kernel=vmlinuz',
    'initramfs initrd followkernel',
    '[all]',
    `include ${ACTIVE_FILE}`,
    '',
  ].join('\n');
}

/** The kernel command line of a version on the Pi: a state boot of exactly that version, on the Pi's consoles (its bootenv). */
export function rpi4Cmdline(system: Pick<SystemArtifacts, 'version' | 'cmdline'>): string {
  return boardCmdline(board.console, system.version, system.cmdline);
}

/** cmdline.txt of a version: its command line, and that the firmware does not count tries (the first stage chooses). */
export function renderCmdlineTxt(system: Pick<SystemArtifacts, 'version' | 'cmdline'>): string {
  return `${loaderCmdline(rpi4Cmdline(system))}\n`;
}

/** Where the kernel package keeps the Pi's device trees: broadcom/ on arm64, flat on armhf. */
function deviceTreeDir(system: Pick<SystemArtifacts, 'rootfs' | 'kernelRelease'>): string {
  const base = path.join(system.rootfs, 'usr/lib', `linux-image-${system.kernelRelease}`);
  const vendor = path.join(base, 'broadcom');
  return existsSync(vendor) ? vendor : base;
}

async function bootFiles(system: SystemArtifacts, ctx: { log: (line: string) => void }): Promise<BootFile[]> {
  const fw = board.firmware;
  const root = await fetchDeb({
    pkg: fw.package,
    debArch: debianArch[system.arch],
    components: fw.components,
    expect: path.join(fw.dir, fw.files[0]!),
    why: 'the Raspberry Pi 4 image (its boot firmware)',
    log: ctx.log,
  });
  const files: BootFile[] = [];
  const missingFw = fw.files.filter((f) => !existsSync(path.join(root, fw.dir, f)));
  if (missingFw.length) throw new UserError(`${fw.package} for ${debianArch[system.arch]} lacks ${missingFw.join(', ')}`, 'report this: the package layout changed');
  for (const f of fw.files) files.push({ src: path.join(root, fw.dir, f), dest: f });

  const dtDir = deviceTreeDir(system);
  const missingDt = board.deviceTrees.filter((d) => !existsSync(path.join(dtDir, d)));
  if (missingDt.length) {
    throw new UserError(
      `the image's kernel ${system.kernelRelease} has no ${missingDt.join(', ')} (looked in ${dtDir})`,
      `the rpi4 board needs a Debian kernel package with the Pi 4 device trees (${system.arch === 'armv7' ? 'linux-image-armmp-lpae' : 'linux-image-arm64'})`,
    );
  }
  const prefix = versionPrefix(system.version);
  files.push(
    { dest: 'config.txt', content: renderConfigTxt(system) },
    { dest: ACTIVE_FILE, content: renderActiveFile(system.version) },
    { src: system.kernel, dest: `${prefix}vmlinuz` },
    { src: system.initramfs, dest: `${prefix}initrd` },
    { dest: `${prefix}cmdline.txt`, content: renderCmdlineTxt(system) },
    ...board.deviceTrees.map((d) => ({ src: path.join(dtDir, d), dest: `${prefix}${d}` })),
  );
  return files;
}

/** On CAIRN_STATE: the record that tells the node its loader does not count tries (src/boot/loader.ts). */
async function stateFiles(): Promise<BootFile[]> {
  return [loaderRecord({ board: 'rpi4', console: board.console })];
}

export const rpi4: BoardProfile = { ...board, bootFiles, stateFiles, cmdline: rpi4Cmdline };
