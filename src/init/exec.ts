/**
 * Running commands from the init: one function, injectable, so that the
 * boot phases are tested without touching the machine they run on.
 */
import { execa } from 'execa';

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export interface ExecOptions {
  input?: string;
  env?: Record<string, string>;
  timeoutMs?: number;
  cwd?: string;
}

export type Exec = (file: string, args: string[], opts?: ExecOptions) => Promise<ExecResult>;

/** Runs a command to completion; never throws for a failing command (the result says how it ended). */
export const execCommand: Exec = async (file, args, opts = {}) => {
  const r = await execa(file, args, {
    input: opts.input,
    env: opts.env,
    timeout: opts.timeoutMs,
    cwd: opts.cwd,
    reject: false,
    all: false,
    stripFinalNewline: true,
    killSignal: 'SIGKILL',
  });
  const code = typeof r.exitCode === 'number' ? r.exitCode : r.failed ? 127 : 0;
  return { code, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? (r.failed && !r.timedOut ? r.message : '')), timedOut: Boolean(r.timedOut) };
};

/** Throws with the command's own words when it fails. */
export async function mustRun(exec: Exec, file: string, args: string[], opts?: ExecOptions): Promise<ExecResult> {
  const r = await exec(file, args, opts);
  if (r.timedOut) throw new Error(`${file} ${args.join(' ')} timed out`);
  if (r.code !== 0) throw new Error(`${file} ${args.join(' ')} exited ${r.code}: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' / ')}`);
  return r;
}
