/**
 * `cairn install`: puts the running version (or the one on the ISO at
 * `iso_url`) onto a disk, as k3OS' installer does, in a named list of steps.
 * Everything that can be wrong is checked before the first write: the
 * source, the config (fetched and validated), the target disk (src/install/plan.ts).
 * Then: GPT (src/boot/disk.ts, as the builder lays out a raw image),
 * CAIRN_EFI and CAIRN_STATE, the version's files, GRUB for UEFI and BIOS
 * from the medium's cairn/install/, the boot state, the config as
 * /cairn/system/config.yaml (0600), and the file systems unmounted. The
 * first boot from the disk grows CAIRN_STATE to its end (src/init/grow.ts).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync, realpathSync } from 'node:fs';
import { chmod, copyFile, mkdir, open, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { biosBootCode, INSTALL_DIR, SECTOR, sfdiskScript, type DiskPlan } from '../boot/disk.js';
import { REL, renderState, renderVersionEnv } from '../boot/state.js';
import { kernelArgs, joinArgs } from '../builder/outputs/common.js';
import type { Arch } from '../builder/types.js';
import { formatDiagnostic } from '../config/diagnostics.js';
import { readConfig } from '../config/read.js';
import { UserError } from '../errors.js';
import type { Exec } from '../init/exec.js';
import { urlForLog } from '../init/context.js';
import { download } from '../upgrade/payload.js';
import { checkTarget, installDiskPlan, LSBLK_COLUMNS, parseBlkidExport, parseLsblk, partitionPath, withProbe, type BlockDevice, type Target } from './plan.js';

/** Where the installer works on the node: downloads, mount points (the root is read-only). */
export const INSTALL_WORK = '/run/cairn/install';
/** The live medium the first stage booted from (src/builder/initramfs). */
export const LIVE_MEDIUM = '/run/cairn/live';

export interface InstallOptions {
  device: string;
  /** A config to install with: an http(s) URL or a file on the node. */
  configUrl?: string;
  /** A config given directly (the interactive installer's). */
  configText?: string;
  /** Install from this ISO instead of the running medium. */
  isoUrl?: string;
  force?: boolean;
  noFormat?: boolean;
  /** A console for the installed system's kernel command line, such as ttyS0. */
  tty?: string;
  debug?: boolean;
}

export interface InstallEnv {
  /** "/" on a node; a folder in tests. */
  root: string;
  exec: Exec;
  log: (line: string) => void;
  /** Fetches a config URL as text (a timeout; throws on HTTP errors). */
  fetchText: (url: string) => Promise<string>;
}

export interface InstallResult {
  version: string;
  device: string;
  plan?: DiskPlan;
  /** From the first check to the disk unmounted. */
  ms: number;
}

const EFI_FILE: Record<Arch, string> = { amd64: 'BOOTX64.EFI', arm64: 'BOOTAA64.EFI', armv7: 'BOOTARM.EFI' };

/** The files a cairn medium holds: the version's, and the disk's boot loader. */
interface Source {
  dir: string;
  version: string;
  arch: Arch;
  cmdline?: string;
  files: { kernel: string; initrd: string; squashfs: string; release: string };
  efi: string;
  bios?: { bootImg: string; coreImg: string };
  grubCfg: string;
}

/** What the steps hand on to each other. */
interface Work {
  source?: Source;
  config?: string;
  devices?: BlockDevice[];
  plan?: DiskPlan;
  target?: Target;
  parts?: { efi: string; state: string };
  mounts: string[];
}

