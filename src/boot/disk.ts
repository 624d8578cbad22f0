/**
 * The partition table of a cairn disk, as a pure plan, for the builder's
 * disk images and for `cairn install` alike: GPT with an optional
 * BIOS boot partition (amd64), CAIRN_EFI (FAT32) and CAIRN_STATE (ext4,
 * last, so the init can grow it to fill the disk on first boot). A board
 * (boards/) may ask for MBR and its own boot partition instead of
 * CAIRN_EFI (the Raspberry Pi's firmware reads only the first FAT
 * partition of an MBR disk).
 */
import { createHash } from 'node:crypto';
import type { Arch } from '../builder/types.js';

/** A uuid derived from a seed: the same seed, the same uuid. */
export function stableUuid(seed: string): string {
  const h = createHash('sha256').update(seed).digest();
  h[6] = (h[6]! & 0x0f) | 0x50; // version 5 style
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

export const SECTOR = 512;
/** On the live medium: the disk's boot loader files and menu, which `cairn install` writes (src/install). */
export const INSTALL_DIR = 'cairn/install';
export const MIB = 1024 * 1024;
const MIB_SECTORS = MIB / SECTOR;

export const GPT_TYPES = {
  bios: '21686148-6449-6E6F-744E-656564454649',
  efi: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
  linux: '0FC63DAF-8483-4772-8E79-3D69D8477DE4',
} as const;

/** MBR partition types (sfdisk's hex ids). */
export const MBR_TYPES = { fat32lba: 'c', linux: '83' } as const;

export interface PlannedPartition {
  name: string;
  /** GPT: the partition name, when it is not `name` (a firmware that looks a partition up by its own name). */
  partName?: string;
  /** A GPT type uuid, or an MBR type id. */
  type: string;
  uuid: string;
  /** first sector */
  start: number;
  /** length in sectors */
  size: number;
}

export interface DiskPlan {
  /** total image size in bytes */
  bytes: number;
  table: 'gpt' | 'dos';
  /** GPT: a uuid; MBR: the 32-bit disk identifier as 0x…. */
  labelId: string;
  partitions: PlannedPartition[];
}

export interface DiskPlanInput {
  arch: Arch;
  /** bytes the EFI partition needs (rounded up to whole MiB; at least 64 MiB for FAT32) */
  efiBytes: number;
  /** bytes the state file system needs */
  stateBytes: number;
  /** seed for the disk's and partitions' ids (e.g. name, version, arch) */
  seed: string;
  /** A board's layout: MBR and its boot partition first (instead of GPT and CAIRN_EFI). */
  board?: { table: 'dos' | 'gpt'; boot: { label: string; mib: number; mbrType: string; partName?: string }; statePartName?: string };
}

function mibCeil(bytes: number): number {
  return Math.max(1, Math.ceil(bytes / MIB));
}

/** Lays the partitions out on 1 MiB boundaries, with 1 MiB free at the end for the backup GPT. */
export function planDisk(input: DiskPlanInput): DiskPlan {
  const parts: PlannedPartition[] = [];
  const table = input.board?.table ?? 'gpt';
  const dos = table === 'dos';
  let next = MIB_SECTORS; // partitions start at 1 MiB
  const add = (name: PlannedPartition['name'], type: string, mib: number, partName?: string): void => {
    parts.push({ name, ...(partName && !dos ? { partName } : {}), type, uuid: stableUuid(`${input.seed}/${name}`), start: next, size: mib * MIB_SECTORS });
    next += mib * MIB_SECTORS;
  };
  if (input.board) {
    const boot = input.board.boot;
    add(boot.label, dos ? boot.mbrType : GPT_TYPES.efi, Math.max(boot.mib, 64, mibCeil(input.efiBytes)), boot.partName);
  } else {
    if (input.arch === 'amd64') add('BIOS', GPT_TYPES.bios, 1);
    add('CAIRN_EFI', GPT_TYPES.efi, Math.max(64, mibCeil(input.efiBytes)));
  }
  add('CAIRN_STATE', dos ? MBR_TYPES.linux : GPT_TYPES.linux, mibCeil(input.stateBytes), input.board?.statePartName);
  const labelId = dos ? `0x${stableUuid(`${input.seed}/disk`).slice(0, 8)}` : stableUuid(`${input.seed}/disk`);
  // MBR needs no backup table at the end; GPT keeps 1 MiB for it.
  return { bytes: (next + (dos ? 0 : MIB_SECTORS)) * SECTOR, table, labelId, partitions: parts };
}

/** The plan as an sfdisk script. */
export function sfdiskScript(plan: DiskPlan): string {
  if (plan.table === 'dos') {
    const lines = ['label: dos', `label-id: ${plan.labelId}`, 'unit: sectors', 'sector-size: 512', ''];
    // MBR partitions have no names or uuids: the file systems' labels name them.
    plan.partitions.forEach((p, i) => lines.push(`start=${p.start}, size=${p.size}, type=${p.type}${i === 0 ? ', bootable' : ''}`));
    return lines.join('\n') + '\n';
  }
  const lines = ['label: gpt', `label-id: ${plan.labelId}`, 'unit: sectors', `first-lba: ${MIB_SECTORS}`, 'sector-size: 512', ''];
  for (const p of plan.partitions) {
    lines.push(`start=${p.start}, size=${p.size}, type=${p.type}, uuid=${p.uuid}, name="${p.partName ?? p.name}"`);
  }
  return lines.join('\n') + '\n';
}

/**
 * Bytes an ext4 file system needs to hold `contentBytes` of files (in
 * `files` files): the content rounded to blocks, inode tables, the journal,
 * and room for the first boot to seed /var, /etc and /home.
 */
export function stateFsBytes(contentBytes: number, files: number): number {
  const blocks = contentBytes + files * 4096;
  const withOverhead = blocks * 1.08 + 64 * MIB; // metadata, journal (up to 64 MiB for large file systems)
  return Math.max(256 * MIB, Math.ceil((withOverhead + 128 * MIB) / MIB) * MIB);
}

/**
 * GRUB's BIOS boot code for a disk, as grub-bios-setup writes it: boot.img
 * (one sector) pointed at core.img, which is written whole into the BIOS
 * boot partition at `coreSector`. Returns the 440 bytes of MBR code (the
 * partition table after them is kept) and core.img with its block list set.
 */
export function biosBootCode(bootImg: Buffer, coreImg: Buffer, coreSector: number): { mbrCode: Buffer; core: Buffer } {
  const boot = Buffer.from(bootImg);
  const core = Buffer.from(coreImg);
  if (boot.length !== SECTOR) throw new Error(`GRUB's boot.img is ${boot.length} bytes, not one sector`);
  // boot.img: the sector to load diskboot.img (core's first sector) from
  boot.writeBigUInt64LE(BigInt(coreSector), 0x5c);
  // hard disk: ignore a BIOS that passes a wrong boot drive (as grub-bios-setup does)
  boot[0x66] = 0x90;
  boot[0x67] = 0x90;
  // diskboot.img: the rest of core.img follows it directly
  const list = SECTOR - 12;
  core.writeBigUInt64LE(BigInt(coreSector + 1), list);
  const len = core.readUInt16LE(list + 8);
  const needed = Math.ceil(core.length / SECTOR) - 1;
  if (len !== needed) throw new Error(`core.img blocklist says ${len} sectors, the file has ${needed}`);
  return { mbrCode: boot.subarray(0, 440), core };
}
