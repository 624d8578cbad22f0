/**
 * A small service supervisor: starts long-running processes, restarts them
 * with exponential back-off and a rate limit, sends their output to
 * /var/log/cairn/<service>.log (rotated by size, 0640), and stops them in
 * reverse order.
 *
 * - A service's exit is seen on the process' `exit`, not when its output
 *   closes: a child it forked may hold stdout open long after it died.
 * - Each service runs in its own process group (detached); stopping it
 *   signals the whole group: SIGTERM, SIGKILL after its stop timeout, then a
 *   bounded wait. No wait is unbounded: a process stuck in the kernel is
 *   reported and left behind rather than hanging the shutdown.
 * - Its argv is logged with secrets redacted; its environment never.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { Logger } from './log.js';
import { RotatingLog } from './rotating-log.js';
import { redactK3sArgs } from '../config/secrets.js';

export interface ServiceSpec {
  name: string;
  command: string;
  args: string[];
  env?: Record<string, string>;
  /** `always` (the default) restarts it whenever it exits; `never` runs it once. */
  restart?: 'always' | 'never';
  /** How long to wait after SIGTERM before SIGKILL. */
  stopTimeoutMs?: number;
}

export type ServiceStateName = 'running' | 'backoff' | 'stopping' | 'stopped' | 'exited';

export interface ServiceState {
  name: string;
  state: ServiceStateName;
  pid?: number;
  restarts: number;
  startedAt?: string;
  /** Its first start on the boot clock (ms since the kernel started), with the supervisor's clock option. */
  firstStartMs?: number;
  lastExit?: { code: number | null; signal: string | null; at: string };
  /** When the next start is due, while in back-off. */
  nextStartAt?: string;
}

export interface SupervisorOptions {
  logDir: string;
  log: Logger;
  /** First restart delay; doubles on each quick failure up to maxBackoffMs. */
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** A run longer than this resets the back-off. */
  stableAfterMs?: number;
  /** More than `burst` restarts within `windowMs` waits maxBackoffMs. */
  burst?: number;
  windowMs?: number;
  maxLogBytes?: number;
  /** How long to wait for a process after SIGKILL before giving up on it. */
  killWaitMs?: number;
  onChange?: () => void;
  /** The boot clock (timeline.ts): each service's first start is recorded on it. */
  clock?: () => number;
}

interface Entry {
  spec: ServiceSpec;
  state: ServiceState;
  child?: ChildProcess;
  timer?: NodeJS.Timeout;
  failures: number;
  restartTimes: number[];
  started: number;
  out: RotatingLog;
  exited?: Promise<void>;
  /** Process groups this service started (one per run) that may still hold processes. */
  groups: Set<number>;
}

/** True when `p` settles within `ms`, false when the time runs out first (the timer is cleared either way). */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const out = await Promise.race([p.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)))]);
  clearTimeout(timer);
  return out;
}

/** Signals a whole process group; false when it is gone. */
function killGroup(pgid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(-pgid, sig);
    return true;
  } catch {
    return false;
  }
}

export class Supervisor {
  private readonly entries = new Map<string, Entry>();
  private readonly order: string[] = [];
  private readonly o: Required<Omit<SupervisorOptions, 'onChange' | 'clock'>> & Pick<SupervisorOptions, 'onChange' | 'clock'>;

  constructor(opts: SupervisorOptions) {
    this.o = {
      initialBackoffMs: 1000,
      maxBackoffMs: 60_000,
      stableAfterMs: 60_000,
      burst: 10,
      windowMs: 300_000,
      maxLogBytes: 5 * 1024 * 1024,
      killWaitMs: 5_000,
      ...opts,
    };
  }

  start(spec: ServiceSpec): void {
    if (this.entries.has(spec.name)) throw new Error(`service ${spec.name} is already supervised`);
    const entry: Entry = {
      spec,
      state: { name: spec.name, state: 'stopped', restarts: 0 },
      failures: 0,
      restartTimes: [],
      started: 0,
      out: new RotatingLog(join(this.o.logDir, `${spec.name}.log`), this.o.maxLogBytes),
      groups: new Set(),
    };
    this.entries.set(spec.name, entry);
    this.order.push(spec.name);
    this.launch(entry);
  }

  private changed(): void {
    this.o.onChange?.();
  }

