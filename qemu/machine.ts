/**
 * Turns "boot this artifact" into a ready QEMU command: the throwaway files a
 * VM needs (a qcow2 overlay over raw/qcow2 images, the UEFI variable store,
 * the NoCloud seed, the PVH vmlinux) in a temp folder, the HTTP server a PXE
 * boot fetches from, and the argv from qemu/profiles.ts. Shared by the test
 * harness (qemu/harness.ts) and `cairn run`.
 */
import { existsSync, rmSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { UserError } from '../src/errors.js';
import { findQemu, hostAccel, prepareUefi } from './host.js';
import { serveFolder, type FolderServer } from './http.js';
import { defaultFirmware, machineArgv, serialConsole, checkFirmware, type Arch, type BootMedium, type Firmware, type GuestForward, type MachineSpec } from './profiles.js';
import { pvhKernel } from './pvh.js';
import { makeSeed, makeSeedFromText } from './seed.js';

/** What to boot. Files are never modified: disks get an overlay, PXE folders are served read-only. */
export type Artifact =
  | { kind: 'iso'; path: string }
  /**
   * A disk image. It runs on a throwaway qcow2 overlay, unless `writable`:
   * then the VM writes to the file itself (tests that reboot or cut the power
   * and boot the same disk again make their own overlay with overlay() first).
   */
  | { kind: 'raw'; path: string; writable?: boolean }
  | { kind: 'qcow2'; path: string; writable?: boolean }
  /**
   * A PXE folder, served over QEMU's TFTP (iPXE fetches `bootfile`, boot.ipxe
   * by default) and over HTTP from the host (10.0.2.2:<port> in the guest).
   * In the boot script, `${cairn-http}` and `{{http}}` become the HTTP base
   * URL (http://10.0.2.2:<port>); a script without them is served unchanged.
   * `rewrite` may change the script in any other way (it gets the script and
   * that URL); the folder itself is never modified.
   */
  | { kind: 'pxe'; dir: string; bootfile?: string; rewrite?: (script: string, httpUrl: string) => string }
  /**
   * A kernel booted directly (no firmware, no bootloader). On amd64 a bzImage
   * is booted as its uncompressed vmlinux through PVH unless pvh is false.
   */
  | { kind: 'kernel'; kernel: string; initrd?: string; append?: string; pvh?: boolean };

export type ArtifactKind = Artifact['kind'];

export interface MachineOptions {
  artifact: Artifact;
  /** Default amd64. */
  arch?: Arch;
  /** For iso, raw, qcow2, pxe: bios (SeaBIOS, amd64 only) or uefi. Default: bios on amd64, uefi on ARM. */
  firmware?: Firmware;
  /** Default 1024. */
  memMb?: number;
  /** Default 2. */
  cpus?: number;
  /** amd64 machine type, default q35. */
  machine?: 'q35' | 'pc';
  /** A ready NoCloud seed ISO to attach. */
  seed?: string;
  /** A config file to attach as a NoCloud seed (made here; an invalid config is attached as it is). */
  config?: string;
  /** Config text to attach as a NoCloud seed. */
  configText?: string;
  /** Host port for the guest's ssh: a number, or 'auto' for a free one. */
  sshPort?: number | 'auto';
  /** More host → guest TCP forwards (guest port; host port free, chosen here). */
  forwardPorts?: number[];
  /**
   * The user network's subnet (QEMU's net=, default 10.0.2.0/24; the host
   * is its .2). A cloud metadata service needs 169.254.169.0/24, so that a
   * guestfwd can answer at 169.254.169.254.
   */
  network?: string;
  /** Guest connections to an address of the user network, forwarded to a host port (a metadata service on the host). */
  guestForwards?: GuestForward[];
  /** Virtual size of the throwaway disk overlay (e.g. '8G'): tests of a state partition that grows. */
  diskSize?: string;
  /**
   * More disks, virtio, after the boot disk and the seed: a size ('2G') is a
   * blank throwaway qcow2; a path is attached through a throwaway overlay, or
   * as it is with { path, writable: true } (it keeps what the VM wrote).
   * `bootFirst`: the firmware tries this disk before the CD (a blank disk
   * is passed over): an install from the ISO reboots into the installed disk.
   */
  extraDisks?: (string | { path: string; writable?: boolean; bootFirst?: boolean })[];
  /** A second NIC on a network between VMs (see MachineSpec.privateNet). */
  privateNet?: { mcast: string; mac: string };
  /** Stop the VM instead of rebooting (-no-reboot). Default false: upgrades reboot. */
  noReboot?: boolean;
  /** 'serial' for the harness (pty + QMP), 'terminal' for a person at `cairn run`. */
  console: 'terminal' | 'serial';
  /** Force an accelerator; default: kvm only where the host really has it. */
  accel?: 'kvm' | 'tcg';
  extraArgs?: string[];
  /**
   * A folder to serve over HTTP from the host for any boot (pxe boots serve
   * their own folder): the guest reaches it at http://10.0.2.2:<port>, which
   * `${cairn-http}` or `{{http}}` in a kernel's `append` become (for example
   * `cairn.root_url={{http}}/rootfs.squashfs`).
   */
  serveDir?: string;
  /** Temp folder parent, default os.tmpdir(). */
  tmpRoot?: string;
}

export interface PreparedMachine {
  binary: string;
  args: string[];
  spec: MachineSpec;
  /** This VM's temp folder (overlay, firmware vars, seed, QMP socket): removed by cleanup(). */
  dir: string;
  sshPort?: number;
  /** Host port of each forwardPorts entry, by guest port. */
  forwards: Record<number, number>;
  /** For pxe: the host HTTP server and the URL the guest reaches it at. */
  http?: { port: number; guestUrl: string; requests: FolderServer['requests'] };
  qmpSocket?: string;
  /** Stops the HTTP server and removes the temp folder. Safe to call twice. */
  cleanup(): Promise<void>;
  /** Synchronous cleanup for process exit. */
  cleanupSync(): void;
}

/** A TCP port that is free on 127.0.0.1 right now. */
export async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (addr && typeof addr === 'object' ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

function mustExist(file: string, what: string): void {
  if (!existsSync(file)) throw new UserError(`${what} ${file} does not exist`, 'check the path');
}

async function qemuImg(args: string[]): Promise<void> {
  try {
    await execa('qemu-img', args);
  } catch (e) {
    if ((e as { code?: string }).code === 'ENOENT') throw new UserError('qemu-img is not installed', 'install it with: apt-get install qemu-utils');
    throw new Error(`qemu-img ${args.join(' ')} failed: ${(e as { stderr?: string }).stderr ?? (e as Error).message}`);
  }
}

/** A qcow2 overlay over `base` (raw or qcow2), so that the VM's writes never reach it. */
export async function overlay(base: string, out: string, size?: string): Promise<void> {
  const format = (await detectDiskFormat(base)) === 'qcow2' ? 'qcow2' : 'raw';
  await qemuImg(['create', '-q', '-f', 'qcow2', '-F', format, '-b', path.resolve(base), out, ...(size ? [size] : [])]);
}

/** 'qcow2' when the file starts with the qcow2 magic, else 'raw'. */
export async function detectDiskFormat(file: string): Promise<'qcow2' | 'raw'> {
  const fh = await open(file, 'r');
  try {
    const b = Buffer.alloc(4);
    await fh.read(b, 0, 4, 0);
    return b.toString('latin1') === 'QFI\xfb' ? 'qcow2' : 'raw';
  } finally {
    await fh.close();
  }
}

function withConsole(append: string | undefined, arch: Arch): string {
  const cmdline = append ?? '';
  if (/(^|\s)console=/.test(cmdline)) return cmdline;
  return `console=${serialConsole(arch)}${cmdline ? ` ${cmdline}` : ''}`;
}

const BOOT_SCRIPT_VARS = /\$\{cairn-http\}|\{\{http\}\}/g;
/** The TFTP boot file that sets ${cairn-base} and chains a cairn pxe folder's boot.ipxe. */
export const CHAIN_SCRIPT = 'cairn-chain.ipxe';

/** Builds everything a VM needs; on error, what was made so far is removed. */
export async function prepareMachine(opts: MachineOptions): Promise<PreparedMachine> {
  const arch = opts.arch ?? 'amd64';
  const binary = findQemu(arch);
  const art = opts.artifact;
  const firmware = opts.firmware ?? defaultFirmware(arch);
  if (art.kind !== 'kernel') {
    const bad = checkFirmware(arch, firmware);
    if (bad) throw new UserError(bad);
  }
  const dir = await mkdtemp(path.join(opts.tmpRoot ?? os.tmpdir(), 'cairn-vm-'));
  let server: FolderServer | undefined;
  const cleanupSync = (): void => {
    server?.closeSync();
    rmSync(dir, { recursive: true, force: true });
  };
  const cleanup = async (): Promise<void> => {
    await server?.close();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    let boot: BootMedium;
    let http: PreparedMachine['http'];
    const serve = async (folder: string): Promise<string> => {
      mustExist(folder, 'folder to serve');
      server = await serveFolder(path.resolve(folder));
      http = { port: server.port, guestUrl: `http://${hostAddress(opts.network)}:${server.port}`, requests: server.requests };
      return http.guestUrl;
    };
    if (opts.serveDir && art.kind !== 'pxe') await serve(opts.serveDir);
    switch (art.kind) {
      case 'iso':
        mustExist(art.path, 'ISO image');
        boot = { kind: 'iso', file: path.resolve(art.path) };
        break;
      case 'raw':
      case 'qcow2': {
        mustExist(art.path, 'disk image');
        if (art.writable) {
          if (opts.diskSize) await qemuImg(['resize', '-q', '-f', await detectDiskFormat(art.path), art.path, opts.diskSize]);
          boot = { kind: 'disk', file: path.resolve(art.path), format: await detectDiskFormat(art.path) };
          break;
        }
        const file = path.join(dir, 'disk.qcow2');
        await overlay(art.path, file, opts.diskSize);
        boot = { kind: 'disk', file, format: 'qcow2' };
        break;
      }
      case 'pxe': {
        mustExist(art.dir, 'PXE folder');
        if (arch !== 'amd64') throw new UserError(`pxe boots of ${arch} images are not supported: QEMU's iPXE ROMs are for x86 only`, 'boot the kernel and initramfs directly, or the iso or raw image');
        const bootfile = art.bootfile ?? 'boot.ipxe';
        mustExist(path.join(art.dir, bootfile), 'PXE boot script');
        const guestUrl = await serve(art.dir);
        const script = await readFile(path.join(art.dir, bootfile), 'utf8');
        let tftpDir = path.resolve(art.dir);
        let served = script.replace(BOOT_SCRIPT_VARS, guestUrl);
        if (art.rewrite) served = art.rewrite(served, guestUrl);
        // cairn's own pxe output takes its HTTP base from ${cairn-base}, set by a script that
        // chains it (see src/builder/outputs/pxe.ts): QEMU boots such a chain script first.
        const chain = served.includes('${cairn-base}') ? CHAIN_SCRIPT : undefined;
        if (served !== script || chain) {
          // A TFTP folder of our own: links to the artifacts, and the scripts with the URL filled in.
          tftpDir = path.join(dir, 'tftp');
          await mkdir(tftpDir);
          for (const name of await readdir(art.dir)) {
            if (name !== bootfile) await symlink(path.resolve(art.dir, name), path.join(tftpDir, name));
          }
          await writeFile(path.join(tftpDir, bootfile), served);
          if (chain) await writeFile(path.join(tftpDir, chain), `#!ipxe\nset cairn-base ${guestUrl}\nchain ${bootfile}\n`);
        }
        boot = { kind: 'pxe', tftpDir, bootfile: chain ?? bootfile };
        break;
      }
      case 'kernel': {
        mustExist(art.kernel, 'kernel');
        if (art.initrd) mustExist(art.initrd, 'initramfs');
        let kernel = path.resolve(art.kernel);
        if (arch === 'amd64' && art.pvh !== false) kernel = (await pvhKernel(kernel).catch(() => undefined)) ?? kernel;
        let append = withConsole(art.append, arch);
        if (http) append = append.replace(BOOT_SCRIPT_VARS, http.guestUrl);
        else if (append.replace(BOOT_SCRIPT_VARS, '') !== append) throw new UserError('the kernel command line uses {{http}} but nothing is served', 'give serveDir');
        boot = { kind: 'kernel', kernel, initrd: art.initrd && path.resolve(art.initrd), append };
        break;
      }
    }
    const firmwareFiles = art.kind !== 'kernel' && firmware === 'uefi' ? await prepareUefi(arch, dir) : undefined;
    let seed = opts.seed;
    if (seed) mustExist(seed, 'seed ISO');
    if (opts.config !== undefined) {
      mustExist(opts.config, 'config');
      seed = (await makeSeed(opts.config, path.join(dir, 'seed.iso'), { allowInvalid: true })).out;
    } else if (opts.configText !== undefined) {
      seed = (await makeSeedFromText(opts.configText, path.join(dir, 'seed.iso'))).out;
    }
    const disks: { file: string; format: 'raw' | 'qcow2'; bootFirst?: boolean }[] = [];
    for (const [i, d] of (opts.extraDisks ?? []).entries()) {
      const file = path.join(dir, `extra${i}.qcow2`);
      if (typeof d === 'string' && /^\d+[KMGT]?$/i.test(d)) await qemuImg(['create', '-q', '-f', 'qcow2', file, d]);
      else {
        const src = typeof d === 'string' ? d : d.path;
        mustExist(src, 'disk image');
        if (typeof d !== 'string' && d.writable) {
          disks.push({ file: path.resolve(src), format: await detectDiskFormat(src), ...(d.bootFirst ? { bootFirst: true } : {}) });
          continue;
        }
        await overlay(src, file);
      }
      disks.push({ file, format: 'qcow2', ...(typeof d !== 'string' && d.bootFirst ? { bootFirst: true } : {}) });
    }
    const sshPort = opts.sshPort === 'auto' ? await freePort() : opts.sshPort;
    const forwards: Record<number, number> = {};
    for (const guestPort of opts.forwardPorts ?? []) forwards[guestPort] = await freePort();
    const qmpSocket = opts.console === 'serial' ? path.join(dir, 'qmp.sock') : undefined;
    const spec: MachineSpec = {
      arch,
      boot,
      accel: opts.accel ?? hostAccel(arch),
      firmware,
      firmwareFiles,
      memMb: opts.memMb ?? 1024,
      cpus: opts.cpus ?? 2,
      machine: opts.machine,
      seed: seed && path.resolve(seed),
      disks,
      sshPort,
      hostForwards: Object.entries(forwards).map(([g, h]) => ({ guestPort: Number(g), hostPort: h })),
      guestForwards: opts.guestForwards,
      network: opts.network,
      privateNet: opts.privateNet,
      console: opts.console,
      qmpSocket,
      noReboot: opts.noReboot,
      extraArgs: opts.extraArgs,
    };
    const { args } = machineArgv(spec);
    return { binary, args, spec, dir, sshPort, forwards, http, qmpSocket, cleanup, cleanupSync };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

/**
 * What kind of artifact a path is: a folder with a boot.ipxe is pxe; .iso,
 * .qcow2, .raw/.img by extension; otherwise by content (ISO9660 at 32 KiB,
 * the qcow2 magic, an MBR/GPT disk).
 */
export async function detectArtifact(file: string): Promise<Artifact> {
  if (!existsSync(file)) throw new UserError(`${file} does not exist`, 'check the path (an .iso, .raw, .img or .qcow2 image, or a pxe folder)');
  const st = statSync(file);
  if (st.isDirectory()) {
    const names = await readdir(file);
    const script = names.find((n) => n.endsWith('.ipxe'));
    if (script) return { kind: 'pxe', dir: file, bootfile: names.includes('boot.ipxe') ? 'boot.ipxe' : script };
    throw new UserError(`${file} is a folder without an iPXE script (boot.ipxe)`, 'give an image file, or the pxe output folder of cairn build');
  }
  const ext = path.extname(file).toLowerCase();
  if (ext === '.iso') return { kind: 'iso', path: file };
  if (ext === '.qcow2') return { kind: 'qcow2', path: file };
  if (ext === '.raw' || ext === '.img') return { kind: 'raw', path: file };
  const fh = await open(file, 'r');
  try {
    const head = Buffer.alloc(512);
    await fh.read(head, 0, 512, 0);
    if (head.toString('latin1', 0, 4) === 'QFI\xfb') return { kind: 'qcow2', path: file };
    const pvd = Buffer.alloc(6);
    await fh.read(pvd, 0, 6, 32768);
    if (pvd.toString('latin1', 1, 6) === 'CD001') return { kind: 'iso', path: file };
    if (head[510] === 0x55 && head[511] === 0xaa) return { kind: 'raw', path: file };
  } finally {
    await fh.close();
  }
  throw new UserError(`cannot tell what kind of image ${file} is`, 'cairn run boots .iso, .raw/.img and .qcow2 images and pxe folders');
}

/** The host's address on the user network (its .2), as the guest sees it. */
export function hostAddress(network = '10.0.2.0/24'): string {
  const m = /^(\d+)\.(\d+)\.(\d+)\.\d+\/24$/.exec(network);
  if (!m) throw new UserError(`the user network must be a /24 such as 10.0.2.0/24, not ${network}`);
  return `${m[1]}.${m[2]}.${m[3]}.2`;
}
