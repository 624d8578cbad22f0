/**
 * The node's own services: sshd, chronyd and a getty on every console.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { at, type NodeContext } from './context.js';
import { consoleAutologin, USER } from './apply/users.js';

/** The consoles the kernel writes to, e.g. ["tty1", "ttyS0"]; tty0 (whichever VT is in front) is tty1 for a getty. */
export function activeConsoles(root: string): string[] {
  try {
    const names = readFileSync(`${root}/sys/class/tty/console/active`, 'utf8').trim().split(/\s+/).filter(Boolean);
    return [...new Set(names.map((n) => (n === 'tty0' ? 'tty1' : n)))];
  } catch {
    return [];
  }
}

export function gettyArgs(tty: string, autologin: boolean): string[] {
  const serial = /^tty(S|AMA|USB|PS|mxc|GS)\d+/.test(tty);
  return ['--noclear', ...(autologin ? ['--autologin', USER] : []), ...(serial ? ['-L', tty, '115200,57600,38400,9600', 'vt100'] : [tty, 'linux'])];
}

export async function startServices(ctx: NodeContext): Promise<string> {
  const started: string[] = [];
  mkdirSync(at(ctx, '/run/sshd'), { recursive: true, mode: 0o755 });
  const keys = await ctx.exec('ssh-keygen', ['-A'], { timeoutMs: 60_000 });
  if (keys.code !== 0) ctx.log.info(`sshd: host keys not generated: ${keys.stderr.trim()}`);
  ctx.services.start({ name: 'sshd', command: '/usr/sbin/sshd', args: ['-D', '-e'] });
  started.push('sshd');
  mkdirSync(at(ctx, '/run/chrony'), { recursive: true });
  mkdirSync(at(ctx, '/var/lib/chrony'), { recursive: true });
  ctx.services.start({ name: 'chronyd', command: '/usr/sbin/chronyd', args: ['-d', '-f', '/etc/chrony/chrony.conf'] });
  started.push('chronyd');
  // The login prompt comes last, under the boot's lines, not in the middle of them;
  // should the rest of the boot hang, it comes after GETTY_FALLBACK_MS anyway.
  setTimeout(() => startGettys(ctx), GETTY_FALLBACK_MS).unref();
  return started.join(', ');
}

export const GETTY_FALLBACK_MS = 120_000;

/** A getty on every console (once). */
export function startGettys(ctx: NodeContext): string[] {
  const started: string[] = [];
  const auto = consoleAutologin(ctx);
  for (const tty of activeConsoles(ctx.root)) {
    const name = `getty-${tty}`;
    if (ctx.services.get(name)) continue;
    ctx.services.start({ name, command: '/sbin/agetty', args: gettyArgs(tty, auto), env: { TERM: 'vt100', PATH: process.env.PATH ?? '/usr/bin:/bin' } });
    started.push(name);
  }
  return started;
}
