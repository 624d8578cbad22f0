/**
 * The boot, readable top to bottom. Each phase has a name, a timeout and a
 * function; the runner prints `cairn: <name> ok (<ms> ms)` or
 * `cairn: <name> FAILED: <why>` and goes on.
 */
import { growState } from './grow.js';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { loadConfig } from '../config/loader.js';
import { formatDiagnostic } from '../config/diagnostics.js';
import { at, urlForLog, type NodeContext } from './context.js';
import { phase, type Phase } from './phase.js';
import { applyWriteFiles } from './apply/files.js';
import { applyDns, applyEnvironment, applyHostname, applyImageModules, applyImageSysctls, applyModules, applySysctls, startImageModules } from './apply/system.js';
import { applyNetwork } from './apply/network.js';
import { fetchDataSources, isLocalSource, pruneUserdata } from './apply/datasources.js';
import { applyPassword, applyUsers, ensureUser, USER } from './apply/users.js';
import { applyChpasswd, applyCloudUsers, applySshPwauth, applyTimezone } from './apply/cloudinit.js';
import { keepNodeEtc } from './apply/persist.js';
import { syncTime, tlsFetches, waitForClock } from './apply/time.js';
import { runCommands } from './apply/commands.js';
import { AUTOLOGIN_FLAG, startGettys, startServices, updateConsoleLogin } from './services.js';
import { K3S_SERVICE, startK3s } from '../runtime/k3s.js';
import { restoreUpgradeSnapshot } from '../runtime/datastore.js';
import { SNAPSHOTS, STATE_DB } from '../runtime/paths.js';
import { k3sHealthy, markGood } from './mark-good.js';
import { beginStateBoot } from './trial.js';

/** Loads every config source; problems are logged and kept for `cairn status`, never fatal. */
export async function loadNodeConfig(ctx: NodeContext, opts: { quiet?: boolean } = {}): Promise<string> {
  const r = await loadConfig({ root: ctx.root, cmdline: ctx.cmdline });
  ctx.config = r.config;
  ctx.configProblems = r.diagnostics;
  ctx.scripts = r.scripts;
  ctx.status.update({ configProblems: r.diagnostics });
  if (!opts.quiet) for (const d of r.diagnostics) ctx.log.info(`config: ${formatDiagnostic(d)}`);
  const read = r.sources.filter((s) => s.status !== 'missing').map((s) => s.file);
  const errors = r.diagnostics.filter((d) => d.severity === 'error').length;
  if (errors) throw new Error(`${errors} problem${errors > 1 ? 's' : ''} in the config (see above); the valid keys are applied`);
  return `from ${read.join(', ')}`;
}

/**
 * The config phase: every source, including user-data on a local volume
 * (a NoCloud seed, a config CD), which needs no network and so applies to
 * this boot from its first phase on.
 */
export async function configPhase(ctx: NodeContext): Promise<string> {
  // Which data sources to read is itself config: a first, quiet look.
  await loadNodeConfig(ctx, { quiet: true }).catch(() => undefined);
  // Saved user-data of a source that left data_sources stops applying (and may itself have listed sources: look again).
  for (let round = 0; round < 3 && pruneUserdata(ctx).length > 0; round++) await loadNodeConfig(ctx, { quiet: true }).catch(() => undefined);
  const local = await fetchDataSources(ctx, 'local');
  return local.length ? `${await loadNodeConfig(ctx)} (user-data from ${local.join(', ')})` : loadNodeConfig(ctx);
}

/**
 * The keys k3OS applied in its initrd stage: write_files, hostname, modules,
 * sysctls, environment. The cairn user comes first, so that write_files
 * owned by it work on the very first boot.
 */
