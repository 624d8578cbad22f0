/**
 * The upgrade payload: what `cairn build` puts into the OCI upgrade image
 * (src/builder/outputs/oci.ts writes it) and what `cairn upgrade` reads on
 * the node.
 *
 * A payload is four components and a record of them:
 *
 *   kernel  initrd  rootfs.squashfs  release.json    the system version
 *   payload.json                                     the record (signed)
 *   payload.json.sig                                 raw ed25519 signature, when signed
 *
 * payload.json names the image, version and arch and each component's
 * sha256 and size; it is what a signature covers (see keys.ts). In the OCI
 * image each of kernel, initrd and rootfs.squashfs is a layer of its own and
 * the last layer holds release.json, payload.json and the signature, all
 * under cairn/, each layer's descriptor annotated `io.cairn.component`.
 *
 * openPayload reads a payload from an OCI archive (tar), an OCI image
 * layout folder, a folder of the payload files themselves (what the upgrade
 * container copies to the host), or an http(s) URL of an archive. It checks
 * every OCI blob it reads against its digest and every component against
 * payload.json, streaming: a squashfs is never held in memory.
 *
 * A delta payload (see delta.ts) carries rootfs.squashfs as a patch against a
 * version the node has, and leaves out the components that are that
 * version's (delta.unchanged); its record says so in a `delta` field, and
 * extract() applies the patch to that version's squashfs or copies the
 * component from that version's folder (OpenOptions.installed finds it),
 * checking the result against payload.json as it checks any component.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, statfsSync } from 'node:fs';
import { mkdir, open, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import { UserError } from '../errors.js';
import { hashingStream } from '../builder/hash.js';
import { DELTA_COMPONENT, PATCH_FILE, applyPatch, baseMismatch, findBase, fullArchiveName, parseDelta, renderDelta, type BaseFiles, type DeltaRecord } from './delta.js';

export const COMPONENTS = ['kernel', 'initrd', 'rootfs.squashfs', 'release.json'] as const;
export type ComponentName = (typeof COMPONENTS)[number];
export type PayloadArch = 'amd64' | 'arm64' | 'armv7';
export const PAYLOAD_ARCHES: readonly PayloadArch[] = ['amd64', 'arm64', 'armv7'];

/** The folder the payload's files sit in, inside the image (and so inside the layers). */
export const PAYLOAD_DIR = 'cairn';
export const RECORD_FILE = 'payload.json';
export const SIGNATURE_FILE = 'payload.json.sig';
export const PAYLOAD_FORMAT = 1;
/** The annotation on each layer's descriptor naming what it holds: a component, "payload" (the record layer) or "runner". */
export const COMPONENT_ANNOTATION = 'io.cairn.component';
export const RECORD_LAYER = 'payload';

/** OCI platforms of cairn's arches. */
export const OCI_PLATFORMS: Record<PayloadArch, { architecture: string; os: 'linux'; variant?: string }> = {
  amd64: { architecture: 'amd64', os: 'linux' },
  arm64: { architecture: 'arm64', os: 'linux', variant: 'v8' },
  armv7: { architecture: 'arm', os: 'linux', variant: 'v7' },
};

export interface ComponentRecord {
  sha256: string;
  size: number;
}

export interface PayloadRecord {
  format: 1;
  name: string;
  version: string;
  arch: PayloadArch;
  sourceDateEpoch: number;
  components: Record<ComponentName, ComponentRecord>;
  /** A delta payload: rootfs.squashfs comes as a patch against an installed version, the unchanged components from that version (see delta.ts); components still name the result. */
  delta?: DeltaRecord;
}

export interface OpenedPayload {
  /** What the payload was read from: an OCI archive, an OCI layout folder, a folder of payload files, or a URL (downloaded as an archive). */
  kind: 'archive' | 'layout' | 'folder' | 'url';
  record: PayloadRecord;
  /** The exact bytes of payload.json, which a signature covers. */
  recordBytes: Buffer;
  signature?: Buffer;
  /** Total bytes of the components (for the free-space check). */
  bytes: number;
  /**
   * Writes one component to dest (creating it, mode 0644), streaming,
   * checking size and sha256 as it goes; on a mismatch removes dest and
   * throws a UserError naming the component, what was expected and what
   * arrived. A delta's squashfs is the patch applied to the base, an
   * unchanged component a copy of the base's, checked the same way.
   */
  extract(name: ComponentName, dest: string): Promise<void>;
  /** Removes what opening made (a downloaded archive). */
  close(): Promise<void>;
}

export interface OpenOptions {
  /** The node's arch: picks the image from a multi-arch index, and a payload for another arch is refused. */
  arch?: string;
  /** Scratch folder (downloads go here); made when missing. */
  workDir: string;
  log?: (line: string) => void;
  signal?: AbortSignal;
  /**
   * Where the node keeps an installed version's squashfs (undefined when it
   * has none), in the version's folder beside its other components: the
   * base a delta payload is applied to and takes its unchanged components
   * from. When given, a delta whose base (squashfs or unchanged component)
   * is missing or differs is refused when the payload is opened.
   */
  installed?: (version: string) => string | undefined;
}

// ----- payload.json ----------------------------------------------------------

const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;
const VERSION_RE = /^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$/;
const SHA256_RE = /^[0-9a-f]{64}$/;
const MAX_RECORD_BYTES = 1024 * 1024;
const MAX_SIGNATURE_BYTES = 4096;
const MAX_JSON_BLOB_BYTES = 4 * 1024 * 1024;