async function readSource(dir: string, what: string): Promise<Source> {
  const c = path.join(dir, 'cairn');
  const files = { kernel: path.join(c, 'vmlinuz'), initrd: path.join(c, 'initrd'), squashfs: path.join(c, 'rootfs.squashfs'), release: path.join(c, 'release.json') };
  const missing = Object.values(files).filter((f) => !existsSync(f));
  if (missing.length) throw new UserError(`${what} is not a cairn medium: it has no ${missing.map((f) => path.relative(dir, f)).join(', ')}`, 'give the ISO that cairn build wrote (NAME-VERSION-ARCH.iso)');
  let rec: { version?: unknown; arch?: unknown; inputs?: { cmdline?: unknown } };
  try {
    rec = JSON.parse(await readFile(files.release, 'utf8')) as typeof rec;
  } catch (e) {
    throw new UserError(`${what}: cairn/release.json is not JSON (${(e as Error).message})`, 'the medium is damaged: write it again');
  }
  const arch = rec.arch as Arch;
  if (typeof rec.version !== 'string' || !(arch in EFI_FILE)) throw new UserError(`${what}: cairn/release.json names no version and arch`, 'the medium is damaged: write it again');
  const inst = path.join(dir, INSTALL_DIR);
  const efi = path.join(inst, EFI_FILE[arch]);
  const grubCfg = path.join(inst, 'grub.cfg');
  if (!existsSync(efi) || !existsSync(grubCfg)) {
    throw new UserError(`${what} has no ${INSTALL_DIR}/ (the disk's boot loader): it was built by a cairn without the installer, or it is not an ISO`, 'install from an ISO of this cairn release (install.iso_url)');
  }
  const bios = arch === 'amd64' ? { bootImg: path.join(inst, 'boot.img'), coreImg: path.join(inst, 'core.img') } : undefined;
  if (bios && (!existsSync(bios.bootImg) || !existsSync(bios.coreImg))) throw new UserError(`${what} has no GRUB for BIOS in ${INSTALL_DIR}/`, 'the medium is damaged: write it again');
  return { dir, version: rec.version, arch, cmdline: typeof rec.inputs?.cmdline === 'string' ? rec.inputs.cmdline : undefined, files, efi, ...(bios ? { bios } : {}), grubCfg };
}

/**
 * The block devices with their content: lsblk for the tree, sizes and
 * mounts, `blkid -p` for each disk's and partition's table, file system
 * and label (read from the device: no udev database needed).
 */
