/** Commands for a running node: `cairn status`, `cairn poweroff`, `cairn reboot`. */
import type { Command } from 'commander';
import { join } from 'node:path';
import { formatDiagnostic } from '../../config/diagnostics.js';
import { UserError } from '../../errors.js';
import { requestShutdown, waitShutdownStarted, type ShutdownAction } from '../../init/shutdown.js';
import { readJson, STATUS_PATH, UPGRADE_PATH, type NodeStatus, type UpgradeRecord } from '../../init/status.js';
import { GRUBENV, readState } from '../../boot/state.js';
import { redactEnv, redactK3sArgs } from '../../runtime/k3s-args.js';
import { renderBootSvg, timelineOf } from '../../init/timeline.js';
import { writeFileSync } from 'node:fs';

/** How long `cairn poweroff`/`reboot` wait for the init to say it is shutting down. */
export const SHUTDOWN_ACK_MS = 5_000;

function ago(iso: string | undefined, now = Date.now()): string {
  if (!iso) return '-';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  return s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : `${Math.round(s / 3600)}h`;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}

function writePlot(file: string, svg: string): void {
  try {
    writeFileSync(file, svg);
  } catch (e) {
    throw new UserError(`cannot write the boot timeline to ${file}: ${(e as Error).message}`, 'give --plot a file in a folder that exists and is writable (for example /tmp/boot.svg)');
  }
}

/** The human view of a node's status. */
export function renderStatus(st: NodeStatus, now = Date.now()): string {
  const out: string[] = [];
  out.push(`version   ${st.version} (${st.bootMode || 'unknown'} boot)`);
  out.push(`hostname  ${st.hostname ?? '-'}`);
  out.push(`booted    ${st.bootedAt} (${st.bootComplete ? 'boot complete' : 'booting'})`);
  if (st.k3s) {
    // Redacted again: a status written by an older version may not have been.
    out.push(`k3s       ${st.k3s.mode}: k3s ${redactK3sArgs(st.k3s.args).join(' ')}`);
    const env = Object.entries(redactEnv(st.k3s.env ?? {}));
    if (env.length) out.push(`k3s env   ${env.map(([k, v]) => `${k}=${v}`).join(' ')}`);
  }
  if (st.boot?.state) {
    const b = st.boot.state;
    const parts = [`active ${b.active}`];
    if (b.fallback) parts.push(`fallback ${b.fallback}`);
    if (b.trial) parts.push(`trial ${b.trial} (${b.tries ?? 0} tries left${b.deadline ? `, healthy within ${b.deadline} s` : ''})`);
    if (b.failed) parts.push(`rolled back ${b.failed}`);
    out.push(`versions  ${parts.join(', ')}`);
    out.push(`this boot ${st.boot.kind}${st.boot.trialDeadline ? ` (healthy by ${st.boot.trialDeadline}${st.boot.watchdog ? `, watchdog ${st.boot.watchdog} armed` : ''})` : ''}`);
  }
  if (st.upgrade) {
    const u = st.upgrade;
    out.push(`upgrade   ${u.from} → ${u.version}: ${u.outcome}${u.endedAt ? ` at ${u.endedAt}` : u.stagedAt ? ` at ${u.stagedAt}` : ''}${u.reason ? ` (${u.reason})` : ''}`);
  }
  if (st.shutdown) out.push(`shutdown  ${st.shutdown.action} since ${st.shutdown.at}`);
  out.push('');
  out.push(table([['SERVICE', 'STATE', 'PID', 'RESTARTS', 'UP', 'LAST EXIT'], ...st.services.map((s) => [s.name, s.state, String(s.pid ?? '-'), String(s.restarts), s.state === 'running' ? ago(s.startedAt, now) : '-', s.lastExit ? (s.lastExit.signal ? `signal ${s.lastExit.signal}` : `code ${s.lastExit.code}`) : '-'])]));
  out.push('');
  // AT: when the phase started, in seconds since the kernel started
  out.push(table([['PHASE', 'AT', 'MS', 'RESULT'], ...st.phases.map((p) => [p.name, p.startMs === undefined ? '-' : `${(p.startMs / 1000).toFixed(1)}s`, String(p.ms), p.ok ? 'ok' : `FAILED: ${p.detail ?? ''}`])]));
  if (st.configProblems.length) {
    out.push('');
    out.push('config problems:');
    for (const d of st.configProblems) out.push(`  ${formatDiagnostic(d)}`);
  }
  if (st.history.length) {
    out.push('');
    out.push(table([['BOOTED', 'VERSION', 'MODE', 'RESULT'], ...st.history.slice(-10).map((h) => [h.startedAt, h.version, h.mode || '-', h.result])]));
  }
  return `${out.join('\n')}\n`;
}