/** payload.json's bytes: fixed key order, two-space indent, one trailing newline. The same record always gives the same bytes. */
export function renderRecord(record: PayloadRecord): Buffer {
  const components: Record<string, ComponentRecord> = {};
  for (const c of COMPONENTS) components[c] = { sha256: record.components[c].sha256, size: record.components[c].size };
  const ordered = {
    format: record.format,
    name: record.name,
    version: record.version,
    arch: record.arch,
    sourceDateEpoch: record.sourceDateEpoch,
    components,
    // only a delta payload has the field: a full payload's bytes stay as they were
    ...(record.delta ? { delta: renderDelta(record.delta) } : {}),
  };
  return Buffer.from(`${JSON.stringify(ordered, null, 2)}\n`);
}

/** Parses and checks payload.json; `where` names it in errors. */
export function parseRecord(bytes: Buffer, where: string): PayloadRecord {
  const hint = 'the payload is damaged or was not made by cairn build: build or download it again';
  let raw: unknown;
  try {
    raw = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new UserError(`${where} is not valid JSON (${(err as Error).message})`, hint);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new UserError(`${where} is not a JSON object`, hint);
  const r = raw as Record<string, unknown>;
  if (r.format === undefined) throw new UserError(`${where} has no "format": it is not a cairn payload record`, hint);
  if (r.format !== PAYLOAD_FORMAT) {
    throw new UserError(
      `${where} has format ${JSON.stringify(r.format)}, which this cairn does not know (it reads format ${PAYLOAD_FORMAT})`,
      'the payload comes from another cairn: upgrade with a payload built by a cairn that matches the node, or upgrade the node step by step',
    );
  }
  const problems: string[] = [];
  if (typeof r.name !== 'string' || !NAME_RE.test(r.name)) problems.push(`"name" must be an image name (such as "default"), not ${JSON.stringify(r.name)}`);
  if (typeof r.version !== 'string' || !VERSION_RE.test(r.version)) problems.push(`"version" must be a version (such as "1.2.3"), not ${JSON.stringify(r.version)}`);
  if (typeof r.arch !== 'string' || !(PAYLOAD_ARCHES as readonly string[]).includes(r.arch)) problems.push(`"arch" must be one of ${PAYLOAD_ARCHES.join(', ')}, not ${JSON.stringify(r.arch)}`);
  if (typeof r.sourceDateEpoch !== 'number' || !Number.isSafeInteger(r.sourceDateEpoch) || r.sourceDateEpoch < 0) problems.push(`"sourceDateEpoch" must be whole seconds, not ${JSON.stringify(r.sourceDateEpoch)}`);
  const comps = r.components;
  const components = {} as Record<ComponentName, ComponentRecord>;
  if (typeof comps !== 'object' || comps === null || Array.isArray(comps)) problems.push('"components" must be an object');
  else {
    const c = comps as Record<string, unknown>;
    for (const extra of Object.keys(c).filter((k) => !(COMPONENTS as readonly string[]).includes(k))) problems.push(`"components" has "${extra}", which format ${PAYLOAD_FORMAT} does not have`);
    for (const name of COMPONENTS) {
      const v = c[name] as Record<string, unknown> | undefined;
      if (typeof v !== 'object' || v === null) {
        problems.push(`"components" has no "${name}"`);
        continue;
      }
      if (typeof v.sha256 !== 'string' || !SHA256_RE.test(v.sha256)) problems.push(`components.${name}.sha256 must be 64 hex digits, not ${JSON.stringify(v.sha256)}`);
      if (typeof v.size !== 'number' || !Number.isSafeInteger(v.size) || v.size < 0) problems.push(`components.${name}.size must be a byte count, not ${JSON.stringify(v.size)}`);
      components[name] = { sha256: v.sha256 as string, size: v.size as number };
    }
  }
  // a delta payload (see delta.ts)
  const delta = r.delta === undefined ? undefined : parseDelta(r.delta, problems, { isVersion: (v) => VERSION_RE.test(v), components: COMPONENTS });
  if (problems.length) throw new UserError(`${where} is malformed: ${problems.join('; ')}`, hint);
  return {
    format: PAYLOAD_FORMAT,
    name: r.name as string,
    version: r.version as string,
    arch: r.arch as PayloadArch,
    sourceDateEpoch: r.sourceDateEpoch as number,
    components,
    ...(delta ? { delta } : {}),
  };
}

// ----- streaming a component to its file, checked ------------------------------

function tampered(name: ComponentName | typeof PATCH_FILE, where: string, expected: ComponentRecord, got: string): UserError {
  return new UserError(
    `${name} in ${where} is tampered or corrupt: payload.json says ${expected.size} bytes with sha256 ${expected.sha256}; ${got}`,
    'download or copy the payload again; if it happens again, the source itself is damaged',
  );
}

/**
 * Writes `source` to dest (mode 0644, synced), checking its size as it goes
 * and its sha256 at the end; removes dest on any failure. `mismatch` makes
 * the error (what arrived, in words); by default the payload's file is
 * tampered.
 */
async function writeChecked(
  source: AsyncIterable<Buffer> | Readable,
  dest: string,
  name: ComponentName | typeof PATCH_FILE,
  expected: ComponentRecord,
  where: string,
  signal?: AbortSignal,
  mismatch: (got: string) => UserError = (got) => tampered(name, where, expected, got),
): Promise<void> {
  const check = hashingStream({ bytes: expected.size, error: () => mismatch(`more than ${expected.size} bytes arrived`) });
  try {
    await pipeline(source, check.stream, createWriteStream(dest, { mode: 0o644 }), { signal });
    const fh = await open(dest, 'r+');
    try {
      await fh.chmod(0o644);
      await fh.sync();
    } finally {
      await fh.close();
    }
    const sha256 = check.hex();
    const size = check.bytes();
    if (size !== expected.size || sha256 !== expected.sha256) throw mismatch(`it holds ${size} bytes with sha256 ${sha256}`);
  } catch (err) {
    await rm(dest, { force: true });
    if (signal?.aborted) throw signal.reason ?? err;
    throw err;
  }
}

// ----- sources ---------------------------------------------------------------

/** A byte range of a file: an OCI blob inside an archive, or a blob file of a layout. */
interface Range {
  file: string;
  start: number;
  size: number;
}

function readRange(r: Range, signal?: AbortSignal): Readable {
  if (r.size === 0) return Readable.from([]);
  return createReadStream(r.file, { start: r.start, end: r.start + r.size - 1, highWaterMark: 1 << 20, signal });
}

async function readRangeBuffer(r: Range): Promise<Buffer> {
  const fh = await open(r.file, 'r');
  try {
    const buf = Buffer.alloc(r.size);
    let off = 0;
    while (off < r.size) {
      const { bytesRead } = await fh.read(buf, off, r.size - off, r.start + off);
      if (bytesRead === 0) break;
      off += bytesRead;
    }
    return buf.subarray(0, off);
  } finally {
    await fh.close();
  }
}

/** A URL as it may be shown: no user or password, no query (they may be credentials). */
export function displayUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}${u.search ? '?…' : ''}`;
  } catch {
    return '(an unparsable URL)';
  }
}

const TAR_BLOCK = 512;

/** Parses a tar header number: octal text, or base-256 when the top bit is set. */
function tarNumber(b: Buffer): number {
  if (b[0]! & 0x80) {
    let n = 0;
    for (let i = 1; i < b.length; i++) n = n * 256 + b[i]!;
    return n;
  }
  const s = b.toString('latin1').replace(/\0.*$/s, '').trim();
  return s === '' ? 0 : parseInt(s, 8);
}

function tarString(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.subarray(0, nul < 0 ? b.length : nul).toString('utf8');
}

function normalizeName(name: string): string {
  return name.replace(/^(\.\/|\/)+/, '').replace(/\/+$/, '');
}

/**
 * The regular files of a tar archive and where their data sits, read from
 * the headers alone (ustar, pax and GNU long names). A cut-off archive, or
 * one that ends without the end-of-archive blocks, is a UserError.
 */
async function indexTar(file: string, where: string): Promise<Map<string, Range>> {
  const fh = await open(file, 'r');
  const entries = new Map<string, Range>();
  try {
    const total = (await fh.stat()).size;
    const block = Buffer.alloc(TAR_BLOCK);
    const readAt = async (buf: Buffer, pos: number): Promise<number> => (await fh.read(buf, 0, buf.length, pos)).bytesRead;
    if (total >= 2 && (await readAt(block.subarray(0, 2), 0)) === 2 && block[0] === 0x1f && block[1] === 0x8b) {
      throw new UserError(`${where} is gzip-compressed, not an OCI archive`, `unpack it first (gunzip) and give the .tar`);
    }
    if (total < TAR_BLOCK) throw new UserError(`${where} is not an OCI archive: it is too short to be a tar file (${total} bytes)`);
    let pos = 0;
    let longName: string | undefined;
    let pax: Record<string, string> = {};
    for (;;) {
      if (pos + TAR_BLOCK > total) {
        throw new UserError(`${where} is truncated: the tar archive ends after ${total} bytes, without its end marker`, 'download or copy it again');
      }
      await readAt(block, pos);
      if (block.every((x) => x === 0)) break;
      const stored = tarNumber(block.subarray(148, 156));
      let sum = 0;
      for (let i = 0; i < TAR_BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i]!;
      if (stored !== sum) {
        if (pos === 0) throw new UserError(`${where} is not an OCI archive: it is not a tar file`, 'give the .oci.tar that cairn build wrote, an OCI layout folder, or a folder of payload files');
        throw new UserError(`${where} is corrupt: the tar header at byte ${pos} is damaged`, 'download or copy it again');
      }
      const type = String.fromCharCode(block[156]!);
      let size = tarNumber(block.subarray(124, 136));
      if (pax.size !== undefined) size = Number(pax.size);
      const dataStart = pos + TAR_BLOCK;
      if (dataStart + size > total) {
        throw new UserError(`${where} is truncated: its entry ${tarString(block.subarray(0, 100))} needs ${size} bytes, the file ends ${total - dataStart} bytes into it`, 'download or copy it again');
      }
      const next = dataStart + Math.ceil(size / TAR_BLOCK) * TAR_BLOCK;
      if (type === 'x' || type === 'L' || type === 'g') {
        if (size > MAX_JSON_BLOB_BYTES) throw new UserError(`${where} is corrupt: a tar extended header of ${size} bytes`);
        const data = Buffer.alloc(size);
        await readAt(data, dataStart);
        if (type === 'L') longName = tarString(data);
        else if (type === 'x') pax = parsePax(data);
      } else {
        const magic = block.subarray(257, 262).toString('latin1');
        const prefix = magic === 'ustar' ? tarString(block.subarray(345, 500)) : '';
        const base = tarString(block.subarray(0, 100));
        const name = normalizeName(pax.path ?? longName ?? (prefix ? `${prefix}/${base}` : base));
        if (type === '0' || type === '\0' || type === '7') entries.set(name, { file, start: dataStart, size });
        longName = undefined;
        pax = {};
      }
      pos = next;
    }
    return entries;
  } finally {
    await fh.close();
  }
}

function parsePax(data: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  while (i < data.length) {
    const space = data.indexOf(0x20, i);
    if (space < 0) break;
    const len = parseInt(data.subarray(i, space).toString('latin1'), 10);
    if (!Number.isInteger(len) || len <= 0) break;
    const rec = data.subarray(space + 1, i + len - 1).toString('utf8');
    const eq = rec.indexOf('=');
    if (eq > 0) out[rec.slice(0, eq)] = rec.slice(eq + 1);
    i += len;
  }
  return out;
}

// ----- OCI -------------------------------------------------------------------

const MT = {
  index: 'application/vnd.oci.image.index.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
} as const;
const PLAIN_LAYERS = new Set(['application/vnd.oci.image.layer.v1.tar', 'application/vnd.docker.image.rootfs.diff.tar']);
const GZIP_LAYERS = new Set(['application/vnd.oci.image.layer.v1.tar+gzip', 'application/vnd.docker.image.rootfs.diff.tar.gzip']);
const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

interface Descriptor {
  mediaType?: string;
  digest: string;
  size: number;
  platform?: { architecture?: string; os?: string; variant?: string };
  annotations?: Record<string, string>;
}

/** Where an OCI source keeps its files: index.json and blobs, found by name. */
interface BlobStore {
  where: string;
  /** index.json or oci-layout; undefined when absent. */
  file(name: string): Promise<Range | undefined>;
  /** A blob by digest; undefined when absent. */
  blob(digest: string): Promise<Range | undefined>;
}

function archiveStore(entries: Map<string, Range>, where: string): BlobStore {
  return {
    where,
    file: async (name) => entries.get(name),
    blob: async (digest) => entries.get(`blobs/sha256/${digest.slice('sha256:'.length)}`),
  };
}

function layoutStore(dir: string): BlobStore {
  const at = async (rel: string): Promise<Range | undefined> => {
    const file = path.join(dir, rel);
    const st = await stat(file).catch(() => undefined);
    return st?.isFile() ? { file, start: 0, size: st.size } : undefined;
  };
  return { where: dir, file: (name) => at(name), blob: (digest) => at(path.join('blobs', 'sha256', digest.slice('sha256:'.length))) };
}

function checkDescriptor(d: unknown, what: string, where: string): Descriptor {
  const x = d as Partial<Descriptor> | null;
  if (typeof x !== 'object' || x === null) throw new UserError(`${where}: ${what} is not a descriptor`);
  if (typeof x.digest !== 'string' || !DIGEST_RE.test(x.digest)) {
    const alg = typeof x.digest === 'string' ? x.digest.split(':')[0] : undefined;
    if (alg && alg !== 'sha256' && /^[a-z0-9]+$/.test(alg)) throw new UserError(`${where}: ${what} has a ${alg} digest; this cairn reads sha256 digests only`);
    throw new UserError(`${where}: ${what} has no valid sha256 digest (${JSON.stringify(x.digest)})`, 'the image is damaged: build or download it again');
  }
  if (typeof x.size !== 'number' || !Number.isSafeInteger(x.size) || x.size < 0) throw new UserError(`${where}: ${what} ${x.digest} has no valid size`);
  return x as Descriptor;
}

/** Reads a small blob whole, checking its size and sha256 against the descriptor. */
async function readBlob(store: BlobStore, d: Descriptor, what: string): Promise<Buffer> {
  if (d.size > MAX_JSON_BLOB_BYTES) throw new UserError(`${store.where}: the ${what} ${d.digest} is ${d.size} bytes, too large for a ${what}`);
  const r = await store.blob(d.digest);
  if (!r) throw new UserError(`${store.where} has no blob ${d.digest} (the ${what}): the image is incomplete or truncated`, 'copy or download it again');
  if (r.size !== d.size) throw new UserError(`${store.where}: the ${what} ${d.digest} is ${r.size} bytes, its descriptor says ${d.size}: truncated or corrupt`, 'copy or download it again');
  const data = await readRangeBuffer(r);
  const got = `sha256:${createHash('sha256').update(data).digest('hex')}`;
  if (got !== d.digest) throw new UserError(`${store.where}: the ${what} does not match its digest ${d.digest} (it hashes to ${got}): tampered or corrupt`, 'copy or download it again');
  return data;
}

function parseJson(data: Buffer, what: string, where: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(data.toString('utf8'));
  } catch (err) {
    throw new UserError(`${where}: the ${what} is not valid JSON (${(err as Error).message})`, 'the image is damaged: build or download it again');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new UserError(`${where}: the ${what} is not a JSON object`);
  return v as Record<string, unknown>;
}

function platformName(p: Descriptor['platform']): string {
  if (!p?.architecture) return 'no platform';
  for (const [arch, q] of Object.entries(OCI_PLATFORMS)) {
    if (q.architecture === p.architecture && (!p.variant || !q.variant || p.variant === q.variant)) return arch;
  }
  return `${p.os ?? 'linux'}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

