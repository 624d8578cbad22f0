/**
 * Care of k3s' SQLite datastore (state.db), through the image's sqlite3:
 * - an integrity check before k3s starts (PRAGMA quick_check);
 * - a database that the check proves damaged is moved aside and the newest
 *   good snapshot restored. A check that could not be made (sqlite3 missing
 *   or killed, a timeout, the database locked) proves nothing: the database
 *   stays where it is;
 * - snapshots are made with SQLite's online backup (`.backup`), consistent
 *   even while k3s writes, and the newest N are kept. They hold every
 *   Kubernetes Secret: their folder is 0700, each file 0600.
 */
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Exec, ExecResult } from '../init/exec.js';
import { fsyncPath } from '../init/apply/files.js';

export const KEEP_SNAPSHOTS = 5;
export const SNAPSHOT_DIR_MODE = 0o700;
export const SNAPSHOT_FILE_MODE = 0o600;
export const STATE_DB_MODE = 0o600;

export interface DatastoreCheck {
  /** `unchecked`: sqlite3 could not say (not there, killed, timed out, locked); the database was left alone. */
  state: 'missing' | 'ok' | 'restored' | 'damaged' | 'unchecked';
  detail: string;
}

/** ok: SQLite says "ok"; corrupt: SQLite itself reports damage; unknown: no verdict (the check did not run to its end). */
export type CheckVerdict = 'ok' | 'corrupt' | 'unknown';

/** Pure: what a sqlite3 run of PRAGMA quick_check says about the file. */
export function quickCheckVerdict(r: ExecResult): { verdict: CheckVerdict; detail: string } {
  const out = `${r.stdout}\n${r.stderr}`.trim();
  const words = out.split('\n').slice(0, 3).join(' / ');
  if (r.timedOut) return { verdict: 'unknown', detail: 'sqlite3 did not finish in time' };
  if (r.aborted) return { verdict: 'unknown', detail: 'the check was cancelled' };
  if (r.notStarted) return { verdict: 'unknown', detail: `sqlite3 could not be run (${words || `exit ${r.code}`})` };
  if (r.signal) return { verdict: 'unknown', detail: `sqlite3 was killed (${r.signal})` };
  if (r.code === 0 && r.stdout.trim() === 'ok') return { verdict: 'ok', detail: 'quick_check ok' };
  // SQLITE_BUSY (5) and SQLITE_LOCKED (6): another process holds the database.
  if (/database (table )?is locked|database is busy/i.test(out) || r.code === 5 || r.code === 6) return { verdict: 'unknown', detail: `the database is locked (${words || `exit ${r.code}`})` };
  // SQLITE_CORRUPT (11) and SQLITE_NOTADB (26), or quick_check's own list of problems.
  if (/malformed|not a database|corrupt|btreeInitPage|\*\*\* in database/i.test(out) || r.code === 11 || r.code === 26 || (r.code === 0 && r.stdout.trim() !== ''))
    return { verdict: 'corrupt', detail: words || `exit ${r.code}` };
  return { verdict: 'unknown', detail: `sqlite3 gave no verdict (${words || `exit ${r.code}`})` };
}

/** Runs PRAGMA quick_check; `ok` true only when SQLite says "ok". */
export async function quickCheck(exec: Exec, db: string, opts: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<{ ok: boolean; verdict: CheckVerdict; detail: string }> {
  const r = await exec('sqlite3', ['-readonly', db, 'PRAGMA quick_check;'], { timeoutMs: opts.timeoutMs ?? 120_000, signal: opts.signal });
  const v = quickCheckVerdict(r);
  return { ok: v.verdict === 'ok', ...v };
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

/** The snapshot folder, root-only (0700), and every snapshot in it 0600: also one an older version left readable. */
export function secureSnapshotDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: SNAPSHOT_DIR_MODE });
  chmodSync(dir, SNAPSHOT_DIR_MODE);
  for (const snap of listSnapshots(dir)) {
    if ((statSync(snap).mode & 0o777) !== SNAPSHOT_FILE_MODE) chmodSync(snap, SNAPSHOT_FILE_MODE);
  }
}

