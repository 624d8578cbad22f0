/**
 * The boot-test harness: boots an artifact in QEMU, drives its serial console
 * through a pty (node-pty), and waits for markers with timeouts. The whole
 * console is kept (in memory and in a log file); a failed wait says what it
 * waited for and shows the last lines of the console.
 *
 *   const vm = await bootForTest(t, { artifact: { kind: 'iso', path: iso }, config: 'node.yaml', sshPort: 'auto' });
 *   await vm.waitFor('cairn: boot complete', 120_000);
 *   vm.sendLine('cat /etc/hostname');
 *   await vm.waitFor(/^node-1$/m, 5_000);
 *   await vm.shutdown();
 *
 * Temp files and QEMU are cleaned up by close() (bootForTest registers it as
 * a teardown), and on process exit or SIGINT/SIGTERM as a last resort.
 */
import { createWriteStream, mkdirSync, rmSync, type WriteStream } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as pty from 'node-pty';
import { ConsoleText, tailLines } from './console.js';
import { prepareMachine, type MachineOptions, type PreparedMachine } from './machine.js';
import { commandLine } from './profiles.js';
import { qmp } from './qmp.js';

export type { Artifact, MachineOptions } from './machine.js';
export { overlay } from './machine.js';
export { makeSeed, makeSeedFromText } from './seed.js';
export { makeSshKey, sshRun, waitForSsh, type SshKey, type SshOptions, type SshResult } from './ssh.js';

export interface BootOptions extends Omit<MachineOptions, 'console'> {
  /** Where the console log goes. Default: <tmp>/cairn-qemu-logs/<name>-<pid>-<n>.log, removed by close() unless a wait failed. */
  logFile?: string;
  /** A name for the log file and messages. Default: the artifact kind. */
  name?: string;
  /** Copy the console to this stream as it comes (default: process.stderr when CAIRN_QEMU_ECHO=1). */
  echo?: NodeJS.WritableStream;
  /** Default timeout of waitFor, ms. Default 120 000. */
  timeoutMs?: number;
  /** Lines of console shown when a wait fails. Default 60. */
  tailLines?: number;
  /**
   * Press Enter once at each GRUB menu instead of waiting out its countdown
   * (the same default entry boots; GRUB's own choice of that entry, tries
   * and fallback included, is unchanged). Default true; false lets the
   * timeout expire, as on an unattended machine.
   */
  skipBootMenu?: boolean;
}

/** GRUB's menu countdown line; once seen after a new menu header, Enter is pressed. */
const GRUB_HEADER = 'GNU GRUB  version';
const GRUB_COUNTDOWN = /executed automatically in \d+s/;

export interface WaitResult {
  /** The matched text. */
  match: string;
  /** Capture groups of a RegExp marker. */
  groups: string[];
  /** Offset of the match in the console text. */
  index: number;
  /** Milliseconds since QEMU started. */
  elapsedMs: number;
}

export interface WaitOptions {
  /**
   * Where the search starts: 'cursor' (default) is just after the previous
   * match, so consecutive waits also check the order of the markers;
   * 'start' searches the whole console; 'end' only what the console
   * prints from now on (after a reset, say, when an older match must not count).
   */
  from?: 'cursor' | 'start' | 'end';
}

/** A wait that failed: the marker, why, and the console's last lines. */
export class ConsoleWaitError extends Error {
  readonly tail: string;
  readonly logFile: string;
  constructor(message: string, tail: string, logFile: string) {
    super(`${message}\n--- console log: ${logFile}; its last lines: ---\n${tail}\n--- end of console ---`);
    this.name = 'ConsoleWaitError';
    this.tail = tail;
    this.logFile = logFile;
  }
}

interface Waiter {
  marker: string | RegExp;
  from: number;
  resolve(r: WaitResult): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
  /** Set while a RegExp match that ends at the end of the console waits for more text. */
  quiet?: NodeJS.Timeout;
}

/** How long a RegExp match that reaches the end of the console waits for more text before it counts. */
const QUIET_MS = 50;

const live = new Set<Vm>();
let exitHooks = false;
let logCounter = 0;

function installExitHooks(): void {
  if (exitHooks) return;
  exitHooks = true;
  const cleanAll = (): void => {
    for (const vm of live) vm.destroySync();
  };
  process.on('exit', cleanAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      cleanAll();
      process.kill(process.pid, sig);
    });
  }
}

