/**
 * A check of the init's startup snapshot at build time. The node makes the
 * snapshot itself (src/init/startup-snapshot.ts: Node.js refuses a blob made
 * on a CPU with other features, so one made here would not load on the
 * board). What the build can do is make one here, with the image's own
 * Node.js chrooted into the tree (foreign arches under qemu-user, as the
 * rootfs stage does), start node from it once (CAIRN_SNAPSHOT_CHECK=1), and
 * throw it away: a module of the init that a snapshot cannot hold (an open
 * handle at load time, a module outside Node's own) is then a build error,
 * not a node that never gets faster.
 */
import { existsSync } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { UserError } from '../../errors.js';
import { SNAPSHOT_CHECK_LINE } from '../../init/snapshot-check.js';
import { enableForeignArch, hostArch } from '../binfmt.js';
import { SNAPSHOT_ENTRY } from '../../init/startup-snapshot.js';
import type { Arch } from '../types.js';

/** Where the image holds the snapshot's entry (the init bundle as CommonJS: `node --build-snapshot` takes a script that requires only Node's own modules). */
export const SNAPSHOT_ENTRY_PATH = SNAPSHOT_ENTRY.slice(1);
const CHECK_BLOB = 'tmp/cairn-init-check.blob';

/**
 * A shell line that runs `command` (words, already quoted) chrooted into
 * `root`: in new PID and mount namespaces, with /proc and a small /dev of
 * their own (nothing is mounted on the host's tree outside the namespace).
 */
function inRoot(root: string, env: string[], command: string[]): string[] {
  const q = (s: string) => `'${s.replace(/'/g, "'\\''")}'`;
  const script = [
    'mount --make-rprivate /',
    `mount -t proc proc ${q(`${root}/proc`)}`,
    `mount -t tmpfs -o mode=0755 dev ${q(`${root}/dev`)}`,
    ...['null c 1 3', 'zero c 1 5', 'random c 1 8', 'urandom c 1 9'].map((n) => `mknod -m 666 ${q(`${root}/dev/${n.split(' ')[0]!}`)} ${n.split(' ').slice(1).join(' ')}`),
    `exec chroot ${q(root)} /usr/bin/env -i ${env.map(q).join(' ')} ${command.map(q).join(' ')}`,
  ].join('\n');
  return ['--pid', '--fork', '--mount', 'sh', '-ec', script];
}

/** What the system stage runs on the pruned tree: checkInitSnapshot, or a test's stand-in. */
export type SnapshotCheckFn = (root: string, arch: Arch, log: (l: string) => void) => Promise<void>;

function tail(text: string, lines = 12): string {
  return text.trim().split('\n').slice(-lines).join('\n');
}

/** Makes a snapshot of the entry the tree holds, starts node from it once, and removes it. */
export async function checkInitSnapshot(root: string, arch: Arch, log: (l: string) => void): Promise<void> {
  for (const rel of ['usr/bin/node', 'usr/bin/env', SNAPSHOT_ENTRY_PATH, 'proc', 'dev', 'tmp']) {
    if (!existsSync(path.join(root, rel))) throw new Error(`init snapshot: the system tree has no /${rel}`);
  }
  const started = performance.now();
  const undo = arch === hostArch() ? async () => undefined : await enableForeignArch(arch, log);
  const blob = path.join(root, CHECK_BLOB);
  try {
    const made = await execa('unshare', inRoot(root, ['PATH=/usr/bin:/bin'], ['/usr/bin/node', '--snapshot-blob', `/${CHECK_BLOB}`, '--build-snapshot', SNAPSHOT_ENTRY]), { reject: false, all: true, cwd: '/' });
    if (made.exitCode !== 0 || !existsSync(blob)) {
      throw new UserError(
        `the init's startup snapshot could not be made (node --build-snapshot exited ${made.exitCode ?? made.signal}):\n${tail(made.all ?? '')}`,
        /unshare|mount:|chroot:/.test(made.all ?? '')
          ? 'the builder needs root, on a host that lets it make PID and mount namespaces (unshare)'
          : "a module of the init does something at load time that a V8 snapshot cannot hold (an open handle, a module outside Node's own): see src/init/snapshot.ts",
      );
    }
    const check = await execa('unshare', inRoot(root, ['PATH=/usr/bin:/bin', 'CAIRN_SNAPSHOT_CHECK=1'], ['/usr/bin/node', '--snapshot-blob', `/${CHECK_BLOB}`]), { reject: false, all: true, cwd: '/' });
    if (check.exitCode !== 0 || !check.stdout.split('\n').includes(`${SNAPSHOT_CHECK_LINE} function`)) {
      throw new UserError(`the init's startup snapshot was made but node does not start from it (exit ${check.exitCode ?? check.signal}):\n${tail(check.all ?? '')}`, 'this is a bug in cairn: report it with this output');
    }
    const warned = `${made.stderr}\n${check.stderr}`.trim();
    if (warned) log(`init snapshot: node said: ${tail(warned, 4)}`);
    log(`init snapshot: made and started once in ${((performance.now() - started) / 1000).toFixed(1)} s (${((await stat(blob)).size / 1048576).toFixed(1)} MiB; the node makes its own)`);
  } finally {
    await rm(blob, { force: true });
    await undo();
  }
}
