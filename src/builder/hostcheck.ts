/**
 * Host checks, run before anything long: every missing tool is listed at
 * once, with the apt-get line that installs them all.
 */
import { accessSync, constants, existsSync } from 'node:fs';
import path from 'node:path';
import { UserError } from '../errors.js';
import { hostArch, qemuName } from './binfmt.js';
import { formatRow, type Format } from './formats.js';
import type { Arch } from './types.js';

export interface HostTool {
  /** A command looked up in PATH (and the sbin folders), or an absolute path that must exist. */
  need: string;
  /** The Debian package that provides it. */
  pkg: string;
  why: string;
}

const PATHS = () => [...(process.env.PATH ?? '').split(':'), '/usr/local/sbin', '/usr/sbin', '/sbin'].filter(Boolean);

function found(need: string): boolean {
  if (need.startsWith('/')) return existsSync(need);
  return PATHS().some((dir) => {
    try {
      accessSync(path.join(dir, need), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

const BASE: HostTool[] = [
  { need: 'mmdebstrap', pkg: 'mmdebstrap', why: 'root filesystem' },
  { need: 'mksquashfs', pkg: 'squashfs-tools', why: 'squashfs' },
  { need: 'depmod', pkg: 'kmod', why: 'module index' },
  { need: 'cp', pkg: 'coreutils', why: 'tree copies' },
  { need: 'zstd', pkg: 'zstd', why: 'compression' },
];

/** GRUB platform folders per arch for the formats that boot through GRUB. */
function grubTools(arch: Arch, formats: Format[]): HostTool[] {
  if (!formats.some((f) => formatRow(f).grub)) return [];
  if (arch === 'amd64') {
    return [
      { need: '/usr/lib/grub/i386-pc/modinfo.sh', pkg: 'grub-pc-bin', why: 'BIOS boot' },
      { need: '/usr/lib/grub/x86_64-efi/modinfo.sh', pkg: 'grub-efi-amd64-bin', why: 'UEFI boot' },
    ];
  }
  // ARM GRUB packages do not install on other hosts: the writers take the
  // modules from the image's root or fetch them from Debian (outputs/grub.ts).
  return [];
}

function foreignTools(arch: Arch): HostTool[] {
  const name = qemuName[arch];
  if (!name || hostArch() === arch || (hostArch() === 'arm64' && arch === 'armv7')) return [];
  return [
    { need: `/usr/lib/binfmt.d/qemu-${name}.conf`, pkg: 'qemu-user-static', why: `${arch} maintainer scripts` },
    { need: `qemu-${name}-static`, pkg: 'qemu-user-static', why: `${arch} maintainer scripts` },
  ];
}

export function requiredTools(arches: Arch[], formats: Format[]): HostTool[] {
  const all = [...BASE, ...formats.flatMap((f) => formatRow(f).tools), ...arches.flatMap((a) => [...grubTools(a, formats), ...foreignTools(a)])];
  const seen = new Set<string>();
  return all.filter((t) => (seen.has(t.need) ? false : (seen.add(t.need), true)));
}

/** Throws one UserError naming every missing tool and the apt-get line for them. */
export function checkHost(arches: Arch[], formats: Format[], opts: { isFound?: (need: string) => boolean; uid?: number } = {}): void {
  const isFound = opts.isFound ?? found;
  const missing = requiredTools(arches, formats).filter((t) => !isFound(t.need));
  const problems: string[] = [];
  if (missing.length) {
    problems.push(`missing host tools: ${missing.map((t) => `${path.basename(t.need)} (${t.pkg}, for ${t.why})`).join(', ')}`);
  }
  const uid = opts.uid ?? process.getuid?.() ?? 0;
  if (uid !== 0) problems.push('cairn build runs as root (mmdebstrap --mode=root keeps file owners, and binfmt needs it for foreign arches)');
  if (problems.length === 0) return;
  const pkgs = [...new Set(missing.map((t) => t.pkg))].sort();
  throw new UserError(problems.join('\n'), pkgs.length ? `install them with: apt-get install -y ${pkgs.join(' ')}` : 'run it with sudo');
}
