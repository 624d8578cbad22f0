/**
 * oci: the upgrade image, an OCI image layout in one tar archive
 * (`skopeo copy oci-archive:FILE docker://registry/cairn:VERSION` pushes
 * it; system-upgrade-controller's Plan runs `cairn upgrade` from it).
 *
 * One uncompressed layer (the payload is compressed already) per component,
 * so an upgrade that changes one component moves one layer:
 *
 *   runner           bin/busybox  bin/sh  usr/bin/cairn (the entrypoint)
 *   kernel           cairn/kernel
 *   initrd           cairn/initrd
 *   rootfs.squashfs  cairn/rootfs.squashfs
 *   payload          cairn/release.json  cairn/payload.json  cairn/payload.json.sig (when signed)
 *
 * each descriptor annotated `io.cairn.component: <name>`; payload.json is
 * the record that a signature covers (see src/upgrade/payload.ts). index.json
 * names the image by its version (org.opencontainers.image.ref.name).
 *
 * The image runs: its /usr/bin/cairn (a busybox sh script; the busybox is
 * the image root's static one) copies /cairn/* to the node whose root is
 * mounted at /host and runs the node's own `cairn upgrade` on the copy, so
 * the Plan's `/usr/bin/cairn upgrade [--check]` upgrades the node with the
 * code of the version it runs.
 *
 * Deterministic: sorted entries, owner 0:0, fixed JSON key order. A layer's
 * bytes depend on its files' bytes alone (their times are 0, not
 * SOURCE_DATE_EPOCH), so a kernel that did not change between two builds
 * gives the same kernel layer, which a registry or node already has; the
 * image config's times are SOURCE_DATE_EPOCH.
 *
 * With `cairn build --delta-from PREVIOUS` the writer also makes
 * `<stem>.delta-from-<base>.oci.tar` (see src/upgrade/delta.ts): the same
 * image, but the rootfs.squashfs layer replaced by a `rootfs.squashfs.zstpatch`
 * layer (a zstd patch against the previous build's squashfs), no layer for a
 * component that is the previous build's byte for byte (the node takes it
 * from its installed base: usually the kernel and the initrd), and
 * payload.json with a `delta` field that names those; its other layers (the
 * runner, a changed kernel or initrd) are the full image's.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { DELTA_COMPONENT, PATCH_FILE, deltaArchiveName, makePatch, unchangedComponents, type DeltaRecord } from '../../upgrade/delta.js';
import { publicKeyOf, signRecord } from '../../upgrade/keys.js';
import {
  COMPONENTS,
  COMPONENT_ANNOTATION,
  OCI_PLATFORMS,
  PAYLOAD_DIR,
  PAYLOAD_FORMAT,
  RECORD_FILE,
  RECORD_LAYER,
  SIGNATURE_FILE,
  openPayload,
  renderRecord,
  type ComponentName,
  type ComponentRecord,
  type PayloadRecord,
} from '../../upgrade/payload.js';
import { UserError } from '../../errors.js';
import { resolveInRoot } from '../fsutil.js';
import { hashingStream } from '../hash.js';
import { elfIsDynamic } from '../initramfs/index.js';
import type { Arch, Artifact, OutputWriter, SystemArtifacts } from '../types.js';
import { artifactStem, sha256File } from './common.js';

export const OCI_PAYLOAD_DIR = PAYLOAD_DIR;

const MT = {
  index: 'application/vnd.oci.image.index.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layer: 'application/vnd.oci.image.layer.v1.tar',
} as const;

export const ociPlatform: Record<Arch, { architecture: string; os: 'linux'; variant?: string }> = OCI_PLATFORMS;

/** The time of every entry in a layer: fixed, so a layer's bytes are its files' bytes. */
const LAYER_MTIME = new Date(0);

type TarHeader = Parameters<tar.Pack['entry']>[0];

function header(name: string, size: number, mode: number, mtime: Date, type: 'file' | 'directory' = 'file'): TarHeader {
  return { name, size, mode, mtime, uid: 0, gid: 0, uname: '', gname: '', type };
}

