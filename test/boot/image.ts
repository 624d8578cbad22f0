// The image the boot tests start: the default spec, amd64, with the k3s test
// double as its k3s (the release cannot be downloaded here) and an upgrade
// image, so that it ships the upgrade Plan. Built once per run through the
// normal stage cache, so later runs only check it.
import { spawn, spawnSync } from 'node:child_process';
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = fileURLToPath(new URL('../..', import.meta.url));
export const K3S_DOUBLE = join(REPO, 'test/fixtures/k3s-double');

export interface TestImage {
  iso: string;
  raw: string;
  /** The PXE folder (kernel, initramfs, squashfs, boot.ipxe). */
  pxe: string;
  /** The build time the image carries (its release record's SOURCE_DATE_EPOCH). */
  sourceDateEpoch: number;
}

/**
 * The key the test images are signed with: derived from a fixed seed, so the
 * image (which carries the public key) stays the same from run to run and
 * its stages come from the cache. A test key, trusted by test images only.
 */
export function testSigningKey(): { key: string; pub: string } {
  const dir = join(REPO, '.tap', 'signing');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const seed = Buffer.alloc(32, 0x5a);
  const der = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]);
  const priv = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
  const key = join(dir, 'test.key');
  writeFileSync(key, priv.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
  const pub = join(dir, 'test.pub');
  writeFileSync(pub, createPublicKey(priv).export({ format: 'pem', type: 'spki' }));
  return { key, pub };
}

/** The test images' build options after the spec and the formats. */
const buildFlags = () => ['--k3s', K3S_DOUBLE, '--upgrade-image', 'registry.example/cairn', '--level', '3', '--sign', testSigningKey().key, '--quiet'];

function cairnBuild(args: string[], what: string): void {
  const r = spawnSync(join(REPO, 'bin/cairn'), ['build', ...args, ...buildFlags()], {
    encoding: 'utf8',
    stdio: ['ignore', 'inherit', 'pipe'],
    timeout: 40 * 60_000,
  });
  if (r.status !== 0) throw new Error(`building ${what} failed (exit ${r.status}):\n${r.stderr}`);
}

/**
 * A variant of the default image: another version, and optionally more
 * packages, overlays or kernel arguments; signed with the test key. Built
 * into .tap/<tag> (default: upgrade-<version>); returns that folder.
 */
export function buildVariant(version: string, opts: { tag?: string; formats?: string; packages?: string[]; overlays?: string[]; cmdline?: string; arch?: string } = {}): string {
  const out = join(REPO, '.tap', opts.tag ?? `upgrade-${version}`);
  mkdirSync(out, { recursive: true });
  const specText = readFileSync(join(REPO, 'images/default.yaml'), 'utf8')
    .replace(/^version: .*$/m, `version: ${version}`)
    .replace(/^ {2}- manifests\//gm, `  - ${join(REPO, 'images/manifests')}/`)
    .replace(/^packages: \[\]$/m, `packages: [${(opts.packages ?? []).join(', ')}]`)
    .replace(/^overlays: \[\]$/m, `overlays: [${(opts.overlays ?? []).map((o) => JSON.stringify(join(REPO, o))).join(', ')}]`)
    .replace(/^cmdline: (.*)$/m, (_, c: string) => `cmdline: ${c}${opts.cmdline ? ` ${opts.cmdline}` : ''}`);
  const spec = join(out, 'default.yaml');
  writeFileSync(spec, specText);
  cairnBuild([spec, '--arch', opts.arch ?? 'amd64', '--format', opts.formats ?? 'oci', '--out', out], `version ${version}${opts.tag ? ` (${opts.tag})` : ''}`);
  return out;
}

/** Another version of the default image as an OCI upgrade payload (see buildVariant); returns the archive's path. */
export function buildUpgradeVersion(version: string, opts: { overlays?: string[]; cmdline?: string } = {}): string {
  const archive = join(buildVariant(version, opts), `default-${version}-amd64.oci.tar`);
  if (!existsSync(archive)) throw new Error(`the build did not write ${archive}`);
  return archive;
}

export function buildTestImage(): TestImage {
  const out = join(REPO, '.tap', 'boot-image');
  mkdirSync(out, { recursive: true });
  cairnBuild([join(REPO, 'images/default.yaml'), '--arch', 'amd64', '--format', 'iso,raw,pxe', '--out', out], 'the test image');
  const files = { iso: join(out, 'default-0.1.0-amd64.iso'), raw: join(out, 'default-0.1.0-amd64.raw'), pxe: join(out, 'default-0.1.0-amd64-pxe') };
  for (const f of Object.values(files)) if (!existsSync(f)) throw new Error(`the build did not write ${f}`);
  const release = JSON.parse(readFileSync(join(files.pxe, 'release.json'), 'utf8')) as { sourceDateEpoch?: unknown };
  if (typeof release.sourceDateEpoch !== 'number') throw new Error(`${files.pxe}/release.json has no sourceDateEpoch`);
  return { ...files, sourceDateEpoch: release.sourceDateEpoch };
}

export type ArmArch = 'arm64' | 'armv7';

/** `cairn build` with the test images' flags, as a child process; rejects with its stderr when it fails; `signal` stops it. */
function cairnBuildAsync(args: string[], what: string, signal?: AbortSignal, flags = buildFlags()): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const child = spawn(join(REPO, 'bin/cairn'), ['build', ...args, ...flags], { stdio: ['ignore', 'inherit', 'pipe'] });
    signal?.addEventListener('abort', () => child.kill('SIGTERM'), { once: true });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-20_000)));
    const timer = setTimeout(() => child.kill('SIGTERM'), 40 * 60_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`building ${what} failed (${signal ?? `exit ${code}`}):\n${stderr}`));
    });
  });
}

