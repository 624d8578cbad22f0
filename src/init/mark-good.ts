/**
 * Marking a boot good: once k3s is healthy. On a trial boot of an upgrade
 * (the first stage booted the `next` version), the new version becomes the
 * active one and the one it replaced the fallback; without that, the
 * bootloader falls back on its own when the tries run out.
 */
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { at, type NodeContext } from './context.js';
import { parseGrubEnv, renderGrubEnv } from '../system/grubenv.js';
import { writeFileAtomic } from './apply/files.js';
import { snapshot } from '../runtime/datastore.js';
import { waitServerReady } from '../runtime/health.js';
import { K3S_SERVICE } from '../runtime/k3s.js';
import { KUBECONFIG, SNAPSHOTS, STATE_DB } from '../runtime/paths.js';

export const SYSTEM_DIR = '/cairn/system';

function pointer(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').split('\n')[0]!.trim() || undefined;
  } catch {
    return undefined;
  }
}

/** Pure: the pointers after a good trial boot of `next`. */
export function promote(p: { active?: string; next?: string }): { active: string; fallback?: string } | undefined {
  if (!p.next) return undefined;
  return { active: p.next, fallback: p.active && p.active !== p.next ? p.active : undefined };
}

export const GRUBENV = '/cairn/grub/grubenv';

/**
 * Applies promote() after a good boot of `booted`, where the trial is kept:
 * the first stage's pointers in /cairn/system (each written atomically,
 * `next` removed last) and GRUB's environment block, whose counter GRUB
 * lowers on each try. Returns the promoted version, if any.
 */
export function commitTrialBoot(root: string, booted?: string): string | undefined {
  let promoted: string | undefined;
  const sys = join(root, SYSTEM_DIR);
  const next = pointer(join(sys, 'next'))?.split(/\s+/)[0];
  if (next && (booted === undefined || next === booted)) {
    const change = promote({ active: pointer(join(sys, 'active')), next });
    if (change) {
      if (change.fallback) writeFileAtomic(join(sys, 'fallback'), `${change.fallback}\n`);
      writeFileAtomic(join(sys, 'active'), `${change.active}\n`);
      rmSync(join(sys, 'next'), { force: true });
      promoted = change.active;
    }
  }
  const envPath = join(root, GRUBENV);
  if (existsSync(envPath)) {
    const env = parseGrubEnv(readFileSync(envPath));
    if (env.cairn_next && (booted === undefined || env.cairn_next === booted)) {
      const change = promote({ active: env.cairn_active, next: env.cairn_next });
      if (change) {
        const { cairn_next: _n, cairn_next_tries: _t, ...rest } = env;
        writeFileAtomic(envPath, renderGrubEnv({ ...rest, cairn_active: change.active, ...(change.fallback ? { cairn_fallback: change.fallback } : {}) }));
        promoted = change.active;
      }
    }
  }
  return promoted;
}

/** Waits for k3s to be healthy: a server's /readyz, an agent's process staying up. */
export async function k3sHealthy(ctx: NodeContext, timeoutMs: number): Promise<boolean> {
  const mode = ctx.status.status.k3s?.mode;
  if (!mode) return false;
  if (mode === 'server') return waitServerReady(at(ctx, KUBECONFIG), timeoutMs);
  const end = Date.now() + timeoutMs;
  const stableMs = 20_000;
  while (Date.now() < end) {
    const s = ctx.services.get(K3S_SERVICE);
    if (s?.state === 'running' && s.startedAt && Date.now() - Date.parse(s.startedAt) >= stableMs) return true;
    await new Promise((r) => setTimeout(r, 1000));
  }
  return false;
}

export async function markGood(ctx: NodeContext): Promise<string> {
  const promoted = ctx.boot.mode === 'state' ? commitTrialBoot(ctx.root, ctx.boot.version || undefined) : undefined;
  ctx.status.markGood();
  let snap = '';
  if (ctx.status.status.k3s?.mode === 'server' && existsSync(at(ctx, STATE_DB))) {
    try {
      snap = `, datastore snapshot ${(await snapshot(ctx.exec, at(ctx, STATE_DB), at(ctx, SNAPSHOTS), { reason: 'boot' })).split('/').pop()}`;
    } catch (e) {
      ctx.log.info(`datastore: ${(e as Error).message}`);
    }
  }
  return `${promoted ? `version ${promoted} is now the active one` : 'boot marked good'}${snap}`;
}