function addBuffer(pack: tar.Pack, h: TarHeader, data: Buffer): Promise<void> {
  return new Promise((resolve, reject) => pack.entry(h, data, (err) => (err ? reject(err) : resolve())));
}

/** Adds a file, streaming; returns the sha256 and size of what went in (a file that changes meanwhile is an error). */
async function addStream(pack: tar.Pack, h: TarHeader, file: string): Promise<ComponentRecord> {
  let done: () => void = () => undefined;
  let fail: (e: Error) => void = () => undefined;
  const finished = new Promise<void>((resolve, reject) => {
    done = resolve;
    fail = reject;
  });
  const tap = hashingStream();
  const entry = pack.entry(h, (err) => (err ? fail(err) : done()));
  await pipeline(createReadStream(file, { highWaterMark: 1 << 20 }), tap.stream, entry);
  await finished;
  if (tap.bytes() !== h.size) throw new Error(`${file} changed while it was written into the OCI image`);
  return { sha256: tap.hex(), size: tap.bytes() };
}

/** Writes a tar made by `fill` to `out`, returning its sha256 and size. */
async function writeTar(out: string, fill: (pack: tar.Pack) => Promise<void>): Promise<{ digest: string; size: number }> {
  const pack = tar.pack();
  const count = hashingStream();
  const writing = pipeline(pack, count.stream, createWriteStream(out));
  try {
    await fill(pack);
    pack.finalize();
  } catch (err) {
    pack.destroy(err as Error);
    await writing.catch(() => undefined);
    throw err;
  }
  await writing;
  return { digest: `sha256:${count.hex()}`, size: count.bytes() };
}

interface LayerFile {
  name: string;
  src?: string;
  data?: Buffer;
  mode: number;
  /** A symlink to this target (no src or data). */
  link?: string;
}

interface BuiltLayer {
  component: string;
  digest: string;
  size: number;
  file: string;
  /** sha256 and size of each file in it, by name. */
  files: Record<string, ComponentRecord>;
}

/** One layer: files (paths from the image root) and their folders, in name order. */
async function writeLayer(component: string, files: LayerFile[], workDir: string): Promise<BuiltLayer> {
  const file = path.join(workDir, `layer-${component}.tar`);
  const sums: Record<string, ComponentRecord> = {};
  const dirs = new Set<string>();
  for (const f of files) for (let d = path.posix.dirname(f.name); d !== '.'; d = path.posix.dirname(d)) dirs.add(d);
  const entries = [...[...dirs].map((d) => ({ name: `${d}/`, dir: true as const })), ...files.map((f) => ({ ...f, dir: false as const }))];
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const t = await writeTar(file, async (pack) => {
    for (const e of entries) {
      if (e.dir) await addBuffer(pack, header(e.name, 0, 0o755, LAYER_MTIME, 'directory'), Buffer.alloc(0));
      else if (e.link !== undefined) await addBuffer(pack, { ...header(e.name, 0, 0o777, LAYER_MTIME), type: 'symlink', linkname: e.link }, Buffer.alloc(0));
      else if (e.src) sums[e.name] = await addStream(pack, header(e.name, (await stat(e.src)).size, e.mode, LAYER_MTIME), e.src);
      else {
        await addBuffer(pack, header(e.name, e.data!.length, e.mode, LAYER_MTIME), e.data!);
        sums[e.name] = { sha256: createHash('sha256').update(e.data!).digest('hex'), size: e.data!.length };
      }
    }
  });
  return { component, digest: t.digest, size: t.size, file, files: sums };
}

/** A payload layer: its files under cairn/; `files` in the result by their names there. */
async function buildLayer(component: string, files: LayerFile[], workDir: string): Promise<BuiltLayer> {
  const l = await writeLayer(component, files.map((f) => ({ ...f, name: `${PAYLOAD_DIR}/${f.name}` })), workDir);
  return { ...l, files: Object.fromEntries(Object.entries(l.files).map(([n, v]) => [n.slice(PAYLOAD_DIR.length + 1), v])) };
}

