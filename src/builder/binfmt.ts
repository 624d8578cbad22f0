/**
 * Foreign-arch maintainer scripts run under qemu-user-static. Inside a
 * container qemu-user-static's postinst registers nothing, so the builder
 * mounts binfmt_misc and registers the handler itself from the qemu binfmt.d
 * file, then undoes exactly what it did.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
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

/** What builds changed on the host, undone when the last build using it ends. */
interface Changes {
  mounted: boolean;
  /** Handlers registered (written to register). */
  registered: string[];
  /** Handlers that were disabled and were switched on. */
  enabled: string[];
}

export interface BinfmtPaths {
  /** binfmt_misc's mount point. */
  binfmt: string;
  /** Where builds record their use of it (a file per build) and what they changed. */
  runDir: string;
}

const HOST_PATHS: BinfmtPaths = { binfmt: BINFMT, runDir: '/run/cairn/binfmt' };

/**
 * Runs `fn` holding the host-wide binfmt lock (a folder: mkdir is atomic).
 * A lock older than a minute is left over from a killed build and is taken.
 */
async function locked<T>(paths: BinfmtPaths, fn: () => Promise<T>): Promise<T> {
  const lock = path.join(paths.runDir, 'lock');
  const until = Date.now() + 60_000;
  for (;;) {
    try {
      mkdirSync(paths.runDir, { recursive: true, mode: 0o700 });
      mkdirSync(lock);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const age = Date.now() - (statSync(lock, { throwIfNoEntry: false })?.mtimeMs ?? Date.now());
      if (age > 60_000) rmSync(lock, { recursive: true, force: true });
      else if (Date.now() > until) throw new UserError(`${lock} has been held for a minute by another build`, `remove it if no other cairn build is running`);
      else await new Promise((r) => setTimeout(r, 100));
    }
  }
  try {
    return await fn();
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
};

/**
 * Makes binaries of `arch` runnable on this host. Returns the undo function.
 * Builds running side by side share binfmt_misc: each records its use, and
 * what the builds changed (the mount, a handler registered or switched on)
 * is undone only when the last of them ends.
 */
export async function enableForeignArch(arch: Arch, log: (l: string) => void, paths: BinfmtPaths = HOST_PATHS): Promise<() => Promise<void>> {
  const host = hostArch();
  const name = qemuName[arch];
  if (arch === host || !name) return async () => {};
  // arm64 hosts run armv7 binaries natively on most CPUs.
  if (host === 'arm64' && arch === 'armv7') return async () => {};
  const changesFile = path.join(paths.runDir, 'changes.json');
  const usersDir = path.join(paths.runDir, 'users');
  const user = path.join(usersDir, `${process.pid}-${arch}-${Math.random().toString(16).slice(2, 10)}`);
  const readChanges = (): Changes => (existsSync(changesFile) ? (JSON.parse(readFileSync(changesFile, 'utf8')) as Changes) : { mounted: false, registered: [], enabled: [] });
  await locked(paths, async () => {
    const changes = readChanges();
    if (!existsSync(`${paths.binfmt}/register`)) {
      try {
        await execa('mount', ['-t', 'binfmt_misc', 'binfmt_misc', paths.binfmt]);
      } catch (err) {
        throw new UserError(
          `cannot mount binfmt_misc to run ${arch} maintainer scripts: ${(err as Error).message.split('\n')[0]}`,
          'run the build as root on a host (or privileged container) that allows binfmt_misc',
        );
      }
      changes.mounted = true;
    }
    const entry = `${paths.binfmt}/qemu-${name}`;
    if (!existsSync(entry)) {
      const line = handlerLine(name);
      if (!line) throw new UserError(`no binfmt handler for qemu-${name}`, 'apt-get install qemu-user-static binfmt-support');
      writeFileSync(`${paths.binfmt}/register`, line);
      log(`binfmt: registered qemu-${name}`);
      changes.registered.push(name);
    } else if (readFileSync(entry, 'utf8').startsWith('disabled')) {
      writeFileSync(entry, '1');
      changes.enabled.push(name);
    }
    mkdirSync(usersDir, { recursive: true });
    writeFileSync(user, `${process.pid}\n`);
    writeFileSync(changesFile, JSON.stringify(changes));
  });
  return () =>
    locked(paths, async () => {
      rmSync(user, { force: true });
      const others = readdirSync(usersDir).filter((f) => alive(Number(f.split('-')[0])));
      if (others.length) return;
      const changes = readChanges();
      for (const n of changes.enabled) writeIfThere(`${paths.binfmt}/qemu-${n}`, '0');
      for (const n of changes.registered) writeIfThere(`${paths.binfmt}/qemu-${n}`, '-1');
      if (changes.mounted) await execa('umount', [paths.binfmt]).catch(() => {});
      rmSync(changesFile, { force: true });
    });
}

function writeIfThere(file: string, text: string): void {
  try {
    writeFileSync(file, text);
  } catch {
    /* already gone */
  }
}
