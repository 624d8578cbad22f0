/**
 * What `cairn install` may do to a disk, decided from plain values (lsblk's
 * JSON, the sizes of what is installed) before anything is written: the
 * target must be a whole disk that is writable, does not hold the running
 * system, is large enough, and holds no data unless the user said to erase
 * it. With `no_format` the disk must already have cairn's partitions.
 */
import { GPT_TYPES, MIB, planDisk, stateFsBytes, type DiskPlan } from '../boot/disk.js';
import type { Arch } from '../builder/types.js';
import { UserError } from '../errors.js';

/** lsblk's columns the installer reads (lsblk -J -b -o ...). */
export const LSBLK_COLUMNS = 'NAME,PATH,SIZE,MODEL,TYPE,RO,RM,PTTYPE,PARTTYPE,FSTYPE,LABEL,MOUNTPOINTS';

export interface BlockDevice {
  name: string;
  path: string;
  size: number;
  model?: string;
  type: string;
  ro: boolean;
  rm: boolean;
  pttype?: string;
  parttype?: string;
  fstype?: string;
  label?: string;
  mountpoints: string[];
  children: BlockDevice[];
}

const LIVE_LABELS = new Set(['CAIRN_LIVE']);

function flag(v: unknown): boolean {
  return v === true || v === 1 || v === '1' || v === 'true';
}

function text(v: unknown): string | undefined {
  return typeof v === 'string' && v.trim() !== '' ? v.trim() : undefined;
}

/** The devices of `lsblk -J -b -o LSBLK_COLUMNS`; older lsblk prints numbers and flags as strings. */
export function parseLsblk(json: string): BlockDevice[] {
  let doc: unknown;
  try {
    doc = JSON.parse(json);
  } catch (e) {
    throw new Error(`lsblk printed no JSON (${(e as Error).message})`);
  }
  const list = (doc as { blockdevices?: unknown }).blockdevices;
  if (!Array.isArray(list)) throw new Error('lsblk printed no "blockdevices" list');
  const one = (d: Record<string, unknown>): BlockDevice => {
    const name = String(d.name ?? '');
    const mounts = Array.isArray(d.mountpoints) ? d.mountpoints : [d.mountpoint];
    return {
      name,
      path: text(d.path) ?? `/dev/${name}`,
      size: Number(d.size ?? 0),
      model: text(d.model),
      type: String(d.type ?? ''),
      ro: flag(d.ro),
      rm: flag(d.rm),
      pttype: text(d.pttype),
      parttype: text(d.parttype)?.toUpperCase(),
      fstype: text(d.fstype),
      label: text(d.label),
      mountpoints: mounts.filter((m): m is string => typeof m === 'string' && m !== ''),
      children: Array.isArray(d.children) ? d.children.map((c) => one(c as Record<string, unknown>)) : [],
    };
  };
  return list.map((d) => one(d as Record<string, unknown>));
}

/** `blkid -p -o export` output as a map (TYPE, LABEL, PTTYPE, PART_ENTRY_TYPE...). */
export function parseBlkidExport(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line.trim());
    if (m) out[m[1]!] = m[2]!;
  }
  return out;
}

/**
 * A device with what a probe of its content found. lsblk takes file
 * systems, labels and partition tables from udev's database, which a node
 * without udevd does not have: the installer probes each device itself.
 */
export function withProbe(d: BlockDevice, p: Record<string, string>): BlockDevice {
  return {
    ...d,
    ...(p.TYPE ? { fstype: p.TYPE } : {}),
    ...(p.LABEL ? { label: p.LABEL } : {}),
    ...(p.PTTYPE ? { pttype: p.PTTYPE } : {}),
    ...(p.PART_ENTRY_TYPE ? { parttype: p.PART_ENTRY_TYPE.toUpperCase() } : {}),
  };
}

/** Every device of a tree, the disk first. */
export function flatten(d: BlockDevice): BlockDevice[] {
  return [d, ...d.children.flatMap(flatten)];
}

export function humanSize(bytes: number): string {
  if (bytes >= 1024 ** 3) return `${(bytes / 1024 ** 3).toFixed(1)} GiB`;
  if (bytes >= MIB) return `${Math.round(bytes / MIB)} MiB`;
  return `${Math.ceil(bytes / 1024)} KiB`;
}

/** A disk as the installer lists it: `/dev/vdb  8.0 GiB  QEMU HARDDISK`. */
export function describeDisk(d: BlockDevice): string {
  return [d.path, humanSize(d.size), d.model, d.rm ? 'removable' : undefined].filter(Boolean).join('  ');
}

/** The disks one can install to: whole disks (no CD drives, loop or RAM devices). */
export function candidateDisks(devices: BlockDevice[]): BlockDevice[] {
  return devices.filter((d) => d.type === 'disk' && !/^(loop|ram|zram)/.test(d.name));
}

/** Why a disk holds the running system, or undefined: something on it is mounted, or it is the live medium. */
export function runningSystemOn(d: BlockDevice): string | undefined {
  for (const p of flatten(d)) {
    if (p.mountpoints.length) return `${p.path} is mounted at ${p.mountpoints.join(', ')}`;
    if (p.label && LIVE_LABELS.has(p.label)) return `${p.path} is the live medium (${p.label})`;
  }
  return undefined;
}

