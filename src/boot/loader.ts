/**
 * Boards whose loader does not count tries: the Raspberry Pi's firmware
 * (config.txt and cairn-active.txt on CAIRN_BOOT) and NVIDIA's L4TLauncher
 * on Jetson (boot/extlinux/extlinux.conf on CAIRN_STATE). Each always
 * starts the kernel of one version, the last one that booted well, with
 * cairn.loader=fixed on its command line (./loader-args.ts).
 *
 * Trials go through the same boot state as GRUB's (./state.ts): that
 * version's first stage makes the choice itself, spending one of a trial's
 * tries before it boots it, and starts a version other than its own with
 * kexec: the trial's kernel, initramfs and command line from
 * cairn/system/<version>/ (src/builder/initramfs/init-script.ts), with the
 * machine's watchdog left counting through the kexec. Whatever happens to
 * the trial, a panic (panic=10), a reset by the watchdog, a power cut, the
 * loader starts the proven version again, whose first stage finds the
 * trial's tries spent and boots itself; its init records the rollback.
 *
 * The loader is pointed at a version only after a good boot of it, when it
 * is the active one (syncLoader, from the init's mark-good phase):
 *   rpi4    the version's folder cairn/<version>/ on CAIRN_BOOT (kernel,
 *           initramfs, cmdline.txt, the running kernel's own Pi 4 device
 *           trees) written beside, flushed and renamed into place; then the
 *           one sector of cairn-active.txt rewritten in place, so that a
 *           power cut leaves it naming the old version or the new one;
 *           folders of versions the boot state no longer keeps removed.
 *   jetson  extlinux.conf written from the boot state (DEFAULT the active
 *           version, then the fallback), renamed into place, and the
 *           journal written home (UEFI's ext4 driver does not replay it).
 * Until then the loader keeps starting the version before, whose first
 * stage starts the active one with kexec: a sync that failed costs time,
 * never the boot.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ACTIVE_FILE, ACTIVE_FILE_BYTES, BOOT_LABEL, DEVICE_TREES, parseActiveFile, renderActiveFile } from '../../boards/rpi4/boot.js';
import { EXTLINUX_CONF, renderExtlinuxConf, type ExtlinuxEntry } from '../../boards/jetson/extlinux.js';
import { UserError } from '../errors.js';
import { fsyncPath, writeFileAtomic } from '../init/apply/files.js';
import { LOADER_REL, loaderCmdline, parseLoaderRecord, type LoaderRecord } from './loader-args.js';
import { GRUBENV, REL, STATE_MOUNT, STATE_ROOT, SYSTEM_DIR, checkpointState, isBootable, keep, readState, readVersionCmdline, writeInPlace, type BootState } from './state.js';

type Exec = (file: string, args: string[], opts?: { timeoutMs?: number }) => Promise<{ code: number; stdout?: string; stderr: string }>;

/** Where a node mounts the Pi's boot partition while it points it at a version. */
export const BOOT_MOUNT = '/run/cairn/boot';

/** The board record on a node (the state partition's cairn/ is bound at /cairn). */
export const LOADER_PATH = `${STATE_ROOT}/${LOADER_REL.slice('cairn/'.length)}`;

/** The board record at `file`; undefined on a disk whose loader is GRUB. */
export function readLoader(file: string): LoaderRecord | undefined {
  if (!existsSync(file)) return undefined;
  try {
    return parseLoaderRecord(readFileSync(file, 'utf8'), file);
  } catch (e) {
    throw new UserError((e as Error).message, 'cairn build writes it for --board rpi4 and jetson; restore it from the image (cairn/loader.json on CAIRN_STATE) or remove it on a disk that boots through GRUB');
  }
}

function versionCmdline(systemDir: string, version: string): string {
  const c = readVersionCmdline(systemDir, version);
  if (!c) throw new Error(`${join(systemDir, version, 'bootenv')} holds no kernel command line`);
  return c;
}

export interface PiBootSync {
  /** The mounted boot partition (CAIRN_BOOT). */
  bootDir: string;
  /** cairn/system on CAIRN_STATE. */
  systemDir: string;
  /** The version to point the firmware at: the running, active one. */
  version: string;
  state: BootState;
  /** The running kernel's device trees (/usr/lib/linux-image-<release>/broadcom). */
  dtbDir: string;
}

