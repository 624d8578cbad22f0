/**
 * The boot state of a node with a state partition: which versions are
 * installed, which one boots, which one is on trial and how many tries it
 * has left. This module is its only owner: the builder, the first stage's
 * generator, GRUB's menu, the init and `cairn upgrade` all read and decide
 * through it.
 *
 * On CAIRN_STATE:
 *   cairn/system/<version>/   kernel, initrd, rootfs.squashfs, release.json,
 *                             bootenv (GRUB environment block: the version's
 *                             kernel command line), SHA256SUMS
 *   cairn/grub/grub.cfg       GRUB's menu (see ./grub.ts)
 *   cairn/grub/grubenv        the pointers, a GRUB environment block:
 *     cairn_active=V          the version that boots
 *     cairn_fallback=V        the one before it, booted when the active one is missing
 *     cairn_trial=V           an upgrade on trial, booted while it has tries
 *     cairn_tries=N           the trial's tries left, lowered before each try
 *     cairn_deadline=S        seconds a trial boot has to become healthy
 *     cairn_failed=V          the last trial that did not come up (cleared by the next upgrade)
 *
 * One file holds every pointer, so a switch is one write of its first
 * sector, in place (see writeState). GRUB
 * (amd64 BIOS and UEFI, arm64 UEFI) lowers cairn_tries in place with
 * save_env and passes the version it chose as cairn.version=; a first stage
 * booted without it (a bootloader that does not count) makes the same
 * decision itself. The decisions below are pure; ./grub.ts and ./shell.ts
 * are the same decisions in GRUB script and sh, tested against one table.
 */
