/**
 * NVIDIA Jetson Orin (AGX Orin, Orin NX, Orin Nano): a GPT disk for NVMe,
 * USB or SD that Orin's UEFI (in QSPI flash, written by NVIDIA's flash
 * tools) boots through L4TLauncher.
 *
 * Debian's arm64 kernel has no Tegra234 support, so the kernel, its modules
 * and the device trees come from NVIDIA's Jetson Linux R36 BSP that the
 * user passes as cairn build --bsp (src/builder/bsp.ts).
 *
 *   1 CAIRN_EFI (FAT32, GPT name "esp")   EFI/BOOT/BOOTAA64.efi: L4TLauncher from the BSP
 *   2 CAIRN_STATE (ext4, GPT name "APP")  boot/extlinux/extlinux.conf   the boot menu L4TLauncher reads
 *                                         cairn/system/<version>/       kernel, initrd, squashfs, ...,
 *                                                                       extlinux.conf (that version alone),
 *                                                                       dtb/tegra234-*.dtb
 *                                         cairn/grub/grubenv            the boot state (src/boot/state.ts)
 *
 * L4TLauncher (NVIDIA/edk2-nvidia, Silicon/NVIDIA/Application/L4TLauncher)
 * looks on the disk it was started from for the GPT partition named APP
 * (or APP_a/APP_b by its boot chain), reads boot\extlinux\extlinux.conf
 * there through UEFI's ext4 driver (edk2-platforms' Ext4Dxe, read only),
 * and boots the DEFAULT label's LINUX, INITRD (and FDT, when given) from
 * the same file system with APPEND as the command line. It reads
 * EFI\BOOT\grubaa64.efi first when its boot mode is GRUB; there is none
 * here, so it goes on to extlinux.conf.
 *
 * A/B is cairn's own: the versions are folders on CAIRN_STATE and the
 * pointers are cairn/grub/grubenv, as on every cairn disk; extlinux.conf is
 * written from those pointers (the active version as DEFAULT, the fallback
 * as the second entry). L4T's own rootfs A/B (partitions APP and APP_b,
 * UEFI variables RootfsStatusSlotA/B, nvbootctrl) needs two fixed rootfs
 * partitions flashed with ROOTFS_AB=1, which is not cairn's layout.
 */
import path from 'node:path';
import type { BoardData, BoardProfile, BootFile } from '../../src/builder/boards.js';
import type { SystemArtifacts } from '../../src/builder/types.js';
import { boardCmdline, loaderRecord } from '../../src/boot/loader-args.js';
import { REL } from '../../src/boot/state.js';
import { UserError } from '../../src/errors.js';
import data from './board.json' with { type: 'json' };
import { EXTLINUX_CONF, renderExtlinuxConf, type ExtlinuxEntry } from './extlinux.js';

export { EXTLINUX_CONF, ROOTFS_PARTNAME, extlinuxLabel, renderExtlinuxConf, type ExtlinuxEntry } from './extlinux.js';

const board = data as BoardData & { extlinux: { path: string; timeout: number; menuTitle: string } };

/** The kernel command line of a state boot of exactly this version, on Orin's consoles (ttyTCU0: the combined UART); its bootenv. */
export function jetsonCmdline(system: Pick<SystemArtifacts, 'version' | 'cmdline'>): string {
  return boardCmdline(board.console, system.version, system.cmdline);
}

function needBsp(system: SystemArtifacts) {
  if (!system.bsp) throw new UserError('the jetson image needs the BSP it was built from, and this system has none', 'build it with cairn build --board jetson --bsp PATH');
  return system.bsp;
}

/** The ESP: L4TLauncher as the removable-media boot application that Orin's UEFI starts. */
async function bootFiles(system: SystemArtifacts): Promise<BootFile[]> {
  return [{ src: needBsp(system).launcher, dest: 'EFI/BOOT/BOOTAA64.efi' }];
}

/** On CAIRN_STATE: the menu, the version's own extlinux.conf and the BSP's Orin device trees. */
async function stateFiles(system: SystemArtifacts): Promise<BootFile[]> {
  const bsp = needBsp(system);
  const entry: ExtlinuxEntry = { version: system.version, cmdline: jetsonCmdline(system) };
  const vdir = `${REL.system}/${system.version}`;
  return [
    { dest: EXTLINUX_CONF, content: renderExtlinuxConf({ active: system.version }, [entry]) },
    { dest: `${vdir}/extlinux.conf`, content: renderExtlinuxConf({ active: system.version }, [entry]) },
    ...bsp.dtbs.map((d) => ({ src: d, dest: `${vdir}/dtb/${path.basename(d)}` })),
    loaderRecord({ board: 'jetson', console: board.console }),
  ];
}

export const jetson: BoardProfile = { ...board, bootFiles, stateFiles, cmdline: jetsonCmdline };
