/**
 * cloud-init's modules that fit an immutable node, from the keys of
 * cloud-init's own format (config/schema.json): `users`, `chpasswd`,
 * `ssh_pwauth`, `timezone`. (`ntp` goes into chrony's config, system.ts;
 * `manage_etc_hosts` into the hostname's; `growpart` into grow.ts;
 * `bootcmd`/`runcmd` are boot_cmd/run_cmd; `write_files`' `append` and
 * `defer` are files.ts'.) Accounts are made with the shadow tools (useradd,
 * groupadd, usermod) in the node's /etc, which keeps them across boots and
 * upgrades (persist.ts); passwords go through chpasswd's standard input,
 * never its arguments.
 */
import { chownSync, existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, lstatSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { CloudUser } from '../../config/types.js';
import { at, type NodeContext } from '../context.js';
import { writeFileAtomic } from './files.js';
import { isCryptHash, isDefaultUser, resolveKeys, USER } from './users.js';

/** The sudoers rules of `users`, one file, as cloud-init names it. */
export const CLOUD_SUDOERS = '/etc/sudoers.d/90-cloud-init-users';
/** ssh_pwauth: first in sshd's drop-in order (sshd keeps the first value it reads; the image's cairn.conf says no). */
export const SSH_PWAUTH_CONF = '/etc/ssh/sshd_config.d/00-cloud-init-pwauth.conf';

function accountNames(root: string, file: 'passwd' | 'group'): Map<string, string[]> {
  const out = new Map<string, string[]>();
  try {
    for (const l of readFileSync(join(root, 'etc', file), 'utf8').split('\n')) if (l && !l.startsWith('#')) out.set(l.split(':')[0]!, l.split(':'));
  } catch {
    // no file: no accounts
  }
  return out;
}

/** The sudoers file for `users`' sudo rules: `name rule` lines. */
export function renderCloudSudoers(users: CloudUser[]): string {
  const lines = users.flatMap((u) => (u.sudo ?? []).map((rule) => `${isDefaultUser(u.name) ? USER : u.name} ${rule}`));
  return lines.length ? ['# written by cairn from the config\'s users (cloud-init)', ...lines, ''].join('\n') : '';
}

/**
 * users: each account made when missing (useradd), its shell and groups
 * kept as the config says (usermod), its password set or locked, its keys
 * installed; the default entry adds groups and keys to cairn's own user.
 */
export async function applyCloudUsers(ctx: NodeContext): Promise<string | undefined> {
  const users = ctx.config.users ?? [];
  if (!users.length) {
    rmSync(at(ctx, CLOUD_SUDOERS), { force: true });
    return undefined;
  }
  const problems: string[] = [];
  const run = async (file: string, args: string[], input?: string): Promise<boolean> => {
    const r = await ctx.exec(file, args, { timeoutMs: 30_000, input });
    if (r.code !== 0) problems.push(`${file} ${args.join(' ')}: ${(r.stderr || `exit ${r.code}`).trim().split('\n')[0]}`);
    return r.code === 0;
  };
  const made: string[] = [];
  for (const u of users) {
    const name = isDefaultUser(u.name) ? USER : u.name;
    // groups first: useradd -G needs them
    const groups = accountNames(ctx.root, 'group');
    for (const g of [...(u.groups ?? []), ...(u.primary_group ? [u.primary_group] : [])]) {
      if (!groups.has(g)) await run('groupadd', [...(u.system ? ['--system'] : []), g]);
    }
    const passwd = accountNames(ctx.root, 'passwd');
    if (!passwd.has(name)) {
      const args = ['--shell', u.shell ?? '/bin/bash'];
      if (u.gecos) args.push('--comment', u.gecos);
      if (u.homedir) args.push('--home-dir', u.homedir);
      if (u.uid !== undefined) args.push('--uid', String(u.uid));
      if (u.primary_group) args.push('--gid', u.primary_group);
      else args.push('--user-group');
      if (u.groups?.length) args.push('--groups', u.groups.join(','));
      if (u.system) args.push('--system');
      args.push(u.no_create_home || u.system ? '--no-create-home' : '--create-home');
      if (await run('useradd', [...args, name])) made.push(name);
    } else {
      const args: string[] = [];
      if (u.shell && !isDefaultUser(u.name)) args.push('--shell', u.shell);
      if (u.groups?.length) args.push('--append', '--groups', u.groups.join(','));
      if (args.length) await run('usermod', [...args, name]);
    }
    // a password: a hash (hashed_passwd, cloud-init's older passwd) or plain text; lock_passwd (true by default) locks it
    const hash = u.hashed_passwd ?? u.passwd;
    if (hash !== undefined || u.plain_text_passwd !== undefined) {
      const pw = hash ?? u.plain_text_passwd!;
      await run('chpasswd', hash !== undefined && isCryptHash(hash) ? ['-e'] : [], `${name}:${pw}\n`);
    }
    if (!isDefaultUser(u.name)) {
      if (u.lock_passwd !== false) await run('usermod', ['--lock', name]);
      else if (hash !== undefined || u.plain_text_passwd !== undefined) await run('usermod', ['--unlock', name]);
    }
    if (!isDefaultUser(u.name) && u.ssh_authorized_keys?.length) {
      const entry = accountNames(ctx.root, 'passwd').get(name);
      const home = entry?.[5] || u.homedir || `/home/${name}`;
      const uid = Number(entry?.[2] ?? NaN);
      const gid = Number(entry?.[3] ?? NaN);
      const { keys, notes } = await resolveKeys(ctx, u.ssh_authorized_keys);
      for (const n of notes) ctx.log.info(`users: ${name}: ${n}`);
      const dir = at(ctx, `${home}/.ssh`);
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const ids = Number.isInteger(uid) && Number.isInteger(gid) ? { uid, gid } : {};
      writeFileAtomic(join(dir, 'authorized_keys'), keys.length ? `${keys.join('\n')}\n` : '', { mode: 0o600, ...ids });
      if (ids.uid !== undefined && process.getuid?.() === 0) {
        try {
          chownSync(dir, ids.uid, ids.gid);
        } catch {
          // best effort
        }
      }
    }
  }
  const sudoers = renderCloudSudoers(users);
  if (sudoers) writeFileAtomic(at(ctx, CLOUD_SUDOERS), sudoers, { mode: 0o440 });
  else rmSync(at(ctx, CLOUD_SUDOERS), { force: true });
  const others = users.filter((u) => !isDefaultUser(u.name)).map((u) => u.name);
  const summary = `users ${others.join(', ') || '(only the default)'}${made.length ? ` (made ${made.join(', ')})` : ''}`;
  if (problems.length) throw new Error(`${problems.join('; ')} (${summary})`);
  return summary;
}

/** chpasswd: passwords for users, plain or hashed, through chpasswd's standard input. */
export async function applyChpasswd(ctx: NodeContext): Promise<string | undefined> {
  const c = ctx.config.chpasswd;
  if (!c) return undefined;
  const entries = [
    ...(c.users ?? []).map((u) => ({ name: u.name, password: u.password, hash: u.type === 'hash' })),
    ...(c.list ?? []).map((l) => {
      const i = l.indexOf(':');
      const password = l.slice(i + 1);
      return { name: l.slice(0, i), password, hash: isCryptHash(password) };
    }),
  ].map((e) => ({ ...e, name: isDefaultUser(e.name) ? USER : e.name }));
  const problems: string[] = [];
  for (const hash of [false, true]) {
    const group = entries.filter((e) => e.hash === hash);
    if (!group.length) continue;
    const r = await ctx.exec('chpasswd', hash ? ['-e'] : [], { input: group.map((e) => `${e.name}:${e.password}\n`).join(''), timeoutMs: 15_000 });
    if (r.code !== 0) problems.push(`chpasswd: ${(r.stderr || `exit ${r.code}`).trim().split('\n')[0]}`);
  }
  // a password cloud-init sets is unlocked
  for (const e of entries) if (e.name !== USER) await ctx.exec('usermod', ['--unlock', e.name], { timeoutMs: 15_000 });
  if (c.expire) ctx.log.info('chpasswd: expire is not applied: nobody at an edge site could change an expired password; the passwords stay valid');
  const summary = `passwords of ${entries.map((e) => e.name).join(', ')}`;
  if (problems.length) throw new Error(`${problems.join('; ')} (${summary})`);
  return summary;
}

/** ssh_pwauth: sshd's PasswordAuthentication, in a drop-in read before the image's. */
export function applySshPwauth(ctx: NodeContext): string | undefined {
  const v = ctx.config.ssh_pwauth;
  if (v === undefined) {
    rmSync(at(ctx, SSH_PWAUTH_CONF), { force: true });
    return undefined;
  }
  const yes = v ? 'yes' : 'no';
  writeFileAtomic(at(ctx, SSH_PWAUTH_CONF), `# written by cairn from ssh_pwauth\nPasswordAuthentication ${yes}\nKbdInteractiveAuthentication ${yes}\n`);
  return `ssh passwords ${v ? 'accepted' : 'refused'}`;
}

/** timezone: /etc/localtime to the zone's file, /etc/timezone naming it; a zone the image does not have is an error. */
export function applyTimezone(ctx: NodeContext): string | undefined {
  const tz = ctx.config.timezone;
  const link = at(ctx, '/etc/localtime');
  const target = tz ? `/usr/share/zoneinfo/${tz}` : undefined;
  if (!tz || !target) return undefined;
  if (!existsSync(at(ctx, target))) throw new Error(`timezone ${tz}: no such zone in the image (/usr/share/zoneinfo/${tz}); use a name from the tz database such as Europe/Berlin or UTC`);
  let current: string | undefined;
  try {
    current = lstatSync(link).isSymbolicLink() ? readlinkSync(link) : undefined;
  } catch {
    current = undefined;
  }
  if (current !== target) {
    rmSync(link, { force: true });
    symlinkSync(target, link);
  }
  writeFileAtomic(at(ctx, '/etc/timezone'), `${tz}\n`);
  return `timezone ${tz}`;
}