function describe(marker: string | RegExp): string {
  return typeof marker === 'string' ? JSON.stringify(marker) : String(marker);
}

/** A running (or finished) VM. */
export class Vm {
  /** The emulator and its arguments, as started. */
  readonly binary: string;
  readonly args: readonly string[];
  readonly logFile: string;
  /** Host port forwarded to the guest's port 22 (sshPort option). */
  readonly sshPort?: number;
  /** Host port of each forwarded guest port (forwardPorts option). */
  readonly forwards: Readonly<Record<number, number>>;
  /** For pxe boots: the HTTP server on the host, its URL from the guest, and what the guest fetched. */
  readonly http?: PreparedMachine['http'];
  /** Date.now() when QEMU started. */
  readonly startedAt: number;
  readonly name: string;
  /** This VM's temp folder (overlay, firmware vars, seed, QMP socket); removed by close(). */
  readonly dir: string;
  /** QEMU's process id. */
  readonly pid: number;

  private readonly proc: pty.IPty;
  private readonly prepared: PreparedMachine;
  private readonly console = new ConsoleText();
  private raw = '';
  private readonly log: WriteStream;
  private readonly echo?: NodeJS.WritableStream;
  private readonly defaultTimeout: number;
  private readonly tailCount: number;
  private readonly explicitLog: boolean;
  private cursor = 0;
  private waiters = new Set<Waiter>();
  private exit?: { code: number; signal?: number };
  private readonly exited: Promise<{ code: number; signal?: number }>;
  private failed = false;
  private closed = false;
  private readonly skipBootMenu: boolean;
  /** Where the last GRUB menu whose countdown was skipped starts in the raw output. */
  private menuSkipped = -1;
  /** Where the newest GRUB menu header starts in the raw output. */
  private menuHeader = -1;

  /** Use boot() or bootForTest(). */
  constructor(prepared: PreparedMachine, opts: BootOptions) {
    this.prepared = prepared;
    this.binary = prepared.binary;
    this.args = prepared.args;
    this.sshPort = prepared.sshPort;
    this.forwards = prepared.forwards;
    this.http = prepared.http;
    this.name = opts.name ?? opts.artifact.kind;
    this.dir = prepared.dir;
    this.defaultTimeout = opts.timeoutMs ?? 120_000;
    this.tailCount = opts.tailLines ?? 60;
    this.skipBootMenu = opts.skipBootMenu ?? true;
    this.echo = opts.echo ?? (process.env.CAIRN_QEMU_ECHO === '1' ? process.stderr : undefined);
    this.explicitLog = opts.logFile !== undefined;
    const logDir = path.join(os.tmpdir(), 'cairn-qemu-logs');
    this.logFile = opts.logFile ?? path.join(logDir, `${this.name.replace(/[^\w.-]+/g, '_')}-${process.pid}-${++logCounter}.log`);
    mkdirSync(path.dirname(this.logFile), { recursive: true });
    this.log = createWriteStream(this.logFile);
    this.log.write(`# ${commandLine(this.binary, this.args)}\n`);
    this.startedAt = Date.now();
    this.proc = pty.spawn(this.binary, [...this.args], {
      name: 'xterm',
      cols: 250,
      rows: 50,
      cwd: prepared.dir,
      env: { ...process.env, TERM: 'xterm' },
    });
    this.pid = this.proc.pid;
    this.proc.onData((d) => this.onData(d));
    this.exited = new Promise((resolve) => {
      this.proc.onExit(({ exitCode, signal }) => {
        this.exit = { code: exitCode, signal };
        for (const w of [...this.waiters]) {
          this.check(w, true);
          if (!this.waiters.has(w)) continue;
          this.settle(w);
          w.reject(this.waitError(`QEMU exited (${signal ? `signal ${signal}` : `code ${exitCode}`}) before ${describe(w.marker)} showed on the console`));
        }
        resolve(this.exit);
      });
    });
    live.add(this);
    installExitHooks();
  }

  /** Everything the console printed so far, as plain text (no escape sequences, \n line ends). */
  get output(): string {
    return this.console.text;
  }

  /** Everything the console printed so far, as QEMU wrote it. */
  get rawOutput(): string {
    return this.raw;
  }

  /** Whether QEMU is still running. */
  get running(): boolean {
    return this.exit === undefined;
  }

  /** QEMU's exit, once it ended. */
  get exitStatus(): { code: number; signal?: number } | undefined {
    return this.exit;
  }