function platformMatches(p: Descriptor['platform'], arch: PayloadArch): boolean {
  const want = OCI_PLATFORMS[arch];
  if (!p?.architecture) return false;
  if (p.os && p.os !== want.os) return false;
  if (p.architecture !== want.architecture) return false;
  return !p.variant || !want.variant || p.variant === want.variant;
}

/** The image manifests an index names, following nested indexes. */
async function listManifests(store: BlobStore, index: Record<string, unknown>, what: string, depth = 0): Promise<Descriptor[]> {
  if (!Array.isArray(index.manifests)) throw new UserError(`${store.where}: the ${what} has no "manifests" list: not an OCI image index`);
  const out: Descriptor[] = [];
  for (const [i, raw] of index.manifests.entries()) {
    const d = checkDescriptor(raw, `manifest ${i + 1} of the ${what}`, store.where);
    if (d.mediaType === MT.index || d.mediaType === MT.dockerList) {
      if (depth >= 2) throw new UserError(`${store.where}: image indexes nest too deeply`);
      out.push(...(await listManifests(store, parseJson(await readBlob(store, d, 'image index'), 'image index', store.where), 'image index', depth + 1)));
    } else out.push(d);
  }
  return out;
}

/** One entry of a tar being read: a stream of its bytes with its header. */
type TarEntry = tar.Extract extends AsyncIterable<infer S> ? S : never;

