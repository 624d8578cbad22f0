/**
 * Delta payloads: a release that changes little moves little.
 *
 * The squashfs is most of a payload and changes on every release, but two
 * reproducible builds of the same system differ only where their files do.
 * `cairn build --delta-from PREVIOUS` writes, beside the full upgrade image
 * `<stem>.oci.tar`, a second one `<stem>.delta-from-<base>.oci.tar` that
 * carries, instead of rootfs.squashfs, a zstd patch against the squashfs of
 * the base version (`rootfs.squashfs.zstpatch`), and leaves out every other
 * component whose sha256 and size are the base's (the kernel and initrd of
 * a release that changed packages only; release.json names the version, so
 * it is never the base's): the node has those already. Its payload.json
 * gains a `delta` field:
 *
 *   "delta": { "component": "rootfs.squashfs",
 *              "base":  { "version": "0.1.0", "sha256": <the base's squashfs> },
 *              "patch": { "sha256": ..., "size": ... },
 *              "unchanged": ["kernel", "initrd"] }
 *
 * while `components` still names the sha256 and size of every component of
 * the *result* (the squashfs the patch makes, the kernel taken from the
 * base), so a signature over payload.json covers what the node boots, not
 * only what the payload carries. On the node the patch is applied to the
 * installed base (cairn/system/<base>/rootfs.squashfs) and each unchanged
 * component is copied from the base's folder (cairn/system/<base>/kernel),
 * each checked against `components` before anything uses it, as a streamed
 * component is. When the payload is opened the base's squashfs and its
 * unchanged components are checked against the record too: a node whose
 * base kernel is another one is told to take the full payload before
 * anything changes.
 *
 * The squashfs is always the patch, even when it did not change (a patch
 * of a few bytes then); the upgrade image's runner layer (busybox and its
 * script) stays too, since the container needs it to run.
 *
 * The window. `--patch-from` makes the base a dictionary the new file is
 * matched against, so the window has to span the base: zstd sets it from
 * the file's size by itself (2^27 = 128 MiB for a squashfs up to 128 MiB),
 * whatever --long asks for; --long=27 and --long=31 gave the same bytes for
 * the default system's 93 MiB squashfs, with zstd 1.5.4 and with trixie's
 * 1.5.7 (bench/upgrade.ts). A window smaller than the base is not a choice
 * patch-from offers. What the node pays is set by the frame: zstd writes the
 * result's size as its window (one segment), so the decoder holds about the
 * result's size and reads the base beside it: 190 MB resident at its peak
 * for the 93 MiB squashfs (both versions), which a 1 GB board can spare
 * (k3s' pods are drained by then). The decoder's memory limit names just
 * that window (the result's size, at least 128 MiB), not the 2 GB that
 * --long=31 would allow; in patch-from mode zstd raises it to the base's
 * size by itself where that is larger.
 *
 * The same inputs and the same zstd give the same patch; another zstd
 * release may give other bytes (1.5.4 and 1.5.7 do), which the node does not
 * mind: it checks the result.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, open, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { UserError } from '../errors.js';
import type { ComponentName, ComponentRecord } from './payload.js';

/** The one component a delta payload carries as a patch. */
export const DELTA_COMPONENT = 'rootfs.squashfs' as const;
/** The patch's file name in the payload (cairn/<name>), and its layer's io.cairn.component. */
export const PATCH_FILE = 'rootfs.squashfs.zstpatch';
/** zstd's window, as a power of two: 128 MiB (see above). */
export const DELTA_WINDOW_LOG = 27;
/** zstd's level for patches: the highest one without --ultra (a patch is made once and moved many times). */
export const DELTA_LEVEL = 19;

export interface DeltaRecord {
  component: typeof DELTA_COMPONENT;
  /** The version the patch applies to, and the sha256 of that version's squashfs. */
  base: { version: string; sha256: string };
  /** The patch itself (what the payload carries). */
  patch: ComponentRecord;
  /** The components the payload leaves out: the base version's, byte for byte (components names them), in payload order. */
  unchanged: ComponentName[];
}

