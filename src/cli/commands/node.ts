/** Commands for a running node: `cairn status`, `cairn poweroff`, `cairn reboot`. */
import type { Command } from 'commander';
import { join } from 'node:path';
import { formatDiagnostic } from '../../config/diagnostics.js';
import { UserError } from '../../errors.js';
import { requestShutdown, type ShutdownAction } from '../../init/shutdown.js';
import { readJson, STATUS_PATH, type NodeStatus } from '../../init/status.js';

function ago(iso: string | undefined, now = Date.now()): string {
  if (!iso) return '-';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  return s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : `${Math.round(s / 3600)}h`;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}

/** The human view of a node's status. */
export function renderStatus(st: NodeStatus, now = Date.now()): string {
  const out: string[] = [];
  out.push(`version   ${st.version} (${st.bootMode || 'unknown'} boot)`);
  out.push(`hostname  ${st.hostname ?? '-'}`);
  out.push(`booted    ${st.bootedAt} (${st.bootComplete ? 'boot complete' : 'booting'})`);
  if (st.k3s) out.push(`k3s       ${st.k3s.mode}: k3s ${st.k3s.args.join(' ')}`);
  out.push('');
  out.push(table([['SERVICE', 'STATE', 'PID', 'RESTARTS', 'UP', 'LAST EXIT'], ...st.services.map((s) => [s.name, s.state, String(s.pid ?? '-'), String(s.restarts), s.state === 'running' ? ago(s.startedAt, now) : '-', s.lastExit ? (s.lastExit.signal ? `signal ${s.lastExit.signal}` : `code ${s.lastExit.code}`) : '-'])]));
  out.push('');
  out.push(table([['PHASE', 'RESULT', 'MS'], ...st.phases.map((p) => [p.name, p.ok ? 'ok' : `FAILED: ${p.detail ?? ''}`, String(p.ms)])]));
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
    .action((opts: { root: string; json?: boolean }) => {
      const st = readJson<NodeStatus>(join(opts.root, STATUS_PATH));
      if (!st) throw new UserError(`no node status at ${join(opts.root, STATUS_PATH)}`, 'cairn status runs on a cairn node (or give --root with a node file system)');
      process.stdout.write(opts.json ? `${JSON.stringify(st, null, 2)}\n` : renderStatus(st));
    });
  for (const action of ['poweroff', 'reboot'] as ShutdownAction[]) {
    program
      .command(action)
      .description(`on a node: stop the services in order, sync, unmount and ${action === 'poweroff' ? 'power off' : 'reboot'}`)
      .option('--root <dir>', 'the node file system', '/')
      .action((opts: { root: string }) => {
        try {
          requestShutdown(opts.root, action);
        } catch (e) {
          throw new UserError((e as Error).message, 'run it on a cairn node, as root');
        }
        process.stdout.write(`${action} requested\n`);
      });
  }
}