interface Layer {
  desc: Descriptor;
  range: Range;
  gzip: boolean;
  /** What the layer holds, for messages: its annotation or its place. */
  label: string;
}

/**
 * Streams a layer through its digest check and a tar reader; `visit` sees
 * each entry (a stream to consume, or to leave, which drains it). The
 * digest is checked once the whole layer went through.
 */
async function walkLayer(layer: Layer, where: string, visit: (name: string, entry: TarEntry) => Promise<void>, signal?: AbortSignal): Promise<void> {
  const tap = hashingStream();
  const extract = tar.extract();
  const source = readRange(layer.range, signal);
  const feeding = layer.gzip ? pipeline(source, tap.stream, createGunzip(), extract) : pipeline(source, tap.stream, extract);
  let feedError: unknown;
  const fed = feeding.catch((err: unknown) => {
    feedError = err;
  });
  const what = `layer ${layer.desc.digest} (${layer.label})`;
  const unreadable = (err: unknown) =>
    new UserError(`${where}: the ${what} is corrupt or truncated: not a readable tar${layer.gzip ? '.gz' : ''} (${(err as Error).message})`, 'copy or download it again');
  try {
    for await (const entry of extract) {
      if (entry.header.type !== 'file' && entry.header.type !== 'contiguous-file') {
        entry.resume();
        continue;
      }
      await visit(normalizeName(entry.header.name), entry);
      entry.resume();
    }
  } catch (err) {
    await fed;
    if (signal?.aborted) throw signal.reason ?? err;
    if (err instanceof UserError) throw err;
    throw unreadable(feedError ?? err);
  }
  await fed;
  if (signal?.aborted) throw signal.reason;
  if (feedError) throw unreadable(feedError);
  const digest = `sha256:${tap.hex()}`;
  const seen = tap.bytes();
  if (seen !== layer.desc.size || digest !== layer.desc.digest) {
    throw new UserError(`${where}: the ${what} does not match its digest (it hashes to ${digest}, ${seen} bytes): tampered or corrupt`, 'copy or download it again');
  }
}

