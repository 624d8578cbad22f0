/**
 * `cairn upgrade`: installs a new version beside the running one and puts
 * it on trial. Each step can be interrupted (a power cut, a killed job)
 * without harm, and nothing on disk changes before the payload is verified
 * and known to fit:
 *   1. a lock (/run/cairn/upgrade.lock), so one upgrade runs at a time;
 *   2. the payload opened and verified: the ed25519 signature over its
 *      record against the keys the running image trusts, the architecture;
 *   3. what the boot state says about its version: already running (exit 0,
 *      so a retried job succeeds), on trial now (wait for the verdict),
 *      rolled back before (refused unless --force);
 *   4. the free space on CAIRN_STATE (versions other than the active and
 *      the fallback count as free: they are deleted first);
 *   5. a snapshot of the k3s datastore;
 *   6. the components written into cairn/system/.incoming-<version>, each
 *      checked against its sha256 as it is written, flushed, then the
 *      folder renamed to cairn/system/<version>;
 *   7. the trial started through the boot state (src/boot/state.ts: one
 *      atomic rename of grubenv), the upgrade recorded;
 *   8. older versions deleted (never the active or the fallback one);
 *   9. a reboot when asked.
 */
import { closeSync, existsSync, lstatSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, rmSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../errors.js';
import { DEFAULT_DEADLINE_S, DEFAULT_TRIES, GRUBENV, checkpointState, MAX_TRIES, SYSTEM_DIR, isBootable, keep, readState, renderVersionEnv, startTrial, versionProblem, writeState, type BootState } from '../boot/state.js';
import { readBootInfo } from '../init/bootinfo.js';
import { fsyncPath } from '../init/apply/files.js';
import type { Exec } from '../init/exec.js';
import { HISTORY_PATH, UPGRADE_PATH, readJson, writeJsonAtomic, type BootRecord, type UpgradeRecord } from '../init/status.js';
import { snapshot } from '../runtime/datastore.js';
import { SNAPSHOTS, STATE_DB } from '../runtime/paths.js';
import { kernelArgs } from '../builder/outputs/common.js';
import { LOADER_PATH, readLoader } from '../boot/loader.js';
import { KEXEC_ARCHES, boardCmdline } from '../boot/loader-args.js';
import type { Arch } from '../builder/types.js';
import { TRUSTED_KEYS_DIR, verifyRecord } from './keys.js';
import { COMPONENTS, openPayload, type OpenedPayload } from './payload.js';

export const LOCK_PATH = '/run/cairn/upgrade.lock';
const MIB = 1024 * 1024;
/** Room left over on CAIRN_STATE after the new version is written (logs, the datastore, grubenv rewrites). */
export const SPARE_BYTES = 64 * MIB;

export interface UpgradeOptions {
  /** "/" on a node; a folder in tests. */
  root: string;
  source: string;
  tries?: number;
  /** Seconds the trial boot has to become healthy. */
  deadline?: number;
  force?: boolean;
  /** Only verify the payload and say what an upgrade would do. */
  check?: boolean;
  /** How long to wait for the verdict when the payload's version is on trial right now (ms). */
  waitMs?: number;
  exec: Exec;
  log: (line: string) => void;
  /** The running arch (default: Node's). */
  arch?: string;
}

export interface UpgradeResult {
  /** What happened, in a line: staged, already on, verified. */
  outcome: 'staged' | 'current' | 'checked';
  version: string;
  message: string;
}

const NODE_ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'armv7' };

export function runningArch(): string {
  return NODE_ARCH[process.arch] ?? process.arch;
}

function at(root: string, p: string): string {
  return join(root, p);
}

