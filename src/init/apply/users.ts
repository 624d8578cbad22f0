/**
 * The `cairn` login user (uid 1000): its account, its SSH keys and its
 * password. There is no default password: without keys or a password the
 * only way in is the console, and the boot log says so.
 */
import { chownSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { at, type NodeContext } from '../context.js';
import { writeFileAtomic } from './files.js';

export const USER = 'cairn';
export const UID = 1000;
export const HOME = '/home/cairn';
export const KEY_CACHE = '/var/lib/cairn/ssh-keys';

function lines(path: string): string[] {
  try {
    return readFileSync(path, 'utf8').split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

/** Adds or replaces the line of `name` in a colon-separated account file. */
export function upsertAccountLine(existing: string[], name: string, line: string): string[] {
  const out = existing.filter((l) => l.split(':')[0] !== name);
  out.push(line);
  return out;
}

/** Makes sure the cairn user and group exist (written straight into the account files, atomically). */
export function ensureUser(root: string): void {
  const etc = (f: string) => join(root, 'etc', f);
  const passwd = lines(etc('passwd'));
  if (!passwd.some((l) => l.startsWith(`${USER}:`))) {
    writeFileAtomic(etc('passwd'), `${upsertAccountLine(passwd, USER, `${USER}:x:${UID}:${UID}:cairn:${HOME}:/bin/bash`).join('\n')}\n`);
  }
  const group = lines(etc('group'));
  if (!group.some((l) => l.startsWith(`${USER}:`))) {
    writeFileAtomic(etc('group'), `${upsertAccountLine(group, USER, `${USER}:x:${UID}:`).join('\n')}\n`);
  }
  const shadow = lines(etc('shadow'));
  if (!shadow.some((l) => l.startsWith(`${USER}:`))) {
    // "*": no password login until one is configured; SSH keys still work.
    writeFileAtomic(etc('shadow'), `${upsertAccountLine(shadow, USER, `${USER}:*:19000:0:99999:7:::`).join('\n')}\n`, { mode: 0o640 });
  }
  mkdirSync(join(root, HOME), { recursive: true, mode: 0o755 });
  if (process.getuid?.() === 0) {
    for (const d of [HOME]) {
      try {
        // chown only what cairn created; a restored home keeps its owners
        chownSync(join(root, d), UID, UID);
      } catch {
        // best effort
      }
    }
  }
  const sudoers = join(root, 'etc/sudoers.d');
  try {
    writeFileAtomic(join(sudoers, 'cairn'), `${USER} ALL=(ALL) NOPASSWD: ALL\n`, { mode: 0o440 });
  } catch {
    // no sudo in this image
  }
}

/** Where the keys of an entry come from: a literal key, or a URL to fetch. */
export function keySource(entry: string): { literal: string } | { url: string; cacheName: string } {
  const m = /^(github|gitlab):(.+)$/.exec(entry);
  if (m) return { url: `https://${m[1]}.com/${m[2]}.keys`, cacheName: `${m[1]}-${m[2]}.keys` };
  if (/^https?:\/\//.test(entry)) return { url: entry, cacheName: `url-${Buffer.from(entry).toString('base64url').slice(0, 60)}.keys` };
  return { literal: entry };
}

/** Resolves ssh_authorized_keys: fetched keys are cached, and the cache is used when the network is not there. */
export async function resolveKeys(ctx: NodeContext, entries: string[]): Promise<{ keys: string[]; notes: string[] }> {
  const keys: string[] = [];
  const notes: string[] = [];
  for (const entry of entries) {
    const src = keySource(entry);
    if ('literal' in src) {
      keys.push(src.literal);
      continue;
    }
    const cache = at(ctx, join(KEY_CACHE, src.cacheName));
    try {
      const text = await ctx.fetch(src.url, { timeoutMs: 10_000 });
      const fetched = text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
      writeFileAtomic(cache, `${fetched.join('\n')}\n`, { mode: 0o600 });
      keys.push(...fetched);
    } catch (e) {
      const cached = lines(cache);
      if (cached.length) {
        keys.push(...cached);
        notes.push(`${entry}: using cached keys (${(e as Error).message})`);
      } else {
        notes.push(`${entry}: no keys (${(e as Error).message}; nothing cached yet)`);
      }
    }
  }
  return { keys: [...new Set(keys)], notes };
}

/** A crypt(3) hash as /etc/shadow holds it ($1$, $5$, $6$, $y$, $2b$, ...). */
export function isCryptHash(password: string): boolean {
  return /^\$(1|2[abxy]?|5|6|7|y|gy)\$[^\s:]+$/.test(password);
}

export async function applyUsers(ctx: NodeContext): Promise<string> {
  ensureUser(ctx.root);
  const { keys, notes } = await resolveKeys(ctx, ctx.config.ssh_authorized_keys ?? []);
  const sshDir = at(ctx, `${HOME}/.ssh`);
  mkdirSync(sshDir, { recursive: true, mode: 0o700 });
  writeFileAtomic(join(sshDir, 'authorized_keys'), keys.length ? `${keys.join('\n')}\n` : '', { mode: 0o600, uid: UID, gid: UID });
  if (process.getuid?.() === 0) {
    try {
      chownSync(sshDir, UID, UID);
    } catch {
      // best effort
    }
  }
  const password = ctx.config.cairn?.password;
  if (password) {
    const hashed = isCryptHash(password);
    const r = await ctx.exec('chpasswd', hashed ? ['-e'] : [], { input: `${USER}:${password}\n`, timeoutMs: 15_000 });
    if (r.code !== 0) throw new Error(`cannot set the password of ${USER}: ${(r.stderr || `exit ${r.code}`).trim()}`);
  }
  for (const n of notes) ctx.log.info(`users: ${n}`);
  if (!password && keys.length === 0) {
    return `${USER}: no password and no SSH keys: log in on the console (no password asked); set ssh_authorized_keys or password for SSH`;
  }
  return `${USER}: ${keys.length} SSH key${keys.length === 1 ? '' : 's'}${password ? ', password set' : ''}`;
}

/** Whether the console logs in without a password: only when neither a password nor keys are configured. */
export function consoleAutologin(ctx: Pick<NodeContext, 'config'>): boolean {
  return !ctx.config.cairn?.password && (ctx.config.ssh_authorized_keys ?? []).length === 0;
}
