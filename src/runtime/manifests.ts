/**
 * Hands the image's files to k3s on every boot:
 * - manifests into k3s' auto-deploy folder. Files the image put there before
 *   and no longer ships are removed; files somebody else added are kept. What
 *   cairn put there is listed in `.cairn-managed` in that folder.
 * - airgap image tarballs into agent/images (same bookkeeping),
 * - registries.yaml into /etc/rancher/k3s.
 */
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../init/apply/files.js';
import { AIRGAP_DIR, AUTO_DEPLOY, IMAGE_AIRGAP, IMAGE_MANIFESTS, IMAGE_REGISTRIES, REGISTRIES } from './paths.js';

export const MANAGED_LIST = '.cairn-managed';

export interface SyncResult {
  copied: string[];
  removed: string[];
  kept: string[];
}

function listFiles(dir: string): string[] {
  try {
    return readdirSync(dir).filter((n) => !n.startsWith('.') && statSync(join(dir, n)).isFile()).sort();
  } catch {
    return [];
  }
}

/** Pure: what to copy and what to remove, given what the image ships, what is there, and what cairn put there before. */
export function planSync(shipped: string[], present: string[], managedBefore: string[]): { copy: string[]; remove: string[]; keep: string[] } {
  const ship = new Set(shipped);
  const before = new Set(managedBefore);
  return {
    copy: shipped,
    remove: present.filter((f) => before.has(f) && !ship.has(f)),
    keep: present.filter((f) => !before.has(f) && !ship.has(f)),
  };
}

/** Whether two files hold the same bytes (read in 1 MiB chunks: airgap tarballs are large). */
function sameContent(a: string, b: string): boolean {
  let fa: number | undefined;
  let fb: number | undefined;
  try {
    if (statSync(a).size !== statSync(b).size) return false;
    fa = openSync(a, 'r');
    fb = openSync(b, 'r');
    const ba = Buffer.alloc(1 << 20);
    const bb = Buffer.alloc(1 << 20);
    for (;;) {
      const na = readSync(fa, ba, 0, ba.length, null);
      const nb = readSync(fb, bb, 0, bb.length, null);
      if (na !== nb || !ba.subarray(0, na).equals(bb.subarray(0, nb))) return false;
      if (na === 0) return true;
    }
  } catch {
    return false;
  } finally {
    if (fa !== undefined) closeSync(fa);
    if (fb !== undefined) closeSync(fb);
  }
}

export function syncFolder(from: string, to: string): SyncResult {
  mkdirSync(to, { recursive: true });
  const listPath = join(to, MANAGED_LIST);
  const before = existsSync(listPath) ? readFileSync(listPath, 'utf8').split('\n').filter(Boolean) : [];
  const shipped = listFiles(from);
  const plan = planSync(shipped, listFiles(to), before);
  const copied: string[] = [];
  for (const f of plan.copy) {
    const src = join(from, f);
    const dst = join(to, f);
    if (sameContent(src, dst)) continue;
    const tmp = join(to, `.${f}.cairn-tmp`);
    copyFileSync(src, tmp);
    renameSync(tmp, dst);
    copied.push(f);
  }
  for (const f of plan.remove) rmSync(join(to, f), { force: true });
  writeFileAtomic(listPath, shipped.map((f) => `${f}\n`).join(''));
  return { copied, removed: plan.remove, kept: plan.keep };
}

export function syncRuntimeFiles(root: string): { manifests: SyncResult; images: SyncResult; registries: boolean } {
  const manifests = syncFolder(join(root, IMAGE_MANIFESTS), join(root, AUTO_DEPLOY));
  const images = syncFolder(join(root, IMAGE_AIRGAP), join(root, AIRGAP_DIR));
  let registries = false;
  if (existsSync(join(root, IMAGE_REGISTRIES))) {
    writeFileAtomic(join(root, REGISTRIES), readFileSync(join(root, IMAGE_REGISTRIES)), { mode: 0o600 });
    registries = true;
  }
  return { manifests, images, registries };
}
