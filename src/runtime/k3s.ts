/**
 * The runtime phase: prepare k3s' files and start it under the supervisor.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { at, type NodeContext } from '../init/context.js';
import { checkDatastore } from './datastore.js';
import { k3sInvocation, redactArgs } from './k3s-args.js';
import { syncRuntimeFiles } from './manifests.js';
import { K3S_BIN, SNAPSHOTS, STATE_DB } from './paths.js';

export const K3S_SERVICE = 'k3s';

export async function startK3s(ctx: NodeContext): Promise<string> {
  const bin = at(ctx, K3S_BIN);
  if (!existsSync(bin)) throw new Error(`${K3S_BIN} is not in this image`);
  const inv = k3sInvocation(ctx.config, { version: ctx.version, bootMode: ctx.boot.mode });
  if (inv.mode === 'server') {
    const db = await checkDatastore(ctx.exec, at(ctx, STATE_DB), at(ctx, SNAPSHOTS));
    ctx.log.info(`datastore: ${db.detail}`);
  }
  const files = syncRuntimeFiles(ctx.root);
  ctx.log.info(
    `runtime: ${files.manifests.copied.length} manifests updated (${files.manifests.removed.length} removed, ${files.manifests.kept.length} of the user's kept), ${files.images.copied.length} airgap tarballs${files.registries ? ', registries.yaml' : ''}`,
  );
  mkdirSync(at(ctx, '/var/log/cairn'), { recursive: true });
  ctx.services.start({
    name: K3S_SERVICE,
    command: bin,
    args: inv.args,
    env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', ...ctx.env, ...inv.env },
    stopTimeoutMs: 30_000,
  });
  ctx.status.update({ k3s: { mode: inv.mode, args: redactArgs(inv.args) } });
  return `k3s ${redactArgs(inv.args).join(' ')}`;
}