/** Where the upgrade image's cairn puts the payload on the node, and the node's cairn. */
export const HOST_PAYLOAD_DIR = '/var/lib/cairn/upgrade-payload';
export const HOST_CAIRN = '/usr/local/bin/cairn';
export const RUNNER_ENTRYPOINT = '/usr/bin/cairn';

/** /usr/bin/cairn in the upgrade image: `cairn upgrade [options]` on the node mounted at /host, with this image's payload. */
export function renderRunner(): string {
  return `#!/bin/sh
# cairn's upgrade image: hands the payload in /cairn to the cairn node whose
# root is mounted at /host (as the cairn Plan of system-upgrade-controller
# mounts it) and runs the node's own cairn upgrade on it:
#   /usr/bin/cairn upgrade [--check] ...
# (as the controller's job, with SYSTEM_UPGRADE_PLAN_NAME set, it reboots
# the node into the new version)
set -eu
bb=/bin/busybox
host=/host
dest=${HOST_PAYLOAD_DIR}
if [ "\${1:-}" = upgrade ]; then shift; fi
case "\${1:-}" in
  -h|--help)
    echo "usage: cairn upgrade [options]  (in the upgrade image: runs ${HOST_CAIRN} upgrade --source $dest [options] on the node at $host)"
    exit 0 ;;
esac
if [ ! -x "$host${HOST_CAIRN}" ]; then
  echo "cairn upgrade image: no cairn node at $host ($host${HOST_CAIRN} is missing): mount the node's root filesystem at $host" >&2
  exit 1
fi
# system-upgrade-controller's job: the node reboots into the new version (the
# job, retried after the reboot, then finds it running and succeeds)
reboot=
if [ -n "\${SYSTEM_UPGRADE_PLAN_NAME:-}" ]; then
  reboot=--reboot
  for a in "$@"; do [ "$a" = --check ] && reboot=; done
fi
# In the host's PID namespace (the controller's job has it) the node reads the
# payload straight from this container's root, /proc/<pid>/root/cairn: no copy
# on its disk. Only when that is really this container's /cairn.
me=$($bb stat -c '%d:%i' /cairn/payload.json 2>/dev/null || true)
there=$($bb stat -c '%d:%i' "$host/proc/$$/root/cairn/payload.json" 2>/dev/null || true)
if [ -n "$me" ] && [ "$me" = "$there" ]; then
  # (this shell stays: its root is what /proc/$$/root shows the node)
  status=0
  $bb chroot "$host" ${HOST_CAIRN} upgrade --source "/proc/$$/root/cairn" $reboot "$@" || status=$?
  exit $status
fi
$bb rm -rf "$host$dest.new"
if ! { $bb mkdir -p "$host$dest.new" && $bb cp /cairn/* "$host$dest.new/" && $bb sync; }; then
  $bb rm -rf "$host$dest.new"
  echo "cairn upgrade image: cannot copy the payload to $host$dest on the node (is its disk full?)" >&2
  exit 1
fi
$bb rm -rf "$host$dest"
$bb mv "$host$dest.new" "$host$dest"
status=0
$bb chroot "$host" ${HOST_CAIRN} upgrade --source "$dest" $reboot "$@" || status=$?
$bb rm -rf "$host$dest"
exit $status
`;
}

