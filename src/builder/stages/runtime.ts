/**
 * runtime: what k3s needs in the image. The k3s binary (/usr/local/bin/k3s,
 * with the kubectl, crictl and ctr links its installer makes), the baked-in
 * manifests and HelmChart resources (/usr/lib/cairn/manifests/), airgap
 * image tarballs (/usr/lib/cairn/images/) and registries.yaml
 * (/usr/lib/cairn/registries.yaml). The init copies them where k3s reads them.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { stringify } from 'yaml';
import { UserError } from '../../errors.js';
import { hashFile } from '../hash.js';
import { symlinkFresh, writeFresh } from '../fsutil.js';
import type { HelmChartSpec, ImageSpec } from '../spec.js';

export const MANIFESTS_DIR = 'usr/lib/cairn/manifests';
export const IMAGES_DIR = 'usr/lib/cairn/images';
export const REGISTRIES_PATH = 'usr/lib/cairn/registries.yaml';
export const K3S_PATH = 'usr/local/bin/k3s';

export async function checkRuntimeInputs(spec: ImageSpec): Promise<void> {
  const problems: string[] = [];
  for (const f of [...spec.manifests, ...spec.airgapImages]) {
    if (!(await stat(f).catch(() => undefined))?.isFile()) problems.push(`${f} does not exist`);
  }
  const names = new Map<string, string>();
  for (const f of spec.manifests) {
    const base = path.basename(f);
    if (names.has(base)) problems.push(`manifests ${names.get(base)} and ${f} have the same file name`);
    names.set(base, f);
  }
  if (problems.length) throw new UserError(`${spec.file}: ${problems.join('; ')}`, 'fix the paths in the spec (they are relative to the spec file)');
}

export async function runtimeInputs(spec: ImageSpec, k3sSha256: string): Promise<unknown> {
  const hashAll = async (files: string[]) => Promise.all(files.map(async (f) => ({ name: path.basename(f), sha256: await hashFile(f) })));
  return {
    k3s: k3sSha256,
    manifests: await hashAll(spec.manifests),
    helmCharts: spec.helmCharts,
    airgap: await hashAll(spec.airgapImages),
    registries: spec.registries ?? null,
  };
}

/** A HelmChart resource as k3s' helm controller reads it. */
export function helmChartManifest(c: HelmChartSpec): string {
  const spec: Record<string, unknown> = { chart: c.chart };
  if (c.repo) spec.repo = c.repo;
  if (c.version) spec.version = c.version;
  if (c.target_namespace) spec.targetNamespace = c.target_namespace;
  if (c.values) spec.valuesContent = stringify(c.values);
  return stringify({
    apiVersion: 'helm.cattle.io/v1',
    kind: 'HelmChart',
    metadata: { name: c.name, namespace: c.namespace ?? 'kube-system' },
    spec,
  });
}

const own = (mode: number) => ({ mode, uid: 0, gid: 0 });

export async function installRuntime(root: string, spec: ImageSpec, k3sBinary: string, log: (l: string) => void): Promise<void> {
  await writeFresh(root, K3S_PATH, { file: k3sBinary }, own(0o755));
  for (const tool of ['kubectl', 'crictl', 'ctr']) await symlinkFresh(root, `usr/local/bin/${tool}`, 'k3s');
  for (const m of spec.manifests) await writeFresh(root, `${MANIFESTS_DIR}/${path.basename(m)}`, { file: m }, own(0o644));
  for (const c of spec.helmCharts) {
    await writeFresh(root, `${MANIFESTS_DIR}/helmchart-${c.name}.yaml`, { content: helmChartManifest(c) }, own(0o644));
  }
  for (const a of spec.airgapImages) await writeFresh(root, `${IMAGES_DIR}/${path.basename(a)}`, { file: a }, own(0o644));
  if (spec.registries) await writeFresh(root, REGISTRIES_PATH, { content: stringify(spec.registries) }, own(0o600));
  log(`runtime: k3s, ${spec.manifests.length + spec.helmCharts.length} manifests, ${spec.airgapImages.length} airgap tarballs`);
}