async function collect(entry: TarEntry, limit: number, what: string, where: string): Promise<Buffer> {
  if ((entry.header.size ?? 0) > limit) throw new UserError(`${where}: ${what} is ${entry.header.size} bytes, more than a ${what} can be`, 'the payload is damaged: build or download it again');
  const chunks: Buffer[] = [];
  for await (const c of entry) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function resolveArch(arch: string | undefined): PayloadArch | undefined {
  if (arch === undefined) return undefined;
  if (!(PAYLOAD_ARCHES as readonly string[]).includes(arch)) throw new UserError(`unknown arch "${arch}"`, `cairn's arches are ${PAYLOAD_ARCHES.join(', ')}`);
  return arch as PayloadArch;
}

function checkRecordArch(record: PayloadRecord, arch: PayloadArch | undefined, where: string): void {
  if (arch && record.arch !== arch) {
    throw new UserError(`${where} is a payload for ${record.arch}; this node is ${arch}`, `use the ${arch} upgrade image of ${record.name} ${record.version}`);
  }
}

async function openOci(store: BlobStore, kind: OpenedPayload['kind'], opts: OpenOptions, arch: PayloadArch | undefined, cleanup: () => Promise<void>): Promise<OpenedPayload> {
  const where = store.where;
  const indexRange = await store.file('index.json');
  if (!indexRange) {
    const layoutFile = await store.file('oci-layout');
    throw new UserError(
      `${where} has no index.json: ${layoutFile ? 'the OCI image is incomplete or truncated' : 'it is not an OCI image'}`,
      'give the .oci.tar that cairn build wrote (or an OCI layout folder, or a folder of payload files)',
    );
  }
  if (indexRange.size > MAX_JSON_BLOB_BYTES) throw new UserError(`${where}: index.json is ${indexRange.size} bytes, too large for an image index`);
  const index = parseJson(await readRangeBuffer(indexRange), 'index.json', where);
  const manifests = await listManifests(store, index, 'index.json');
  if (manifests.length === 0) throw new UserError(`${where}: index.json names no image`, 'the image is empty: build it again');
  let chosen: Descriptor;
  if (arch) {
    const match = manifests.filter((m) => platformMatches(m.platform, arch));
    if (match.length === 0 && manifests.length === 1 && !manifests[0]!.platform) chosen = manifests[0]!;
    else if (match.length === 0) {
      throw new UserError(`${where} has no image for ${arch}: it has ${[...new Set(manifests.map((m) => platformName(m.platform)))].join(', ')}`, `use the ${arch} upgrade image (cairn build --arch ${arch} --format oci)`);
    } else chosen = match[0]!;
  } else if (manifests.length === 1) chosen = manifests[0]!;
  else {
    throw new UserError(`${where} has images for ${manifests.map((m) => platformName(m.platform)).join(', ')}; which one is meant?`, 'name the arch (the node passes its own)');
  }
  const manifest = parseJson(await readBlob(store, chosen, 'image manifest'), 'image manifest', where);
  if (!Array.isArray(manifest.layers)) throw new UserError(`${where}: the image manifest ${chosen.digest} has no "layers" list`);
  if (manifest.config) {
    const cfgDesc = checkDescriptor(manifest.config, 'the image config', where);
    const cfg = parseJson(await readBlob(store, cfgDesc, 'image config'), 'image config', where);
    if (arch && typeof cfg.architecture === 'string' && !platformMatches({ architecture: cfg.architecture, os: cfg.os as string | undefined, variant: cfg.variant as string | undefined }, arch)) {
      throw new UserError(`${where}: the image is for ${platformName({ architecture: cfg.architecture, variant: cfg.variant as string | undefined })}; this node is ${arch}`);
    }
  }

  const layers: Layer[] = [];
  for (const [i, raw] of (manifest.layers as unknown[]).entries()) {
    const desc = checkDescriptor(raw, `layer ${i + 1}`, where);
    const label = desc.annotations?.[COMPONENT_ANNOTATION] ?? `layer ${i + 1}`;
    const mt = desc.mediaType ?? 'application/vnd.oci.image.layer.v1.tar';
    if (!PLAIN_LAYERS.has(mt) && !GZIP_LAYERS.has(mt)) {
      throw new UserError(`${where}: the layer ${desc.digest} (${label}) is ${mt}, which this cairn cannot unpack (it reads plain tar and tar+gzip layers)`, 'copy the image again without recompressing it (skopeo copy keeps cairn\'s uncompressed layers)');
    }
    const range = await store.blob(desc.digest);
    if (!range) throw new UserError(`${where} has no blob ${desc.digest} (the layer ${label}): the image is incomplete or truncated`, 'copy or download it again');
    if (range.size !== desc.size) throw new UserError(`${where}: the layer ${desc.digest} (${label}) is ${range.size} bytes, its descriptor says ${desc.size}: truncated or corrupt`, 'copy or download it again');
    layers.push({ desc, range, gzip: GZIP_LAYERS.has(mt), label });
  }

  // Which layer holds what: the annotations, else a look into the layers that have none.
  const holder = new Map<string, Layer>();
  for (const l of layers) {
    const c = l.desc.annotations?.[COMPONENT_ANNOTATION];
    if (c === RECORD_LAYER) for (const f of [RECORD_FILE, SIGNATURE_FILE, 'release.json']) holder.set(f, l);
    else if (c && ((COMPONENTS as readonly string[]).includes(c) || c === PATCH_FILE)) holder.set(c, l);
  }
  // a delta payload's patch layer stands in for rootfs.squashfs; a component it leaves out is held by no layer
  const held = (c: ComponentName) => holder.has(c) || (c === DELTA_COMPONENT && holder.has(PATCH_FILE));
  const unannotated = layers.filter((x) => !x.desc.annotations?.[COMPONENT_ANNOTATION]);
  if (unannotated.length && (!holder.has(RECORD_FILE) || COMPONENTS.some((c) => !held(c)))) {
    opts.log?.(`payload: ${where}: layers without cairn's annotations; looking into them`);
    for (const l of unannotated) {
      await walkLayer(l, where, async (name) => {
        const m = name.startsWith(`${PAYLOAD_DIR}/`) ? name.slice(PAYLOAD_DIR.length + 1) : undefined;
        if (m && ([RECORD_FILE, SIGNATURE_FILE, PATCH_FILE, ...COMPONENTS] as string[]).includes(m)) holder.set(m, l);
      }, opts.signal);
    }
  }
  const recordLayer = holder.get(RECORD_FILE);
  if (!recordLayer) {
    throw new UserError(`${where} is an OCI image but not a cairn upgrade image: no layer holds ${PAYLOAD_DIR}/${RECORD_FILE}`, 'give the .oci.tar that cairn build --format oci wrote');
  }
  let recordBytes: Buffer | undefined;
  let signature: Buffer | undefined;
  await walkLayer(recordLayer, where, async (name, entry) => {
    if (name === `${PAYLOAD_DIR}/${RECORD_FILE}`) recordBytes = await collect(entry, MAX_RECORD_BYTES, RECORD_FILE, where);
    else if (name === `${PAYLOAD_DIR}/${SIGNATURE_FILE}`) signature = await collect(entry, MAX_SIGNATURE_BYTES, SIGNATURE_FILE, where);
  }, opts.signal);
  if (!recordBytes) throw new UserError(`${where}: the ${recordLayer.label} layer has no ${PAYLOAD_DIR}/${RECORD_FILE}`, 'the image is damaged: build it again');
  const record = parseRecord(recordBytes, `${RECORD_FILE} in ${where}`);
  checkRecordArch(record, arch, where);
  for (const component of COMPONENTS) {
    if (record.delta?.unchanged.includes(component)) continue;
    const c = record.delta && component === DELTA_COMPONENT ? PATCH_FILE : component;
    if (!holder.has(c)) throw new UserError(`${where} has no layer holding ${PAYLOAD_DIR}/${c}: the upgrade image is incomplete`, 'build it again');
  }

  /** One file of the payload (a component, or a delta's patch) to dest, checked against its record. */
  const extractFile = async (name: ComponentName | typeof PATCH_FILE, expected: ComponentRecord, dest: string): Promise<void> => {
    const layer = holder.get(name)!;
    let found = false;
    await walkLayer(layer, where, async (entryName, entry) => {
      if (found || entryName !== `${PAYLOAD_DIR}/${name}`) return;
      found = true;
      if (entry.header.size !== expected.size) {
        throw tampered(name, where, expected, `its layer holds ${entry.header.size} bytes`);
      }
      await writeChecked(entry as unknown as AsyncIterable<Buffer>, dest, name, expected, where, opts.signal);
    }, opts.signal).catch(async (err: unknown) => {
      await rm(dest, { force: true });
      throw err;
    });
    if (!found) throw new UserError(`${where}: the ${layer.label} layer has no ${PAYLOAD_DIR}/${name}`, 'the image is damaged: build it again');
  };
  const fromBase = await deltaExtract(record, where, opts, (patch) => extractFile(PATCH_FILE, record.delta!.patch, patch));
  const extract = (name: ComponentName, dest: string) => (fromBase[name] ? fromBase[name](dest) : extractFile(name, record.components[name], dest));
  return finish(kind, record, recordBytes, signature, extract, cleanup, where, opts);
}

function finish(
  kind: OpenedPayload['kind'],
  record: PayloadRecord,
  recordBytes: Buffer,
  signature: Buffer | undefined,
  extract: OpenedPayload['extract'],
  cleanup: () => Promise<void>,
  where: string,
  opts: OpenOptions,
): OpenedPayload {
  const bytes = COMPONENTS.reduce((n, c) => n + record.components[c].size, 0);
  opts.log?.(`payload: ${where}: ${record.name} ${record.version} ${record.arch}, ${(bytes / 1048576).toFixed(1)} MiB, ${signature ? 'signed' : 'unsigned'}`);
  let closed = false;
  return {
    kind,
    record,
    recordBytes,
    ...(signature ? { signature } : {}),
    bytes,
    extract: async (name, dest) => {
      if (closed) throw new Error('extract: the payload is closed');
      if (!(COMPONENTS as readonly string[]).includes(name)) throw new Error(`extract: unknown component ${String(name)}`);
      await extract(name, dest);
    },
    close: async () => {
      if (closed) return;
      closed = true;
      await cleanup();
    },
  };
}

// ----- delta payloads (see delta.ts) ------------------------------------------------

/**
 * For a delta payload, how the components it does not carry are written:
 * rootfs.squashfs from the patch (by `writePatch`, checked against
 * delta.patch, into the scratch folder) applied to the installed base, and
 * each unchanged component copied from the base version's folder, each
 * checked against payload.json. When the node's installed versions are
 * known, the base is found and checked now (its squashfs and its unchanged
 * components), so that a node without it refuses before anything changes.
 * Empty for a full payload.
 */
async function deltaExtract(record: PayloadRecord, where: string, opts: OpenOptions, writePatch: (patch: string) => Promise<void>): Promise<Partial<Record<ComponentName, (dest: string) => Promise<void>>>> {
  const delta = record.delta;
  if (!delta) return {};
  const lookup = { installed: opts.installed, where, full: fullArchiveName(record) };
  const taken = delta.unchanged.length ? `; ${delta.unchanged.join(', ')} from ${delta.base.version} on this node` : '';
  opts.log?.(`payload: ${where}: a delta against ${delta.base.version}, its patch ${(delta.patch.size / 1048576).toFixed(1)} MiB${taken}`);
  // checked once here; a base that changes after this makes a result (or a copy) that fails its sha256
  let base: Promise<BaseFiles> | undefined = opts.installed ? Promise.resolve(await findBase(delta, record.components, lookup)) : undefined;
  const found = () => (base ??= findBase(delta, record.components, lookup));
  const out: Partial<Record<ComponentName, (dest: string) => Promise<void>>> = {};
  out[DELTA_COMPONENT] = async (dest) => {
    const { squashfs } = await found();
    await mkdir(opts.workDir, { recursive: true });
    const patch = path.join(opts.workDir, `${PATCH_FILE}.${process.pid}.${randomBytes(4).toString('hex')}`);
    try {
      await writePatch(patch);
      await applyPatch({ delta, base: squashfs, patch, dest, result: record.components[DELTA_COMPONENT], where, full: lookup.full, signal: opts.signal });
    } finally {
      await rm(patch, { force: true });
    }
  };
  for (const name of delta.unchanged) {
    out[name] = async (dest) => {
      const file = (await found()).files[name]!;
      const expected = record.components[name];
      await writeChecked(createReadStream(file, { highWaterMark: 1 << 20 }), dest, name, expected, where, opts.signal, (got) => baseMismatch(name, file, expected, got, lookup));
    };
  }
  return out;
}

// ----- a folder of payload files -----------------------------------------------

async function openFolder(dir: string, opts: OpenOptions, arch: PayloadArch | undefined): Promise<OpenedPayload> {
  const recordFile = path.join(dir, RECORD_FILE);
  const st = await stat(recordFile);
  if (st.size > MAX_RECORD_BYTES) throw new UserError(`${recordFile} is ${st.size} bytes, more than a payload record can be`);
  const recordBytes = await readFile(recordFile);
  const sigFile = path.join(dir, SIGNATURE_FILE);
  const sigStat = await stat(sigFile).catch(() => undefined);
  let signature: Buffer | undefined;
  if (sigStat) {
    if (!sigStat.isFile() || sigStat.size > MAX_SIGNATURE_BYTES) throw new UserError(`${sigFile} is not a signature file`);
    signature = await readFile(sigFile);
  }
  const record = parseRecord(recordBytes, recordFile);
  checkRecordArch(record, arch, dir);
  for (const component of COMPONENTS) {
    // a delta payload has its patch in place of rootfs.squashfs, and not the components it takes from the base
    if (record.delta?.unchanged.includes(component)) continue;
    const [c, expected] = record.delta && component === DELTA_COMPONENT ? [PATCH_FILE, record.delta.patch] as const : [component, record.components[component]] as const;
    const f = path.join(dir, c);
    const cs = await stat(f).catch(() => undefined);
    if (!cs?.isFile()) throw new UserError(`${dir} has no ${c}: the payload is incomplete`, 'copy the whole payload (every file payload.json names) again');
    if (cs.size !== expected.size) throw tampered(c, dir, expected, `the file is ${cs.size} bytes`);
  }
  const copy = async (name: ComponentName | typeof PATCH_FILE, expected: ComponentRecord, dest: string) => {
    await writeChecked(createReadStream(path.join(dir, name), { highWaterMark: 1 << 20 }), dest, name, expected, dir, opts.signal);
  };
  const fromBase = await deltaExtract(record, dir, opts, (patch) => copy(PATCH_FILE, record.delta!.patch, patch));
  const extract = (name: ComponentName, dest: string) => (fromBase[name] ? fromBase[name](dest) : copy(name, record.components[name], dest));
  return finish('folder', record, recordBytes, signature, extract, async () => undefined, dir, opts);
}

// ----- downloads -------------------------------------------------------------

/** What a download is for: its log lines' prefix, the file name's suffix, and the hint when it cannot be held. */
export interface DownloadOptions {
  log?: (line: string) => void;
  signal?: AbortSignal;
  /** Default `payload`. */
  what?: string;
  /** Default `.oci.tar`. */
  suffix?: string;
  /** What to do when the file does not fit where it goes. */
  spaceHint?: string;
}

/**
 * Downloads `url` into a new file in `workDir` (0600), refused before a byte
 * is written when its announced size does not fit, and checked against that
 * size after; a download that fails leaves no file. Returns the file.
 */
export async function download(url: string, workDir: string, opts: DownloadOptions): Promise<string> {
  const shown = displayUrl(url);
  const hint = "check the address, and the node's network and proxy settings";
  const what = opts.what ?? 'payload';
  opts.log?.(`${what}: downloading ${shown}`);
  let res: Response;
  try {
    res = await fetch(url, { signal: opts.signal, redirect: 'follow', headers: { 'accept-encoding': 'identity' } });
  } catch (err) {
    if (opts.signal?.aborted) throw opts.signal.reason ?? err;
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    throw new UserError(`cannot download ${shown}: ${cause?.code ?? cause?.message ?? (err as Error).message}`, hint);
  }
  if (!res.ok || !res.body) {
    await res.body?.cancel().catch(() => undefined);
    throw new UserError(`cannot download ${shown}: the server answered HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''}`, res.status === 404 ? 'check the address: no file is there' : hint);
  }
  const length = res.headers.get('content-length');
  const encoded = (res.headers.get('content-encoding') ?? 'identity') !== 'identity';
  const expected = length !== null && !encoded ? Number(length) : undefined;
  if (expected !== undefined) {
    // refused before a byte is written when the archive cannot fit (cairn upgrade checks the rest after)
    const st = statfsSync(workDir);
    const free = Number(st.bavail) * Number(st.bsize);
    if (free < expected) {
      await res.body.cancel().catch(() => undefined);
      throw new UserError(
        `not enough space to download ${shown}: it needs ${Math.ceil(expected / 1048576)} MiB in ${workDir}, ${Math.floor(free / 1048576)} MiB are free`,
        opts.spaceHint ?? 'free space on the node (logs, container images in /var), or give a payload on another disk with --source',
      );
    }
  }
  const file = path.join(workDir, `${what}-${process.pid}-${randomBytes(4).toString('hex')}${opts.suffix ?? '.oci.tar'}`);
  let got = 0;
  const count = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      got += chunk.length;
      cb(null, chunk);
    },
  });
  try {
    await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>), count, createWriteStream(file, { mode: 0o600 }), { signal: opts.signal });
  } catch (err) {
    await rm(file, { force: true });
    if (opts.signal?.aborted) throw opts.signal.reason ?? err;
    if ((err as NodeJS.ErrnoException).code === 'ENOSPC') throw new UserError(`no space left in ${workDir} for the download of ${shown}`, 'free some space on the node and try again');
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    throw new UserError(
      `the download of ${shown} broke off after ${got} bytes${expected !== undefined ? ` of ${expected}` : ''} (${cause?.code ?? cause?.message ?? (err as Error).message}): truncated`,
      hint,
    );
  }
  if (expected !== undefined && Number.isFinite(expected) && got !== expected) {
    await rm(file, { force: true });
    throw new UserError(`the download of ${shown} is truncated: ${got} bytes arrived, the server announced ${expected}`, hint);
  }
  opts.log?.(`${what}: downloaded ${(got / 1048576).toFixed(1)} MiB`);
  return file;
}