import { closeSync, existsSync, fstatSync, fsyncSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../init/apply/files.js';
import { parseGrubEnv, renderGrubEnv } from './grubenv.js';

/** Where the first stage mounts the state partition on a running node (its cairn/ folder is bound at /cairn). */
export const STATE_MOUNT = '/run/cairn/state';

/**
 * Writes everything ext4 holds only in its journal to its home blocks
 * (FIFREEZE checkpoints the journal; the thaw follows at once). GRUB reads
 * the file system without the journal: after this it finds a version
 * written just before. Best effort: the result says what happened.
 */
export async function checkpointState(exec: (file: string, args: string[], opts?: { timeoutMs?: number }) => Promise<{ code: number; stderr: string }>, mount = STATE_MOUNT): Promise<string | undefined> {
  const r = await exec('sh', ['-c', 'fsfreeze --freeze "$1" || exit 1; fsfreeze --unfreeze "$1"', 'checkpoint', mount], { timeoutMs: 60_000 });
  return r.code === 0 ? undefined : (r.stderr.trim().split('\n').pop() ?? `exit ${r.code}`);
}

/** Where the state partition's cairn/ folder is on a running node. */
export const STATE_ROOT = '/cairn';
export const SYSTEM_DIR = `${STATE_ROOT}/system`;
export const GRUB_DIR = `${STATE_ROOT}/grub`;
export const GRUBENV = `${GRUB_DIR}/grubenv`;
/** Paths relative to the state partition's root (the builder's and the first stage's view). */
export const REL = { system: 'cairn/system', grub: 'cairn/grub', grubenv: 'cairn/grub/grubenv' } as const;

/** The files of an installed version; a version is bootable when the first three are there. */
export const VERSION_FILES = ['kernel', 'initrd', 'rootfs.squashfs', 'release.json', 'bootenv', 'SHA256SUMS'] as const;
export const BOOT_FILES = ['kernel', 'initrd', 'rootfs.squashfs'] as const;

export const DEFAULT_TRIES = 3;
/** GRUB script has no arithmetic: its menu spells out each count, so tries are bounded. */
export const MAX_TRIES = 9;
/** How long a trial boot has to become healthy by default: a first k3s start on a slow SD card. */
export const DEFAULT_DEADLINE_S = 900;

export interface BootState {
  active: string;
  fallback?: string;
  trial?: string;
  /** The trial's tries left. */
  tries?: number;
  deadline?: number;
  failed?: string;
}

/** A version name as it may appear in a pointer and a path. */
export const VERSION_RE = /^[0-9A-Za-z][0-9A-Za-z.+_~-]{0,63}$/;

export function versionProblem(v: string): string | undefined {
  if (!VERSION_RE.test(v)) return `"${v}" is not a version name (letters, digits and . + _ ~ -, at most 64)`;
  return undefined;
}

const KEYS = { active: 'cairn_active', fallback: 'cairn_fallback', trial: 'cairn_trial', tries: 'cairn_tries', deadline: 'cairn_deadline', failed: 'cairn_failed' } as const;

/** The grubenv variables of a state, empty ones left out. */
export function stateToEnv(s: BootState): Record<string, string> {
  const env: Record<string, string> = { [KEYS.active]: s.active };
  if (s.fallback) env[KEYS.fallback] = s.fallback;
  if (s.trial) {
    env[KEYS.trial] = s.trial;
    env[KEYS.tries] = String(s.tries ?? 0);
    if (s.deadline !== undefined) env[KEYS.deadline] = String(s.deadline);
  }
  if (s.failed) env[KEYS.failed] = s.failed;
  return env;
}

/** A state from grubenv variables; undefined when there is no active version. */
export function envToState(env: Record<string, string>): BootState | undefined {
  const active = env[KEYS.active]?.trim();
  if (!active) return undefined;
  const s: BootState = { active };
  if (env[KEYS.fallback]?.trim()) s.fallback = env[KEYS.fallback]!.trim();
  if (env[KEYS.trial]?.trim()) {
    s.trial = env[KEYS.trial]!.trim();
    const n = Number(env[KEYS.tries]);
    // a count that is not 0..MAX_TRIES is taken as spent (GRUB's chain knows no other)
    s.tries = /^\d$/.test(env[KEYS.tries] ?? '') && n <= MAX_TRIES ? n : 0;
    const d = Number(env[KEYS.deadline]);
    if (env[KEYS.deadline] && Number.isInteger(d) && d > 0) s.deadline = d;
  }
  if (env[KEYS.failed]?.trim()) s.failed = env[KEYS.failed]!.trim();
  return s;
}

/** The pointers must sit in the block's first sector: see writeState. */
export const STATE_SECTOR = 512;

export function renderState(s: BootState): Buffer {
  const block = renderGrubEnv(stateToEnv(s));
  const used = block.toString('latin1').replace(/#+$/, '').length;
  if (used > STATE_SECTOR) throw new Error(`the boot state needs ${used} bytes, more than the ${STATE_SECTOR} of one sector`);
  return block;
}

export function parseState(block: Buffer | string): BootState | undefined {
  return envToState(parseGrubEnv(block));
}

// --- decisions --------------------------------------------------------------

export type BootKind = 'trial' | 'active' | 'fallback';

export interface Choice {
  /** The version to boot; undefined when none is bootable. */
  version?: string;
  kind?: BootKind;
  /** The state to save before booting it (the same object when nothing changes). */
  state: BootState;
  changed: boolean;
}

/**
 * What the bootloader (or a first stage booted without one that counts)
 * boots: a trial with tries left, spending one; else the active version;
 * else the fallback. A trial that is missing or out of tries is left with
 * 0 tries for the init to record as a rollback.
 */
export function choose(s: BootState, bootable: (v: string) => boolean): Choice {
  let state = s;
  if (s.trial) {
    const tries = s.tries ?? 0;
    if (tries > 0 && bootable(s.trial)) {
      state = { ...s, tries: tries - 1 };
      return { version: s.trial, kind: 'trial', state, changed: true };
    }
    if (tries !== 0) state = { ...s, tries: 0 };
  }
  const changed = state !== s;
  if (bootable(s.active)) return { version: s.active, kind: 'active', state, changed };
  if (s.fallback && bootable(s.fallback)) return { version: s.fallback, kind: 'fallback', state, changed };
  return { state, changed };
}

/** Starts a trial of `version` (already installed beside the others). */
export function startTrial(s: BootState, version: string, tries = DEFAULT_TRIES, deadline?: number): BootState {
  if (version === s.active) throw new Error(`${version} is the active version already`);
  if (!Number.isInteger(tries) || tries < 1 || tries > MAX_TRIES) throw new Error(`tries must be 1 to ${MAX_TRIES}, not ${tries}`);
  const next: BootState = { active: s.active, trial: version, tries };
  if (s.fallback && s.fallback !== version) next.fallback = s.fallback;
  if (deadline !== undefined) next.deadline = deadline;
  return next;
}

/** After a good boot of `booted`: a trial becomes the active version, the one it replaced the fallback. */
export function promote(s: BootState, booted: string): BootState {
  if (s.trial !== booted) return s;
  const next: BootState = { active: booted };
  if (s.active !== booted) next.fallback = s.active;
  return next;
}

export type BootEvent =
  | { kind: 'trial'; version: string; triesLeft: number }
  | { kind: 'rollback'; failed: string; version: string }
  | { kind: 'fallback'; version: string; active: string }
  | { kind: 'normal'; version: string };

/**
 * What a boot of `booted` means, seen by the init as it starts, and the
 * state to save: a trial that is not the version booted and has no tries
 * left was rolled back (recorded, then cleared); booting the fallback means
 * the active version is not bootable (it stays active: a later upgrade
 * replaces it).
 */
export function onBoot(s: BootState, booted: string): { event: BootEvent; state: BootState } {
  if (s.trial && s.trial === booted) return { event: { kind: 'trial', version: booted, triesLeft: s.tries ?? 0 }, state: s };
  if (s.trial && (s.tries ?? 0) === 0) {
    const next: BootState = { active: s.active, failed: s.trial };
    if (s.fallback) next.fallback = s.fallback;
    return { event: { kind: 'rollback', failed: s.trial, version: booted }, state: next };
  }
  if (booted !== s.active && booted === s.fallback) return { event: { kind: 'fallback', version: booted, active: s.active }, state: s };
  return { event: { kind: 'normal', version: booted }, state: s };
}

/**
 * Gives up on `version` at once (its squashfs does not mount or fails its
 * checksum): a trial loses its tries; a broken active version hands over
 * to the fallback.
 */
export function abandon(s: BootState, version: string): BootState {
  if (s.trial === version) return { ...s, tries: 0 };
  if (s.active === version && s.fallback) {
    const next: BootState = { active: s.fallback, failed: version };
    if (s.trial) Object.assign(next, { trial: s.trial, tries: s.tries ?? 0 }, s.deadline !== undefined ? { deadline: s.deadline } : {});
    return next;
  }
  return s;
}

/** The versions that must stay installed: active, fallback, trial. */
export function keep(s: BootState): Set<string> {
  return new Set([s.active, s.fallback, s.trial].filter((v): v is string => !!v));
}

// --- files ------------------------------------------------------------------

/** The state at `root` (a state partition's root, or / on a node: cairn/ is bound at /cairn). */
export function statePaths(root: string, onNode = true): { system: string; grubenv: string } {
  return onNode ? { system: join(root, SYSTEM_DIR), grubenv: join(root, GRUBENV) } : { system: join(root, REL.system), grubenv: join(root, REL.grubenv) };
}

export function readState(grubenvPath: string): BootState | undefined {
  if (!existsSync(grubenvPath)) return undefined;
  return parseState(readFileSync(grubenvPath));
}

/**
 * Saves the state in place, as GRUB's save_env does: the 1024 bytes of
 * grubenv are overwritten where they are and flushed. The file's inode
 * and blocks never change, which matters because GRUB reads the file
 * system without replaying its journal: a renamed-over grubenv lives only
 * in the journal until ext4 writes its metadata home, and a power cut in
 * that time showed GRUB "invalid environment block" (no version to boot).
 * Data written in place goes to the block GRUB finds. Every pointer sits
 * in the first sector and the second is padding in every state, so a
 * torn write leaves the old pointers or the new ones. A grubenv that is
 * missing or of another size is written beside and renamed (first write).
 */
export function writeState(grubenvPath: string, s: BootState): void {
  writeInPlace(grubenvPath, renderState(s));
}

/**
 * Overwrites a file of the same size where it is and flushes it (its inode
 * and blocks stay: see writeState); a file that is missing or of another
 * size is written beside and renamed.
 */
export function writeInPlace(file: string, block: Buffer): void {
  let fd: number;
  try {
    fd = openSync(file, 'r+');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    writeFileAtomic(file, block);
    return;
  }
  try {
    if (fstatSync(fd).size !== block.length) {
      closeSync(fd);
      fd = -1;
      writeFileAtomic(file, block);
      return;
    }
    let off = 0;
    while (off < block.length) off += writeSync(fd, block, off, block.length - off, off);
    fsyncSync(fd);
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}


/** Whether `version` has its boot files under `systemDir`. */
export function isBootable(systemDir: string, version: string): boolean {
  return !versionProblem(version) && BOOT_FILES.every((f) => existsSync(join(systemDir, version, f)));
}

/** The kernel command line of one version, kept in its bootenv block. */
export function renderVersionEnv(cmdline: string): Buffer {
  return renderGrubEnv({ cairn_cmdline: cmdline });
}

export function readVersionCmdline(systemDir: string, version: string): string | undefined {
  const p = join(systemDir, version, 'bootenv');
  return existsSync(p) ? parseGrubEnv(readFileSync(p)).cairn_cmdline : undefined;
}