export function registerNode(program: Command): void {
  program
    .command('status')
    .description('on a node: services, phase timings, config problems, version and boot history')
    .option('--root <dir>', 'the node file system to read', '/')
    .option('--json', 'print JSON')
    .option('--plot <file>', 'draw the boot as a timeline (SVG): the kernel, the first stage, the init, each phase and service')
    .action((opts: { root: string; json?: boolean; plot?: string }) => {
      const st = readJson<NodeStatus>(join(opts.root, STATUS_PATH));
      if (!st) throw new UserError(`no node status at ${join(opts.root, STATUS_PATH)}`, 'cairn status runs on a cairn node (or give --root with a node file system)');
      // the boot state and the last upgrade as they are now (cairn upgrade changes them after the boot)
      const state = readState(join(opts.root, GRUBENV));
      if (state) st.boot = { kind: st.boot?.kind ?? 'unknown', ...st.boot, state };
      const upgrade = readJson<UpgradeRecord>(join(opts.root, UPGRADE_PATH));
      if (upgrade) st.upgrade = upgrade;
      if (opts.plot !== undefined) {
        if (!st.times) throw new UserError(`${join(opts.root, STATUS_PATH)} has no boot times`, 'the version that booted this node records none; the next boot of a newer one does');
        writePlot(opts.plot, renderBootSvg(timelineOf(st), `cairn ${st.version} (${st.bootMode || 'unknown'} boot)`));
        process.stdout.write(`boot timeline: ${opts.plot}\n`);
        return;
      }
      const shown = st.k3s ? { ...st, k3s: { ...st.k3s, args: redactK3sArgs(st.k3s.args), ...(st.k3s.env ? { env: redactEnv(st.k3s.env) } : {}) } } : st;
      process.stdout.write(opts.json ? `${JSON.stringify(shown, null, 2)}\n` : renderStatus(shown));
    });
  for (const action of ['poweroff', 'reboot'] as ShutdownAction[]) {
    program
      .command(action)
      .description(`on a node: stop the services in order, sync, unmount and ${action === 'poweroff' ? 'power off' : 'reboot'}`)
      .option('--root <dir>', 'the node file system', '/')
      .option('--wait <seconds>', 'how long to wait for the init to start shutting down', String(SHUTDOWN_ACK_MS / 1000))
      .action(async (opts: { root: string; wait: string }) => {
        const waitS = Number(opts.wait);
        if (!Number.isFinite(waitS) || waitS < 0 || waitS > 60) throw new UserError(`--wait ${opts.wait} is not a number of seconds from 0 to 60`, `for example: cairn ${action} --wait 5`);
        // Late in a shutdown the init ends every process, this one too: that is the shutdown under way, not a failure.
        const ended = () => {
          process.stdout.write(`${action === 'reboot' ? 'rebooting' : 'powering off'}: the init is ending every process; this session closes now\n`);
          process.exit(0);
        };
        process.once('SIGTERM', ended);
        try {
          process.stdout.write(await runShutdownCommand(opts.root, action, waitS * 1000));
        } finally {
          process.off('SIGTERM', ended);
        }
      });
  }
}

/**
 * `cairn poweroff` / `cairn reboot`: signal the init, wait (bounded) until it
 * says it is shutting down, and return what to tell the user. Never waits for
 * the shutdown itself: over SSH the command returns and the session closes
 * as the node goes down.
 */
export async function runShutdownCommand(root: string, action: ShutdownAction, waitMs: number, kill?: (pid: number, sig: NodeJS.Signals | 0) => void): Promise<string> {
  const since = Date.now();
  try {
    requestShutdown(root, action, kill);
  } catch (e) {
    throw new UserError((e as Error).message, `run it on a cairn node, as root (sudo cairn ${action})`);
  }
  const started = waitMs > 0 ? await waitShutdownStarted(root, since, waitMs) : undefined;
  const what = action === 'reboot' ? 'rebooting' : 'powering off';
  if (started) return `${what}: the services are stopping; this session closes when the node goes down\n`;
  if (waitMs === 0) return `${action} requested\n`;
  return `${action} requested, but the init has not started it within ${waitMs / 1000} s (it may be busy); it goes ahead when the init gets to it: watch the console\n`;
}