  private launch(entry: Entry): void {
    const { spec } = entry;
    entry.timer = undefined;
    entry.out.write(`--- ${new Date().toISOString()} starting ${spec.command} ${redactK3sArgs(spec.args).join(' ')}\n`);
    let child: ChildProcess;
    try {
      child = spawn(spec.command, spec.args, { env: spec.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    } catch (e) {
      this.exitedWith(entry, null, null, `cannot start: ${(e as Error).message}`);
      return;
    }
    entry.child = child;
    entry.started = Date.now();
    if (child.pid) entry.groups.add(child.pid);
    entry.state = { ...entry.state, state: 'running', pid: child.pid, startedAt: new Date().toISOString(), nextStartAt: undefined };
    if (entry.state.firstStartMs === undefined && this.o.clock) entry.state.firstStartMs = this.o.clock();
    child.stdout?.on('data', (d: Buffer) => entry.out.write(d));
    child.stderr?.on('data', (d: Buffer) => entry.out.write(d));
    entry.exited = new Promise((resolve) => {
      let settled = false;
      const settle = (code: number | null, signal: string | null, error?: string) => {
        if (settled) return;
        settled = true;
        this.exitedWith(entry, code, signal, error);
        resolve();
      };
      child.once('error', (err) => {
        entry.out.write(`--- cannot start: ${err.message}\n`);
        // A child that never started emits no `exit`; one that did, does.
        if (child.pid === undefined) settle(null, null, `cannot start: ${err.message}`);
      });
      child.once('exit', (code, signal) => settle(code, signal));
    });
    this.o.log.debug(`service ${spec.name} started (pid ${child.pid ?? '?'})`);
    this.changed();
  }

  private exitedWith(entry: Entry, code: number | null, signal: string | null, error?: string): void {
    entry.child = undefined;
    const at = new Date().toISOString();
    entry.state = { ...entry.state, pid: undefined, lastExit: { code, signal, at } };
    const how = error ?? (signal ? `signal ${signal}` : `code ${code}`);
    entry.out.write(`--- ${at} exited (${how})\n`);
    if (entry.state.state === 'stopping' || entry.state.state === 'stopped') {
      entry.state.state = 'stopped';
      this.changed();
      return;
    }
    if (entry.spec.restart === 'never') {
      entry.state.state = 'exited';
      this.changed();
      return;
    }
    const now = Date.now();
    if (now - entry.started >= this.o.stableAfterMs) entry.failures = 0;
    entry.failures++;
    entry.restartTimes = entry.restartTimes.filter((t) => now - t < this.o.windowMs);
    let delay = Math.min(this.o.initialBackoffMs * 2 ** (entry.failures - 1), this.o.maxBackoffMs);
    if (entry.restartTimes.length >= this.o.burst) delay = this.o.maxBackoffMs;
    entry.restartTimes.push(now);
    entry.state.state = 'backoff';
    entry.state.restarts++;
    entry.state.nextStartAt = new Date(now + delay).toISOString();
    this.o.log.info(`service ${entry.spec.name} exited (${how}); restarting in ${(delay / 1000).toFixed(1)} s`);
    entry.timer = setTimeout(() => this.launch(entry), delay);
    this.changed();
  }

  /**
   * Stops one service: SIGTERM to its process group, SIGKILL to the group
   * after its stop timeout, then at most killWaitMs more. Groups that earlier
   * runs left behind are killed too.
   */
  async stop(name: string): Promise<void> {
    const entry = this.entries.get(name);
    if (!entry) return;
    if (entry.timer) clearTimeout(entry.timer);
    entry.timer = undefined;
    const child = entry.child;
    entry.state.state = 'stopping';
    this.changed();
    const current = child && child.exitCode === null && child.signalCode === null ? child.pid : undefined;
    if (current !== undefined) {
      killGroup(current, 'SIGTERM');
      const timeout = entry.spec.stopTimeoutMs ?? 10_000;
      const stopped = await within(entry.exited!, timeout);
      if (!stopped) {
        this.o.log.info(`service ${name} did not stop within ${timeout} ms; killing it`);
        killGroup(current, 'SIGKILL');
        const killed = await within(entry.exited!, this.o.killWaitMs);
        if (!killed) this.o.log.info(`service ${name} (pid ${current}) did not die within ${this.o.killWaitMs} ms of SIGKILL; left behind`);
      }
    }
    // What is left in its groups (children that outlived their parent) goes too.
    for (const pgid of entry.groups) if (!killGroup(pgid, 'SIGKILL')) entry.groups.delete(pgid);
    entry.groups.clear();
    if (entry.state.state === 'stopping') {
      entry.state.state = 'stopped';
      this.changed();
    }
  }

  /** Stops a service and starts it again with the same spec (after `between`, e.g. a datastore restore). */
  async restart(name: string, between?: () => Promise<void> | void): Promise<boolean> {
    const entry = this.entries.get(name);
    if (!entry) return false;
    await this.stop(name);
    await between?.();
    entry.failures = 0;
    entry.restartTimes = [];
    this.launch(entry);
    return true;
  }

  /** Stops every service, the last started first. */
  async stopAll(): Promise<void> {
    for (const name of [...this.order].reverse()) await this.stop(name);
  }

  list(): ServiceState[] {
    return this.order.map((n) => ({ ...this.entries.get(n)!.state }));
  }

  get(name: string): ServiceState | undefined {
    const e = this.entries.get(name);
    return e ? { ...e.state } : undefined;
  }
}