  /** The last n lines of the console. */
  tail(n = this.tailCount): string {
    return tailLines(this.console.text, n);
  }

  private onData(d: string): void {
    this.raw += d;
    this.log.write(d);
    this.echo?.write(d);
    this.console.push(d);
    if (this.skipBootMenu) this.skipMenuCountdown(d.length);
    for (const w of [...this.waiters]) this.check(w);
  }

  /** Presses Enter once per GRUB menu, when its countdown shows (only the new text is searched). */
  private skipMenuCountdown(added: number): void {
    const from = Math.max(0, this.raw.length - added - GRUB_HEADER.length);
    for (let at = this.raw.indexOf(GRUB_HEADER, from); at >= 0; at = this.raw.indexOf(GRUB_HEADER, at + 1)) this.menuHeader = at;
    if (this.menuHeader < 0 || this.menuHeader === this.menuSkipped) return;
    if (!GRUB_COUNTDOWN.test(this.raw.slice(Math.max(this.menuHeader, from - 64)))) return;
    this.menuSkipped = this.menuHeader;
    if (!this.exit) this.proc.write('\r');
  }

  /**
   * Resolves a waiter when its marker is on the console. A RegExp match that
   * ends exactly where the console text ends may still grow (/sum=(\d+)/ on
   * "sum=4" before the "2" arrives), so it counts only after QUIET_MS without
   * more output, or at once with `settled`.
   */
  private check(w: Waiter, settled = false): void {
    const r = this.search(w.marker, w.from);
    if (!r) return;
    if (!settled && typeof w.marker !== 'string' && r.end === this.console.text.length && !this.exit) {
      clearTimeout(w.quiet);
      w.quiet = setTimeout(() => this.check(w, true), QUIET_MS);
      return;
    }
    this.cursor = r.end;
    this.settle(w);
    w.resolve({ match: r.match, groups: r.groups, index: r.index, elapsedMs: r.elapsedMs });
  }

  private search(marker: string | RegExp, from: number): (WaitResult & { end: number }) | undefined {
    const text = this.console.text;
    if (typeof marker === 'string') {
      const i = text.indexOf(marker, from);
      if (i < 0) return undefined;
      return { match: marker, groups: [], index: i, end: i + marker.length, elapsedMs: Date.now() - this.startedAt };
    }
    const re = new RegExp(marker.source, marker.flags.includes('g') ? marker.flags : `${marker.flags}g`);
    re.lastIndex = from;
    const m = re.exec(text);
    if (!m) return undefined;
    return { match: m[0], groups: m.slice(1).map((g) => g ?? ''), index: m.index, end: m.index + m[0].length, elapsedMs: Date.now() - this.startedAt };
  }

  private settle(w: Waiter): void {
    clearTimeout(w.timer);
    clearTimeout(w.quiet);
    this.waiters.delete(w);
  }

  private waitError(message: string): ConsoleWaitError {
    this.failed = true;
    return new ConsoleWaitError(`${this.name}: ${message}`, this.tail(), this.logFile);
  }