export async function applyEarlyKeys(ctx: NodeContext): Promise<string> {
  const problems: string[] = [];
  const attempt = async (what: string, fn: () => Promise<unknown> | unknown) => {
    try {
      await fn();
    } catch (e) {
      problems.push(`${what}: ${(e as Error).message}`);
    }
  };
  await attempt(`the ${USER} user`, () => ensureUser(ctx.root));
  // The password is local: set now, a console login works while init_cmd runs.
  await attempt('password', async () => {
    const problem = await applyPassword(ctx);
    if (problem) throw new Error(problem);
  });
  await attempt('write_files', () => {
    const p = applyWriteFiles(ctx.root, ctx.config.write_files ?? []);
    if (p.length) throw new Error(p.join('; '));
  });
  await attempt('ssh_pwauth', () => applySshPwauth(ctx));
  await attempt('hostname', () => applyHostname(ctx));
  await attempt('timezone', () => applyTimezone(ctx));
  await attempt('environment', () => applyEnvironment(ctx));
  await attempt('image modules', () => applyImageModules(ctx));
  await attempt('modules', () => applyModules(ctx));
  await attempt('image sysctls', () => applyImageSysctls(ctx));
  await attempt('sysctls', () => applySysctls(ctx));
  await attempt('dns', () => applyDns(ctx));
  if (problems.length) throw new Error(problems.join('; '));
  return `hostname ${ctx.status.status.hostname ?? '?'}, ${(ctx.config.write_files ?? []).length} files`;
}

/**
 * Network data sources (URLs, cloud metadata), then the config again: what
 * they bring applies from here on, with the early keys and any new init_cmd
 * applied now.
 */
export async function dataSources(ctx: NodeContext): Promise<string> {
  if (!(ctx.config.cairn?.data_sources ?? []).some((s) => !isLocalSource(s))) return 'no network sources configured';
  const missed: string[] = [];
  const found = await fetchDataSources(ctx, 'network', { missed });
  // a source that does not answer never holds the boot: it is asked again in the background
  if (missed.length && ctx.retryDataSources !== false) void retryDataSources(ctx, missed);
  const later = missed.length ? `; ${missed.map(urlForLog).join(', ')} did not answer: asked again in the background` : '';
  if (!found.length) return `no user-data found${later}`;
  await applyNewUserdata(ctx);
  return `user-data from ${found.join(', ')}${later}`;
}

/** What user-data that arrived changes: the config loaded again, the early keys and a new init_cmd applied. */
async function applyNewUserdata(ctx: NodeContext): Promise<void> {
  const ranInit = JSON.stringify(ctx.config.init_cmd ?? []);
  await loadNodeConfig(ctx).catch((e: Error) => ctx.log.info(`config: ${e.message}`));
  await applyEarlyKeys(ctx).catch((e: Error) => ctx.log.info(`initrd-keys: ${e.message}`));
  if (JSON.stringify(ctx.config.init_cmd ?? []) !== ranInit) await runCommands(ctx, 'init_cmd').catch((e: Error) => ctx.log.info(`init-cmd: ${e.message}`));
}

/** Between the background tries of a source that did not answer at boot: then every 5 minutes. */
export const RETRY_DELAYS_MS = [15_000, 30_000, 60_000, 120_000, 300_000];

/**
 * Asks the sources that did not answer at boot again, after each delay in
 * turn (the last one repeating, `tries` in all), until each answers or
 * leaves data_sources. What one brings is applied as the boot applies
 * user-data (the config, the early keys, users and keys); keys that k3s
 * reads at its start (labels, arguments) apply at its next start.
 * Resolves with the sources that answered.
 */
export async function retryDataSources(ctx: NodeContext, sources: string[], opts: { delays?: number[]; tries?: number } = {}): Promise<string[]> {
  const delays = opts.delays ?? RETRY_DELAYS_MS;
  const tries = opts.tries ?? Infinity;
  let waiting = [...sources];
  const answered: string[] = [];
  for (let n = 0; n < tries && waiting.length; n++) {
    await new Promise((r) => setTimeout(r, delays[Math.min(n, delays.length - 1)]));
    waiting = waiting.filter((s) => (ctx.config.cairn?.data_sources ?? []).includes(s));
    if (!waiting.length) break;
    const missed: string[] = [];
    const found = await fetchDataSources(ctx, 'network', { only: waiting, missed }).catch(() => [] as string[]);
    waiting = missed;
    if (!found.length) continue;
    answered.push(...found);
    await applyNewUserdata(ctx);
    await usersPhase(ctx).catch((e: Error) => ctx.log.info(`users: ${e.message}`));
    ctx.log.info(`data-sources: ${found.map(urlForLog).join(', ')} answered after the boot; its user-data is applied${waiting.length ? ` (${waiting.map(urlForLog).join(', ')} still asked)` : ''}`);
  }
  return answered;
}

