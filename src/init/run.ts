/**
 * The cairn init: started by tini (PID 1) after the first stage switched
 * root (main.ts or snapshot.ts start it). It runs the boot phases, supervises the services until shutdown,
 * and powers off or reboots the machine itself (tini panics the kernel when
 * its child exits, so the init never just exits).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { bootParams } from '../config/cmdline.js';
import { parseBootEnv } from './bootinfo.js';
import { at, httpFetch, type NodeContext } from './context.js';
import { execCommand } from './exec.js';
import { consoleWriter, createLogger } from './log.js';
import { runPhases } from './phase.js';
import { boot } from './phases.js';
import { k3sHealthy, markGood } from './mark-good.js';
import { startGettys } from './services.js';
import { INIT_PID, readShutdownRequest, shutdown, watchPowerButton, type ShutdownAction } from './shutdown.js';
import { StatusStore, readJson } from './status.js';
import { bootClock, processStartMs, stage1Times } from './timeline.js';
import { Supervisor } from './supervisor.js';
import { confirmSnapshotStart, makeStartupSnapshot, snapshotWanted } from './startup-snapshot.js';
import { snapshot } from '../runtime/datastore.js';
import { SNAPSHOTS, STATE_DB } from '../runtime/paths.js';

const SNAPSHOT_EVERY_MS = 6 * 3600_000;

function imageVersion(root: string): string {
  const rec = readJson<{ version?: string }>(`${root}/usr/lib/cairn/release.json`);
  return rec?.version ?? 'unknown';
}

/** How node started the init: from its V8 startup snapshot (/var/lib/cairn/snapshot/<version>.blob, startup-snapshot.ts) or from /usr/lib/cairn/init.js. */
export type InitStart = 'snapshot' | 'script';

export async function runInit(root = '/', startedFrom: InitStart = 'script'): Promise<void> {
  const clock = bootClock(at({ root }, '/proc'));
  const initReadyMs = clock();
  let cmdline = '';
  try {
    cmdline = readFileSync(at({ root }, '/proc/cmdline'), 'utf8').trim();
  } catch {
    // not on a node
  }
  const params = bootParams(cmdline);
  const log = createLogger({ debug: params.debug !== undefined, write: consoleWriter(root) });
  let bootEnv = '';
  try {
    bootEnv = readFileSync(at({ root }, '/run/cairn/boot.env'), 'utf8');
  } catch {
    // no first stage (tests)
  }
  const bootInfo = parseBootEnv(bootEnv);
  const version = bootInfo.version || imageVersion(root);
  const status = new StatusStore(root, { version, bootMode: bootInfo.mode });
  const services = new Supervisor({ logDir: at({ root }, '/var/log/cairn'), log, onChange: () => status.update(), clock });
  status.status.times = { ...stage1Times(bootEnv), initStartMs: processStartMs(at({ root }, '/proc')), initReadyMs };
  status.status.initFrom = startedFrom;
  status.watchServices(() => services.list());
  const ctx: NodeContext = {
    root,
    exec: execCommand,
    log,
    fetch: httpFetch,
    cmdline,
    boot: bootInfo,
    version,
    config: {},
    configProblems: [],
    env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/root', LANG: 'C.UTF-8' },
    services,
    status,
  };
  process.env.PATH = ctx.env.PATH;

  let stopping = false;
  const stop = (action: ShutdownAction) => {
    if (stopping) return;
    stopping = true;
    // a request from cairn poweroff/reboot, or a plain signal
    const req = readShutdownRequest(root);
    void shutdown(ctx, req.action ?? action, { requester: req.requester });
  };
  ctx.reboot = () => stop('reboot');
  ctx.poweroff = () => stop('poweroff');
  process.on('SIGTERM', () => stop('poweroff'));
  process.on('SIGINT', () => stop('reboot'));
  process.on('SIGUSR1', () => stop('reboot'));
  process.on('uncaughtException', (e) => log.info(`internal error (the init keeps running): ${e.stack ?? e.message}`));
  process.on('unhandledRejection', (e) => log.info(`internal error (the init keeps running): ${String(e)}`));

  log.info(`starting ${version} (${startedFrom === 'snapshot' ? 'from its startup snapshot' : 'from init.js'})`);
  if (startedFrom === 'snapshot') confirmSnapshotStart(ctx);
  try {
    writeFileSync(at(ctx, INIT_PID), `${process.pid}\n`);
  } catch {
    // /run/cairn appears in the mounts phase; written again below
  }
  const results = await runPhases(boot, ctx, log, (r) => status.update({ phases: [...r] }), clock);
  writeFileSync(at(ctx, INIT_PID), `${process.pid}\n`);
  const button = watchPowerButton(root, () => {
    log.info('power button pressed');
    stop('poweroff');
  });
  if (button) log.debug(`watching ${button} for the power button`);
  status.update({ phases: results, bootComplete: true, times: { ...status.status.times, completeMs: clock() } });
  const failed = results.filter((r) => !r.ok).map((r) => r.name);
  log.info(`boot complete ${version}${failed.length ? ` (failed phases: ${failed.join(', ')})` : ''}`);
  startGettys(ctx);
  // the next boot of this version starts faster: its startup snapshot, made beside the running node
  if (startedFrom === 'script' && snapshotWanted(ctx)) void makeStartupSnapshot(ctx).then((what) => log.info(`startup snapshot: ${what}`), (e: Error) => log.info(`startup snapshot: not made: ${e.message}`));
  const trial = ctx.trial;
  if (trial) {
    // Not good yet: k3s may still become healthy before the trial's deadline (which reboots otherwise).
    void (async () => {
      if (await k3sHealthy(ctx, Math.max(0, trial.deadlineAt - Date.now()))) log.info(`mark-good: ${await markGood(ctx)}`);
    })();
  }
  setInterval(() => {
    if (status.status.k3s?.mode !== 'server') return;
    snapshot(ctx.exec, at(ctx, STATE_DB), at(ctx, SNAPSHOTS), { reason: 'periodic' }).catch((e: Error) => log.info(`datastore: ${e.message}`));
  }, SNAPSHOT_EVERY_MS).unref();
  // The event loop stays alive through the supervised processes and the timer above.
  setInterval(() => undefined, 1 << 30);
}