/** The image root's static busybox: the upgrade image's /bin/sh. */
async function findStaticBusybox(rootfs: string): Promise<string> {
  for (const rel of ['usr/bin/busybox', 'bin/busybox']) {
    const p = await resolveInRoot(rootfs, rel);
    const st = await stat(p).catch(() => undefined);
    if (!st?.isFile()) continue;
    const head = Buffer.alloc(64 * 1024);
    const fh = await open(p, 'r');
    let n: number;
    try {
      n = (await fh.read(head, 0, head.length, 0)).bytesRead;
    } finally {
      await fh.close();
    }
    let dynamic: boolean;
    try {
      dynamic = elfIsDynamic(head.subarray(0, n));
    } catch {
      throw new UserError(`${p} is not a busybox executable: the upgrade image needs the image root's static busybox for its /bin/sh`, "put busybox-static in the image spec's packages");
    }
    if (dynamic) throw new UserError(`${p} is a dynamically linked busybox: the upgrade image needs a static one for its /bin/sh`, "put busybox-static (not busybox) in the image spec's packages");
    return p;
  }
  throw new UserError(`the image root ${rootfs} has no busybox (looked in /usr/bin and /bin): the upgrade image needs it for its /bin/sh`, "put busybox-static in the image spec's packages");
}

/** The layer that makes the image run: busybox as /bin/sh and the /usr/bin/cairn script. */
async function runnerLayer(rootfs: string, workDir: string): Promise<BuiltLayer> {
  const busybox = await findStaticBusybox(rootfs);
  return writeLayer(
    RUNNER_LAYER,
    [
      { name: 'bin/busybox', src: busybox, mode: 0o755 },
      { name: 'bin/sh', link: 'busybox', mode: 0o777 },
      { name: RUNNER_ENTRYPOINT.slice(1), data: Buffer.from(renderRunner()), mode: 0o755 },
    ],
    workDir,
  );
}

const RUNNER_LAYER = 'runner';

export interface OciOptions {
  /** An ed25519 private key (PEM): payload.json is signed with it. */
  signingKey?: string;
  /**
   * A delta payload: rootfs.squashfs as a patch against this squashfs of the
   * base version, and the components whose sha256 and size are the base's
   * (`components`: the base payload's record of them) left out.
   */
  delta?: { version: string; squashfs: string; components: Record<ComponentName, ComponentRecord>; signal?: AbortSignal };
}

export interface OciResult {
  manifestDigest: string;
  layers: { component: string; digest: string; size: number }[];
  record: PayloadRecord;
  /** The fingerprint of the key that signed payload.json. */
  signedBy?: string;
  delta?: DeltaRecord;
}

/** A delta's rootfs.squashfs: the patch's layer, and the records of the patch, its base and the result. */
async function patchLayer(system: SystemArtifacts, base: NonNullable<OciOptions['delta']>, workDir: string): Promise<{ layer: BuiltLayer; delta: Omit<DeltaRecord, 'unchanged'>; result: ComponentRecord }> {
  const patch = path.join(workDir, PATCH_FILE);
  try {
    const made = await makePatch(base.squashfs, system.squashfs, patch, { signal: base.signal });
    const layer = await buildLayer(PATCH_FILE, [{ name: PATCH_FILE, src: patch, mode: 0o644 }], workDir);
    if (layer.files[PATCH_FILE]!.sha256 !== made.sha256) throw new Error(`${patch} changed while the OCI image was written`);
    const result = { sha256: await sha256File(system.squashfs), size: (await stat(system.squashfs)).size };
    const baseSha = await sha256File(base.squashfs);
    if (baseSha !== base.components[DELTA_COMPONENT].sha256) throw new Error(`${base.squashfs} is not the squashfs that the base version's components name`);
    const delta = { component: DELTA_COMPONENT, base: { version: base.version, sha256: baseSha }, patch: made };
    return { layer, delta, result };
  } finally {
    await rm(patch, { force: true });
  }
}