/** A file the build must have written. */
function built(file: string, what: string): string {
  if (!existsSync(file)) throw new Error(`the ${what} build did not write ${file}`);
  return file;
}

/**
 * The default image for arm64 and armv7 as raw disks (UEFI on QEMU virt),
 * the two builds side by side: each spends most of its time in one
 * qemu-user process running maintainer scripts, so two cores make both in
 * about the time of one. Into .tap/arm-image; returns each disk's path.
 */
export async function buildArmImages(): Promise<Record<ArmArch, string>> {
  // a build that fails stops the other one: the test has failed, and the next test file needs the CPU
  const stop = new AbortController();
  const build = (arch: ArmArch) =>
    buildArmImage(arch, stop.signal).catch((err: unknown) => {
      stop.abort();
      throw err;
    });
  const [arm64, armv7] = await Promise.all([build('arm64'), build('armv7')]);
  return { arm64, armv7 };
}

/** One arch's raw disk of the default image, into .tap/arm-image/<arch>. */
export async function buildArmImage(arch: ArmArch, signal?: AbortSignal): Promise<string> {
  const dir = join(REPO, '.tap', 'arm-image', arch);
  mkdirSync(dir, { recursive: true });
  await cairnBuildAsync([join(REPO, 'images/default.yaml'), '--arch', arch, '--format', 'raw', '--out', dir], `the ${arch} image`, signal);
  return built(join(dir, `default-0.1.0-${arch}.raw`), arch);
}

/** The default image's Raspberry Pi 4 card for arm64 (its root filesystem is the arm64 image's, from the cache). */
export async function buildRpi4Card(): Promise<string> {
  const dir = join(REPO, '.tap', 'arm-image', 'rpi4-arm64');
  mkdirSync(dir, { recursive: true });
  await cairnBuildAsync([join(REPO, 'images/default.yaml'), '--board', 'rpi4', '--arch', 'arm64', '--format', 'raw', '--out', dir], 'the arm64 rpi4 card');
  return built(join(dir, 'default-0.1.0-arm64-rpi4.img'), 'rpi4 card');
}

/**
 * The default image as users build it (the spec's own squashfs level, not
 * the test images' --level 3), with the k3s test double: what bench/boot
 * boots. amd64: ISO and raw disk; arm64: the raw disk. Into .tap/bench-image/<arch>.
 */
export async function buildBenchImage(arch: 'amd64' | 'arm64'): Promise<{ iso?: string; raw: string; record: string }> {
  const dir = join(REPO, '.tap', 'bench-image', arch);
  mkdirSync(dir, { recursive: true });
  await cairnBuildAsync([join(REPO, 'images/default.yaml'), '--arch', arch, '--format', arch === 'amd64' ? 'iso,raw' : 'raw', '--out', dir], `the ${arch} bench image`, undefined, ['--k3s', K3S_DOUBLE, '--quiet']);
  return {
    ...(arch === 'amd64' ? { iso: built(join(dir, 'default-0.1.0-amd64.iso'), 'amd64 bench') } : {}),
    raw: built(join(dir, `default-0.1.0-${arch}.raw`), `${arch} bench`),
    record: built(join(dir, 'build.json'), `${arch} bench`),
  };
}
