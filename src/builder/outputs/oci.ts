/**
 * oci: the upgrade image, an OCI image layout in one tar archive
 * (`skopeo copy oci-archive:FILE docker://registry/cairn:VERSION` pushes
 * it; system-upgrade-controller's Plan runs `cairn upgrade` from it).
 *
 * One uncompressed layer (the payload is compressed already) holding
 *   cairn/kernel  cairn/initrd  cairn/rootfs.squashfs  cairn/k3s (when the
 *   system has it)  cairn/release.json  cairn/version  cairn/SHA256SUMS
 * plus the image config and manifest; index.json names the image by its
 * version (org.opencontainers.image.ref.name). Deterministic: sorted
 * entries, times at SOURCE_DATE_EPOCH, owner 0:0, fixed JSON key order.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import type { Arch, Artifact, OutputWriter, SystemArtifacts } from '../types.js';
import { artifactStem, sha256File } from './common.js';

export const OCI_PAYLOAD_DIR = 'cairn';

const MT = {
  index: 'application/vnd.oci.image.index.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layer: 'application/vnd.oci.image.layer.v1.tar',
} as const;

export const ociPlatform: Record<Arch, { architecture: string; os: 'linux'; variant?: string }> = {
  amd64: { architecture: 'amd64', os: 'linux' },
  arm64: { architecture: 'arm64', os: 'linux', variant: 'v8' },
  armv7: { architecture: 'arm', os: 'linux', variant: 'v7' },
};

interface PayloadFile {
  name: string;
  src?: string;
  data?: Buffer;
  mode: number;
}

/** The k3s binary of a system: the pipeline's, or the one in its root. */
function findK3s(system: SystemArtifacts & { k3s?: string }): string | undefined {
  if (system.k3s && existsSync(system.k3s)) return system.k3s;
  for (const rel of ['usr/local/bin/k3s', 'usr/bin/k3s']) {
    const p = path.join(system.rootfs, rel);
    if (existsSync(p)) return p;
  }
  return undefined;
}

type TarHeader = Parameters<tar.Pack['entry']>[0];

function header(name: string, size: number, mode: number, mtime: Date, type: 'file' | 'directory' = 'file'): TarHeader {
  return { name, size, mode, mtime, uid: 0, gid: 0, uname: '', gname: '', type };
}

function addBuffer(pack: tar.Pack, h: TarHeader, data: Buffer): Promise<void> {
  return new Promise((resolve, reject) => pack.entry(h, data, (err) => (err ? reject(err) : resolve())));
}

async function addStream(pack: tar.Pack, h: TarHeader, file: string): Promise<void> {
  let done: () => void = () => undefined;
  let fail: (e: Error) => void = () => undefined;
  const finished = new Promise<void>((resolve, reject) => {
    done = resolve;
    fail = reject;
  });
  const entry = pack.entry(h, (err) => (err ? fail(err) : done()));
  await pipeline(createReadStream(file), entry);
  await finished;
}

/** Writes a tar made by `fill` to `out`, returning its sha256 and size. */
async function writeTar(out: string, fill: (pack: tar.Pack) => Promise<void>): Promise<{ digest: string; size: number }> {
  const pack = tar.pack();
  const hash = createHash('sha256');
  let size = 0;
  const count = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      size += chunk.length;
      cb(null, chunk);
    },
  });
  const writing = pipeline(pack, count, createWriteStream(out));
  try {
    await fill(pack);
    pack.finalize();
  } catch (err) {
    pack.destroy(err as Error);
    await writing.catch(() => undefined);
    throw err;
  }
  await writing;
  return { digest: `sha256:${hash.digest('hex')}`, size };
}