// ----- opening -----------------------------------------------------------------

/**
 * Opens a payload: an OCI archive file, an OCI image layout folder, a
 * folder holding payload.json and the components (or a cairn/ folder with
 * them), or an http(s) URL of an archive. Reads and checks the record; the
 * components are read by extract().
 */
export async function openPayload(source: string, opts: OpenOptions): Promise<OpenedPayload> {
  const arch = resolveArch(opts.arch);
  if (/^https?:\/\//i.test(source)) {
    await mkdir(opts.workDir, { recursive: true });
    const file = await download(source, opts.workDir, opts);
    const cleanup = () => rm(file, { force: true });
    try {
      return await openOci(archiveStore(await indexTar(file, displayUrl(source)), displayUrl(source)), 'url', opts, arch, cleanup);
    } catch (err) {
      await cleanup();
      throw err;
    }
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(source)) {
    throw new UserError(`cannot read a payload from ${displayUrl(source)}`, 'give a file, a folder, or an http:// or https:// URL of an OCI archive');
  }
  const st = await stat(source).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT' || err.code === 'ENOTDIR') throw new UserError(`the payload ${source} does not exist`, 'give the .oci.tar from cairn build, an OCI layout folder, a folder of payload files, or a URL');
    if (err.code === 'EACCES') throw new UserError(`cannot read the payload ${source}: permission denied`);
    throw err;
  });
  if (st.isFile()) {
    const entries = await indexTar(source, source).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'EACCES') throw new UserError(`cannot read the payload ${source}: permission denied`);
      throw err;
    });
    return openOci(archiveStore(entries, source), 'archive', opts, arch, async () => undefined);
  }
  if (!st.isDirectory()) throw new UserError(`the payload ${source} is neither a file nor a folder`, 'give the .oci.tar from cairn build, an OCI layout folder, a folder of payload files, or a URL');
  const has = async (rel: string) => (await stat(path.join(source, rel)).catch(() => undefined)) !== undefined;
  if ((await has('index.json')) || (await has('oci-layout'))) return openOci(layoutStore(source), 'layout', opts, arch, async () => undefined);
  if (await has(RECORD_FILE)) return openFolder(source, opts, arch);
  if (await has(path.join(PAYLOAD_DIR, RECORD_FILE))) return openFolder(path.join(source, PAYLOAD_DIR), opts, arch);
  throw new UserError(
    `${source} holds neither an OCI image layout (index.json, oci-layout) nor payload files (${RECORD_FILE}, kernel, initrd, rootfs.squashfs, release.json)`,
    'give the .oci.tar from cairn build, an OCI layout folder, a folder of payload files, or a URL',
  );
}

