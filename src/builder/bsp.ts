/**
 * A board support package: NVIDIA's Jetson Linux tarball
 * (Jetson_Linux_R36.*_aarch64.tbz2), an input of a Jetson build that cairn
 * never downloads, never commits and never ships beyond what the image
 * needs. NVIDIA does not allow it to be redistributed; the user brings it.
 *
 * What cairn reads from it (paths inside the tarball):
 *
 *   Linux_for_Tegra/nv_tegra/bsp_version        BSP_BRANCH=36, BSP_MAJOR, BSP_MINOR
 *                                               (flash.sh sources the same file)
 *   Linux_for_Tegra/kernel/Image                NVIDIA's arm64 kernel
 *   Linux_for_Tegra/kernel/dtb/tegra234-*.dtb   the Orin device trees
 *   Linux_for_Tegra/kernel/kernel_supplements.tbz2
 *                                               lib/modules/<release>/ (and any
 *                                               lib/firmware/): the kernel's modules
 *   Linux_for_Tegra/kernel/kernel_display_supplements.tbz2
 *                                               when there: the display driver's modules
 *                                               (lib/modules/<release>/extra/), laid over them
 *   Linux_for_Tegra/bootloader/BOOTAA64.efi     L4TLauncher, the UEFI application
 *                                               that goes on the ESP
 *
 * Everything is checked before the build writes anything; a check that
 * fails says what is wrong and what to do.
 */
