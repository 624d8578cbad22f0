// The image the boot tests start: the default spec, amd64, with the k3s test
// double as its k3s (the release cannot be downloaded here) and an upgrade
// image, so that it ships the upgrade Plan. Built once per run through the
// normal stage cache, so later runs only check it.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
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

export function buildTestImage(): TestImage {
  const out = join(REPO, '.tap', 'boot-image');
  mkdirSync(out, { recursive: true });
  const r = spawnSync(
    join(REPO, 'bin/cairn'),
    ['build', join(REPO, 'images/default.yaml'), '--arch', 'amd64', '--format', 'iso,raw,pxe', '--k3s', K3S_DOUBLE, '--upgrade-image', 'registry.example/cairn', '--level', '3', '--out', out, '--quiet'],
    { encoding: 'utf8', stdio: ['ignore', 'inherit', 'pipe'], timeout: 40 * 60_000 },
  );
  if (r.status !== 0) throw new Error(`building the test image failed (exit ${r.status}):\n${r.stderr}`);
  const files = { iso: join(out, 'default-0.1.0-amd64.iso'), raw: join(out, 'default-0.1.0-amd64.raw'), pxe: join(out, 'default-0.1.0-amd64-pxe') };
  for (const f of Object.values(files)) if (!existsSync(f)) throw new Error(`the build did not write ${f}`);
  const release = JSON.parse(readFileSync(join(files.pxe, 'release.json'), 'utf8')) as { sourceDateEpoch?: unknown };
  if (typeof release.sourceDateEpoch !== 'number') throw new Error(`${files.pxe}/release.json has no sourceDateEpoch`);
  return { ...files, sourceDateEpoch: release.sourceDateEpoch };
}
