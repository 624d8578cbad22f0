/**
 * Shutdown: stop the services in reverse order (each with its timeout),
 * end every other process (so that SSH sessions close instead of hanging
 * their clients), sync, unmount what is writable, then power off or reboot.
 * Asked for by SIGTERM (poweroff), SIGINT or SIGUSR1 (reboot; tini forwards
 * both), `cairn poweroff` / `cairn reboot`, or the ACPI power button.
 *
 * Every step is bounded and a failing step never stops the next: the
 * machine goes down even when a service or a mount misbehaves.
 */
import { createReadStream, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from './apply/files.js';
import { at, type NodeContext } from './context.js';
import { readJson, STATUS_PATH, type NodeStatus } from './status.js';

export type ShutdownAction = 'poweroff' | 'reboot';

export const SHUTDOWN_REQUEST = '/run/cairn/shutdown';
export const INIT_PID = '/run/cairn/init.pid';

/** How long the services get to stop, all together, before the machine goes down anyway. */
export const SERVICES_STOP_MS = 120_000;
/** Between SIGTERM and SIGKILL to every process that is left. */
export const PROCESSES_TERM_MS = 3_000;

type Kill = (pid: number, sig: NodeJS.Signals | 0) => void;

/**
 * Asks the running init to shut down (used by `cairn poweroff` and `cairn reboot`).
 * Returns at once: the init does the work.
 */
export function requestShutdown(root: string, action: ShutdownAction, kill: Kill = process.kill): { pid: number } {
  let text: string;
  try {
    text = readFileSync(join(root, INIT_PID), 'utf8').trim();
  } catch {
    throw new Error('the cairn init is not running here (no /run/cairn/init.pid)');
  }
  const pid = Number(text);
  if (!/^\d+$/.test(text) || pid < 2) throw new Error(`${INIT_PID} holds "${text.slice(0, 20)}", not the init's process id`);
  try {
    kill(pid, 0);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EPERM') throw new Error(`not allowed to signal the cairn init (pid ${pid}): ${action} needs root (sudo cairn ${action})`);
    throw new Error(`the cairn init (pid ${pid} in ${INIT_PID}) is not running`);
  }
  // the action, and who asks: the init lets that command finish (its ssh session sees its answer) before it stops sshd
  writeFileAtomic(join(root, SHUTDOWN_REQUEST), `${action}\n${process.pid}\n`);
  kill(pid, action === 'reboot' ? 'SIGUSR1' : 'SIGTERM');
  return { pid };
}

/** Waits (bounded) until the init says it started shutting down; the status it wrote then, or undefined when the time ran out. */
export async function waitShutdownStarted(root: string, since: number, timeoutMs: number, intervalMs = 50): Promise<NodeStatus['shutdown']> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const s = readJson<NodeStatus>(join(root, STATUS_PATH))?.shutdown;
    // The status' clock has second precision at worst; allow for it.
    if (s && Date.parse(s.at) >= since - 1000) return s;
    if (Date.now() >= end) return undefined;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Mount points to unmount at shutdown, deepest first: everything but the kernel's own file systems and the root. */
export function unmountOrder(procMounts: string): string[] {
  const skip = new Set(['/', '/proc', '/sys', '/dev', '/dev/pts', '/run']);
  return procMounts
    .split('\n')
    .map((l) => l.split(' ')[1])
    .filter((m): m is string => !!m && !skip.has(m) && !m.startsWith('/proc/') && !m.startsWith('/sys/') && !m.startsWith('/dev/'))
    .map((m) => m.replace(/\\040/g, ' '))
    .reverse();
}

async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const out = await Promise.race([p.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)))]);
  clearTimeout(timer);
  return out;
}

export interface ShutdownOptions {
  /** Signals every process but PID 1 and the init (kill(-1)); only on a node (root "/") unless given. */
  killAll?: (sig: NodeJS.Signals) => void;
  servicesStopMs?: number;
  termMs?: number;
  /** The process that asked (`cairn poweroff`): its answer reaches its session before the services stop. */
  requester?: number;
}

/** Reads the request `cairn poweroff`/`reboot` left: the action, and the process that asked. */
export function readShutdownRequest(root: string): { action?: ShutdownAction; requester?: number } {
  try {
    const [action, pid] = readFileSync(join(root, SHUTDOWN_REQUEST), 'utf8').split('\n').map((l) => l.trim());
    return {
      action: action === 'reboot' || action === 'poweroff' ? action : undefined,
      requester: pid && /^\d+$/.test(pid) ? Number(pid) : undefined,
    };
  } catch {
    return {};
  }
}

