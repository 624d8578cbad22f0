/**
 * Care of k3s' SQLite datastore (state.db), through the image's sqlite3:
 * - an integrity check before k3s starts (PRAGMA quick_check);
 * - a damaged database is moved aside and the newest good snapshot restored;
 * - snapshots are made with SQLite's online backup (`.backup`), consistent
 *   even while k3s writes, and the newest N are kept.
 */
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, copyFileSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Exec } from '../init/exec.js';
import { fsyncPath } from '../init/apply/files.js';

export const KEEP_SNAPSHOTS = 5;

export interface DatastoreCheck {
  state: 'missing' | 'ok' | 'restored' | 'damaged';
  detail: string;
}

/** Runs PRAGMA quick_check; true when SQLite says "ok". */
export async function quickCheck(exec: Exec, db: string): Promise<{ ok: boolean; detail: string }> {
  const r = await exec('sqlite3', ['-readonly', db, 'PRAGMA quick_check;'], { timeoutMs: 120_000 });
  const out = `${r.stdout}\n${r.stderr}`.trim();
  return { ok: r.code === 0 && r.stdout.trim() === 'ok', detail: out.split('\n').slice(0, 3).join(' / ') || `exit ${r.code}` };
}

export function listSnapshots(dir: string): string[] {
  try {
    return readdirSync(dir)
      .filter((n) => /^state-\d{8}T\d{6}Z(-[\w.-]+)?\.db$/.test(n))
      .sort()
      .reverse()
      .map((n) => join(dir, n));
  } catch {
    return [];
  }
}

function stamp(d = new Date()): string {
  return d.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
}

/** A consistent copy of the live database, then old snapshots pruned. Returns the snapshot's path. */
export async function snapshot(exec: Exec, db: string, dir: string, opts: { reason?: string; keep?: number } = {}): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const name = `state-${stamp()}${opts.reason ? `-${opts.reason.replace(/[^\w.-]/g, '_')}` : ''}.db`;
  const target = join(dir, name);
  const tmp = `${target}.partial`;
  rmSync(tmp, { force: true });
  const r = await exec('sqlite3', [db, `.backup '${tmp.replace(/'/g, "''")}'`], { timeoutMs: 300_000 });
  if (r.code !== 0) {
    rmSync(tmp, { force: true });
    throw new Error(`snapshot of ${db} failed: ${(r.stderr || `exit ${r.code}`).trim()}`);
  }
  // A snapshot is only worth having if a power cut right after it keeps it.
  fsyncPath(tmp);
  renameSync(tmp, target);
  fsyncPath(dir);
  for (const old of listSnapshots(dir).slice(opts.keep ?? KEEP_SNAPSHOTS)) rmSync(old, { force: true });
  return target;
}

/**
 * Checks state.db before k3s starts. A damaged database (and its -wal/-shm)
 * is moved aside as state.db.damaged-<time> and the newest snapshot that
 * passes its own check is restored.
 */
export async function checkDatastore(exec: Exec, db: string, snapshots: string): Promise<DatastoreCheck> {
  if (!existsSync(db)) return { state: 'missing', detail: 'no datastore yet (first start)' };
  const check = await quickCheck(exec, db);
  if (check.ok) return { state: 'ok', detail: `${(statSync(db).size / 1048576).toFixed(1)} MiB, quick_check ok` };
  const aside = `${db}.damaged-${stamp()}`;
  renameSync(db, aside);
  for (const ext of ['-wal', '-shm']) if (existsSync(db + ext)) renameSync(db + ext, aside + ext);
  for (const snap of listSnapshots(snapshots)) {
    const good = await quickCheck(exec, snap);
    if (!good.ok) continue;
    mkdirSync(dirname(db), { recursive: true });
    copyFileSync(snap, `${db}.restoring`);
    fsyncPath(`${db}.restoring`);
    renameSync(`${db}.restoring`, db);
    fsyncPath(dirname(db));
    return { state: 'restored', detail: `state.db was damaged (${check.detail}); moved to ${basename(aside)}, restored ${basename(snap)}` };
  }
  return { state: 'damaged', detail: `state.db was damaged (${check.detail}); moved to ${basename(aside)}; no good snapshot to restore: k3s starts with an empty datastore` };
}
