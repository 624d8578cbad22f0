/**
 * L4TLauncher's boot menu as data: pure, so that the builder (./index.ts)
 * and a running node (src/boot/loader.ts) write the same bytes.
 */
import { loaderCmdline } from '../../src/boot/loader-args.js';
import { REL, type BootState } from '../../src/boot/state.js';
import data from './board.json' with { type: 'json' };

const board = data as typeof data & { disk: { statePartName: string } };

/** Where L4TLauncher reads its menu, relative to the APP partition's root. */
export const EXTLINUX_CONF = board.extlinux.path;
/** The partition name L4TLauncher looks for. */
export const ROOTFS_PARTNAME = board.disk.statePartName;

/** A version's folder on CAIRN_STATE, as an absolute path in L4TLauncher's view of that file system. */
function versionDir(version: string): string {
  return `/${REL.system}/${version}`;
}

export interface ExtlinuxEntry {
  version: string;
  /** The kernel command line of the version (its bootenv), without cairn.loader=fixed. */
  cmdline: string;
  /** A device tree in the version's dtb/ folder; without one the kernel gets the one UEFI holds (flashed with the same BSP). */
  fdt?: string;
}

export function extlinuxLabel(version: string): string {
  return `cairn-${version}`;
}

/** One LABEL block; L4TLauncher's keys are LABEL, MENU LABEL, LINUX, INITRD, FDT, APPEND. */
function renderEntry(e: ExtlinuxEntry, role: string): string[] {
  const dir = versionDir(e.version);
  return [
    `LABEL ${extlinuxLabel(e.version)}`,
    `      MENU LABEL cairn ${e.version} (${role})`,
    `      LINUX ${dir}/kernel`,
    `      INITRD ${dir}/initrd`,
    ...(e.fdt ? [`      FDT ${dir}/dtb/${e.fdt}`] : []),
    // ${cbootargs}: L4TLauncher's place for the arguments UEFI adds (it removes the token itself)
    `      APPEND \${cbootargs} ${loaderCmdline(e.cmdline)}`,
  ];
}

/**
 * extlinux.conf for L4TLauncher: DEFAULT is the state's active version,
 * the fallback (when installed) its second entry, chosen at the serial
 * console during TIMEOUT (tenths of a second).
 */
export function renderExtlinuxConf(state: Pick<BootState, 'active' | 'fallback'>, entries: readonly ExtlinuxEntry[]): string {
  const by = new Map(entries.map((e) => [e.version, e]));
  const active = by.get(state.active);
  if (!active) throw new Error(`extlinux.conf: no entry for the active version ${state.active}`);
  const fallback = state.fallback !== undefined && state.fallback !== state.active ? by.get(state.fallback) : undefined;
  return [
    '# NVIDIA L4TLauncher boot menu, written by cairn (boards/jetson) from the boot',
    '# state in /cairn/grub/grubenv: the active version first, then the fallback.',
    `TIMEOUT ${board.extlinux.timeout}`,
    `DEFAULT ${extlinuxLabel(active.version)}`,
    `MENU TITLE ${board.extlinux.menuTitle}`,
    '',
    ...renderEntry(active, 'active'),
    ...(fallback ? ['', ...renderEntry(fallback, 'fallback')] : []),
    '',
  ].join('\n');
}

