/**
 * The `cairn` login user (uid 1000): its account, its SSH keys and its
 * password. There is no default password: without keys or a password the
 * only way in is the console, and the boot log says so. Which of those a
 * node has is read from what is installed (authorized_keys, the shadow
 * entry), not from what is configured: a key fetch that failed leaves no key.
 */
import { crypto } from '../lazy.js';
import { chownSync, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { at, urlForLog, withoutQuery, type NodeContext } from '../context.js';
import { isSecret, ownerMode, writeAccountFile, type AccountFile } from './accounts.js';
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

/**
 * Makes sure the cairn user and group exist, written straight into the
 * account files (atomically, each keeping its owner and mode: shadow and
 * gshadow stay root:shadow 0640 as Debian has them). The etc phase keeps
 * them across image versions (accounts.ts).
 */
export function ensureUser(root: string): void {
  const etc = (f: AccountFile) => join(root, 'etc', f);
  const add = (f: AccountFile, line: string) => {
    const existing = lines(etc(f));
    if (existing.some((l) => l.startsWith(`${USER}:`))) return;
    const like = ownerMode(etc(f)) ?? { mode: isSecret(f) ? 0o640 : 0o644, uid: 0, gid: 0 };
    writeAccountFile(etc(f), f, upsertAccountLine(existing, USER, line), like);
  };
  add('passwd', `${USER}:x:${UID}:${UID}:cairn:${HOME}:/bin/bash`);
  add('group', `${USER}:x:${UID}:`);
  // "*": no password login until one is configured; SSH keys still work.
  add('shadow', `${USER}:*:19000:0:99999:7:::`);
  if (existsSync(etc('gshadow'))) add('gshadow', `${USER}:!::`);
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

/** Where the keys of an entry come from: a literal key, or a URL to fetch (cached under a hash of the URL: it may hold a token). */
export function keySource(entry: string): { literal: string } | { url: string; cacheName: string } {
  const m = /^(github|gitlab):(.+)$/.exec(entry);
  if (m) return { url: `https://${m[1]}.com/${m[2]}.keys`, cacheName: `${m[1]}-${m[2]}.keys` };
  if (/^https?:\/\//.test(entry)) return { url: entry, cacheName: `url-${crypto().createHash('sha256').update(entry).digest('hex').slice(0, 16)}.keys` };
  return { literal: entry };
}

const KEY_TYPES = new Set([
  'ssh-ed25519',
  'ssh-rsa',
  'ssh-dss',
  'ecdsa-sha2-nistp256',
  'ecdsa-sha2-nistp384',
  'ecdsa-sha2-nistp521',
  'sk-ssh-ed25519@openssh.com',
  'sk-ecdsa-sha2-nistp256@openssh.com',
]);

/**
 * Whether a line is an SSH public key as `ssh-keygen` writes it and GitHub
 * serves it: `<type> <base64 blob> [comment]`, the blob naming the same type.
 */
export function isSshPublicKey(line: string): boolean {
  const [type, blob] = line.trim().split(/\s+/);
  const base = type?.replace(/-cert-v01@openssh\.com$/, '');
  if (!type || !blob || !base || !KEY_TYPES.has(base) || !/^[A-Za-z0-9+/]+={0,2}$/.test(blob)) return false;
  const bytes = Buffer.from(blob, 'base64');
  if (bytes.length < 4 + type.length) return false;
  const len = bytes.readUInt32BE(0);
  return len === type.length && bytes.subarray(4, 4 + len).toString('latin1') === type;
}

/**
 * The keys in a fetched key list, or why it is not one. An empty answer and
 * anything that is not all keys (a captive portal's HTML page, an error
 * page) are refused, so that they never replace keys that worked.
 */
export function parseKeyList(text: string): { keys: string[] } | { problem: string } {
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  if (lines.length === 0) return { problem: 'the answer has no keys' };
  const bad = lines.findIndex((l) => !isSshPublicKey(l));
  if (bad >= 0) return { problem: `the answer is not a list of SSH public keys (line ${bad + 1} starts "${lines[bad]!.slice(0, 20).replace(/[^\x20-\x7e]/g, '?')}"; a captive portal or an error page?)` };
  return { keys: lines };
}

/**
 * Resolves ssh_authorized_keys: fetched keys are cached; the cache is used
 * when a fetch fails or brings something that is not keys, and only a good
 * answer replaces it.
 */
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
    // A cache from before URL caches were named by a hash: named by the URL itself.
    const legacy = /^https?:/.test(entry) ? at(ctx, join(KEY_CACHE, `url-${Buffer.from(entry).toString('base64url').slice(0, 60)}.keys`)) : undefined;
    let problem: string;
    try {
      const got = parseKeyList(await ctx.fetch(src.url, { timeoutMs: 10_000 }));
      if ('keys' in got) {
        writeFileAtomic(cache, `${got.keys.join('\n')}\n`, { mode: 0o600 });
        if (legacy) rmSync(legacy, { force: true });
        keys.push(...got.keys);
        continue;
      }
      problem = got.problem;
    } catch (e) {
      problem = withoutQuery((e as Error).message, src.url);
    }
    const cached = [cache, ...(legacy ? [legacy] : [])].map((f) => lines(f).filter(isSshPublicKey)).find((k) => k.length) ?? [];
    if (cached.length) {
      keys.push(...cached);
      notes.push(`${urlForLog(entry)}: using ${cached.length} cached key${cached.length === 1 ? '' : 's'} (${problem})`);
    } else {
      notes.push(`${urlForLog(entry)}: no keys (${problem}; nothing cached yet)`);
    }
  }
  return { keys: [...new Set(keys)], notes };
}

/** A crypt(3) hash as /etc/shadow holds it ($1$, $5$, $6$, $y$, $2b$, ...). */
export function isCryptHash(password: string): boolean {
  return /^\$(1|2[abxy]?|5|6|7|y|gy)\$[^\s:]+$/.test(password);
}

/**
 * The configured password (plain or a crypt hash) for the cairn user, through
 * chpasswd's standard input. Returns what went wrong, in chpasswd's own words,
 * never with the password. Local and quick: the boot applies it with the
 * early keys, so that a console login works while init_cmd runs.
 */
export async function applyPassword(ctx: NodeContext): Promise<string | undefined> {
  const password = ctx.config.cairn?.password;
  if (!password) return undefined;
  const r = await ctx.exec('chpasswd', isCryptHash(password) ? ['-e'] : [], { input: `${USER}:${password}\n`, timeoutMs: 15_000 });
  return r.code === 0 ? undefined : `cannot set the password of ${USER}: ${(r.stderr || `exit ${r.code}`).trim().split('\n')[0]}`;
}

/** cloud-init's `default` user (and a user named cairn) is cairn's own. */
export function isDefaultUser(name: string): boolean {
  return name === 'default' || name === USER;
}

/** cairn's keys: the top-level ssh_authorized_keys and those of cloud-init's `users: [default]`. */
export function cairnKeyEntries(config: NodeContext['config']): string[] {
  return [...(config.ssh_authorized_keys ?? []), ...(config.users ?? []).filter((u) => isDefaultUser(u.name)).flatMap((u) => u.ssh_authorized_keys ?? [])];
}

/** Whether the config asks for a way in (a password or SSH keys), whether or not it is installed yet. */
export function loginConfigured(config: NodeContext['config']): boolean {
  const chpasswd = [...(config.chpasswd?.users ?? []).map((u) => u.name), ...(config.chpasswd?.list ?? []).map((l) => l.split(':')[0]!)];
  return Boolean(config.cairn?.password) || cairnKeyEntries(config).length > 0 || chpasswd.some(isDefaultUser);
}

export async function applyUsers(ctx: NodeContext): Promise<string> {
  ensureUser(ctx.root);
  const { keys, notes } = await resolveKeys(ctx, cairnKeyEntries(ctx.config));
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
  const passwordProblem = await applyPassword(ctx);
  for (const n of notes) ctx.log.info(`users: ${n}`);
  const login = installedLogin(ctx.root);
  let summary: string;
  if (!login.password && login.keys === 0) {
    summary = `${USER}: no password and no SSH keys: log in on the console (no password asked); set ssh_authorized_keys or password for SSH`;
  } else {
    summary = `${USER}: ${login.keys} SSH key${login.keys === 1 ? '' : 's'}${login.password ? ', password set' : ''}`;
  }
  if (passwordProblem) throw new Error(`${passwordProblem} (${summary})`);
  return summary;
}

/** The ways in that are installed on the node now: keys in authorized_keys, a password in the shadow entry. */
export function installedLogin(root: string): { keys: number; password: boolean } {
  const keys = lines(join(root, HOME, '.ssh/authorized_keys')).filter((l) => l.trim() && !l.trim().startsWith('#')).length;
  const entry = lines(join(root, 'etc/shadow')).find((l) => l.startsWith(`${USER}:`));
  const hash = entry?.split(':')[1] ?? '';
  // "*", "!", "!hash" (locked) or empty: no password login
  const password = hash !== '' && !hash.startsWith('*') && !hash.startsWith('!');
  return { keys, password };
}

/** Whether the console logs in without a password: only when no password and no SSH key is installed, so that there is always a way in. */
export function consoleAutologin(root: string): boolean {
  const login = installedLogin(root);
  return !login.password && login.keys === 0;
}
