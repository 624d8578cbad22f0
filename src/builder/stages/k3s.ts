/**
 * The k3s binary for one arch: downloaded from the upstream release and
 * checked against its published sha256 (and the spec's pin, when there is
 * one), or taken from a local file (--k3s PATH or the spec's k3s.path).
 * Either way it lands in the cache as entry k3s-<key>/k3s. A checksum that
 * does not match stops the build, naming the file and both checksums.
 */
import { createWriteStream } from 'node:fs';
import { copyFile, chmod, stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { UserError } from '../../errors.js';
import type { Entry, StageCache } from '../cache.js';
import { hashFile, hashValue } from '../hash.js';
import type { StageProgress } from '../progress.js';
import type { ImageSpec } from '../spec.js';
import type { Arch } from '../types.js';

export const K3S_RELEASES = 'https://github.com/k3s-io/k3s/releases/download';

/** Upstream's names: binary suffix and checksum-file arch. */
export const k3sAsset: Record<Arch, { suffix: string; arch: string }> = {
  amd64: { suffix: '', arch: 'amd64' },
  arm64: { suffix: '-arm64', arch: 'arm64' },
  armv7: { suffix: '-armhf', arch: 'arm' },
};

export function k3sUrls(version: string, arch: Arch, base = process.env.CAIRN_K3S_RELEASES ?? K3S_RELEASES) {
  const v = encodeURIComponent(version); // "+" becomes %2B
  const { suffix, arch: a } = k3sAsset[arch];
  return {
    binary: `${base}/${v}/k3s${suffix}`,
    checksums: `${base}/${v}/sha256sum-${a}.txt`,
    airgap: `${base}/${v}/k3s-airgap-images-${a}.tar.zst`,
    name: `k3s${suffix}`,
  };
}

export interface K3sData {
  sha256: string;
  version: string;
  source: string;
}

export class ChecksumMismatch extends UserError {
  constructor(file: string, expected: string, actual: string, expectedFrom: string) {
    super(
      `k3s checksum mismatch for ${file}:\n  expected ${expected} (${expectedFrom})\n  actual   ${actual}`,
      'the file is not the release the spec pins: fix k3s.sha256 in the spec or use the right binary',
    );
    this.name = 'ChecksumMismatch';
  }
}

/** Parses upstream's sha256sum-<arch>.txt for one file name. */
export function checksumFor(text: string, name: string): string | undefined {
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]{64})\s+\*?(\S+)$/.exec(line.trim());
    if (m && m[2] === name) return m[1];
  }
  return undefined;
}

export async function fetchK3s(
  cache: StageCache,
  spec: ImageSpec,
  arch: Arch,
  localPath: string | undefined,
  progress: StageProgress,
  log: (l: string) => void,
): Promise<Entry<K3sData>> {
  const pin = spec.k3s.sha256[arch];
  const local = localPath ?? spec.k3s.path;
  if (local) {
    const st = await stat(local).catch(() => undefined);
    if (!st?.isFile()) throw new UserError(`k3s binary ${local} does not exist`, 'pass the path of a k3s binary with --k3s PATH');
    const sha256 = await hashFile(local);
    if (pin && pin !== sha256) throw new ChecksumMismatch(local, pin, sha256, `k3s.sha256.${arch} in ${path.basename(spec.file)}`);
    if (!pin) log(`k3s: ${local} is not pinned in the spec (sha256 ${sha256})`);
    const inputs = { source: 'local', sha256 };
    return cache.get<K3sData>('k3s', hashValue(inputs), inputs, async (dir) => {
      await copyFile(local, path.join(dir, 'k3s'));
      await chmod(path.join(dir, 'k3s'), 0o755);
      if ((await hashFile(path.join(dir, 'k3s'))) !== sha256) throw new Error(`${local} changed while it was copied`);
      return { sha256, version: spec.k3s.version ?? 'local', source: local };
    });
  }
  const version = spec.k3s.version;
  if (!version) throw new UserError('the spec names no k3s version or path', 'set k3s.version in the spec or pass --k3s PATH');
  const urls = k3sUrls(version, arch);
  const inputs = { source: 'release', version, arch, pin: pin ?? null, url: urls.binary };
  return cache.get<K3sData>(
    'k3s',
    hashValue(inputs),
    inputs,
    async (dir) => {
      log(`k3s: downloading ${urls.binary}`);
      const sums = await download(urls.checksums, undefined, progress);
      const published = checksumFor(sums.toString('utf8'), urls.name);
      if (!published) throw new UserError(`${urls.checksums} has no line for ${urls.name}`, 'check k3s.version in the spec');
      if (pin && pin !== published) throw new ChecksumMismatch(urls.checksums, pin, published, `k3s.sha256.${arch} in ${path.basename(spec.file)}`);
      const file = path.join(dir, 'k3s');
      await download(urls.binary, file, progress);
      const actual = await hashFile(file);
      if (actual !== published) throw new ChecksumMismatch(urls.binary, published, actual, urls.checksums);
      await chmod(file, 0o755);
      return { sha256: actual, version, source: urls.binary };
    },
    { needBytes: 200 * 1024 ** 2 },
  );
}

async function download(url: string, file: string | undefined, progress: StageProgress): Promise<Buffer> {
  let res: Response;
  try {
    res = await fetch(url, { redirect: 'follow' });
  } catch (err) {
    throw new UserError(`cannot download ${url}: ${(err as Error).cause ?? (err as Error).message}`, 'for an offline build pass a local binary with --k3s PATH');
  }
  if (!res.ok || !res.body) throw new UserError(`cannot download ${url}: HTTP ${res.status}`, 'check k3s.version in the spec, or pass --k3s PATH');
  if (!file) return Buffer.from(await res.arrayBuffer());
  const total = Number(res.headers.get('content-length') ?? 0);
  let seen = 0;
  const body = Readable.fromWeb(res.body as unknown as WebReadableStream<Uint8Array>);
  body.on('data', (chunk: Buffer) => {
    seen += chunk.length;
    if (total) progress.update(seen / total, `${(seen / 1048576).toFixed(0)} MiB`);
  });
  await pipeline(body, createWriteStream(file));
  return Buffer.alloc(0);
}
