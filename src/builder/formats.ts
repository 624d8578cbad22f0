/**
 * The output formats: one table, one row per format, as LinuxKit does.
 * Everything else about formats derives from it: the `Format` type, the
 * arch checks, the host-tool checks, the CLI's list, the image spec
 * schema's enum and the writer the pipeline calls. Adding a format is
 * adding one row here and one writer file in outputs/.
 *
 * Boards (boards/) are profiles that shape the disk formats, not formats
 * of their own.
 */
import { UserError } from '../errors.js';
import type { HostTool } from './hostcheck.js';
import { iso } from './outputs/iso.js';
import { oci } from './outputs/oci.js';
import { pxe } from './outputs/pxe.js';
import { qcow2 } from './outputs/qcow2.js';
import { raw } from './outputs/raw.js';
import { ARCHES, type Arch, type OutputWriter } from './types.js';

export interface FormatRow {
  /** One line for the CLI's help and the README. */
  about: string;
  arches: readonly Arch[];
  /** Host tools the writer runs (beyond the build's own), with their Debian packages. */
  tools: readonly HostTool[];
  /** Boots through GRUB (its modules for the arch are needed). */
  grub: boolean;
  /** A disk image: a board profile can shape it (partition table, boot files). */
  disk: boolean;
  writer: OutputWriter;
}

/** What every disk image is assembled with (no loop devices: partition table and file systems from files). */
function diskTools(why: string): HostTool[] {
  return [
    { need: 'sfdisk', pkg: 'fdisk', why },
    { need: 'mkfs.vfat', pkg: 'dosfstools', why },
    { need: 'mcopy', pkg: 'mtools', why },
    { need: 'mke2fs', pkg: 'e2fsprogs', why },
    { need: 'debugfs', pkg: 'e2fsprogs', why },
  ];
}

export const FORMAT_TABLE = {
  iso: {
    about: 'live medium: BIOS + UEFI (amd64), UEFI (arm64)',
    arches: ['amd64', 'arm64'],
    tools: [
      { need: 'xorriso', pkg: 'xorriso', why: 'iso' },
      { need: 'grub-mkrescue', pkg: 'grub-common', why: 'iso' },
      { need: 'mformat', pkg: 'mtools', why: 'iso (UEFI image)' },
      { need: 'mkfs.vfat', pkg: 'dosfstools', why: 'iso (UEFI image)' },
    ],
    grub: true,
    disk: false,
    writer: iso,
  },
  pxe: {
    about: 'network boot: kernel, initrd, rootfs.squashfs and an iPXE script',
    arches: ['amd64', 'arm64', 'armv7'],
    tools: [],
    grub: false,
    disk: false,
    writer: pxe,
  },
  raw: {
    about: 'disk image: CAIRN_EFI + CAIRN_STATE, GRUB for BIOS and UEFI (a board\'s own layout with --board)',
    arches: ['amd64', 'arm64', 'armv7'],
    tools: [...diskTools('raw'), { need: 'grub-mkimage', pkg: 'grub-common', why: 'raw' }],
    grub: true,
    disk: true,
    writer: raw,
  },
  qcow2: {
    about: 'the raw disk image for QEMU and other hypervisors',
    arches: ['amd64', 'arm64', 'armv7'],
    tools: [...diskTools('qcow2'), { need: 'grub-mkimage', pkg: 'grub-common', why: 'qcow2' }, { need: 'qemu-img', pkg: 'qemu-utils', why: 'qcow2' }],
    grub: true,
    disk: true,
    writer: qcow2,
  },
  oci: {
    about: 'the upgrade image: an OCI archive that system-upgrade-controller runs',
    arches: ['amd64', 'arm64', 'armv7'],
    tools: [],
    grub: false,
    disk: false,
    writer: oci,
  },
} as const satisfies Record<string, FormatRow>;

export type Format = keyof typeof FORMAT_TABLE;

export const FORMATS = Object.keys(FORMAT_TABLE) as Format[];

export function formatRow(f: Format): FormatRow {
  return FORMAT_TABLE[f];
}

/** Every writer, by format (the pipeline's default). */
export function formatWriters(): Record<Format, OutputWriter> {
  return Object.fromEntries(FORMATS.map((f) => [f, FORMAT_TABLE[f].writer])) as Record<Format, OutputWriter>;
}

/** Debian's and other common names for our arches. */
const ARCH_ALIASES: Record<string, Arch> = { x86_64: 'amd64', aarch64: 'arm64', armhf: 'armv7', arm: 'armv7' };

export function parseArches(list: string): Arch[] {
  const out: Arch[] = [];
  const bad: string[] = [];
  for (const raw of list.split(',').map((s) => s.trim()).filter(Boolean)) {
    const a = (ARCHES as readonly string[]).includes(raw) ? (raw as Arch) : ARCH_ALIASES[raw];
    if (a) {
      if (!out.includes(a)) out.push(a);
    } else bad.push(raw);
  }
  if (bad.length) throw new UserError(`unknown arch ${bad.map((b) => `"${b}"`).join(', ')}`, `arches are ${ARCHES.join(', ')}`);
  if (out.length === 0) throw new UserError('no arch given', `arches are ${ARCHES.join(', ')}`);
  return out;
}

export function parseFormats(list: string): Format[] {
  const items = list.split(',').map((s) => s.trim()).filter(Boolean);
  const bad = items.filter((f) => !(FORMATS as readonly string[]).includes(f));
  if (bad.length) throw new UserError(`unknown format ${bad.map((b) => `"${b}"`).join(', ')}`, `formats are ${FORMATS.join(', ')}`);
  if (items.length === 0) throw new UserError('no format given', `formats are ${FORMATS.join(', ')}`);
  return [...new Set(items)] as Format[];
}

/** Every (arch, format) pair the build makes; an impossible pair is an error naming it. */
export function checkFormatArches(arches: Arch[], formats: Format[]): void {
  const bad = arches.flatMap((a) => formats.filter((f) => !formatRow(f).arches.includes(a)).map((f) => `${f} for ${a}`));
  if (bad.length) {
    throw new UserError(
      `cannot build ${bad.join(', ')}`,
      formats.map((f) => `${f}: ${formatRow(f).arches.join(', ')}`).join('; '),
    );
  }
}