/** How long a shutdown waits for the command that asked for it to exit. */
export const REQUESTER_WAIT_MS = 3_000;

async function waitGone(pid: number, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    try {
      process.kill(pid, 0);
    } catch {
      // gone: a moment more for sudo and sshd to pass its exit status on
      await new Promise((r) => setTimeout(r, 300));
      return;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function shutdown(ctx: NodeContext, action: ShutdownAction, opts: ShutdownOptions = {}): Promise<void> {
  const killAll = opts.killAll ?? (ctx.root === '/' ? (sig: NodeJS.Signals) => process.kill(-1, sig) : undefined);
  const step = async (what: string, fn: () => Promise<unknown> | unknown) => {
    try {
      await fn();
    } catch (e) {
      ctx.log.info(`shutdown: ${what}: ${(e as Error).message}`);
    }
  };
  ctx.status.update({ shutdown: { action, at: new Date().toISOString() } });
  if (opts.requester !== undefined) await waitGone(opts.requester, REQUESTER_WAIT_MS);
  ctx.log.info(`shutting down (${action}): stopping services`);
  await step('services', async () => {
    const ms = opts.servicesStopMs ?? SERVICES_STOP_MS;
    if (!(await within(ctx.services.stopAll(), ms))) ctx.log.info(`shutdown: services did not all stop within ${ms / 1000} s; going on`);
  });
  await step('other processes', async () => {
    if (!killAll) return;
    killAll('SIGTERM');
    await new Promise((r) => setTimeout(r, opts.termMs ?? PROCESSES_TERM_MS));
    killAll('SIGKILL');
  });
  await step('sync', () => ctx.exec('sync', [], { timeoutMs: 30_000 }));
  let mounts = '';
  try {
    mounts = readFileSync(at(ctx, '/proc/mounts'), 'utf8');
  } catch {
    // no /proc: nothing to unmount
  }
  for (const m of unmountOrder(mounts)) {
    await step(`unmount ${m}`, async () => {
      const r = await ctx.exec('umount', [m], { timeoutMs: 10_000 });
      if (r.code !== 0) await ctx.exec('mount', ['-o', 'remount,ro', m], { timeoutMs: 10_000 });
    });
  }
  await step('sync', () => ctx.exec('sync', [], { timeoutMs: 30_000 }));
  ctx.log.info(action === 'reboot' ? 'rebooting' : 'powering off');
  // busybox calls reboot(2) itself: there is no other init to ask.
  const r = await ctx.exec('/usr/bin/busybox', [action, '-f'], { timeoutMs: 10_000 });
  if (r.code === 0 && !r.timedOut) return;
  // Still here: ask the kernel directly (sysrq works from root whatever kernel.sysrq says).
  ctx.log.info(`busybox ${action} failed (${(r.stderr || `exit ${r.code}`).trim()}); asking the kernel directly`);
  await step('sysrq', () => writeFileSync(at(ctx, '/proc/sysrq-trigger'), action === 'reboot' ? 'b' : 'o'));
}

const KEY_POWER = 116;
const EV_KEY = 1;

/** Finds the ACPI power button's input device (/dev/input/eventN). */
export function findPowerButton(root: string): string | undefined {
  const base = join(root, 'sys/class/input');
  try {
    for (const name of readdirSync(base).filter((n) => n.startsWith('event'))) {
      const dev = readFileSync(join(base, name, 'device/name'), 'utf8').trim();
      if (/power button/i.test(dev)) return `/dev/input/${name}`;
    }
  } catch {
    // no input devices
  }
  return undefined;
}

/** Calls `onPress` when the power button is pressed (struct input_event: 24 bytes on 64-bit, 16 on 32-bit). */
export function watchPowerButton(root: string, onPress: () => void): string | undefined {
  const dev = findPowerButton(root);
  if (!dev) return undefined;
  const size = process.arch === 'arm' || process.arch === 'ia32' ? 16 : 24;
  let buf = Buffer.alloc(0);
  const stream = createReadStream(join(root, dev));
  stream.on('data', (chunk: Buffer | string) => {
    buf = Buffer.concat([buf, Buffer.from(chunk)]);
    while (buf.length >= size) {
      const type = buf.readUInt16LE(size - 8);
      const code = buf.readUInt16LE(size - 6);
      const value = buf.readInt32LE(size - 4);
      buf = buf.subarray(size);
      if (type === EV_KEY && code === KEY_POWER && value === 1) onPress();
    }
  });
  stream.on('error', () => undefined);
  return dev;
}