const MIB = 1024 * 1024;
const SHA256_RE = /^[0-9a-f]{64}$/;

/** `<stem>.delta-from-<base>.oci.tar`: the delta upgrade image beside `<stem>.oci.tar`. */
export function deltaArchiveName(stem: string, baseVersion: string): string {
  return `${stem}.delta-from-${baseVersion}.oci.tar`;
}

/** The full payload of the same release, which a node that cannot take the delta takes instead. */
export function fullArchiveName(record: { name: string; version: string; arch: string }): string {
  return `${record.name}-${record.version}-${record.arch}.oci.tar`;
}

/** The delta field as payload.json holds it: fixed key order. */
export function renderDelta(d: DeltaRecord): DeltaRecord {
  return {
    component: d.component,
    base: { version: d.base.version, sha256: d.base.sha256 },
    patch: { sha256: d.patch.sha256, size: d.patch.size },
    unchanged: [...d.unchanged],
  };
}

/**
 * Never left out: the patched squashfs, and release.json, which names the
 * version (the same bytes would be the base's version) and which the record
 * layer carries anyway.
 */
const ALWAYS_CARRIED: readonly string[] = [DELTA_COMPONENT, 'release.json'];

/** The components a delta may leave out, in payload order. */
export function omissible(order: readonly ComponentName[]): ComponentName[] {
  return order.filter((c) => !ALWAYS_CARRIED.includes(c));
}

/**
 * The components of `next` that a delta against `base` leaves out: those
 * with the base's sha256 and size, in `order` (payload order).
 */
export function unchangedComponents(order: readonly ComponentName[], next: Record<ComponentName, ComponentRecord>, base: Record<ComponentName, ComponentRecord>): ComponentName[] {
  return omissible(order).filter((c) => next[c].sha256 === base[c].sha256 && next[c].size === base[c].size);
}

export interface DeltaRules {
  isVersion: (v: string) => boolean;
  /** The payload's components, in payload order. */
  components: readonly ComponentName[];
}

/** Checks payload.json's delta field, adding what is wrong with it to `problems`. */
export function parseDelta(raw: unknown, problems: string[], rules: DeltaRules): DeltaRecord | undefined {
  const before = problems.length;
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    problems.push('"delta" must be an object');
    return undefined;
  }
  const d = raw as Record<string, unknown>;
  if (d.component !== DELTA_COMPONENT) problems.push(`delta.component must be "${DELTA_COMPONENT}", not ${JSON.stringify(d.component)}`);
  const base = (typeof d.base === 'object' && d.base !== null ? d.base : {}) as Record<string, unknown>;
  if (typeof base.version !== 'string' || !rules.isVersion(base.version)) problems.push(`delta.base.version must be a version, not ${JSON.stringify(base.version)}`);
  if (typeof base.sha256 !== 'string' || !SHA256_RE.test(base.sha256)) problems.push(`delta.base.sha256 must be 64 hex digits, not ${JSON.stringify(base.sha256)}`);
  const patch = (typeof d.patch === 'object' && d.patch !== null ? d.patch : {}) as Record<string, unknown>;
  if (typeof patch.sha256 !== 'string' || !SHA256_RE.test(patch.sha256)) problems.push(`delta.patch.sha256 must be 64 hex digits, not ${JSON.stringify(patch.sha256)}`);
  if (typeof patch.size !== 'number' || !Number.isSafeInteger(patch.size) || patch.size < 0) problems.push(`delta.patch.size must be a byte count, not ${JSON.stringify(patch.size)}`);
  const unchanged = parseUnchanged(d.unchanged, problems, rules.components);
  if (problems.length > before) return undefined;
  return {
    component: DELTA_COMPONENT,
    base: { version: base.version as string, sha256: base.sha256 as string },
    patch: { sha256: patch.sha256 as string, size: patch.size as number },
    unchanged,
  };
}

