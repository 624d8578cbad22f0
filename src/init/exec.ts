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
  /** The signal that ended the command, when one did (a kill, a timeout, an abort). */
  signal?: string;
  /** True when the command could not be started at all (no such program, not executable). */
  notStarted?: boolean;
  /** True when the caller's signal aborted it. */
  aborted?: boolean;
}

export interface ExecOptions {
  input?: string;
  env?: Record<string, string>;
  timeoutMs?: number;
  cwd?: string;
  /** Aborting it kills the command (SIGKILL) and resolves with `aborted: true`. */
  signal?: AbortSignal;
}

export type Exec = (file: string, args: string[], opts?: ExecOptions) => Promise<ExecResult>;

/** Runs a command to completion; never throws for a failing command (the result says how it ended). */
export const execCommand: Exec = async (file, args, opts = {}) => {
  if (opts.signal?.aborted) return { code: 130, stdout: '', stderr: `${file}: not started, the work was cancelled`, timedOut: false, aborted: true };
  const r = await execa(file, args, {
    input: opts.input,
    env: opts.env,
    timeout: opts.timeoutMs,
    cwd: opts.cwd,
    cancelSignal: opts.signal,
    reject: false,
    all: false,
    stripFinalNewline: true,
    killSignal: 'SIGKILL',
  });
  const notStarted = r.failed && r.exitCode === undefined && !r.signal && !r.timedOut && !r.isCanceled;
  const code = typeof r.exitCode === 'number' ? r.exitCode : r.failed ? (notStarted ? 127 : 128) : 0;
  return {
    code,
    stdout: String(r.stdout ?? ''),
    stderr: String(r.stderr || (notStarted ? r.message : '') || ''),
    timedOut: Boolean(r.timedOut),
    ...(r.signal ? { signal: r.signal } : {}),
    ...(notStarted ? { notStarted: true } : {}),
    ...(r.isCanceled ? { aborted: true } : {}),
  };
};

/** Throws with the command's own words when it fails. */
export async function mustRun(exec: Exec, file: string, args: string[], opts?: ExecOptions): Promise<ExecResult> {
  const r = await exec(file, args, opts);
  if (r.timedOut) throw new Error(`${file} ${args.join(' ')} timed out`);
  if (r.aborted) throw new Error(`${file} ${args.join(' ')} was cancelled`);
  if (r.code !== 0) throw new Error(`${file} ${args.join(' ')} exited ${r.code}: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' / ')}`);
  return r;
}