export async function listDevices(exec: Exec): Promise<BlockDevice[]> {
  const r = await exec('lsblk', ['-J', '-b', '-o', LSBLK_COLUMNS], { timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`lsblk failed: ${(r.stderr || `exit ${r.code}`).trim()}`);
  const probe = async (d: BlockDevice): Promise<BlockDevice> => {
    const children = await Promise.all(d.children.map(probe));
    if (d.type !== 'disk' && d.type !== 'part' && d.type !== 'rom') return { ...d, children };
    // exit 2: nothing found (a blank disk)
    const b = await exec('blkid', ['-p', '-o', 'export', d.path], { timeoutMs: 30_000 });
    return { ...withProbe(d, b.code === 0 ? parseBlkidExport(b.stdout) : {}), children };
  };
  return Promise.all(parseLsblk(r.stdout).map(probe));
}

async function sha256(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** The installer's steps, in order; the ones before `partition` only read. */
export function installSteps(opts: InstallOptions, env: InstallEnv): { name: string; run: (w: Work) => Promise<string> }[] {
  const at = (p: string) => path.join(env.root, p);
  const run = async (file: string, args: string[], o: { input?: string; timeoutMs?: number } = {}): Promise<string> => {
    if (opts.debug) env.log(`install: + ${file} ${args.join(' ')}`);
    const r = await env.exec(file, args, { timeoutMs: o.timeoutMs ?? 300_000, input: o.input });
    if (r.code !== 0) throw new Error(`${file} ${args.join(' ')} failed: ${(r.stderr || r.stdout || `exit ${r.code}`).trim().split('\n').slice(-3).join('; ')}`);
    return r.stdout;
  };
  const mount = async (w: Work, dev: string, dir: string, args: string[]) => {
    await mkdir(at(dir), { recursive: true });
    await run('mount', [...args, dev, dir]);
    w.mounts.unshift(dir);
  };
  return [
    {
      name: 'source',
      run: async (w) => {
        if (opts.isoUrl) {
          await mkdir(at(INSTALL_WORK), { recursive: true });
          let file = opts.isoUrl;
          if (/^https?:\/\//i.test(opts.isoUrl)) {
            file = await download(opts.isoUrl, at(INSTALL_WORK), { what: 'iso', suffix: '.iso', log: env.log, spaceHint: 'the download goes to RAM (/run): give the machine more memory, or install from the booted medium' });
          } else if (!existsSync(at(file))) {
            throw new UserError(`iso_url ${urlForLog(opts.isoUrl)}: no such file`, 'give an http(s) URL or the path of an ISO on this node');
          }
          await run('modprobe', ['-q', 'loop']).catch(() => undefined);
          const dir = `${INSTALL_WORK}/iso`;
          try {
            await mount(w, file, dir, ['-o', 'loop,ro']);
          } catch (e) {
            throw new UserError(`the ISO from ${urlForLog(opts.isoUrl)} cannot be mounted (${(e as Error).message})`, 'check that iso_url is the ISO cairn build wrote, and that it downloaded whole');
          }
          w.source = await readSource(at(dir), `the ISO from ${urlForLog(opts.isoUrl)}`);
        } else {
          if (!existsSync(at(path.join(LIVE_MEDIUM, 'cairn/release.json')))) {
            throw new UserError('this system was not booted from a cairn ISO, so there is nothing here to install from', 'give install.iso_url (cairn install --iso-url URL), the ISO cairn build wrote');
          }
          w.source = await readSource(at(LIVE_MEDIUM), 'the live medium');
        }
        return `version ${w.source.version} (${w.source.arch}) from ${opts.isoUrl ? urlForLog(opts.isoUrl) : 'the live medium'}`;
      },
    },
    {
      name: 'config',
      run: async (w) => {
        let text = opts.configText;
        let from = 'the installer';
        if (opts.configUrl) {
          from = urlForLog(opts.configUrl);
          if (/^https?:\/\//i.test(opts.configUrl)) {
            try {
              text = await env.fetchText(opts.configUrl);
            } catch (e) {
              throw new UserError(`config_url ${from} cannot be fetched: ${(e as Error).message.split(opts.configUrl).join(from)}; nothing was written`, "check the address and the network (cairn status), or give a file with --config");
            }
          } else {
            try {
              text = await readFile(at(opts.configUrl), 'utf8');
            } catch (e) {
              throw new UserError(`config_url ${from} cannot be read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}; nothing was written`, 'give an http(s) URL or the path of a file on this node');
            }
          }
        }
        if (text === undefined) return 'none (the installed node starts with the image\'s config)';
        const r = readConfig(text, from);
        const errors = r.diagnostics.filter((d) => d.severity === 'error');
        if (r.script !== undefined) throw new UserError(`${from} is a script, not a config`, 'give a cloud-config (YAML)');
        if (errors.length) throw new UserError(`the config from ${from} is not valid; nothing was written:\n${errors.map((d) => `  ${formatDiagnostic(d)}`).join('\n')}`, 'fix it (cairn config validate FILE) and install again');
        for (const d of r.diagnostics.filter((x) => x.severity === 'warning')) env.log(`install: config: ${formatDiagnostic(d)}`);
        w.config = text;
        return `from ${from} (${Buffer.byteLength(text)} bytes, valid)`;
      },
    },
    {
      name: 'disk',
      run: async (w) => {
        const s = w.source!;
        let versionBytes = 0;
        for (const f of Object.values(s.files)) versionBytes += (await stat(f)).size;
        w.plan = installDiskPlan({ arch: s.arch, versionBytes, efiBytes: (await stat(s.efi)).size }, randomBytes(16).toString('hex'));
        w.devices = await listDevices(env.exec);
        // a stable name (/dev/disk/by-id/...) is the disk it points at
        const device = existsSync(at(opts.device)) ? `/${path.relative(env.root, realpathSync(at(opts.device)))}` : opts.device;
        w.target = checkTarget(w.devices, { device, force: opts.force, noFormat: opts.noFormat }, w.plan);
        return `${w.target.disk.path} (${(w.target.disk.size / 1024 ** 3).toFixed(1)} GiB${w.target.disk.model ? `, ${w.target.disk.model}` : ''})`;
      },
    },
    {
      name: 'partition',
      run: async (w) => {
        const disk = w.target!.disk.path;
        if (w.target!.existing) {
          w.parts = { efi: w.target!.existing.efi.path, state: w.target!.existing.state.path };
          return 'kept (no_format)';
        }
        await run('wipefs', ['--all', '--quiet', disk]);
        await run('sfdisk', ['--quiet', '--wipe', 'always', '--wipe-partitions', 'always', disk], { input: sfdiskScript(w.plan!) });
        await run('partx', ['--update', disk]).catch(() => undefined);
        const n = (name: string) => w.plan!.partitions.findIndex((p) => p.name === name) + 1;
        w.parts = { efi: partitionPath(disk, n('CAIRN_EFI')), state: partitionPath(disk, n('CAIRN_STATE')) };
        for (let i = 0; i < 100 && !(existsSync(at(w.parts.efi)) && existsSync(at(w.parts.state))); i++) await new Promise((r) => setTimeout(r, 100));
        if (!existsSync(at(w.parts.state))) throw new Error(`${w.parts.state} did not appear after partitioning ${disk}`);
        return `GPT: ${w.plan!.partitions.map((p) => `${p.name} ${Math.round((p.size * SECTOR) / 1048576)} MiB`).join(', ')}`;
      },
    },
    {
      name: 'format',
      run: async (w) => {
        if (w.target!.existing) return 'kept (no_format)';
        const state = w.plan!.partitions.find((p) => p.name === 'CAIRN_STATE')!;
        await run('mkfs.vfat', ['-F', '32', '-n', 'CAIRN_EFI', w.parts!.efi]);
        await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', 'CAIRN_STATE', '-U', state.uuid, w.parts!.state], { timeoutMs: 600_000 });
        return `${w.parts!.efi} FAT32 CAIRN_EFI, ${w.parts!.state} ext4 CAIRN_STATE`;
      },
    },
    {
      name: 'system',
      run: async (w) => {
        const s = w.source!;
        const mnt = `${INSTALL_WORK}/state`;
        await mount(w, w.parts!.state, mnt, ['-t', 'ext4']);
        const vdir = at(path.join(mnt, REL.system, s.version));
        await rm(vdir, { recursive: true, force: true });
        await mkdir(vdir, { recursive: true });
        const copies: [string, string][] = [[s.files.kernel, 'kernel'], [s.files.initrd, 'initrd'], [s.files.squashfs, 'rootfs.squashfs'], [s.files.release, 'release.json']];
        const sums: string[] = [];
        // SHA256SUMS lists the files by name, as the builder writes it
        for (const [from, name] of copies.sort((a, b) => a[1].localeCompare(b[1]))) {
          env.log(`install: writing ${name} (${Math.round((await stat(from)).size / 1048576)} MiB)`);
          await copyFile(from, path.join(vdir, name));
          const want = await sha256(from);
          if ((await sha256(path.join(vdir, name))) !== want) throw new Error(`${name} reads back different from what was written to ${w.parts!.state}: the disk may be failing`);
          sums.push(`${want}  ${name}\n`);
        }
        await writeFile(path.join(vdir, 'SHA256SUMS'), sums.join(''));
        const args = joinArgs(kernelArgs('state', s.arch, s.cmdline), opts.tty ? `console=${opts.tty}` : undefined);
        await writeFile(path.join(vdir, 'bootenv'), renderVersionEnv(args));
        await mkdir(at(path.join(mnt, REL.grub)), { recursive: true });
        await copyFile(s.grubCfg, at(path.join(mnt, REL.grub, 'grub.cfg')));
        await writeFile(at(path.join(mnt, REL.grubenv)), renderState({ active: s.version }));
        await mkdir(at(path.join(mnt, 'cairn/data')), { recursive: true });
        const cfg = at(path.join(mnt, REL.system, 'config.yaml'));
        if (w.config !== undefined) {
          await writeFile(cfg, w.config, { mode: 0o600 });
          await chmod(cfg, 0o600);
        } else await rm(cfg, { force: true });
        return `version ${s.version} in ${w.parts!.state}${w.config !== undefined ? ', config in /cairn/system/config.yaml' : ''}${opts.tty ? `, console=${opts.tty}` : ''}`;
      },
    },
    {
      name: 'bootloader',
      run: async (w) => {
        const s = w.source!;
        const mnt = `${INSTALL_WORK}/efi`;
        await run('modprobe', ['-q', 'vfat']).catch(() => undefined);
        // iso8859-1: the image keeps that character set's module (not the kernel's default, ascii)
        await mount(w, w.parts!.efi, mnt, ['-t', 'vfat', '-o', 'iocharset=iso8859-1']);
        await mkdir(at(path.join(mnt, 'EFI/BOOT')), { recursive: true });
        await copyFile(s.efi, at(path.join(mnt, 'EFI/BOOT', EFI_FILE[s.arch])));
        const done = [`UEFI (EFI/BOOT/${EFI_FILE[s.arch]})`];
        const biosStart = w.target!.existing ? (w.target!.existing.bios ? await partitionStart(at, w.target!.existing.bios) : undefined) : w.plan!.partitions.find((p) => p.name === 'BIOS')?.start;
        if (s.bios && biosStart !== undefined) {
          const { mbrCode, core } = biosBootCode(await readFile(s.bios.bootImg), await readFile(s.bios.coreImg), biosStart);
          const fh = await open(at(w.target!.disk.path), 'r+');
          try {
            await fh.write(mbrCode, 0, mbrCode.length, 0);
            await fh.write(core, 0, core.length, biosStart * SECTOR);
            await fh.sync();
          } finally {
            await fh.close();
          }
          done.push('BIOS (GRUB in the MBR and the BIOS boot partition)');
        } else if (s.bios) done.push('no BIOS boot (the disk has no BIOS boot partition)');
        return done.join(', ');
      },
    },
    {
      name: 'finish',
      run: async (w) => {
        await run('sync', []);
        for (const m of [...w.mounts]) {
          await run('umount', [m]);
          w.mounts.shift();
        }
        if (opts.isoUrl && /^https?:\/\//i.test(opts.isoUrl)) await rm(at(INSTALL_WORK), { recursive: true, force: true }).catch(() => undefined);
        return `${w.target!.disk.path} is ready`;
      },
    },
  ];
}

/** The first sector of an existing partition, from /sys. */
async function partitionStart(at: (p: string) => string, part: BlockDevice): Promise<number> {
  const n = Number((await readFile(at(`/sys/class/block/${part.name}/start`), 'utf8')).trim());
  if (!Number.isInteger(n) || n <= 0) throw new Error(`cannot tell where ${part.path} starts`);
  return n;
}

/**
 * Runs the steps, logging `install: <step> ok: <what>`; on a failure the
 * mounts it made are undone and the error is thrown (a UserError from the
 * checks, before anything was written, says so).
 */
export async function install(opts: InstallOptions, env: InstallEnv): Promise<InstallResult> {
  const w: Work = { mounts: [] };
  const started = Date.now();
  try {
    for (const step of installSteps(opts, env)) {
      const what = await step.run(w);
      env.log(`install: ${step.name}: ${what}`);
    }
  } catch (e) {
    for (const m of w.mounts) await env.exec('umount', [m], { timeoutMs: 60_000 }).catch(() => undefined);
    // a downloaded ISO holds RAM (/run) until it is removed
    const work = path.join(env.root, INSTALL_WORK);
    for (const f of await readdir(work).catch(() => [] as string[])) if (/^iso-.*\.iso$/.test(f)) await rm(path.join(work, f), { force: true });
    throw e;
  }
  return { version: w.source!.version, device: w.target!.disk.path, plan: w.plan, ms: Date.now() - started };
}