export async function buildOciArchive(system: SystemArtifacts, workDir: string, out: string, opts: OciOptions = {}): Promise<OciResult> {
  const mtime = new Date(system.sourceDateEpoch * 1000);
  const created = mtime.toISOString().replace(/\.000Z$/, 'Z');
  const signer = opts.signingKey ? publicKeyOf(opts.signingKey) : undefined;

  const runner = await runnerLayer(system.rootfs, workDir);
  const component = async (name: Exclude<ComponentName, 'release.json'>, src: string) => buildLayer(name, [{ name, src, mode: 0o644 }], workDir);
  const kernel = await component('kernel', system.kernel);
  const initrd = await component('initrd', system.initramfs);
  // a delta carries the patch in place of the squashfs; payload.json still names the squashfs it makes
  const patched = opts.delta ? await patchLayer(system, opts.delta, workDir) : undefined;
  const squashfs = patched ? patched.layer : await component('rootfs.squashfs', system.squashfs);
  const releaseSize = (await stat(system.release)).size;
  const release = { sha256: await sha256File(system.release), size: releaseSize };
  const components: PayloadRecord['components'] = {
    kernel: kernel.files.kernel!,
    initrd: initrd.files.initrd!,
    'rootfs.squashfs': patched ? patched.result : squashfs.files['rootfs.squashfs']!,
    'release.json': release,
  };
  // a delta leaves out what the base has byte for byte: the node takes it from there
  const delta: DeltaRecord | undefined = patched ? { ...patched.delta, unchanged: unchangedComponents(COMPONENTS, components, opts.delta!.components) } : undefined;
  const record: PayloadRecord = {
    format: PAYLOAD_FORMAT,
    name: system.name,
    version: system.version,
    arch: system.arch,
    sourceDateEpoch: system.sourceDateEpoch,
    components,
    ...(delta ? { delta } : {}),
  };
  const recordBytes = renderRecord(record);
  const recordFiles: LayerFile[] = [
    { name: 'release.json', src: system.release, mode: 0o644 },
    { name: RECORD_FILE, data: recordBytes, mode: 0o644 },
  ];
  if (opts.signingKey) recordFiles.push({ name: SIGNATURE_FILE, data: signRecord(recordBytes, opts.signingKey), mode: 0o644 });
  const meta = await buildLayer(RECORD_LAYER, recordFiles, workDir);
  if (meta.files['release.json']!.sha256 !== release.sha256) throw new Error(`${system.release} changed while the OCI image was written`);
  const built = [runner, kernel, initrd, squashfs, meta];
  const leftOut = new Set<string>(delta?.unchanged ?? []);
  const layers = built.filter((l) => !leftOut.has(l.component));

  const platform = ociPlatform[system.arch];
  const labels: Record<string, string> = {
    'org.opencontainers.image.title': `cairn ${system.name}`,
    'org.opencontainers.image.version': system.version,
    'org.opencontainers.image.created': created,
    'io.cairn.kernel-release': system.kernelRelease,
    'io.cairn.payload': PAYLOAD_DIR,
    'io.cairn.payload-format': String(PAYLOAD_FORMAT),
    ...(signer ? { 'io.cairn.signed-by': signer.fingerprint } : {}),
    ...(delta ? { 'io.cairn.delta-from': delta.base.version } : {}),
  };
  const config = Buffer.from(
    JSON.stringify({
      created,
      architecture: platform.architecture,
      ...(platform.variant ? { variant: platform.variant } : {}),
      os: platform.os,
      config: { Entrypoint: [RUNNER_ENTRYPOINT], Env: ['PATH=/usr/bin:/bin'], WorkingDir: '/', Labels: labels },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
      history: layers.map((l) => ({ created, created_by: 'cairn build', comment: `cairn ${system.name} ${system.version}: ${l.component}` })),
    }),
  );
  const configDigest = `sha256:${createHash('sha256').update(config).digest('hex')}`;
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.manifest,
      config: { mediaType: MT.config, digest: configDigest, size: config.length },
      layers: layers.map((l) => ({ mediaType: MT.layer, digest: l.digest, size: l.size, annotations: { [COMPONENT_ANNOTATION]: l.component } })),
      annotations: labels,
    }),
  );
  const manifestDigest = `sha256:${createHash('sha256').update(manifest).digest('hex')}`;
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.index,
      manifests: [
        {
          mediaType: MT.manifest,
          digest: manifestDigest,
          size: manifest.length,
          platform,
          annotations: { 'org.opencontainers.image.ref.name': system.version },
        },
      ],
    }),
  );
  const layout = Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' }));

  // Two components with the same bytes are one blob.
  const blobs = new Map<string, { digest: string; data?: Buffer; file?: string; size: number }>();
  blobs.set(configDigest, { digest: configDigest, data: config, size: config.length });
  blobs.set(manifestDigest, { digest: manifestDigest, data: manifest, size: manifest.length });
  for (const l of layers) if (!blobs.has(l.digest)) blobs.set(l.digest, { digest: l.digest, file: l.file, size: l.size });
  const sorted = [...blobs.values()].sort((a, b) => (a.digest < b.digest ? -1 : 1));
  await rm(out, { force: true });
  try {
    await writeTar(out, async (pack) => {
      await addBuffer(pack, header('blobs/', 0, 0o755, mtime, 'directory'), Buffer.alloc(0));
      await addBuffer(pack, header('blobs/sha256/', 0, 0o755, mtime, 'directory'), Buffer.alloc(0));
      for (const b of sorted) {
        const name = `blobs/sha256/${b.digest.slice('sha256:'.length)}`;
        if (b.file) await addStream(pack, header(name, b.size, 0o644, mtime), b.file);
        else await addBuffer(pack, header(name, b.size, 0o644, mtime), b.data!);
      }
      await addBuffer(pack, header('index.json', index.length, 0o644, mtime), index);
      await addBuffer(pack, header('oci-layout', layout.length, 0o644, mtime), layout);
    });
  } finally {
    for (const l of built) await rm(l.file, { force: true });
  }
  return {
    manifestDigest,
    layers: layers.map((l) => ({ component: l.component, digest: l.digest, size: l.size })),
    record,
    ...(signer ? { signedBy: signer.fingerprint } : {}),
    ...(delta ? { delta } : {}),
  };
}

