/**
 * raw: a GPT disk image assembled from files, without loop devices:
 *
 *   BIOS boot (amd64 only, 1 MiB)  GRUB's core.img for BIOS
 *   CAIRN_EFI (FAT32)              EFI/BOOT/BOOT{X64,AA64,ARM}.EFI; on armv7 also
 *                                  cairn/{vmlinuz,initrd} and extlinux/extlinux.conf
 *                                  for firmware that boots Linux itself (U-Boot)
 *   CAIRN_STATE (ext4)             cairn/system/<version>/{kernel,initrd,rootfs.squashfs,release.json}
 *                                  (a board may add files its bootloader reads here: boards/jetson)
 *                                  cairn/system/<version>/{bootenv,SHA256SUMS}
 *                                  cairn/grub/{grub.cfg,grubenv}  menu, boot state (src/boot)
 *                                  cairn/data/                what persists (/etc, /var, /home, /opt)
 *
 * Each file system is made in its own file (mkfs.vfat + mmd/mcopy,
 * mke2fs -d), the table written with sfdisk on the image file, and the
 * pieces put in place with dd conv=notrunc. GRUB's core images embed a
 * config that finds CAIRN_STATE by its label and reads cairn/grub/grub.cfg.
 */
import { lstat, mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { open } from 'node:fs/promises';
import path from 'node:path';
import type { Artifact, OutputWriter, SystemArtifacts } from '../types.js';
import { REL, renderState, renderVersionEnv } from '../../boot/state.js';
import { boardProfile } from '../boards.js';
import { artifactStem, clampTimes, imageSeed, kernelArgs, placeFile, run, sha256File } from './common.js';
import { type DiskPlan, MIB, SECTOR, planDisk, sfdiskScript, stateFsBytes } from '../../boot/disk.js';
import { biosBootSectors, diskBootImages, renderDiskGrubCfg } from './grub.js';

export const STATE_LABEL = 'CAIRN_STATE';
/**
 * CAIRN_STATE holds room for this many versions of the system's size: the
 * active one, the fallback, an upgrade on trial beside them, and the
 * archive of that upgrade while `cairn upgrade` downloads it (the image is
 * sparse: the room costs nothing until it is used).
 */
export const UPGRADE_ROOM = 4;
export const EFI_LABEL = 'CAIRN_EFI';

export interface RawImage {
  file: string;
  plan: DiskPlan;
}

/** Builds the raw disk image of a system at `out` (used by raw and qcow2). */
export async function buildRawImage(system: SystemArtifacts, workDir: string, out: string, log: (l: string) => void): Promise<RawImage> {
  const work = path.join(workDir, 'raw');
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  const epoch = system.sourceDateEpoch;
  const seed = await imageSeed(system);

  // the state partition's tree
  const tree = path.join(work, 'state');
  const vdir = path.join(tree, 'cairn/system', system.version);
  await placeFile(system.kernel, path.join(vdir, 'kernel'));
  await placeFile(system.initramfs, path.join(vdir, 'initrd'));
  await placeFile(system.squashfs, path.join(vdir, 'rootfs.squashfs'));
  await placeFile(system.release, path.join(vdir, 'release.json'));
  const board = system.board === undefined ? undefined : boardProfile(system.board);
  await writeFile(path.join(vdir, 'bootenv'), renderVersionEnv(board ? board.cmdline(system) : kernelArgs('state', system.arch, system.cmdline)));
  await writeFile(path.join(vdir, 'SHA256SUMS'), await versionSums(vdir));
  await mkdir(path.join(tree, 'cairn/data'), { recursive: true });
  await mkdir(path.join(tree, REL.grub), { recursive: true });
  if (!board) await writeFile(path.join(tree, REL.grub, 'grub.cfg'), renderDiskGrubCfg(system));
  await writeFile(path.join(tree, REL.grubenv), renderState({ active: system.version }));
  // what a board's bootloader reads from the state partition (Jetson: extlinux.conf, the device trees)
  for (const f of (await board?.stateFiles?.(system)) ?? []) {
    const to = path.join(tree, f.dest);
    if (f.src !== undefined) await placeFile(f.src, to);
    else {
      await mkdir(path.dirname(to), { recursive: true });
      await writeFile(to, f.content ?? '');
    }
  }
  await clampTimes(tree, epoch);
  let content = 0;
  for (const f of [system.kernel, system.initramfs, system.squashfs, system.release]) content += (await stat(f)).size;

  // the EFI partition's files (a board's boot partition instead, from its profile)
  const efiFiles: { src: string; dest: string }[] = [];
  let efiContent = 0;
  if (board) {
    const files = await board.bootFiles(system, { log });
    let n = 0;
    for (const f of files) {
      let src = f.src;
      if (src === undefined) {
        src = path.join(work, 'boot-files', String(n++));
        await mkdir(path.dirname(src), { recursive: true });
        await writeFile(src, f.content ?? '');
      }
      efiFiles.push({ src, dest: f.dest });
      efiContent += (await stat(src)).size;
    }
  }
  const bootImages = board ? undefined : await diskBootImages(system, work, log);
  if (bootImages) {
    efiFiles.push({ src: bootImages.efi.file, dest: `EFI/BOOT/${bootImages.efi.name}` });
    efiContent += (await stat(bootImages.efi.file)).size;
  }
  if (system.arch === 'armv7' && !board) {
    const ext = path.join(work, 'extlinux.conf');
    await writeFile(ext, renderExtlinux(system));
    efiFiles.push({ src: system.kernel, dest: 'cairn/vmlinuz' }, { src: system.initramfs, dest: 'cairn/initrd' }, { src: ext, dest: 'extlinux/extlinux.conf' });
    efiContent += (await stat(system.kernel)).size + (await stat(system.initramfs)).size;
  }

  const plan = planDisk({ arch: system.arch, efiBytes: efiContent * 1.2 + 8 * MIB, stateBytes: stateFsBytes(content * UPGRADE_ROOM, 16 * UPGRADE_ROOM), seed, board: board?.disk });
  const part = (name: string) => plan.partitions.find((p) => p.name === name)!;

  // CAIRN_EFI (or the board's boot partition): FAT32
  const efiLabel = board ? board.disk.boot.label : EFI_LABEL;
  const efi = part(efiLabel);
  const efiImg = path.join(work, 'efi.img');
  await makeSparse(efiImg, efi.size * SECTOR);
  await makeFat(efiImg, { label: efiLabel, serial: fatSerial(efi.uuid), fat: 32 });
  await copyIntoFat(efiImg, efiFiles, epoch);

  // CAIRN_STATE: ext4 from the tree
  const state = part(STATE_LABEL);
  const stateImg = path.join(work, 'state.img');
  await makeExt4(stateImg, tree, { label: STATE_LABEL, uuid: state.uuid, bytes: state.size * SECTOR, epoch });

  // the disk: table, then the pieces at their offsets
  await rm(out, { force: true });
  await makeSparse(out, plan.bytes);
  const script = path.join(work, 'sfdisk.txt');
  await writeFile(script, sfdiskScript(plan));
  await run('sh', ['-c', 'sfdisk --quiet --no-reread --no-tell-kernel "$1" < "$2"', 'sfdisk', out, script]);
  await ddInto(efiImg, out, efi.start);
  await ddInto(stateImg, out, state.start);

  if (bootImages?.bios) {
    const bios = part('BIOS');
    const { mbrCode, core: patched } = await biosBootSectors(bootImages.bios.bootImg, bootImages.bios.coreImg, bios.start);
    if (patched.length > bios.size * SECTOR) throw new Error(`GRUB core.img (${patched.length} bytes) does not fit the BIOS boot partition`);
    const fh = await open(out, 'r+');
    try {
      await fh.write(mbrCode, 0, mbrCode.length, 0);
      await fh.write(patched, 0, patched.length, bios.start * SECTOR);
    } finally {
      await fh.close();
    }
  }
  await rm(work, { recursive: true, force: true });
  return { file: out, plan };
}

/** sha256sum's lines for the files of a version folder (the first stage checks a trial's squashfs with them). */
export async function versionSums(dir: string): Promise<string> {
  const lines: string[] = [];
  for (const f of ['initrd', 'kernel', 'release.json', 'rootfs.squashfs']) lines.push(`${await sha256File(path.join(dir, f))}  ${f}\n`);
  return lines.join('');
}

/** extlinux.conf for firmware that boots Linux from the EFI partition itself (U-Boot's distro boot on armv7 boards). */
export function renderExtlinux(system: Pick<SystemArtifacts, 'name' | 'version' | 'arch' | 'cmdline'>): string {
  const args = kernelArgs('state', system.arch, system.cmdline);
  return [
    'default cairn',
    'timeout 3',
    'menu title cairn',
    'label cairn',
    `  menu label cairn ${system.name} ${system.version}`,
    '  kernel /cairn/vmlinuz',
    '  initrd /cairn/initrd',
    `  append ${args}`,
    '',
  ].join('\n');
}

/** The FAT volume serial of a partition: the first 32 bits of its (input-derived) uuid. */
export function fatSerial(uuid: string): string {
  return uuid.replace(/-/g, '').slice(0, 8);
}

/**
 * An empty FAT file system in `file` (its size is the file's). --invariant
 * fixes the boot sector's and root folder's time based values; the serial
 * given after it wins over its constant one.
 */
export async function makeFat(file: string, opts: { label: string; serial: string; fat?: 12 | 16 | 32; bytes?: number }): Promise<void> {
  if (opts.bytes !== undefined) await makeSparse(file, opts.bytes);
  const fat = opts.fat ? ['-F', String(opts.fat)] : [];
  await run('mkfs.vfat', [...fat, '-s', '1', '-n', opts.label, '--invariant', '-i', opts.serial, file]);
}

/**
 * Copies files into a FAT image with mtools, folders made on the way. Every
 * entry gets SOURCE_DATE_EPOCH as its time (mtools reads it; no -m: the
 * sources' own times are those of this build).
 */
export async function copyIntoFat(img: string, files: readonly { src: string; dest: string }[], epoch: number): Promise<void> {
  const env = { MTOOLS_SKIP_CHECK: '1', SOURCE_DATE_EPOCH: String(epoch), TZ: 'UTC' };
  const dirs = new Set<string>();
  for (const f of files) {
    let d = path.posix.dirname(f.dest);
    const chain: string[] = [];
    while (d !== '.' && !dirs.has(d)) {
      chain.unshift(d);
      d = path.posix.dirname(d);
    }
    for (const c of chain) {
      await run('mmd', ['-i', img, `::/${c}`], { env });
      dirs.add(c);
    }
    await run('mcopy', ['-i', img, f.src, `::/${f.dest}`], { env });
  }
}

/** `YYYYMMDDHHMMSS` in UTC, as debugfs takes times. */
function debugfsTime(epoch: number): string {
  return new Date(epoch * 1000).toISOString().replace(/\.\d+Z$/, '').replace(/[-T:]/g, '');
}

/**
 * An ext4 file system holding `tree`, byte-identical for the same inputs:
 * uuid and directory hash seed given, mke2fs' own times at the epoch
 * (E2FSPROGS_FAKE_TIME), and each inode's change time, which mke2fs -d
 * copies from the source files (it cannot be set on them), set to the epoch
 * afterwards with debugfs.
 */
export async function makeExt4(img: string, tree: string, opts: { label: string; uuid: string; bytes: number; epoch: number }): Promise<void> {
  const env = { E2FSPROGS_FAKE_TIME: String(opts.epoch), SOURCE_DATE_EPOCH: String(opts.epoch), TZ: 'UTC' };
  await rm(img, { force: true });
  await run(
    'mke2fs',
    ['-q', '-F', '-t', 'ext4', '-b', '4096', '-L', opts.label, '-U', opts.uuid, '-E', `root_owner=0:0,hash_seed=${opts.uuid}`, '-d', tree, img, String(opts.bytes / 4096)],
    { env },
  );
  const when = debugfsTime(opts.epoch);
  const cmds: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    const inFs = rel === '' ? '/' : rel;
    for (const field of ['ctime', 'atime', 'mtime']) cmds.push(`set_inode_field "${inFs}" ${field} ${when}`);
    const st = await lstat(path.join(tree, rel));
    if (!st.isDirectory()) return;
    for (const e of (await readdir(path.join(tree, rel))).sort()) {
      if (/["\s\\]/.test(e)) throw new Error(`${path.join(tree, rel, e)}: a name debugfs cannot be given`);
      await walk(`${rel}/${e}`);
    }
  };
  await walk('');
  const script = `${img}.debugfs`;
  await writeFile(script, cmds.join('\n') + '\n');
  await run('debugfs', ['-w', '-f', script, img], { env });
  await rm(script, { force: true });
}

async function makeSparse(file: string, bytes: number): Promise<void> {
  await rm(file, { force: true });
  const fh = await open(file, 'w');
  try {
    await fh.truncate(bytes);
  } finally {
    await fh.close();
  }
}

async function ddInto(src: string, disk: string, startSector: number): Promise<void> {
  if (startSector % (MIB / SECTOR) !== 0) throw new Error('partitions must start on a MiB boundary');
  await run('dd', [`if=${src}`, `of=${disk}`, 'bs=1M', `seek=${startSector / (MIB / SECTOR)}`, 'conv=notrunc,sparse', 'status=none']);
}

export const raw: OutputWriter = async (system, ctx) => {
  const board = system.board === undefined ? undefined : boardProfile(system.board);
  const file = board ? `${artifactStem(system)}-${board.name}.${board.imageExtension}` : `${artifactStem(system)}.raw`;
  ctx.log(`raw: assembling ${file}`);
  await buildRawImage(system, ctx.workDir, path.join(ctx.outDir, file), ctx.log);
  const artifacts: Artifact[] = [{ file, format: 'raw', arch: system.arch }];
  return artifacts;
};
