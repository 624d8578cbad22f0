/**
 * Shutdown: stop the services in reverse order (each with its timeout),
 * sync, unmount what is writable, then power off or reboot. Asked for by
 * SIGTERM (poweroff), SIGINT or SIGUSR1 (reboot; tini forwards both),
 * `cairn poweroff` / `cairn reboot`, or the ACPI power button.
 */
import { createReadStream, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { at, type NodeContext } from './context.js';

export type ShutdownAction = 'poweroff' | 'reboot';

export const SHUTDOWN_REQUEST = '/run/cairn/shutdown';
export const INIT_PID = '/run/cairn/init.pid';

/** Asks the running init to shut down (used by `cairn poweroff` and `cairn reboot`). */
export function requestShutdown(root: string, action: ShutdownAction, kill: (pid: number, sig: NodeJS.Signals) => void = process.kill): void {
  let pid: number;
  try {
    pid = Number(readFileSync(join(root, INIT_PID), 'utf8').trim());
  } catch {
    throw new Error('the cairn init is not running here (no /run/cairn/init.pid)');
  }
  writeFileSync(join(root, SHUTDOWN_REQUEST), action);
  kill(pid, action === 'reboot' ? 'SIGUSR1' : 'SIGTERM');
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

export async function shutdown(ctx: NodeContext, action: ShutdownAction): Promise<void> {
  ctx.log.info(`shutting down (${action}): stopping services`);
  await ctx.services.stopAll();
  await ctx.exec('sync', [], { timeoutMs: 30_000 });
  let mounts = '';
  try {
    mounts = readFileSync(at(ctx, '/proc/mounts'), 'utf8');
  } catch {
    // no /proc: nothing to unmount
  }
  for (const m of unmountOrder(mounts)) {
    const r = await ctx.exec('umount', [m], { timeoutMs: 10_000 });
    if (r.code !== 0) await ctx.exec('mount', ['-o', 'remount,ro', m], { timeoutMs: 10_000 });
  }
  await ctx.exec('sync', [], { timeoutMs: 30_000 });
  ctx.log.info(action === 'reboot' ? 'rebooting' : 'powering off');
  // busybox calls reboot(2) itself: there is no other init to ask.
  await ctx.exec('/usr/bin/busybox', [action, '-f'], { timeoutMs: 10_000 });
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
