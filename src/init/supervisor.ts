/**
 * A small service supervisor: starts long-running processes, restarts them
 * with exponential back-off and a rate limit, sends their output to
 * /var/log/cairn/<service>.log (rotated by size), and stops them in reverse
 * order with a timeout before SIGKILL.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { Logger } from './log.js';
import { RotatingLog } from './rotating-log.js';

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
  onChange?: () => void;
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
}

export class Supervisor {
  private readonly entries = new Map<string, Entry>();
  private readonly order: string[] = [];
  private readonly o: Required<Omit<SupervisorOptions, 'onChange'>> & Pick<SupervisorOptions, 'onChange'>;

  constructor(opts: SupervisorOptions) {
    this.o = {
      initialBackoffMs: 1000,
      maxBackoffMs: 60_000,
      stableAfterMs: 60_000,
      burst: 10,
      windowMs: 300_000,
      maxLogBytes: 5 * 1024 * 1024,
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
    entry.out.write(`--- ${new Date().toISOString()} starting ${spec.command} ${spec.args.join(' ')}\n`);
    let child: ChildProcess;
    try {
      child = spawn(spec.command, spec.args, { env: spec.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (e) {
      this.exitedWith(entry, null, null, (e as Error).message);
      return;
    }
    entry.child = child;
    entry.started = Date.now();
    entry.state = { ...entry.state, state: 'running', pid: child.pid, startedAt: new Date().toISOString(), nextStartAt: undefined };
    child.stdout?.on('data', (d: Buffer) => entry.out.write(d));
    child.stderr?.on('data', (d: Buffer) => entry.out.write(d));
    entry.exited = new Promise((resolve) => {
      child.once('error', (err) => {
        entry.out.write(`--- cannot start: ${err.message}\n`);
      });
      child.once('close', (code, signal) => {
        this.exitedWith(entry, code, signal);
        resolve();
      });
    });
    this.o.log.debug(`service ${spec.name} started (pid ${child.pid ?? '?'})`);
    this.changed();
  }

  private exitedWith(entry: Entry, code: number | null, signal: string | null, error?: string): void {
    entry.child = undefined;
    const at = new Date().toISOString();
    entry.state = { ...entry.state, pid: undefined, lastExit: { code, signal, at } };
    entry.out.write(`--- ${at} exited (${error ?? (signal ? `signal ${signal}` : `code ${code}`)})\n`);
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
    this.o.log.info(`service ${entry.spec.name} exited (${error ?? (signal ? `signal ${signal}` : `code ${code}`)}); restarting in ${(delay / 1000).toFixed(1)} s`);
    entry.timer = setTimeout(() => this.launch(entry), delay);
    this.changed();
  }

  /** Stops one service: SIGTERM, then SIGKILL after its stop timeout. */
  async stop(name: string): Promise<void> {
    const entry = this.entries.get(name);
    if (!entry) return;
    if (entry.timer) clearTimeout(entry.timer);
    entry.timer = undefined;
    const child = entry.child;
    entry.state.state = 'stopping';
    this.changed();
    if (!child || child.exitCode !== null || child.signalCode !== null) {
      entry.state.state = 'stopped';
      this.changed();
      return;
    }
    child.kill('SIGTERM');
    const timeout = entry.spec.stopTimeoutMs ?? 10_000;
    const killed = await Promise.race([entry.exited!.then(() => false), new Promise<boolean>((r) => setTimeout(() => r(true), timeout))]);
    if (killed) {
      this.o.log.info(`service ${name} did not stop within ${timeout} ms; killing it`);
      child.kill('SIGKILL');
      await entry.exited;
    }
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