export async function buildOciArchive(system: SystemArtifacts, workDir: string, out: string): Promise<{ manifestDigest: string; layerDigest: string }> {
  const mtime = new Date(system.sourceDateEpoch * 1000);
  const created = mtime.toISOString().replace(/\.000Z$/, 'Z');
  const files: PayloadFile[] = [
    { name: 'kernel', src: system.kernel, mode: 0o644 },
    { name: 'initrd', src: system.initramfs, mode: 0o644 },
    { name: 'rootfs.squashfs', src: system.squashfs, mode: 0o644 },
    { name: 'release.json', src: system.release, mode: 0o644 },
    { name: 'version', data: Buffer.from(`${system.version}\n`), mode: 0o644 },
  ];
  const k3s = findK3s(system);
  if (k3s) files.push({ name: 'k3s', src: k3s, mode: 0o755 });
  const sums: string[] = [];
  for (const f of files) sums.push(`${f.src ? await sha256File(f.src) : createHash('sha256').update(f.data!).digest('hex')}  ${f.name}\n`);
  files.push({ name: 'SHA256SUMS', data: Buffer.from(sums.sort((a, b) => (a.slice(66) < b.slice(66) ? -1 : 1)).join('')), mode: 0o644 });
  files.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

  // the layer
  const layerFile = path.join(workDir, 'layer.tar');
  const layer = await writeTar(layerFile, async (pack) => {
    await addBuffer(pack, header(`${OCI_PAYLOAD_DIR}/`, 0, 0o755, mtime, 'directory'), Buffer.alloc(0));
    for (const f of files) {
      const name = `${OCI_PAYLOAD_DIR}/${f.name}`;
      if (f.src) await addStream(pack, header(name, (await stat(f.src)).size, f.mode, mtime), f.src);
      else await addBuffer(pack, header(name, f.data!.length, f.mode, mtime), f.data!);
    }
  });

  const platform = ociPlatform[system.arch];
  const labels = {
    'org.opencontainers.image.title': `cairn ${system.name}`,
    'org.opencontainers.image.version': system.version,
    'org.opencontainers.image.created': created,
    'io.cairn.kernel-release': system.kernelRelease,
    'io.cairn.payload': OCI_PAYLOAD_DIR,
  };
  const config = Buffer.from(
    JSON.stringify({
      created,
      architecture: platform.architecture,
      ...(platform.variant ? { variant: platform.variant } : {}),
      os: platform.os,
      config: { Labels: labels },
      rootfs: { type: 'layers', diff_ids: [layer.digest] },
      history: [{ created, created_by: 'cairn build', comment: `cairn ${system.name} ${system.version} upgrade payload` }],
    }),
  );
  const configDigest = `sha256:${createHash('sha256').update(config).digest('hex')}`;
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.manifest,
      config: { mediaType: MT.config, digest: configDigest, size: config.length },
      layers: [{ mediaType: MT.layer, digest: layer.digest, size: layer.size }],
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

  const blobs: { digest: string; data?: Buffer; file?: string; size: number }[] = [
    { digest: configDigest, data: config, size: config.length },
    { digest: manifestDigest, data: manifest, size: manifest.length },
    { digest: layer.digest, file: layerFile, size: layer.size },
  ].sort((a, b) => (a.digest < b.digest ? -1 : 1));
  await rm(out, { force: true });
  await writeTar(out, async (pack) => {
    await addBuffer(pack, header('blobs/', 0, 0o755, mtime, 'directory'), Buffer.alloc(0));
    await addBuffer(pack, header('blobs/sha256/', 0, 0o755, mtime, 'directory'), Buffer.alloc(0));
    for (const b of blobs) {
      const name = `blobs/sha256/${b.digest.slice('sha256:'.length)}`;
      if (b.file) await addStream(pack, header(name, b.size, 0o644, mtime), b.file);
      else await addBuffer(pack, header(name, b.size, 0o644, mtime), b.data!);
    }
    await addBuffer(pack, header('index.json', index.length, 0o644, mtime), index);
    await addBuffer(pack, header('oci-layout', layout.length, 0o644, mtime), layout);
  });
  await rm(layerFile, { force: true });
  return { manifestDigest, layerDigest: layer.digest };
}

export const oci: OutputWriter = async (system, ctx) => {
  const file = `${artifactStem(system)}.oci.tar`;
  ctx.log(`oci: ${file}`);
  await buildOciArchive(system, ctx.workDir, path.join(ctx.outDir, file));
  const artifacts: Artifact[] = [{ file, format: 'oci', arch: system.arch }];
  return artifacts;
};