/** What is on a disk, for the "holds data" message: its table and its partitions' labels or file systems. */
export function contentsOf(d: BlockDevice): string | undefined {
  const table = d.pttype ? (d.pttype === 'dos' ? 'an MBR partition table' : `a ${d.pttype.toUpperCase()} partition table`) : undefined;
  const parts = d.children.map((c) => `${c.path}${c.label ? ` "${c.label}"` : ''}${c.fstype ? ` (${c.fstype})` : ''}`);
  if (parts.length) return `${table ? `${table} with ` : ''}${parts.join(', ')}`;
  if (table) return table;
  if (d.fstype) return `a${/^[aeiou]/i.test(d.fstype) ? 'n' : ''} ${d.fstype} file system${d.label ? ` "${d.label}"` : ''}`;
  return undefined;
}

export interface InstallSizes {
  arch: Arch;
  /** Bytes of the version's files (kernel, initrd, squashfs, release record). */
  versionBytes: number;
  /** Bytes of the EFI partition's files. */
  efiBytes: number;
}

/** The partition table an install lays out: the builder's (src/boot/disk.ts), with ids of this install's own. */
export function installDiskPlan(sizes: InstallSizes, seed: string): DiskPlan {
  // Room for the active version, an upgrade on trial beside it, and the upgrade's download, as a raw image has.
  return planDisk({ arch: sizes.arch, efiBytes: sizes.efiBytes * 1.2 + 8 * MIB, stateBytes: stateFsBytes(sizes.versionBytes * 4, 64), seed });
}

export interface TargetRequest {
  device: string;
  force?: boolean;
  noFormat?: boolean;
}

export interface Target {
  disk: BlockDevice;
  /** With no_format: the existing partitions to write into. */
  existing?: { efi: BlockDevice; state: BlockDevice; bios?: BlockDevice };
}

const HINT_DEVICE = 'give one of the disks above as install.device (or cairn install --device), or run sudo cairn install to choose one';

/**
 * Checks a target disk against everything that must hold before anything is
 * written; throws a UserError that says what is wrong and what to do.
 */
export function checkTarget(devices: BlockDevice[], req: TargetRequest, plan: DiskPlan): Target {
  const disks = candidateDisks(devices);
  const listing = disks.length ? `the disks here: ${disks.map(describeDisk).join('; ')}` : 'this machine has no disk to install to';
  const all = devices.flatMap(flatten);
  const named = all.find((d) => d.path === req.device || `/dev/${d.name}` === req.device);
  if (!named) throw new UserError(`there is no disk ${req.device} (${listing})`, HINT_DEVICE);
  if (named.type === 'part') {
    const parent = devices.find((d) => flatten(d).includes(named));
    throw new UserError(`${req.device} is a partition, not a whole disk`, `install to the disk itself${parent ? `, ${parent.path}` : ''}: cairn lays out its own partitions`);
  }
  if (named.type === 'rom') throw new UserError(`${req.device} is a CD/DVD drive (${listing})`, HINT_DEVICE);
  if (named.type !== 'disk' || !disks.includes(named)) throw new UserError(`${req.device} is a ${named.type || 'device'}, not a disk (${listing})`, HINT_DEVICE);
  if (named.ro) throw new UserError(`${req.device} is read-only`, 'check the write-protect switch of an SD card or USB stick, or choose another disk');
  const running = runningSystemOn(named);
  if (running) throw new UserError(`${req.device} holds the running system: ${running}`, 'install to another disk; cairn does not overwrite the disk it runs from');
  if (named.size < plan.bytes) {
    throw new UserError(`${req.device} is too small: ${humanSize(named.size)}, and cairn needs at least ${humanSize(plan.bytes)}`, 'choose a larger disk');
  }
  if (req.noFormat) {
    const parts = named.children;
    const efi = parts.find((p) => p.label === 'CAIRN_EFI');
    const state = parts.find((p) => p.label === 'CAIRN_STATE');
    const missing = [!efi && 'CAIRN_EFI', !state && 'CAIRN_STATE'].filter(Boolean);
    if (missing.length || !efi || !state) {
      throw new UserError(`no_format is set but ${req.device} has no ${missing.join(' and ')} partition`, 'partition it first (a GPT with a FAT32 partition labelled CAIRN_EFI and an ext4 one labelled CAIRN_STATE), or install without no_format');
    }
    if (efi.fstype !== 'vfat') throw new UserError(`no_format: ${efi.path} (CAIRN_EFI) holds ${efi.fstype ?? 'no file system'}, not FAT`, 'format it with mkfs.vfat -F 32 -n CAIRN_EFI, or install without no_format');
    if (state.fstype !== 'ext4') throw new UserError(`no_format: ${state.path} (CAIRN_STATE) holds ${state.fstype ?? 'no file system'}, not ext4`, 'format it with mkfs.ext4 -L CAIRN_STATE, or install without no_format');
    const bios = parts.find((p) => p.parttype === GPT_TYPES.bios);
    return { disk: named, existing: { efi, state, ...(bios ? { bios } : {}) } };
  }
  const contents = contentsOf(named);
  if (contents && !req.force) {
    throw new UserError(
      `${req.device} is not empty: it holds ${contents}; nothing was written`,
      'to erase it and install, set install.force: true (cairn install --force), or confirm the erase in the interactive installer (sudo cairn install)',
    );
  }
  return { disk: named };
}

/** The path of partition `n` of a disk as the kernel names it (sda1, nvme0n1p1, mmcblk0p1). */
export function partitionPath(disk: string, n: number): string {
  return /\d$/.test(disk) ? `${disk}p${n}` : `${disk}${n}`;
}