/** delta.unchanged: components a delta may leave out, each once, in payload order (so that one set has one spelling). */
function parseUnchanged(raw: unknown, problems: string[], components: readonly ComponentName[]): ComponentName[] {
  const may = omissible(components);
  const wanted = `a list of components from ${may.join(', ')}`;
  if (!Array.isArray(raw)) {
    problems.push(`delta.unchanged must be ${wanted} (the base version's, left out of the payload), not ${JSON.stringify(raw)}`);
    return [];
  }
  const bad = raw.filter((c) => typeof c !== 'string' || !(may as readonly string[]).includes(c));
  if (bad.length) problems.push(`delta.unchanged must be ${wanted}; it has ${bad.map((c) => JSON.stringify(c)).join(', ')}`);
  else if (raw.join('\0') !== may.filter((c) => raw.includes(c)).join('\0')) problems.push(`delta.unchanged must name each component once, in payload order (${may.join(', ')}), not ${JSON.stringify(raw)}`);
  return raw as ComponentName[];
}

async function sha256Of(file: string): Promise<ComponentRecord> {
  const h = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) {
    h.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { sha256: h.digest('hex'), size };
}

/** Runs zstd; a missing binary and a failed run are UserErrors that say what to do instead. */
async function zstd(args: string[], hint: string, signal?: AbortSignal): Promise<void> {
  try {
    await execa('zstd', args, { stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', cancelSignal: signal });
  } catch (err) {
    if (signal?.aborted) throw signal.reason ?? err;
    const e = err as { code?: string; stderr?: unknown; exitCode?: number };
    if (e.code === 'ENOENT') throw new UserError('zstd is not installed here: it makes and applies delta payloads', hint);
    const said = typeof e.stderr === 'string' ? e.stderr.trim().split('\n').filter((l) => l.trim()).slice(-1)[0] : undefined;
    throw new UserError(`zstd ${args[0]} failed${e.exitCode !== undefined ? ` (exit ${e.exitCode})` : ''}${said ? `: ${said}` : ''}`, hint);
  }
}

/**
 * Writes the patch that turns `base` into `next` (`zstd -19 --long=27
 * --patch-from=BASE NEXT`); returns its sha256 and size. The same zstd
 * and inputs give the same bytes (zstd's output does not depend on its
 * threads, and the frame holds no names or times).
 */
export async function makePatch(base: string, next: string, out: string, opts: { windowLog?: number; signal?: AbortSignal } = {}): Promise<ComponentRecord> {
  await rm(out, { force: true });
  await zstd(
    ['-q', '-f', `-${DELTA_LEVEL}`, `--long=${opts.windowLog ?? DELTA_WINDOW_LOG}`, `--patch-from=${base}`, next, '-o', out],
    'install zstd on the build host (apt-get install zstd), or build without --delta-from',
    opts.signal,
  );
  return sha256Of(out);
}

export interface BaseLookup {
  /** Where the node keeps a version's squashfs, undefined when it has none (OpenOptions.installed); the version's other components sit beside it. */
  installed?: (version: string) => string | undefined;
  /** The payload, for messages. */
  where: string;
  /** The full payload of the same release, named in the hint. */
  full: string;
}

/** The installed base version's files a delta takes: its squashfs (to patch) and its unchanged components (to copy). */
export interface BaseFiles {
  squashfs: string;
  files: Partial<Record<ComponentName, string>>;
}

/**
 * The installed base a delta applies to, checked: its squashfs present and
 * with the sha256 the delta was made against, and each component the delta
 * leaves out present beside it with the sha256 and size that `components`
 * (payload.json's) names. A node without them, or with other ones, is told
 * to take the full payload.
 */
export async function findBase(delta: DeltaRecord, components: Record<ComponentName, ComponentRecord>, lookup: BaseLookup): Promise<BaseFiles> {
  const v = delta.base.version;
  const hint = `use the full payload ${lookup.full}`;
  if (!lookup.installed) throw new UserError(`${lookup.where} is a delta payload against version ${v}, and where installed versions are was not given`, hint);
  const squashfs = lookup.installed(v);
  const isFile = async (f: string) => (await stat(f).catch(() => undefined))?.isFile() === true;
  if (squashfs === undefined || !(await isFile(squashfs))) {
    throw new UserError(`${lookup.where} is a delta against version ${v}, which this node does not have (no cairn/system/${v}/${DELTA_COMPONENT})`, hint);
  }
  const got = await sha256Of(squashfs);
  if (got.sha256 !== delta.base.sha256) {
    throw new UserError(
      `${lookup.where} is a delta against a version ${v} that is not this node's: the delta was made from a squashfs with sha256 ${delta.base.sha256}, ${squashfs} has ${got.sha256}`,
      hint,
    );
  }
  const files: BaseFiles['files'] = {};
  for (const name of delta.unchanged) {
    const file = path.join(path.dirname(squashfs), name);
    if (!(await isFile(file))) {
      throw new UserError(`${lookup.where} is a delta that takes the ${name} of version ${v} from this node, which has none (no cairn/system/${v}/${name})`, hint);
    }
    const want = components[name];
    const has = await sha256Of(file);
    if (has.sha256 !== want.sha256 || has.size !== want.size) {
      throw new UserError(
        `${lookup.where} is a delta against a version ${v} that is not this node's: it takes the ${name} of ${v} (${want.size} bytes with sha256 ${want.sha256}) from this node, and ${file} has ${has.size} bytes with sha256 ${has.sha256}`,
        hint,
      );
    }
    files[name] = file;
  }
  return { squashfs, files };
}

/**
 * The UserError for an unchanged component copied from the base that is
 * not what payload.json names (it changed after the payload was opened, or
 * the disk returned other bytes).
 */
export function baseMismatch(name: ComponentName, file: string, expected: ComponentRecord, got: string, lookup: { where: string; full: string }): UserError {
  return new UserError(
    `${name} of the base version, taken from ${file} for the delta in ${lookup.where}, is not the one payload.json names (${expected.size} bytes with sha256 ${expected.sha256}): ${got}; it changed after the payload was opened, or the disk is damaged`,
    `use the full payload ${lookup.full}`,
  );
}

/** zstd's arguments that apply a patch (what applyPatch runs, and bench/upgrade.ts measures). */
export function applyArgs(base: string, patch: string, dest: string, resultSize: number): string[] {
  // The frame's window is the result's size (see the top of this file): the limit names it, not --long=31's 2 GB.
  const memory = Math.max(2 ** DELTA_WINDOW_LOG, resultSize);
  return ['-d', '-q', '-f', `--memory=${Math.ceil(memory / MIB)}MB`, `--patch-from=${base}`, patch, '-o', dest];
}

export interface ApplyOptions {
  delta: DeltaRecord;
  /** The base's squashfs on the node (findBase). */
  base: string;
  /** The patch, already checked against delta.patch. */
  patch: string;
  dest: string;
  /** payload.json's record of the result (components["rootfs.squashfs"]). */
  result: ComponentRecord;
  where: string;
  full: string;
  signal?: AbortSignal;
}

/**
 * Applies the patch to the base into dest (mode 0644, synced) and checks
 * the result's size and sha256 against payload.json before returning; on
 * any failure dest is removed.
 */
export async function applyPatch(o: ApplyOptions): Promise<void> {
  const hint = `use the full payload ${o.full}`;
  try {
    await zstd(applyArgs(o.base, o.patch, o.dest, o.result.size), hint, o.signal);
    await chmod(o.dest, 0o644);
    const fh = await open(o.dest, 'r+');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    const got = await sha256Of(o.dest);
    if (got.size !== o.result.size || got.sha256 !== o.result.sha256) {
      throw new UserError(
        `${o.delta.component} made from the delta in ${o.where} is not the one payload.json names (${o.result.size} bytes with sha256 ${o.result.sha256}): it has ${got.size} bytes with sha256 ${got.sha256}; the patch is tampered or corrupt`,
        `download the delta again, or ${hint}`,
      );
    }
  } catch (err) {
    await rm(o.dest, { force: true });
    throw err;
  }
}
