/**
 * Marking a boot good: once k3s is healthy. On a trial boot of an upgrade
 * the new version becomes the active one and the one it replaced the
 * fallback (src/init/trial.ts); without that, the bootloader falls back on
 * its own when the tries run out.
 */
import { existsSync } from 'node:fs';
import { release } from 'node:os';
import { syncLoader } from '../boot/loader.js';
import { at, type NodeContext } from './context.js';
import { commitGoodBoot } from './trial.js';
import { snapshot } from '../runtime/datastore.js';
import { waitServerReady } from '../runtime/health.js';
import { K3S_SERVICE } from '../runtime/k3s.js';
import { KUBECONFIG, SNAPSHOTS, STATE_DB } from '../runtime/paths.js';

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
  const promoted = commitGoodBoot(ctx, ctx.trial);
  ctx.trial = undefined;
  ctx.status.markGood();
  let snap = '';
  if (ctx.status.status.k3s?.mode === 'server' && existsSync(at(ctx, STATE_DB))) {
    try {
      snap = `, datastore snapshot ${(await snapshot(ctx.exec, at(ctx, STATE_DB), at(ctx, SNAPSHOTS), { reason: 'boot' })).split('/').pop()}`;
    } catch (e) {
      ctx.log.info(`datastore: ${(e as Error).message}`);
    }
  }
  // a loader that does not count (the Pi's firmware, L4TLauncher) starts the active version from now on
  let loader = '';
  if (ctx.boot.mode === 'state' && ctx.boot.version) {
    try {
      const line = await syncLoader({ root: ctx.root, exec: ctx.exec, version: ctx.boot.version, kernelRelease: release() });
      if (line) loader = `; ${line}`;
    } catch (e) {
      loader = `; the loader still starts the version before (its first stage starts ${ctx.boot.version} with kexec): ${(e as Error).message}`;
    }
  }
  return `${promoted ? `version ${promoted} is now the active one` : 'boot marked good'}${snap}${loader}`;
}
