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
import { joinArgs } from '../../src/builder/outputs/common.js';
import { debianArch, type SystemArtifacts } from '../../src/builder/types.js';
import { UserError } from '../../src/errors.js';
import data from './board.json' with { type: 'json' };

const board = data as BoardData & {
  firmware: { package: string; components: string[]; dir: string; files: string[] };
  deviceTrees: string[];
};

/** The size of cairn-active.txt: one sector, rewritten in place when the default version changes. */
export const ACTIVE_FILE_BYTES = 512;
export const ACTIVE_FILE = 'cairn-active.txt';

/** The folder of a version on the boot partition (os_prefix, with its trailing slash). */
export function versionPrefix(version: string): string {
  return `cairn/${version}/`;
}

/** config.txt: the same for every version; the version comes from cairn-active.txt (or tryboot.txt's own os_prefix). */
export function renderConfigTxt(system: Pick<SystemArtifacts, 'arch'>, osPrefixLine = `include ${ACTIVE_FILE}`): string {
  return [
    '# Raspberry Pi firmware settings, written by cairn build (boards/rpi4).',
    '# The version that boots is named in cairn-active.txt; cairn upgrade',
    '# tries a new one once through tryboot.txt.',
    '[pi4]',
    ...(system.arch === 'arm64' ? ['arm_64bit=1'] : []),
    'enable_uart=1',
    'upstream_kernel=1',
    'disable_overscan=1',
    'kernel=vmlinuz',
    'initramfs initrd followkernel',
    '[all]',
    osPrefixLine,
    '',
  ].join('\n');
}

/** cairn-active.txt for `version`: os_prefix, then comment padding to exactly one sector. */
export function renderActiveFile(version: string): Buffer {
  const line = `os_prefix=${versionPrefix(version)}\n`;
  const buf = Buffer.alloc(ACTIVE_FILE_BYTES, ' ');
  if (line.length + 2 > ACTIVE_FILE_BYTES) throw new Error(`version name too long for ${ACTIVE_FILE}: ${version}`);
  buf.write(line, 0, 'ascii');
  buf.write('#', line.length, 'ascii');
  buf.write('\n', ACTIVE_FILE_BYTES - 1, 'ascii');
  return buf;
}

/** The spec's command line without console= (the board names its own consoles). */
function withoutConsoles(cmdline: string): string {
  return cmdline.split(/\s+/).filter((a) => a !== '' && !a.startsWith('console=')).join(' ');
}

/** cmdline.txt of a version: the state boot of exactly that version, on the Pi's consoles. */
export function renderCmdlineTxt(system: Pick<SystemArtifacts, 'version' | 'cmdline'>): string {
  return `${joinArgs('cairn.mode=state', `cairn.version=${system.version}`, 'panic=10', board.console, withoutConsoles(system.cmdline))}\n`;
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

export const rpi4: BoardProfile = { ...board, bootFiles, cmdline: (system) => renderCmdlineTxt(system).trim() };