/** Takes the upgrade lock; a lock left by a process that is gone is taken over. */
export function takeLock(root: string): () => void {
  const path = at(root, LOCK_PATH);
  mkdirSync(join(path, '..'), { recursive: true });
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      return () => rmSync(path, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = Number(readFileSync(path, 'utf8').trim());
      let alive = false;
      if (Number.isInteger(pid) && pid > 0) {
        try {
          process.kill(pid, 0);
          alive = true;
        } catch (err) {
          alive = (err as NodeJS.ErrnoException).code === 'EPERM';
        }
      }
      if (alive) throw new UserError(`another cairn upgrade is running (pid ${pid}, ${LOCK_PATH})`, 'wait for it to finish; cairn status shows its outcome');
      rmSync(path, { force: true });
    }
  }
  throw new UserError(`could not take ${LOCK_PATH}`, 'try again');
}

/** The boots of `version` that never became good, for the refusal after a rollback. */
function failedBoots(root: string, version: string): string[] {
  const history = readJson<BootRecord[]>(at(root, HISTORY_PATH)) ?? [];
  return history.filter((r) => r.version === version && r.result !== 'good').map((r) => r.startedAt);
}

/**
 * The squashfs of an installed version that a delta payload may patch: only
 * one the upgrade keeps (the running, active or fallback version), since the
 * others are deleted before the new version is written.
 */
function installedSquashfs(root: string, version: string, booted: string | undefined): string | undefined {
  const state = readState(at(root, GRUBENV));
  if (version !== booted && version !== state?.active && version !== state?.fallback) return undefined;
  const file = at(root, join(SYSTEM_DIR, version, 'rootfs.squashfs'));
  return existsSync(file) ? file : undefined;
}

function freeBytes(dir: string): number {
  const s = statfsSync(dir);
  return Number(s.bavail) * Number(s.bsize);
}

/** The space a folder's files take (their blocks). */
function dirBytes(dir: string): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) n += dirBytes(p);
    else if (e.isFile()) n += lstatSync(p).blocks * 512;
  }
  return n;
}


