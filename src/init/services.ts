/**
 * The node's own services: sshd, chronyd and a getty on every console.
 */
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { at, type NodeContext } from './context.js';
import { consoleAutologin, loginConfigured, USER } from './apply/users.js';
import { writeFileAtomic } from './apply/files.js';
import { startChrony } from './apply/time.js';
import type { ServiceSpec } from './supervisor.js';

/** The consoles the kernel writes to, e.g. ["tty1", "ttyS0"]; tty0 (whichever VT is in front) is tty1 for a getty. */
export function activeConsoles(root: string): string[] {
  try {
    const names = readFileSync(`${root}/sys/class/tty/console/active`, 'utf8').trim().split(/\s+/).filter(Boolean);
    return [...new Set(names.map((n) => (n === 'tty0' ? 'tty1' : n)))];
  } catch {
    return [];
  }
}

/** agetty's arguments for a console (the supervised getty adds `--autologin` at each start, see gettyScript). */
export function gettyArgs(tty: string, autologin = false): string[] {
  const serial = /^tty(S|AMA|USB|PS|mxc|GS)\d+/.test(tty);
  return ['--noclear', ...(autologin ? ['--autologin', USER] : []), ...(serial ? ['-L', tty, '115200,57600,38400,9600', 'vt100'] : [tty, 'linux'])];
}

/** Present (holding the user's name) while the console logs in without a password. */
export const AUTOLOGIN_FLAG = '/run/cairn/console-autologin';

/**
 * What the supervisor runs for a getty: agetty, with `--autologin` when the
 * flag says so at that moment, so that every new prompt follows what is
 * installed now.
 */
export function gettyScript(ctx: { root: string }): string {
  const agetty = at(ctx, '/sbin/agetty');
  return `if [ -s '${at(ctx, AUTOLOGIN_FLAG)}' ]; then exec '${agetty}' --autologin ${USER} "$@"; fi; exec '${agetty}' "$@"`;
}

export function gettySpec(ctx: { root: string }, tty: string): ServiceSpec {
  return { name: `getty-${tty}`, command: '/bin/sh', args: ['-c', gettyScript(ctx), 'getty', ...gettyArgs(tty)], env: { TERM: 'vt100', PATH: process.env.PATH ?? '/usr/bin:/bin' } };
}

/** Boots whose users phase has tried to install the keys and the password. */
const keysApplied = new WeakSet<NodeContext>();

/**
 * Decides the console login from what is installed now: without a password
 * and an SSH key the console logs in by itself (there is always a way in).
 * Before the users phase has installed the keys (`keysApplied` false), a
 * config that asks for a password or keys never gets an open console, not
 * even for the seconds until they are installed. When the decision changes,
 * the gettys are hung up, so that the next prompt follows: a console logged
 * in by itself is closed once a key or a password is installed.
 */
export function updateConsoleLogin(ctx: NodeContext, opts: { keysApplied?: boolean } = {}): boolean {
  // Once the users phase has run, later calls (a getty started again after the boot) keep to what it installed.
  if (opts.keysApplied) keysApplied.add(ctx);
  const auto = consoleAutologin(ctx.root) && (keysApplied.has(ctx) || !loginConfigured(ctx.config));
  const flag = at(ctx, AUTOLOGIN_FLAG);
  let was: boolean | undefined;
  try {
    was = readFileSync(flag, 'utf8').trim() !== '';
  } catch {
    was = false;
  }
  if (auto) writeFileAtomic(flag, `${USER}\n`);
  else rmSync(flag, { force: true });
  if (was !== auto) {
    for (const svc of ctx.services.list()) {
      if (!svc.name.startsWith('getty-') || svc.pid === undefined) continue;
      try {
        process.kill(svc.pid, 'SIGHUP');
      } catch {
        // already gone; the supervisor starts it again
      }
    }
  }
  return auto;
}

export async function startServices(ctx: NodeContext): Promise<string> {
  const started: string[] = [];
  mkdirSync(at(ctx, '/run/sshd'), { recursive: true, mode: 0o755 });
  // A live boot makes its host keys anew (RSA takes seconds on a small board): beside the boot, not in its way; sshd starts when they are there.
  void ctx.exec('ssh-keygen', ['-A'], { timeoutMs: 120_000 }).then((keys) => {
    if (keys.code !== 0) ctx.log.info(`sshd: host keys not generated: ${keys.stderr.trim()}`);
    if (ctx.status.status.shutdown || ctx.services.get('sshd')) return;
    ctx.services.start({ name: 'sshd', command: '/usr/sbin/sshd', args: ['-D', '-e'] });
  });
  started.push('sshd');
  // Started in the time phase; here should that phase have failed before it.
  if (!ctx.services.get('chronyd')) {
    await startChrony(ctx);
    started.push('chronyd');
  }
  return started.join(', ');
}

/**
 * A getty on every console (once). Started early in the boot, before any
 * init_cmd or boot_cmd, so that a command that hangs never keeps the
 * console locked; the boot's lines go on printing above the prompt.
 */
export function startGettys(ctx: NodeContext): string[] {
  const started: string[] = [];
  updateConsoleLogin(ctx);
  for (const tty of activeConsoles(ctx.root)) {
    const spec = gettySpec(ctx, tty);
    if (ctx.services.get(spec.name)) continue;
    ctx.services.start(spec);
    started.push(spec.name);
  }
  return started;
}
