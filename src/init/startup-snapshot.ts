/**
 * The init's V8 startup snapshot, made on the node. Debian's nodejs has no
 * snapshot of its own, so a plain start bootstraps Node.js and then parses
 * and evaluates the whole init bundle: about 4 s of a boot under TCG. A
 * userland snapshot (`node --build-snapshot`) holds the heap with all of
 * that done, and starts in a fraction of the time.
 *
 * It is made here and not at build time because Node.js refuses a snapshot
 * made on a CPU with other features (V8's CachedDataVersionTag counts them):
 * a blob from the build host would not load on the board. So, on a node
 * with a writable state partition, after the first boot of a version from
 * init.js, the init makes the blob beside the running node (nice 19), starts
 * node from it once as a check, and keeps it in /var/lib/cairn/snapshot:
 *
 *   <version>.blob   the snapshot
 *   <version>.cpu    /proc/cpuinfo's feature lines it was made on
 *   <version>.ok     "the last start from it ran": the first stage removes
 *                    it (and syncs) before it starts node from the blob, and
 *                    the init writes it back as soon as it runs, so a blob
 *                    node cannot start from is tried once, never in a loop
 *   <version>.failed why a blob could not be made (not tried again)
 *
 * The first stage (src/builder/initramfs/init-script.ts, pick_snapshot)
 * starts from the blob when all three of blob, cpu and ok are there and the
 * CPU is the same; cairn.snapshot=0 turns both sides off.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { at, type NodeContext } from './context.js';
import { writeFileAtomic } from './apply/files.js';
import { SNAPSHOT_CHECK_LINE } from './snapshot-check.js';

export const SNAPSHOT_DIR = '/var/lib/cairn/snapshot';
/** The snapshot's entry in the image (the init bundle as CommonJS, src/init/snapshot.ts). */
export const SNAPSHOT_ENTRY = '/usr/lib/cairn/init-snapshot.cjs';
/** The CPU's feature lines, as the first stage read them this boot. */
export const CPU_ID = '/run/cairn/cpu-id';

const files = (version: string) => {
  const base = `${SNAPSHOT_DIR}/${version}`;
  return { blob: `${base}.blob`, cpu: `${base}.cpu`, ok: `${base}.ok`, failed: `${base}.failed`, tmp: `${base}.blob.tmp` };
};

/** Started from the blob: it loaded and runs, so the next boot may use it again. */
export function confirmSnapshotStart(ctx: NodeContext): void {
  try {
    writeFileAtomic(at(ctx, files(ctx.version).ok), `${new Date().toISOString()}\n`);
  } catch (e) {
    ctx.log.info(`startup snapshot: ${files(ctx.version).ok} not written (${(e as Error).message}); the next boot starts from init.js`);
  }
}

/** Whether this boot may make a snapshot: a state boot, its state writable, cairn.snapshot not 0. */
export function snapshotWanted(ctx: NodeContext): boolean {
  if (ctx.boot.mode !== 'state' || ctx.boot.stateReadOnly) return false;
  return !/(^|\s)cairn\.snapshot=(0|false)(\s|$)/.test(ctx.cmdline);
}

/**
 * Makes the blob for this version when there is no good one, and removes
 * the files of other versions. Returns what it did, for the log; never
 * throws (the boot is done by then, and this only makes the next one faster).
 */
export async function makeStartupSnapshot(ctx: NodeContext, opts: { nice?: boolean; timeoutMs?: number } = {}): Promise<string> {
  const f = files(ctx.version);
  const dir = at(ctx, SNAPSHOT_DIR);
  if (!existsSync(at(ctx, SNAPSHOT_ENTRY))) return `not made: the image has no ${SNAPSHOT_ENTRY}`;
  let cpu: string;
  try {
    cpu = readFileSync(at(ctx, CPU_ID), 'utf8');
  } catch {
    return `not made: the first stage left no ${CPU_ID}`;
  }
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // other versions' files: a version comes back only through an upgrade or a rollback, which makes its blob again
  for (const name of readdirSync(dir)) {
    if (!name.startsWith(`${ctx.version}.`)) rmSync(`${dir}/${name}`, { force: true });
  }
  if (existsSync(at(ctx, f.failed))) return `not made for ${ctx.version}: ${readFileSync(at(ctx, f.failed), 'utf8').trim()}`;
  const same = (p: string) => existsSync(at(ctx, p)) && readFileSync(at(ctx, p), 'utf8') === cpu;
  if (existsSync(at(ctx, f.blob)) && existsSync(at(ctx, f.ok)) && same(f.cpu)) return 'the one made before is kept';
  for (const p of [f.ok, f.blob, f.cpu, f.tmp]) rmSync(at(ctx, p), { force: true });
  const started = Date.now();
  const node = (args: string[], env?: Record<string, string>) =>
    opts.nice === false ? ctx.exec('/usr/bin/node', args, { env, timeoutMs: opts.timeoutMs ?? 600_000 }) : ctx.exec('nice', ['-n', '19', '/usr/bin/node', ...args], { env, timeoutMs: opts.timeoutMs ?? 600_000 });
  const fail = (why: string) => {
    rmSync(at(ctx, f.tmp), { force: true });
    writeFileAtomic(at(ctx, f.failed), `${why}\n`);
    return `not made for ${ctx.version}: ${why}`;
  };
  const tail = (s: string) => s.trim().split('\n').slice(-3).join(' | ');
  // the paths node sees are the node's own (ctx.root is / on a node)
  const made = await node(['--snapshot-blob', at(ctx, f.tmp), '--build-snapshot', at(ctx, SNAPSHOT_ENTRY)]);
  if (made.code !== 0 || !existsSync(at(ctx, f.tmp))) return fail(`node --build-snapshot exited ${made.code}${made.timedOut ? ' (timed out)' : ''}: ${tail(made.stderr)}`);
  const check = await node(['--snapshot-blob', at(ctx, f.tmp)], { CAIRN_SNAPSHOT_CHECK: '1' });
  if (check.code !== 0 || !check.stdout.split('\n').includes(`${SNAPSHOT_CHECK_LINE} function`)) return fail(`node does not start from the snapshot it made (exit ${check.code}): ${tail(check.stderr || check.stdout)}`);
  writeFileAtomic(at(ctx, f.cpu), cpu);
  renameSync(at(ctx, f.tmp), at(ctx, f.blob));
  writeFileAtomic(at(ctx, f.ok), `${new Date().toISOString()}\n`);
  const mib = statSync(at(ctx, f.blob)).size / 1048576;
  return `made for ${ctx.version} (${mib.toFixed(1)} MiB, ${((Date.now() - started) / 1000).toFixed(1)} s); the next boot starts from it`;
}