async function waitForVerdict(root: string, version: string, waitMs: number, log: (l: string) => void): Promise<BootState | undefined> {
  const end = Date.now() + waitMs;
  let said = false;
  while (Date.now() < end) {
    const s = readState(at(root, GRUBENV));
    if (!s || s.trial !== version) return s;
    if (!said) {
      log(`version ${version} is on trial in this boot (${s.tries ?? 0} tries left); waiting up to ${Math.round(waitMs / 1000)} s for it to be marked good`);
      said = true;
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
  return readState(at(root, GRUBENV));
}

export async function upgrade(opts: UpgradeOptions): Promise<UpgradeResult> {
  const { root, log } = opts;
  const tries = opts.tries ?? DEFAULT_TRIES;
  if (!Number.isInteger(tries) || tries < 1 || tries > MAX_TRIES) throw new UserError(`--tries ${opts.tries}: tries must be a whole number from 1 to ${MAX_TRIES}`, `for example --tries ${DEFAULT_TRIES}`);
  const deadline = opts.deadline ?? DEFAULT_DEADLINE_S;
  if (!Number.isInteger(deadline) || deadline < 30) throw new UserError(`--deadline ${opts.deadline}: the trial's deadline must be a whole number of seconds, at least 30`, `for example --deadline ${DEFAULT_DEADLINE_S}`);
  const boot = readBootInfo(at(root, '/run/cairn/boot.env'));
  if (boot.mode !== 'state' && !opts.check) {
    throw new UserError(
      `this node runs from ${boot.mode ? `a ${boot.mode} boot` : 'an unknown medium'}: only a node installed on a disk (booted from CAIRN_STATE) can be upgraded`,
      'install it to a disk, or boot the new version\'s ISO or PXE files',
    );
  }
  const unlock = opts.check ? () => undefined : takeLock(root);
  const work = at(root, join(SYSTEM_DIR, '.download'));
  let payload: OpenedPayload | undefined;
  try {
    const arch = opts.arch ?? runningArch();
    // a delta payload is applied to the installed squashfs of its base version (see delta.ts)
    payload = await openPayload(opts.source, { arch, workDir: work, log, installed: (version) => installedSquashfs(root, version, boot.version) });
    const rec = payload.record;
    const v = rec.version;
    const bad = versionProblem(v);
    if (bad) throw new UserError(`the payload's version ${bad}`, 'rebuild it with a valid version in the image spec');
    if (rec.arch !== arch) throw new UserError(`the payload is for ${rec.arch}, this node is ${arch}`, `use the ${arch} upgrade image`);
    const keysDir = at(root, TRUSTED_KEYS_DIR);
    const trust = verifyRecord(payload.recordBytes, payload.signature, keysDir);
    const signedBy = trust.trusted ? `signed by ${trust.key}` : trust.signed ? 'signed (this image trusts no key: not checked)' : 'unsigned (this image trusts no key)';
    if (opts.check) return { outcome: 'checked', version: v, message: `payload ${rec.name} ${v} (${rec.arch}, ${Math.round(payload.bytes / MIB)} MiB) verified, ${signedBy}` };

    let state = readState(at(root, GRUBENV));
    // on a board whose loader does not count, the version's own command line is the board's (its consoles), as the builder writes it
    const loader = readLoader(at(root, LOADER_PATH));
    if (loader && !KEXEC_ARCHES.includes(rec.arch as Arch)) {
      throw new UserError(
        `this ${loader.board} node cannot try ${v} once: its loader does not count tries, and on ${rec.arch} the first stage cannot start a trial with kexec (Debian's ${rec.arch} kernel faults in kexec)`,
        `write the new image onto the card instead (cairn flash ${rec.name}-${v}-${rec.arch}-${loader.board}.img DEVICE), or run the arm64 image, which upgrades in place`,
      );
    }
    if (!state) throw new UserError(`no boot state in ${GRUBENV}`, 'this node\'s state partition is incomplete: reinstall it');
    const booted = boot.version;
    if (v === booted && state.trial === v) state = (await waitForVerdict(root, v, opts.waitMs ?? 600_000, log)) ?? state;
    if (v === booted && state.active === v) {
      return { outcome: 'current', version: v, message: `already on ${v}${state.trial ? ` (${state.trial} is installed for the next boot, ${state.tries ?? 0} tries)` : ''}` };
    }
    if (v === booted && state.trial === v) throw new UserError(`version ${v} is still on trial in this boot and not marked good yet`, 'cairn status shows why; the node reboots into its active version if it does not become healthy');
    if (v === state.active) {
      throw new UserError(`version ${v} is the active version, but this boot runs ${booted}: ${v} did not boot`, 'cairn status shows the boot history; install a newer version');
    }
    if (state.failed === v && !opts.force) {
      const boots = failedBoots(root, v);
      const record = readJson<UpgradeRecord>(at(root, UPGRADE_PATH));
      throw new UserError(
        `version ${v} was rolled back on this node${record?.version === v && record.reason ? ` (${record.reason})` : ''}${boots.length ? `; its boots that never became good: ${boots.join(', ')}` : ''}`,
        'publish a fixed version, or pass --force to try this one again',
      );
    }
    log(`upgrade: ${booted} → ${v}, payload ${signedBy}`);

    // space: what the new version needs against what is free once old versions go
    const sys = at(root, SYSTEM_DIR);
    const keepSet = new Set([state.active, state.fallback, booted].filter((x): x is string => !!x));
    const removable = readdirSync(sys, { withFileTypes: true }).filter((e) => e.isDirectory() && !e.name.startsWith('.') && !keepSet.has(e.name)).map((e) => e.name);
    const incoming = join(sys, `.incoming-${v}`);
    let reclaim = 0;
    for (const d of removable) reclaim += dirBytes(join(sys, d));
    if (existsSync(incoming)) reclaim += dirBytes(incoming);
    // the version itself, installed before (the fallback, a trial given up): written anew
    if (existsSync(join(sys, v)) && !removable.includes(v)) reclaim += dirBytes(join(sys, v));
    const need = payload.bytes + SPARE_BYTES;
    const free = freeBytes(sys);
    if (free + reclaim < need) {
      throw new UserError(
        `not enough space on CAIRN_STATE for ${v}: it needs ${Math.ceil(need / MIB)} MiB (the payload and ${SPARE_BYTES / MIB} MiB to spare), ${Math.floor((free + reclaim) / MIB)} MiB can be had${reclaim ? ` (counting ${Math.floor(reclaim / MIB)} MiB of older versions)` : ''}`,
        'free space in /var (logs, container images), or use a larger disk',
      );
    }
    for (const d of removable) {
      log(`upgrade: removing version ${d} (neither active nor fallback)`);
      rmSync(join(sys, d), { recursive: true, force: true });
    }
    if (removable.length) fsyncPath(sys);

    // the datastore, before anything of the new version can touch it
    if (existsSync(at(root, STATE_DB))) {
      const snap = await snapshot(opts.exec, at(root, STATE_DB), at(root, SNAPSHOTS), { reason: `upgrade-${v}` });
      log(`upgrade: datastore snapshot ${snap.split('/').pop()}`);
    }

    // the version's files, beside the others
    rmSync(incoming, { recursive: true, force: true });
    mkdirSync(incoming, { recursive: true, mode: 0o755 });
    try {
      for (const c of COMPONENTS) {
        log(`upgrade: writing ${c} (${Math.round(rec.components[c].size / MIB)} MiB)`);
        await payload.extract(c, join(incoming, c));
        fsyncPath(join(incoming, c));
      }
    } catch (e) {
      // a component that fails its check leaves nothing behind
      rmSync(incoming, { recursive: true, force: true });
      throw e;
    }
    const releaseJson = JSON.parse(readFileSync(join(incoming, 'release.json'), 'utf8')) as { inputs?: { cmdline?: string } };
    const cmdline = loader ? boardCmdline(loader.console, v, releaseJson.inputs?.cmdline) : kernelArgs('state', rec.arch, releaseJson.inputs?.cmdline);
    writeFileSync(join(incoming, 'bootenv'), renderVersionEnv(cmdline));
    fsyncPath(join(incoming, 'bootenv'));
    writeFileSync(join(incoming, 'SHA256SUMS'), [...COMPONENTS].sort().map((c) => `${rec.components[c].sha256}  ${c}\n`).join(''));
    fsyncPath(join(incoming, 'SHA256SUMS'));
    fsyncPath(incoming);
    const dest = join(sys, v);
    rmSync(dest, { recursive: true, force: true });
    renameSync(incoming, dest);
    fsyncPath(sys);
    if (!isBootable(sys, v)) throw new Error(`${dest} is incomplete after writing it`);

    // GRUB reads the file system without its journal: the new version's
    // files go to their home blocks before the switch points GRUB at them
    if (root === '/') {
      const problem = await checkpointState(opts.exec);
      if (problem) log(`upgrade: the state partition's journal was not written home (${problem}); GRUB may not see ${v} until it is`);
    }

    // the switch: one in-place write of grubenv's first sector
    const next = startTrial(state, v, tries, deadline);
    writeState(at(root, GRUBENV), next);
    const record: UpgradeRecord = { version: v, from: booted, stagedAt: new Date().toISOString(), outcome: 'staged' };
    try {
      writeJsonAtomic(at(root, UPGRADE_PATH), record);
    } catch (e) {
      log(`upgrade: the record could not be written (${(e as Error).message}); the trial is set`);
    }
    for (const d of readdirSync(sys, { withFileTypes: true })) {
      if (d.isDirectory() && !d.name.startsWith('.') && !keep(next).has(d.name) && d.name !== booted) rmSync(join(sys, d.name), { recursive: true, force: true });
    }
    return { outcome: 'staged', version: v, message: `version ${v} is installed and on trial (${tries} tries, healthy within ${deadline} s); the fallback is ${next.active}` };
  } finally {
    await payload?.close().catch(() => undefined);
    rmSync(work, { recursive: true, force: true });
    unlock();
  }
}