/**
 * SSH keys and the password; then the console login follows what got
 * installed. Keys that user-data brought from an https URL wait for the
 * clock too (the time phase waited only for what the config asked then).
 */
export async function usersPhase(ctx: NodeContext): Promise<string> {
  if (tlsFetches(ctx.config).length) await waitForClock(ctx);
  const done: string[] = [];
  const problems: string[] = [];
  const attempt = async (what: string, fn: () => Promise<string | undefined> | string | undefined) => {
    try {
      const r = await fn();
      if (r) done.push(r);
    } catch (e) {
      problems.push(`${what}: ${(e as Error).message}`);
    }
  };
  try {
    await attempt(USER, () => applyUsers(ctx));
    // cloud-init's users and passwords, then the files deferred until they exist
    await attempt('users', () => applyCloudUsers(ctx));
    await attempt('chpasswd', () => applyChpasswd(ctx));
    await attempt('write_files (defer)', () => {
      const deferred = (ctx.config.write_files ?? []).filter((f) => f.defer);
      const p = applyWriteFiles(ctx.root, deferred, { deferred: true });
      if (p.length) throw new Error(p.join('; '));
      return deferred.length ? `${deferred.length} deferred file${deferred.length === 1 ? '' : 's'}` : undefined;
    });
  } finally {
    updateConsoleLogin(ctx, { keysApplied: true });
  }
  if (problems.length) throw new Error([...problems, ...done].join('; '));
  return done.join('; ');
}

/** The unified cgroup hierarchy at /sys/fs/cgroup, which k3s (and any container runtime) needs. */
export async function mountCgroups(ctx: NodeContext): Promise<void> {
  const dir = at(ctx, '/sys/fs/cgroup');
  if (!existsSync(dir)) return;
  let mounts = '';
  try {
    mounts = readFileSync(at(ctx, '/proc/mounts'), 'utf8');
  } catch {
    return;
  }
  if (/^\S+ \/sys\/fs\/cgroup cgroup2 /m.test(mounts)) return;
  const r = await ctx.exec('mount', ['-t', 'cgroup2', '-o', 'nosuid,nodev,noexec,nsdelegate', 'cgroup2', '/sys/fs/cgroup'], { timeoutMs: 10_000 });
  if (r.code !== 0) ctx.log.info(`mounts: cgroup2 at /sys/fs/cgroup: ${(r.stderr || `exit ${r.code}`).trim()}`);
}

export const MARK_GOOD_WAIT_MS = 300_000;
/** After a rollback: how long k3s gets with the database the failed version left before the pre-upgrade snapshot is restored (less when it keeps exiting). */
export const ROLLBACK_DATASTORE_WAIT_MS = 90_000;

/**
 * Waits for k3s to be healthy. On the boot after a rollback, a k3s server
 * that is not healthy with the database the newer version left gets the
 * snapshot `cairn upgrade` took before it (the newer database kept aside),
 * and the rest of the wait.
 */
export async function waitHealthyAfterRollback(ctx: NodeContext, waitMs: number, firstWaitMs = ROLLBACK_DATASTORE_WAIT_MS): Promise<boolean> {
  const failed = ctx.rollbackFrom;
  if (!failed || ctx.status.status.k3s?.mode !== 'server') return k3sHealthy(ctx, waitMs);
  const start = Date.now();
  const firstEnd = start + Math.min(firstWaitMs, waitMs);
  const restartsBefore = ctx.services.get(K3S_SERVICE)?.restarts ?? 0;
  // healthy, or k3s keeps exiting (twice is enough to tell), or the first wait is over
  while (Date.now() < firstEnd) {
    if (await k3sHealthy(ctx, Math.min(2_000, firstEnd - Date.now()))) return true;
    if ((ctx.services.get(K3S_SERVICE)?.restarts ?? 0) - restartsBefore >= 2) break;
  }
  let done: string | undefined;
  await ctx.services.restart(K3S_SERVICE, () => {
    done = restoreUpgradeSnapshot(at(ctx, STATE_DB), at(ctx, SNAPSHOTS), failed);
  });
  ctx.log.info(`datastore: k3s is not healthy with the database ${failed} left; ${done ?? 'no snapshot from before that upgrade to restore'}`);
  return k3sHealthy(ctx, Math.max(0, waitMs - (Date.now() - start)));
}


