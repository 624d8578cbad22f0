/**
 * Running commands from the init: one function, injectable, so that the
 * boot phases are tested without touching the machine they run on. Made on
 * node:child_process alone: the init runs dozens of commands while it
 * boots, on boards where every module it loads and every layer between it
 * and spawn() costs start-up time and memory.
 */
import { spawn, type ChildProcess } from 'node:child_process';

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

const stripFinalNewline = (s: string) => s.replace(/\r?\n$/, '');

/** Runs a command to completion; never throws for a failing command (the result says how it ended). */
export const execCommand: Exec = (file, args, opts = {}) =>
  new Promise<ExecResult>((resolve) => {
    if (opts.signal?.aborted) {
      resolve({ code: 130, stdout: '', stderr: `${file}: not started, the work was cancelled`, timedOut: false, aborted: true });
      return;
    }
    let child: ChildProcess;
    try {
      // opts.env adds to the init's environment, as it does for a shell
      child = spawn(file, args, { env: opts.env ? { ...process.env, ...opts.env } : process.env, cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    } catch (e) {
      resolve({ code: 127, stdout: '', stderr: `${file}: ${(e as Error).message}`, timedOut: false, notStarted: true });
      return;
    }
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    let aborted = false;
    let done = false;
    const kill = () => {
      try {
        child.kill('SIGKILL');
      } catch {
        // gone already
      }
    };
    const timer = opts.timeoutMs !== undefined ? setTimeout(() => ((timedOut = true), kill()), opts.timeoutMs) : undefined;
    const onAbort = () => ((aborted = true), kill());
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const finish = (r: ExecResult) => {
      if (done) return;
      done = true;
      if (timer) clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      resolve(r);
    };
    child.stdout?.on('data', (d: Buffer) => out.push(d));
    child.stderr?.on('data', (d: Buffer) => err.push(d));
    child.once('error', (e) => {
      // no such program, not executable: it never ran
      if (child.pid === undefined) finish({ code: 127, stdout: '', stderr: `${file}: ${e.message}`, timedOut: false, notStarted: true });
    });
    child.once('close', (code, signal) => {
      finish({
        code: typeof code === 'number' ? code : 128,
        stdout: stripFinalNewline(Buffer.concat(out).toString('utf8')),
        stderr: stripFinalNewline(Buffer.concat(err).toString('utf8')),
        timedOut,
        ...(signal ? { signal } : {}),
        ...(aborted ? { aborted: true } : {}),
      });
    });
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(opts.input);
  });

/** Throws with the command's own words when it fails. */
export async function mustRun(exec: Exec, file: string, args: string[], opts?: ExecOptions): Promise<ExecResult> {
  const r = await exec(file, args, opts);
  if (r.timedOut) throw new Error(`${file} ${args.join(' ')} timed out`);
  if (r.aborted) throw new Error(`${file} ${args.join(' ')} was cancelled`);
  if (r.code !== 0) throw new Error(`${file} ${args.join(' ')} exited ${r.code}: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' / ')}`);
  return r;
}
