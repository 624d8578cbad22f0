/**
 * The runtime phase: prepare k3s' files and start it under the supervisor.
 * Its tokens go into root-only files (the folder 0700, each file 0600,
 * written atomically), never onto its command line or into a log.
 */
import { chmodSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { at, type NodeContext } from '../init/context.js';
import { writeFileAtomic } from '../init/apply/files.js';
import { secureLogDir } from '../init/rotating-log.js';
import { checkDatastore } from './datastore.js';
import { k3sInvocation, redactEnv, redactK3sArgs, type K3sSecretFile } from './k3s-args.js';
import { syncRuntimeFiles } from './manifests.js';
import { AGENT_TOKEN_FILE, K3S_BIN, K3S_SECRETS_DIR, SNAPSHOTS, STATE_DB, TOKEN_FILE } from './paths.js';
import { GRUBENV, readState } from '../boot/state.js';

export const K3S_SERVICE = 'k3s';
export const LOG_DIR = '/var/log/cairn';

/** Writes the secret files k3s is pointed at; removes the ones this config no longer has. */
export function writeK3sSecrets(root: string, secrets: K3sSecretFile[]): void {
  const dir = at({ root }, K3S_SECRETS_DIR);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  for (const s of secrets) writeFileAtomic(at({ root }, s.path), `${s.value}\n`, { mode: 0o600, uid: 0, gid: 0 });
  const wanted = new Set(secrets.map((s) => s.path));
  for (const p of [TOKEN_FILE, AGENT_TOKEN_FILE]) if (!wanted.has(p)) rmSync(at({ root }, p), { force: true });
}

export async function startK3s(ctx: NodeContext, signal?: AbortSignal): Promise<string> {
  const bin = at(ctx, K3S_BIN);
  if (!existsSync(bin)) throw new Error(`${K3S_BIN} is not in this image`);
  const inv = k3sInvocation(ctx.config, { version: ctx.version, bootMode: ctx.boot.mode, rollback: ctx.boot.mode === 'state' ? readState(at(ctx, GRUBENV))?.failed : undefined });
  if (inv.mode === 'server') {
    const db = await checkDatastore(ctx.exec, at(ctx, STATE_DB), at(ctx, SNAPSHOTS), { signal });
    ctx.log.info(`datastore: ${db.detail}`);
  }
  signal?.throwIfAborted();
  const files = syncRuntimeFiles(ctx.root);
  ctx.log.info(
    `runtime: ${files.manifests.copied.length} manifests updated (${files.manifests.removed.length} removed, ${files.manifests.kept.length} of the user's kept), ${files.images.copied.length} airgap tarballs${files.registries ? ', registries.yaml' : ''}`,
  );
  writeK3sSecrets(ctx.root, inv.secrets);
  secureLogDir(at(ctx, LOG_DIR));
  // A phase that timed out must not start k3s later behind the init's back.
  signal?.throwIfAborted();
  ctx.services.start({
    name: K3S_SERVICE,
    command: bin,
    args: inv.args,
    env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', ...ctx.env, ...inv.env },
    stopTimeoutMs: 30_000,
  });
  const shown = redactK3sArgs(inv.args);
  ctx.status.update({ k3s: { mode: inv.mode, args: shown, env: redactEnv(inv.env) } });
  return `k3s ${shown.join(' ')}`;
}