/** Points the Pi's firmware at `version`; returns what it changed (nothing when it was pointed there already). */
export function syncPiBoot(o: PiBootSync): string[] {
  const done: string[] = [];
  const v = o.version;
  const cmdline = `${loaderCmdline(versionCmdline(o.systemDir, v))}\n`;
  const missing = DEVICE_TREES.filter((d) => !existsSync(join(o.dtbDir, d)));
  if (missing.length) throw new Error(`the running kernel has no ${missing.join(', ')} in ${o.dtbDir}`);
  const files: { name: string; src?: string; content?: string }[] = [
    { name: 'vmlinuz', src: join(o.systemDir, v, 'kernel') },
    { name: 'initrd', src: join(o.systemDir, v, 'initrd') },
    { name: 'cmdline.txt', content: cmdline },
    ...DEVICE_TREES.map((d) => ({ name: d, src: join(o.dtbDir, d) })),
  ];
  const parent = join(o.bootDir, 'cairn');
  const dest = join(parent, v);
  const complete = files.every((f) => {
    const p = join(dest, f.name);
    if (!existsSync(p)) return false;
    return f.content !== undefined ? readFileSync(p, 'utf8') === f.content : statSync(p).size === statSync(f.src!).size;
  });
  if (!complete) {
    const incoming = join(parent, `.incoming-${v}`);
    rmSync(incoming, { recursive: true, force: true });
    mkdirSync(incoming, { recursive: true });
    for (const f of files) {
      const p = join(incoming, f.name);
      if (f.content !== undefined) writeFileSync(p, f.content);
      else copyFileSync(f.src!, p);
      fsyncPath(p);
    }
    fsyncPath(incoming);
    rmSync(dest, { recursive: true, force: true });
    renameSync(incoming, dest);
    fsyncPath(parent);
    done.push(`wrote cairn/${v}/ on ${BOOT_LABEL}`);
  }
  const activeFile = join(o.bootDir, ACTIVE_FILE);
  const named = existsSync(activeFile) ? parseActiveFile(readFileSync(activeFile)) : undefined;
  if (named !== v || statSync(activeFile).size !== ACTIVE_FILE_BYTES) {
    writeInPlace(activeFile, renderActiveFile(v));
    done.push(`${ACTIVE_FILE} names ${v}${named ? ` (was ${named})` : ''}`);
  }
  const kept = keep(o.state).add(v);
  for (const d of readdirSync(parent, { withFileTypes: true })) {
    if (!d.isDirectory() || kept.has(d.name)) continue;
    rmSync(join(parent, d.name), { recursive: true, force: true });
    if (!d.name.startsWith('.')) done.push(`removed cairn/${d.name}/`);
  }
  return done;
}

/** Writes extlinux.conf on the state partition at `stateRoot` from the boot state; returns what it changed. */
export function syncExtlinux(o: { stateRoot: string; state: BootState }): string[] {
  const systemDir = join(o.stateRoot, REL.system);
  const entries: ExtlinuxEntry[] = [o.state.active, o.state.fallback]
    .filter((v): v is string => !!v && isBootable(systemDir, v))
    .map((v) => ({ version: v, cmdline: versionCmdline(systemDir, v) }));
  const content = renderExtlinuxConf(o.state, entries);
  const file = join(o.stateRoot, EXTLINUX_CONF);
  if (existsSync(file) && readFileSync(file, 'utf8') === content) return [];
  writeFileAtomic(file, content);
  return [`${EXTLINUX_CONF}: DEFAULT is ${o.state.active}${o.state.fallback ? `, then ${o.state.fallback}` : ''}`];
}

export interface LoaderSync {
  /** "/" on a node. */
  root: string;
  exec: Exec;
  /** The version running now. */
  version: string;
  /** The running kernel's release (for the Pi's device trees). */
  kernelRelease: string;
}

/**
 * After a good boot: points a loader that does not count at the running
 * version when it is the active one. Returns a line for the log, or
 * undefined when there is nothing to do (GRUB's disks, a fallback boot).
 */
export async function syncLoader(o: LoaderSync): Promise<string | undefined> {
  const rec = readLoader(join(o.root, LOADER_PATH));
  if (!rec) return undefined;
  const state = readState(join(o.root, GRUBENV));
  if (!state || state.active !== o.version) return undefined;
  let done: string[];
  if (rec.board === 'rpi4') {
    const mnt = join(o.root, BOOT_MOUNT);
    mkdirSync(mnt, { recursive: true });
    const m = await o.exec('mount', ['-t', 'vfat', '-o', 'rw,noatime,codepage=437,iocharset=iso8859-1', `LABEL=${BOOT_LABEL}`, mnt], { timeoutMs: 30_000 });
    if (m.code !== 0) throw new Error(`cannot mount ${BOOT_LABEL}: ${m.stderr.trim() || `mount exit ${m.code}`}`);
    try {
      const base = join(o.root, 'usr/lib', `linux-image-${o.kernelRelease}`);
      done = syncPiBoot({ bootDir: mnt, systemDir: join(o.root, SYSTEM_DIR), version: o.version, state, dtbDir: existsSync(join(base, 'broadcom')) ? join(base, 'broadcom') : base });
    } finally {
      await o.exec('umount', [mnt], { timeoutMs: 30_000 });
    }
  } else {
    done = syncExtlinux({ stateRoot: join(o.root, STATE_MOUNT), state });
    if (done.length && o.root === '/') {
      const problem = await checkpointState(o.exec);
      if (problem) done.push(`the journal was not written home (${problem}): L4TLauncher may read the old menu until it is`);
    }
  }
  return done.length ? `${rec.board} loader: ${done.join('; ')}` : `${rec.board} loader starts ${o.version} already`;
}