/**
 * The order matters where one phase needs another's work:
 * - /etc made from the image and the node's changes (etc) before anything
 *   reads an account or a config file of /etc;
 * - the cairn user (initrd-keys) before write_files owned by it;
 * - a login on the console before any init_cmd or boot_cmd, which may hang;
 * - the clock (time) before anything fetched over TLS (data sources, keys);
 * - the console login decided again once the keys are installed (users).
 */
export const boot: Phase<NodeContext>[] = [
  phase('mounts', 30_000, async (ctx) => {
    for (const d of ['/run/cairn', '/var/log/cairn', '/var/lib/cairn']) mkdirSync(at(ctx, d), { recursive: true });
    ctx.log.toFile(at(ctx, '/var/log/cairn/boot.log'));
    ctx.status.startBoot();
    await mountCgroups(ctx);
    const { line, guard } = await beginStateBoot(ctx, (why) => {
      ctx.log.info(`trial: ${why}`);
      ctx.reboot?.();
    });
    ctx.trial = guard;
    return `${ctx.boot.mode || 'unknown'} boot of ${ctx.version}${line ? `; ${line}` : ''}`;
  }),
  // /etc settled: the image's modules (k3s' netfilter, overlay) load from here beside the boot; initrd-keys waits for them
  phase('etc', 15_000, async (ctx) => {
    const done = await keepNodeEtc(ctx);
    startImageModules(ctx);
    return done;
  }),
  phase('config', 60_000, configPhase),
  // its own phase with a long limit: resize2fs on a large, slow SD card takes minutes (after the config: growpart may say no)
  phase('grow', 600_000, (ctx) => growState(ctx, ctx.boot.stateReadOnly === true)),
  phase('initrd-keys', 30_000, applyEarlyKeys),
  phase('console', 5_000, async (ctx) => {
    const started = startGettys(ctx);
    if (!started.length) return 'no console';
    return `${started.join(', ')}${existsSync(at(ctx, AUTOLOGIN_FLAG)) ? ` (logs in as ${USER} by itself until a key or a password is installed)` : ''}`;
  }),
  phase('init-cmd', 600_000, (ctx) => runCommands(ctx, 'init_cmd')),
  phase('network', 60_000, (ctx) => applyNetwork(ctx)),
  phase('time', 45_000, (ctx) => syncTime(ctx)),
  phase('data-sources', 60_000, dataSources),
  // a live boot with install.device and install.silent installs to that disk and reboots (src/install)
  // the installer (and what downloads an ISO) loads only when there is something to install
  phase('install', 1_800_000, async (ctx) => (ctx.config.cairn?.install?.device ? (await import('../install/phase.js')).installPhase(ctx) : 'no install.device')),
  phase('users', 90_000, usersPhase),
  phase('boot-cmd', 600_000, (ctx) => runCommands(ctx, 'boot_cmd')),
  phase('services', 90_000, startServices),
  phase('runtime', 120_000, startK3s),
  phase('run-cmd', 600_000, (ctx) => runCommands(ctx, 'run_cmd')),
  phase('mark-good', MARK_GOOD_WAIT_MS + 60_000, async (ctx, signal) => {
    if (!(await waitHealthyAfterRollback(ctx, MARK_GOOD_WAIT_MS))) throw new Error(`k3s is not healthy after ${MARK_GOOD_WAIT_MS / 1000} s; the boot stays on trial`);
    // A phase that ran out of time must not mark the boot good behind the runner's back.
    signal.throwIfAborted();
    return markGood(ctx);
  }),
];