export const oci: OutputWriter = async (system, ctx) => {
  const file = `${artifactStem(system)}.oci.tar`;
  const r = await buildOciArchive(system, ctx.workDir, path.join(ctx.outDir, file), { signingKey: ctx.signingKey });
  ctx.log(`oci: ${file}, payload ${r.signedBy ? `signed by key ${r.signedBy}` : 'unsigned'}`);
  const artifacts: Artifact[] = [{ file, format: 'oci', arch: system.arch }];
  if (ctx.deltaFrom) artifacts.push(await writeDelta(system, ctx, ctx.deltaFrom));
  return artifacts;
};

/** cairn build --delta-from: the delta upgrade image against the previous build's squashfs (taken out of its payload, checked on the way). */
async function writeDelta(system: SystemArtifacts, ctx: Parameters<OutputWriter>[1], from: NonNullable<Parameters<OutputWriter>[1]['deltaFrom']>): Promise<Artifact> {
  const baseDir = path.join(ctx.workDir, 'base');
  const base = path.join(baseDir, 'rootfs.squashfs');
  await mkdir(baseDir, { recursive: true });
  try {
    const previous = await openPayload(from.archive, { arch: system.arch, workDir: baseDir });
    const components = previous.record.components;
    try {
      await previous.extract('rootfs.squashfs', base);
    } finally {
      await previous.close();
    }
    const file = deltaArchiveName(artifactStem(system), from.version);
    ctx.log(`oci: ${file}: patching against the squashfs of ${from.version} (zstd -19, about a minute)`);
    const d = await buildOciArchive(system, ctx.workDir, path.join(ctx.outDir, file), { signingKey: ctx.signingKey, delta: { version: from.version, squashfs: base, components, signal: ctx.signal } });
    const left = d.delta!.unchanged.length ? `; ${d.delta!.unchanged.join(', ')} left out (${from.version}'s, taken from the node)` : '';
    ctx.log(`oci: ${file}, a patch of ${d.delta!.patch.size} bytes for a squashfs of ${d.record.components['rootfs.squashfs'].size}${left}, payload ${d.signedBy ? `signed by key ${d.signedBy}` : 'unsigned'}`);
    return { file, format: 'oci', arch: system.arch };
  } finally {
    await rm(baseDir, { recursive: true, force: true });
  }
}
