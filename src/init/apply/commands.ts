/**
 * init_cmd, boot_cmd and run_cmd: each command through `/bin/sh -c`, one
 * after another, with a timeout; its output goes to the boot log and to
 * /var/log/cairn/commands.log. A failing command does not stop the others.
 * User-data `#!` scripts (the loader adds them at the end of run_cmd) are
 * run as programs, so that their own interpreter runs them.
 */
import { chmodSync } from 'node:fs';
import { at, type NodeContext } from '../context.js';
import { RotatingLog } from '../rotating-log.js';

export const COMMAND_TIMEOUT_MS = 5 * 60_000;

export async function runCommands(ctx: NodeContext, stage: 'init_cmd' | 'boot_cmd' | 'run_cmd', timeoutMs = COMMAND_TIMEOUT_MS): Promise<string | void> {
  const cmds = ctx.config[stage] ?? [];
  if (cmds.length === 0) return;
  const out = new RotatingLog(at(ctx, '/var/log/cairn/commands.log'));
  const failed: string[] = [];
  for (const [i, cmd] of cmds.entries()) {
    let r;
    if ((ctx.scripts ?? []).includes(cmd)) {
      // Saved 0700 by the data sources; a copy saved before that was 0600.
      try {
        chmodSync(at(ctx, cmd), 0o700);
      } catch {
        // exec says what is wrong
      }
      r = await ctx.exec(at(ctx, cmd), [], { env: { ...ctx.env }, timeoutMs, cwd: '/' });
    } else {
      r = await ctx.exec('/bin/sh', ['-c', cmd], { env: { ...ctx.env }, timeoutMs });
    }
    out.write(`--- ${new Date().toISOString()} ${stage}[${i}]: ${cmd}\n${r.stdout}${r.stdout ? '\n' : ''}${r.stderr}${r.stderr ? '\n' : ''}--- exit ${r.timedOut ? 'timeout' : r.code}\n`);
    for (const line of `${r.stdout}\n${r.stderr}`.split('\n').filter(Boolean).slice(-20)) ctx.log.info(`${stage}[${i}]: ${line}`);
    if (r.timedOut) failed.push(`${stage}[${i}] timed out after ${timeoutMs / 1000} s`);
    else if (r.code !== 0) failed.push(`${stage}[${i}] exited ${r.code}`);
  }
  if (failed.length) throw new Error(failed.join('; '));
  return `${cmds.length} ran`;
}
