/**
 * What the host offers QEMU: the emulator binaries, hardware acceleration,
 * and the UEFI firmware files (with a per-VM copy of the variable store).
 */
import { existsSync } from 'node:fs';
import { copyFile, mkdir, open, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { UserError } from '../src/errors.js';
import { fallbackCacheDir } from './pvh.js';
import { nodeArch } from '../src/builder/types.js';
import { qemuBinaries, uefiFirmware, type Accel, type Arch, type FirmwareFiles } from './profiles.js';

/** The host's own arch in cairn's names, if it is one of them. */
export function hostArch(): Arch | undefined {
  return nodeArch();
}

/**
 * KVM only where the host really has it: a same-arch guest and the kvm_intel or
 * kvm_amd module loaded (on x86). /dev/kvm alone proves nothing: on PVM hosts
 * it exists but stock kernels hang on it. CAIRN_QEMU_ACCEL=tcg|kvm overrides.
 */
export function hostAccel(arch: Arch, sysModule = '/sys/module'): Accel {
  const forced = process.env.CAIRN_QEMU_ACCEL;
  if (forced === 'tcg' || forced === 'kvm') return forced;
  if (arch !== hostArch() || arch === 'armv7') return 'tcg';
  if (!existsSync('/dev/kvm')) return 'tcg';
  if (arch === 'amd64') return existsSync(path.join(sysModule, 'kvm_intel')) || existsSync(path.join(sysModule, 'kvm_amd')) ? 'kvm' : 'tcg';
  return existsSync(path.join(sysModule, 'kvm')) ? 'kvm' : 'tcg';
}

function onPath(binary: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    const p = path.join(dir || '.', binary);
    if (existsSync(p)) return p;
  }
  return undefined;
}

/** The emulator for an arch, or a UserError that says which package to install. */
export function findQemu(arch: Arch): string {
  const { binary, package: pkg } = qemuBinaries[arch];
  const found = onPath(binary);
  if (!found) throw new UserError(`${binary} is not installed (needed to run ${arch} images)`, `install it with: apt-get install ${pkg}`);
  return found;
}

async function padTo(src: string, dst: string, bytes: number): Promise<void> {
  const tmp = `${dst}.${process.pid}.tmp`;
  try {
    await copyFile(src, tmp);
    const fh = await open(tmp, 'r+');
    try {
      await fh.truncate(bytes);
    } finally {
      await fh.close();
    }
    await rename(tmp, dst);
  } finally {
    await rm(tmp, { force: true });
  }
}

/**
 * The UEFI firmware for a VM: the read-only code (padded to the pflash size
 * when the package ships it short, cached) and a fresh copy of the variable
 * store in `vmDir`.
 */
export async function prepareUefi(arch: Arch, vmDir: string): Promise<FirmwareFiles> {
  const fw = uefiFirmware[arch];
  const code = fw.code.find((c) => existsSync(c));
  if (!code) throw new UserError(`no UEFI firmware for ${arch} (looked for ${fw.code.join(', ')})`, `install it with: apt-get install ${fw.package}`);
  let codeFile = code;
  if (fw.pflashBytes && (await stat(code)).size < fw.pflashBytes) {
    const dir = fallbackCacheDir();
    await mkdir(dir, { recursive: true });
    codeFile = path.join(dir, `${path.basename(code, '.fd')}-pflash.fd`);
    if (!existsSync(codeFile) || (await stat(codeFile)).size !== fw.pflashBytes) await padTo(code, codeFile, fw.pflashBytes);
  }
  const vars = path.join(vmDir, 'efivars.fd');
  if (existsSync(fw.vars)) {
    await copyFile(fw.vars, vars);
    if (fw.pflashBytes && (await stat(vars)).size < fw.pflashBytes) await padTo(vars, vars, fw.pflashBytes);
  } else if (fw.pflashBytes) {
    const fh = await open(vars, 'w');
    await fh.truncate(fw.pflashBytes);
    await fh.close();
  } else {
    throw new UserError(`no UEFI variable store template for ${arch} (${fw.vars})`, `install it with: apt-get install ${fw.package}`);
  }
  return { code: codeFile, vars };
}
