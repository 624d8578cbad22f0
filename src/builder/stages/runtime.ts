/**
 * runtime: what k3s needs in the image. The k3s binary (/usr/local/bin/k3s,
 * with the kubectl, crictl and ctr links its installer makes), the baked-in
 * manifests and HelmChart resources (/usr/lib/cairn/manifests/), airgap
 * image tarballs (/usr/lib/cairn/images/) and registries.yaml
 * (/usr/lib/cairn/registries.yaml). The init copies them where k3s reads them.
 * With an upgrade image (the spec's upgrade.image, or --upgrade-image), the
 * manifests include system-upgrade-controller's Plan for this version,
 * rendered by src/upgrade/plan.ts.
 */
import { createHash } from 'node:crypto';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { stringify } from 'yaml';
import { UserError } from '../../errors.js';
import { hashFile } from '../hash.js';
import { symlinkFresh, writeFresh } from '../fsutil.js';
import type { HelmChartSpec, ImageSpec } from '../spec.js';
import { renderPlan, UPGRADE_LABEL } from '../../upgrade/plan.js';

export const MANIFESTS_DIR = 'usr/lib/cairn/manifests';
export const IMAGES_DIR = 'usr/lib/cairn/images';
export const REGISTRIES_PATH = 'usr/lib/cairn/registries.yaml';
export const K3S_PATH = 'usr/local/bin/k3s';
/** The generated Plan, among the manifests. */
export const UPGRADE_PLAN_MANIFEST = 'cairn-upgrade-plan.yaml';

/** The Plan the image ships: upgrade to this spec's version from its upgrade image; none without one. */
export function upgradePlanManifest(spec: ImageSpec): string | undefined {
  return spec.upgrade.image === undefined ? undefined : renderPlan({ image: spec.upgrade.image, version: spec.version });
}

export async function checkRuntimeInputs(spec: ImageSpec, log?: (l: string) => void): Promise<void> {
  const plan = upgradePlanManifest(spec);
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
  if (plan && names.has(UPGRADE_PLAN_MANIFEST)) problems.push(`manifest ${names.get(UPGRADE_PLAN_MANIFEST)} has the name of the Plan the build writes for the upgrade image; rename it or drop it`);
  if (problems.length) throw new UserError(`${spec.file}: ${problems.join('; ')}`, 'fix the paths in the spec (they are relative to the spec file)');
  log?.(
    plan
      ? `upgrade: ships the Plan ${UPGRADE_PLAN_MANIFEST}: nodes labelled ${UPGRADE_LABEL} upgrade to ${spec.upgrade.image}:${spec.version}`
      : 'upgrade: no upgrade image (upgrade.image in the spec, or --upgrade-image REF), so no system-upgrade Plan is shipped; `cairn plan` writes one for a fleet',
  );
}

export async function runtimeInputs(spec: ImageSpec, k3sSha256: string): Promise<unknown> {
  const hashAll = async (files: string[]) => Promise.all(files.map(async (f) => ({ name: path.basename(f), sha256: await hashFile(f) })));
  const plan = upgradePlanManifest(spec);
  const generated = plan ? [{ name: UPGRADE_PLAN_MANIFEST, sha256: createHash('sha256').update(plan).digest('hex') }] : [];
  return {
    k3s: k3sSha256,
    manifests: [...(await hashAll(spec.manifests)), ...generated],
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
  const plan = upgradePlanManifest(spec);
  if (plan) await writeFresh(root, `${MANIFESTS_DIR}/${UPGRADE_PLAN_MANIFEST}`, { content: plan }, own(0o644));
  for (const c of spec.helmCharts) {
    await writeFresh(root, `${MANIFESTS_DIR}/helmchart-${c.name}.yaml`, { content: helmChartManifest(c) }, own(0o644));
  }
  for (const a of spec.airgapImages) await writeFresh(root, `${IMAGES_DIR}/${path.basename(a)}`, { file: a }, own(0o644));
  if (spec.registries) await writeFresh(root, REGISTRIES_PATH, { content: stringify(spec.registries) }, own(0o600));
  log(`runtime: k3s, ${spec.manifests.length + spec.helmCharts.length + (plan ? 1 : 0)} manifests${plan ? ` (with the upgrade Plan)` : ''}, ${spec.airgapImages.length} airgap tarballs`);
}