import { createReadStream, existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { mkdir, open, readFile, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { UserError } from '../errors.js';

/** The one Jetson Linux release line cairn's Jetson profile is made for (Orin's UEFI boot with L4TLauncher). */
export const BSP_BRANCH = '36';
export const BSP_TOP = 'Linux_for_Tegra';
export const BSP_MEMBERS = {
  version: `${BSP_TOP}/nv_tegra/bsp_version`,
  kernel: `${BSP_TOP}/kernel/Image`,
  dtbDir: `${BSP_TOP}/kernel/dtb`,
  supplements: `${BSP_TOP}/kernel/kernel_supplements.tbz2`,
  launcher: `${BSP_TOP}/bootloader/BOOTAA64.efi`,
} as const;
/** Read when the BSP has it (apply_binaries.sh treats it as optional too). */
export const BSP_DISPLAY_SUPPLEMENTS = `${BSP_TOP}/kernel/kernel_display_supplements.tbz2`;

/** The device trees of the Orin modules (Tegra234) in kernel/dtb. */
export const ORIN_DTB = /^tegra234-.*\.dtb$/;

/** An opened, checked BSP: files unpacked under `dir`. */
export interface Bsp {
  /** The tarball as given (absolute). */
  file: string;
  sha256: string;
  /** The Jetson Linux release, e.g. "36.4.3". */
  release: string;
  /** The kernel release of its kernel and modules, e.g. "5.15.148-tegra". */
  kernelRelease: string;
  /** NVIDIA's kernel Image. */
  kernel: string;
  /** The Orin device trees (absolute paths), sorted by name. */
  dtbs: string[];
  /** A folder holding lib/modules/<kernelRelease>/ (and lib/firmware/ when the BSP ships firmware there). */
  supplements: string;
  /** L4TLauncher (EFI/BOOT/BOOTAA64.efi on the ESP). */
  launcher: string;
}

/** What the build record keeps of the BSP. */
export interface BspRecord {
  file: string;
  sha256: string;
  release: string;
  kernelRelease: string;
}

export function bspRecord(b: Bsp): BspRecord {
  return { file: path.basename(b.file), sha256: b.sha256, release: b.release, kernelRelease: b.kernelRelease };
}

/** `KEY=VALUE` lines of nv_tegra/bsp_version (a shell fragment; comments and quotes allowed). */
export function parseBspVersion(text: string): { branch?: string; major?: string; minor?: string } {
  const vars: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^\s*(?:export\s+)?([A-Z_]+)=["']?([^"'\s#]*)["']?\s*(?:#.*)?$/.exec(line);
    if (m) vars[m[1]!] = m[2]!;
  }
  return { branch: vars.BSP_BRANCH, major: vars.BSP_MAJOR, minor: vars.BSP_MINOR };
}

/** The release a bsp_version names ("36.4.3"), or why it names none that cairn takes. */
export function bspRelease(text: string): { release: string } | { problem: string } {
  const v = parseBspVersion(text);
  if (!v.branch || !/^\d+$/.test(v.branch)) return { problem: 'its nv_tegra/bsp_version has no BSP_BRANCH' };
  const release = [v.branch, v.major, v.minor].filter((x) => x !== undefined && x !== '').join('.');
  if (v.branch !== BSP_BRANCH) return { problem: `it is Jetson Linux R${release}, and the jetson board takes R${BSP_BRANCH}.x (Orin's UEFI and L4TLauncher)` };
  return { release };
}

/** True when `file` starts like an arm64 kernel Image (the "ARM\x64" magic at byte 56). */
export async function isArm64Image(file: string): Promise<boolean> {
  const fh = await open(file, 'r');
  try {
    const b = Buffer.alloc(64);
    const { bytesRead } = await fh.read(b, 0, 64, 0);
    return bytesRead === 64 && b.readUInt32LE(56) === 0x644d5241;
  } finally {
    await fh.close();
  }
}

export async function sha256Of(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

const USE = "pass --bsp NVIDIA's Jetson Linux R36 BSP tarball as downloaded (Jetson_Linux_R36.<x>_aarch64.tbz2, from developer.nvidia.com/embedded/jetson-linux)";

/**
 * Checks the BSP tarball at `file` and unpacks what the image needs into
 * `work` (an empty scratch folder the caller removes). Every problem is a
 * UserError naming the tarball.
 */
export async function openBsp(file: string, work: string): Promise<Bsp> {
  const abs = path.resolve(file);
  const st = await stat(abs).catch(() => undefined);
  if (!st) throw new UserError(`--bsp ${file}: no such file`, USE);
  if (!st.isFile()) throw new UserError(`--bsp ${file} is not a file`, `${USE}; give the tarball itself, not an unpacked Linux_for_Tegra folder`);
  const sha256 = await sha256Of(abs);
  await mkdir(work, { recursive: true });
  // Only the members cairn needs; tar names the ones it did not find and goes on.
  const r = await execa('tar', ['-xf', abs, '-C', work, '--no-same-owner', ...Object.values(BSP_MEMBERS), BSP_DISPLAY_SUPPLEMENTS], { reject: false, stdin: 'ignore' });
  const lines = (r.stderr || '').split('\n').filter(Boolean);
  const notArchive = lines.find((l) => /not look like a tar archive|not a bzip2 file|Unexpected EOF|Error is not recoverable|Cannot open|unrecognized|compressed data is corrupt|invalid compressed data/i.test(l));
  if (r.exitCode !== 0 && notArchive) {
    if (/bzip2: Cannot exec|lbzip2: Cannot exec/.test(r.stderr)) throw new UserError('bzip2 is not installed on this machine: the BSP tarball is bzip2-compressed', 'apt-get install bzip2');
    throw new UserError(`--bsp ${file} is not a readable tar archive (${notArchive.replace(/^tar: /, '')})`, USE);
  }
  const at = (rel: string) => path.join(work, rel);

  if (!existsSync(at(BSP_MEMBERS.version))) {
    throw new UserError(`--bsp ${file} has no ${BSP_MEMBERS.version}, so its release cannot be checked: it is not a Jetson Linux BSP tarball`, USE);
  }
  const rel = bspRelease(await readFile(at(BSP_MEMBERS.version), 'utf8'));
  if ('problem' in rel) throw new UserError(`--bsp ${file}: ${rel.problem}`, USE);

  const missing: string[] = [];
  if (!existsSync(at(BSP_MEMBERS.kernel))) missing.push(`${BSP_MEMBERS.kernel} (the kernel)`);
  const dtbs = existsSync(at(BSP_MEMBERS.dtbDir)) ? (await readdir(at(BSP_MEMBERS.dtbDir))).filter((n) => ORIN_DTB.test(n)).sort() : [];
  if (!dtbs.length) missing.push(`${BSP_MEMBERS.dtbDir}/tegra234-*.dtb (the Orin device trees)`);
  if (!existsSync(at(BSP_MEMBERS.supplements))) missing.push(`${BSP_MEMBERS.supplements} (the kernel's modules)`);
  if (!existsSync(at(BSP_MEMBERS.launcher))) missing.push(`${BSP_MEMBERS.launcher} (L4TLauncher, the UEFI boot application)`);
  if (missing.length) throw new UserError(`--bsp ${file} (Jetson Linux R${rel.release}) lacks ${missing.join(', ')}`, `its layout is not that of NVIDIA's tarball: ${USE}`);
  if (!(await isArm64Image(at(BSP_MEMBERS.kernel)))) throw new UserError(`--bsp ${file}: ${BSP_MEMBERS.kernel} is not an arm64 kernel Image`, USE);

  const supplements = path.join(work, 'supplements');
  await mkdir(supplements, { recursive: true });
  const unpack = async (member: string) => {
    const s = await execa('tar', ['-xf', at(member), '-C', supplements, '--no-same-owner', '--no-same-permissions'], { reject: false, stdin: 'ignore' });
    if (s.exitCode !== 0) throw new UserError(`--bsp ${file}: ${member} cannot be unpacked (${s.stderr.trim().split('\n').pop() ?? `exit ${s.exitCode}`})`, USE);
  };
  await unpack(BSP_MEMBERS.supplements);
  const modBase = path.join(supplements, 'lib/modules');
  const releases = existsSync(modBase) ? (await readdir(modBase, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name) : [];
  if (releases.length !== 1) {
    throw new UserError(
      `--bsp ${file}: ${BSP_MEMBERS.supplements} holds ${releases.length ? `modules of ${releases.length} kernels (${releases.join(', ')})` : 'no kernel modules'}; it must hold lib/modules/<release>/ of its one kernel`,
      USE,
    );
  }
  const kernelRelease = releases[0]!;
  if (!existsSync(path.join(modBase, kernelRelease, 'modules.dep')) && !existsSync(path.join(modBase, kernelRelease, 'modules.builtin'))) {
    throw new UserError(`--bsp ${file}: lib/modules/${kernelRelease}/ in ${BSP_MEMBERS.supplements} has neither modules.dep nor modules.builtin`, USE);
  }
  // the display driver's modules, laid over the kernel's (the prune stage's depmod indexes them)
  if (existsSync(at(BSP_DISPLAY_SUPPLEMENTS))) await unpack(BSP_DISPLAY_SUPPLEMENTS);
  return {
    file: abs,
    sha256,
    release: rel.release,
    kernelRelease,
    kernel: at(BSP_MEMBERS.kernel),
    dtbs: dtbs.map((d) => path.join(at(BSP_MEMBERS.dtbDir), d)),
    supplements,
    launcher: at(BSP_MEMBERS.launcher),
  };
}