/** A consistent copy of the live database, then old snapshots pruned. Returns the snapshot's path. */
export async function snapshot(exec: Exec, db: string, dir: string, opts: { reason?: string; keep?: number } = {}): Promise<string> {
  secureSnapshotDir(dir);
  const name = `state-${stamp()}${opts.reason ? `-${opts.reason.replace(/[^\w.-]/g, '_')}` : ''}.db`;
  const target = join(dir, name);
  const tmp = `${target}.partial`;
  rmSync(tmp, { force: true });
  const r = await exec('sqlite3', [db, `.backup '${tmp.replace(/'/g, "''")}'`], { timeoutMs: 300_000 });
  if (r.code !== 0 || r.timedOut || r.signal) {
    rmSync(tmp, { force: true });
    throw new Error(`snapshot of ${db} failed: ${(r.stderr || (r.timedOut ? 'timed out' : r.signal ? `killed (${r.signal})` : `exit ${r.code}`)).trim()}`);
  }
  chmodSync(tmp, SNAPSHOT_FILE_MODE);
  // A snapshot is only worth having if a power cut right after it keeps it.
  fsyncPath(tmp);
  renameSync(tmp, target);
  fsyncPath(dir);
  for (const old of listSnapshots(dir).slice(opts.keep ?? KEEP_SNAPSHOTS)) rmSync(old, { force: true });
  return target;
}

/** A snapshot copied into place as state.db (mode 0600): beside it, flushed, renamed, the folder flushed. */
function restoreFile(snap: string, db: string): void {
  mkdirSync(dirname(db), { recursive: true });
  const restoring = `${db}.restoring`;
  copyFileSync(snap, restoring);
  chmodSync(restoring, STATE_DB_MODE);
  fsyncPath(restoring);
  renameSync(restoring, db);
  fsyncPath(dirname(db));
}

/**
 * Checks state.db before k3s starts. A database that quick_check proves
 * damaged (and its -wal/-shm) is moved aside as state.db.damaged-<time> and
 * the newest snapshot that passes its own check is restored (mode 0600).
 * Without a verdict the database is left in place, and the detail says why.
 */
export async function checkDatastore(exec: Exec, db: string, snapshots: string, opts: { signal?: AbortSignal } = {}): Promise<DatastoreCheck> {
  if (!existsSync(db)) return { state: 'missing', detail: 'no datastore yet (first start)' };
  const check = await quickCheck(exec, db, opts);
  if (check.verdict === 'ok') return { state: 'ok', detail: `${(statSync(db).size / 1048576).toFixed(1)} MiB, quick_check ok` };
  if (check.verdict === 'unknown') return { state: 'unchecked', detail: `state.db not checked: ${check.detail}; left in place` };
  opts.signal?.throwIfAborted();
  const aside = `${db}.damaged-${stamp()}`;
  renameSync(db, aside);
  for (const ext of ['-wal', '-shm']) if (existsSync(db + ext)) renameSync(db + ext, aside + ext);
  for (const snap of listSnapshots(snapshots)) {
    const good = await quickCheck(exec, snap, opts);
    if (!good.ok) continue;
    restoreFile(snap, db);
    return { state: 'restored', detail: `state.db was damaged (${check.detail}); moved to ${basename(aside)}, restored ${basename(snap)}` };
  }
  return { state: 'damaged', detail: `state.db was damaged (${check.detail}); moved to ${basename(aside)}; no good snapshot to restore: k3s starts with an empty datastore` };
}

/** The snapshot `cairn upgrade` took before installing `version` (the newest, if there are several). */
export function upgradeSnapshot(dir: string, version: string): string | undefined {
  const suffix = `-upgrade-${version.replace(/[^\w.-]/g, '_')}.db`;
  return listSnapshots(dir).find((s) => s.endsWith(suffix));
}

/**
 * After a rollback from `failed`, when k3s cannot use the database that
 * version left: state.db (and its -wal/-shm) is kept aside as
 * state.db.from-<failed>-<time>, and the snapshot taken before the upgrade
 * becomes state.db again (mode 0600). Returns what was done, or undefined
 * when there is no such snapshot.
 */
export function restoreUpgradeSnapshot(db: string, snapshots: string, failed: string): string | undefined {
  const snap = upgradeSnapshot(snapshots, failed);
  if (!snap) return undefined;
  const aside = `${db}.from-${failed.replace(/[^\w.-]/g, '_')}-${stamp()}`;
  if (existsSync(db)) renameSync(db, aside);
  for (const ext of ['-wal', '-shm']) if (existsSync(db + ext)) renameSync(db + ext, aside + ext);
  restoreFile(snap, db);
  return `restored ${basename(snap)}, the snapshot taken before the upgrade to ${failed}; the database ${failed} left is kept as ${basename(aside)}`;
}