  /**
   * Waits until the console shows `marker` (a string, or a RegExp matched
   * against the plain text). Rejects with a ConsoleWaitError, showing the
   * console's tail, on timeout or when QEMU exits first.
   */
  waitFor(marker: string | RegExp, timeoutMs = this.defaultTimeout, opts: WaitOptions = {}): Promise<WaitResult> {
    const from = opts.from === 'start' ? 0 : opts.from === 'end' ? this.console.text.length : this.cursor;
    const found = this.search(marker, from);
    if (!found && this.exit) {
      return Promise.reject(this.waitError(`QEMU had exited (code ${this.exit.code}) before ${describe(marker)} showed on the console`));
    }
    return new Promise<WaitResult>((resolve, reject) => {
      const w: Waiter = {
        marker,
        from,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.settle(w);
          reject(this.waitError(`${describe(marker)} did not show on the console within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      this.waiters.add(w);
      this.check(w);
    });
  }

  /** Waits for any of several markers; resolves with the index of the one that came first. */
  async waitForAny(markers: (string | RegExp)[], timeoutMs = this.defaultTimeout): Promise<WaitResult & { which: number }> {
    // the markers' own flags (a line marker's m) hold for the union too
    const flags = [...new Set(markers.flatMap((m) => (typeof m === 'string' ? [] : [...m.flags.replace('g', '')])))].join('');
    const re = new RegExp(markers.map((m) => (typeof m === 'string' ? m.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') : `(?:${m.source})`)).join('|'), flags);
    const r = await this.waitFor(re, timeoutMs);
    const which = markers.findIndex((m) => (typeof m === 'string' ? r.match.includes(m) : new RegExp(m.source, m.flags.replace('g', '')).test(r.match)));
    return { ...r, which };
  }

  /** Types text into the serial console, as is. */
  send(text: string): void {
    if (this.exit) throw new Error(`${this.name}: QEMU has exited; cannot send to its console`);
    this.proc.write(text);
  }

  /** Types a line and presses Enter. */
  sendLine(line: string): void {
    this.send(`${line}\r`);
  }

  /** Runs a QMP command (https://qemu.org/docs/master/interop/qemu-qmp-ref.html). */
  async qmp(execute: string, args?: Record<string, unknown>): Promise<unknown> {
    if (!this.prepared.qmpSocket) throw new Error('no QMP socket');
    return await qmp(this.prepared.qmpSocket, execute, args);
  }

  /** Presses the ACPI power button (the guest decides what to do). */
  async powerButton(): Promise<void> {
    await this.qmp('system_powerdown');
  }

  /** A hard reset (the reset button): the guest reboots at once, without shutting down. */
  async reset(): Promise<void> {
    await this.qmp('system_reset');
  }

  /** Resolves when QEMU exits; undefined if it is still running after timeoutMs. */
  async waitExit(timeoutMs = this.defaultTimeout): Promise<{ code: number; signal?: number } | undefined> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), timeoutMs);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * A clean shutdown: the ACPI power button, then up to timeoutMs for the
   * guest to power off; QEMU is killed if it does not. Resolves true when the
   * guest powered off on its own.
   */
  async shutdown(timeoutMs = 60_000): Promise<boolean> {
    if (this.exit) return true;
    try {
      await this.powerButton();
    } catch {
      // QMP gone: QEMU is exiting anyway, or it is wedged; the kill below handles both.
    }
    const done = await this.waitExit(timeoutMs);
    if (done) return true;
    await this.kill();
    return false;
  }

  /** Stops QEMU at once (no guest shutdown). */
  async kill(): Promise<void> {
    if (this.exit) return;
    try {
      this.proc.kill('SIGKILL');
    } catch {
      // already gone
    }
    await this.waitExit(10_000);
  }

  /**
   * Kills QEMU if it still runs, stops the PXE HTTP server, removes the temp
   * files, closes the log (removed too when nothing failed and no logFile was
   * given). Safe to call more than once.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.kill();
    for (const w of [...this.waiters]) {
      this.settle(w);
      w.reject(new Error(`${this.name}: the VM was closed`));
    }
    await this.prepared.cleanup();
    await new Promise<void>((resolve) => this.log.end(() => resolve()));
    if (!this.failed && !this.explicitLog) rmSync(this.logFile, { force: true });
    live.delete(this);
  }

  /** For process exit: kill and remove synchronously. */
  destroySync(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      if (!this.exit) process.kill(this.proc.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    this.prepared.cleanupSync();
    live.delete(this);
  }

  /** Marks the run as failed, so that close() keeps the log file. */
  markFailed(): void {
    this.failed = true;
  }
}

/** Boots an artifact; the VM runs until shutdown(), kill() or close(). */
export async function boot(opts: BootOptions): Promise<Vm> {
  const prepared = await prepareMachine({ ...opts, console: 'serial' });
  try {
    return new Vm(prepared, opts);
  } catch (e) {
    await prepared.cleanup();
    throw e;
  }
}

/** The part of a tap test that bootForTest uses. */
export interface TestContext {
  teardown(fn: () => unknown): void;
  passing?(): boolean;
  comment?(...args: unknown[]): void;
}

/**
 * boot() for a tap test: the VM is closed in the test's teardown, and when the
 * test failed, the console's tail and the log's path are printed as a comment.
 */
export async function bootForTest(t: TestContext, opts: BootOptions): Promise<Vm> {
  const vm = await boot(opts);
  t.teardown(async () => {
    if (t.passing && !t.passing()) {
      vm.markFailed();
      t.comment?.(`console of ${vm.name} (${vm.logFile}), last lines:\n${vm.tail()}`);
    }
    await vm.close();
  });
  return vm;
}
