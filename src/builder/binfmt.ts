/**
 * Foreign-arch maintainer scripts run under qemu-user-static. Inside a
 * container qemu-user-static's postinst registers nothing, so the builder
 * mounts binfmt_misc and registers the handler itself from the qemu binfmt.d
 * file, then undoes exactly what it did.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { execa } from 'execa';
import { UserError } from '../errors.js';
import { nodeArch, type Arch } from './types.js';

const BINFMT = '/proc/sys/fs/binfmt_misc';

/** qemu's binfmt.d name for each foreign arch (an amd64 host needs none for amd64). */
export const qemuName: Record<Arch, string | undefined> = { amd64: undefined, arm64: 'aarch64', armv7: 'arm' };

export function hostArch(): Arch {
  const arch = nodeArch();
  if (!arch) throw new UserError(`cairn builds on amd64, arm64 or armv7 hosts, not ${process.arch}`);
  return arch;
}

/** The handler line from qemu-user-static's binfmt.d file, or undefined. */
function handlerLine(name: string): string | undefined {
  for (const dir of ['/usr/lib/binfmt.d', '/etc/binfmt.d', '/run/binfmt.d']) {
    const file = `${dir}/qemu-${name}.conf`;
    if (!existsSync(file)) continue;
    const line = readFileSync(file, 'utf8').split('\n').find((l) => l.startsWith(':'));
    if (line) return line;
  }
  return undefined;
}

/**
 * Makes binaries of `arch` runnable on this host. Returns the undo function
 * (a no-op when nothing was changed).
 */
export async function enableForeignArch(arch: Arch, log: (l: string) => void): Promise<() => Promise<void>> {
  const host = hostArch();
  const name = qemuName[arch];
  if (arch === host || !name) return async () => {};
  // arm64 hosts run armv7 binaries natively on most CPUs.
  if (host === 'arm64' && arch === 'armv7') return async () => {};
  const undo: (() => Promise<void>)[] = [];
  if (!existsSync(`${BINFMT}/register`)) {
    try {
      await execa('mount', ['-t', 'binfmt_misc', 'binfmt_misc', BINFMT]);
    } catch (err) {
      throw new UserError(
        `cannot mount binfmt_misc to run ${arch} maintainer scripts: ${(err as Error).message.split('\n')[0]}`,
        'run the build as root on a host (or privileged container) that allows binfmt_misc',
      );
    }
    undo.push(async () => {
      await execa('umount', [BINFMT]).catch(() => {});
    });
  }
  const entry = `${BINFMT}/qemu-${name}`;
  if (!existsSync(entry)) {
    const line = handlerLine(name);
    if (!line) throw new UserError(`no binfmt handler for qemu-${name}`, 'apt-get install qemu-user-static binfmt-support');
    writeFileSync(`${BINFMT}/register`, line);
    log(`binfmt: registered qemu-${name}`);
    undo.unshift(async () => {
      try {
        writeFileSync(entry, '-1');
      } catch {
        /* already gone */
      }
    });
  } else if (readFileSync(entry, 'utf8').startsWith('disabled')) {
    writeFileSync(entry, '1');
    undo.unshift(async () => writeFileSync(entry, '0'));
  }
  return async () => {
    for (const step of undo) await step();
  };
}
