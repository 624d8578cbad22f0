/**
 * The early system keys: hostname, kernel modules, sysctls, environment, DNS
 * servers and NTP servers. Each is a small function of the config.
 */
import { crypto } from '../lazy.js';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { at, type NodeContext } from '../context.js';
import { writeFileAtomic } from './files.js';

export const HOSTNAME_STATE = '/var/lib/cairn/hostname';

function readTrimmed(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/** The hostname: the config's, else the one this node was given before, else a new `cairn-xxxxxx`; kept across reboots. */
export function chooseHostname(configured: string | undefined, remembered: string | undefined, random = () => crypto().randomBytes(3).toString('hex')): string {
  return configured ?? remembered ?? `cairn-${random()}`;
}

/**
 * /etc/hosts for cloud-init's manage_etc_hosts: unset, `true` or `template`:
 * written whole (localhost and the hostname on 127.0.1.1); `localhost`: the
 * 127.0.1.1 line of the file as it is, set to the hostname; `false`: left
 * alone (undefined).
 */
export function renderHosts(mode: 'true' | 'false' | 'template' | 'localhost' | undefined, name: string, existing: string | undefined): string | undefined {
  if (mode === 'false') return undefined;
  if (mode === 'localhost' && existing !== undefined) {
    const lines = existing.split('\n').filter((l) => !/^127\.0\.1\.1\s/.test(l));
    const i = lines.findIndex((l) => /^127\.0\.0\.1\s/.test(l));
    lines.splice(i + 1, 0, `127.0.1.1\t${name}`);
    return `${lines.join('\n').replace(/\n*$/, '')}\n`;
  }
  return `127.0.0.1\tlocalhost\n127.0.1.1\t${name}\n::1\tlocalhost ip6-localhost ip6-loopback\n`;
}

export async function applyHostname(ctx: NodeContext): Promise<string> {
  const name = chooseHostname(ctx.config.hostname, readTrimmed(at(ctx, HOSTNAME_STATE)));
  writeFileAtomic(at(ctx, HOSTNAME_STATE), `${name}\n`);
  writeFileAtomic(at(ctx, '/etc/hostname'), `${name}\n`);
  const hosts = renderHosts(ctx.config.manage_etc_hosts, name, readTrimmed(at(ctx, '/etc/hosts')));
  if (hosts !== undefined) writeFileAtomic(at(ctx, '/etc/hosts'), hosts);
  try {
    writeFileSync(at(ctx, '/proc/sys/kernel/hostname'), name);
  } catch (e) {
    throw new Error(`cannot set the kernel's hostname: ${(e as Error).message}`);
  }
  ctx.status.update({ hostname: name });
  return name;
}

/**
 * Loads modules with one `modprobe -a` (every process start costs on a
 * small board); only when that fails is each one tried alone, to name the
 * ones that did not load and why.
 */
async function loadModules(ctx: NodeContext, modules: string[]): Promise<{ name: string; why: string }[]> {
  if (!modules.length) return [];
  const all = await ctx.exec('modprobe', ['-a', '--', ...modules], { timeoutMs: 15_000 + 5_000 * modules.length });
  if (all.code === 0) return [];
  const failed: { name: string; why: string }[] = [];
  for (const m of modules) {
    const r = await ctx.exec('modprobe', ['--', m], { timeoutMs: 15_000 });
    if (r.code !== 0) failed.push({ name: m, why: (r.stderr || `exit ${r.code}`).trim().split('\n')[0]! });
  }
  return failed;
}

export async function applyModules(ctx: NodeContext): Promise<string | void> {
  const modules = ctx.config.cairn?.modules ?? [];
  const failed = (await loadModules(ctx, modules)).map((f) => `${f.name} (${f.why})`);
  if (failed.length) throw new Error(`modules not loaded: ${failed.join(', ')}`);
  if (modules.length) return `loaded ${modules.join(', ')}`;
}

/** /proc/sys path of a sysctl key: dots are folders. */
export function sysctlPath(key: string): string {
  return `/proc/sys/${key.replace(/\./g, '/')}`;
}

export async function applySysctls(ctx: NodeContext): Promise<string | void> {
  const entries = Object.entries(ctx.config.cairn?.sysctls ?? {});
  const failed: string[] = [];
  for (const [key, value] of entries) {
    try {
      writeFileSync(at(ctx, sysctlPath(key)), value);
    } catch (e) {
      failed.push(`${key} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
  }
  if (failed.length) throw new Error(`sysctls not set: ${failed.join(', ')}`);
  if (entries.length) return `${entries.length} set`;
}

/** The config's environment, for boot commands and k3s, and in /etc/environment for logins. */
export async function applyEnvironment(ctx: NodeContext): Promise<void> {
  const env = ctx.config.cairn?.environment ?? {};
  Object.assign(ctx.env, env);
  const lines = Object.entries(env).map(([k, v]) => `${k}=${JSON.stringify(v)}`);
  writeFileAtomic(at(ctx, '/etc/environment'), lines.length ? `${lines.join('\n')}\n` : '');
}

export const STATIC_DNS = '/run/cairn/net/static.dns';

/** resolv.conf from the configured servers, then the ones DHCP leases offered (network.ts writes those). */
export function renderResolvConf(servers: string[]): string {
  const unique = [...new Set(servers)].slice(0, 3);
  return unique.map((s) => `nameserver ${s}\n`).join('');
}

export async function applyDns(ctx: NodeContext): Promise<string | void> {
  const servers = ctx.config.cairn?.dns_nameservers ?? [];
  writeFileAtomic(at(ctx, STATIC_DNS), servers.map((s) => `${s}\n`).join(''));
  if (servers.length) {
    writeFileAtomic(at(ctx, '/etc/resolv.conf'), renderResolvConf(servers));
    return servers.join(', ');
  }
}

/** chrony's config: `servers` (cairn.ntp_servers, then cloud-init's ntp.servers) and cloud-init's ntp.pools; Debian's pool without either. */
export function renderChronyConf(servers: string[], pools: string[] = []): string {
  const sources = [...new Set(servers)].map((s) => `server ${s} iburst`).concat([...new Set(pools)].map((p) => `pool ${p} iburst`));
  if (!sources.length) sources.push('pool 2.debian.pool.ntp.org iburst');
  return [
    '# written by cairn from ntp_servers (and ntp)',
    ...sources,
    'driftfile /var/lib/chrony/chrony.drift',
    // Edge boards often have no RTC: step the clock on the first updates, whatever the offset.
    'makestep 1 -1',
    'rtcsync',
    '',
  ].join('\n');
}

export async function applyNtp(ctx: NodeContext): Promise<void> {
  const ntp = ctx.config.ntp?.enabled === false ? {} : (ctx.config.ntp ?? {});
  writeFileAtomic(at(ctx, '/etc/chrony/chrony.conf'), renderChronyConf([...(ctx.config.cairn?.ntp_servers ?? []), ...(ntp.servers ?? [])], ntp.pools ?? []));
}

/** `*.conf` files of a folder, in name order, without comments and blank lines. */
function confLines(dir: string): string[] {
  let names: string[] = [];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.conf')).sort();
  } catch {
    return [];
  }
  return names.flatMap((n) => readFileSync(join(dir, n), 'utf8').split('\n')).map((l) => l.trim()).filter((l) => l && !l.startsWith('#') && !l.startsWith(';'));
}

/**
 * Starts loading what the image itself asks for in /etc/modules-load.d
 * (what k3s needs) beside the phases that follow: a module load is slow on
 * a small board (and under emulation), and nothing before k3s needs them.
 * applyImageModules waits for it.
 */
export function startImageModules(ctx: NodeContext): void {
  ctx.imageModules = loadImageModules(ctx);
}

/** The modules of /etc/modules-load.d that did not load; modprobe itself failing (it could not run, it timed out) is one of them. */
function loadImageModules(ctx: NodeContext): Promise<{ name: string; why: string }[]> {
  return loadModules(ctx, confLines(at(ctx, '/etc/modules-load.d'))).catch((e: Error) => [{ name: 'modprobe', why: e.message }]);
}

/** The image's modules (started by startImageModules, or loaded now), before the config's modules. */
export async function applyImageModules(ctx: NodeContext): Promise<void> {
  const failed = await (ctx.imageModules ?? loadImageModules(ctx));
  ctx.imageModules = undefined;
  if (failed.length) throw new Error(`not loaded: ${failed.map((f) => (f.name === 'modprobe' ? `modprobe (${f.why})` : f.name)).join(', ')}`);
}

/**
 * vm.min_free_kbytes without transparent hugepages' boost: the kernel's own
 * base, 4 x sqrt(memory in KiB) (5.6 MiB on 2 GiB). With THP on (Debian's
 * kernels: `always`), khugepaged raises the reserve to 44 MiB on any board
 * (up to 5% of memory), which kswapd then keeps free: on a 1-2 GiB board a
 * tenth of the memory nobody can use. Only ever lowered; /etc/sysctl.d and
 * the config's sysctls come after it and win.
 */
export function baseMinFreeKbytes(memTotalKb: number): number {
  return Math.min(262144, Math.max(128, Math.floor(4 * Math.sqrt(memTotalKb))));
}

export function applyMemoryReserve(ctx: NodeContext): string | undefined {
  const path = at(ctx, '/proc/sys/vm/min_free_kbytes');
  const meminfo = at(ctx, '/proc/meminfo');
  // no /proc here (a root being prepared, not a running node): nothing to set
  if (!existsSync(path) || !existsSync(meminfo)) return undefined;
  const total = Number(/^MemTotal:\s+(\d+) kB$/m.exec(readFileSync(meminfo, 'utf8'))?.[1]);
  const now = Number(readFileSync(path, 'utf8').trim());
  if (!Number.isFinite(total) || !Number.isFinite(now) || String(now) !== readFileSync(path, 'utf8').trim()) throw new Error('vm.min_free_kbytes or MemTotal unreadable');
  const base = baseMinFreeKbytes(total);
  if (now <= base) return undefined;
  writeFileSync(path, String(base));
  return `vm.min_free_kbytes ${now} -> ${base}`;
}

/** The memory reserve (above), then /etc/sysctl.d/*.conf (`key = value` lines), before the config's sysctls. */
export async function applyImageSysctls(ctx: NodeContext): Promise<void> {
  const failed: string[] = [];
  try {
    const changed = applyMemoryReserve(ctx);
    if (changed) ctx.log.info(changed);
  } catch (e) {
    failed.push(`vm.min_free_kbytes (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  for (const line of confLines(at(ctx, '/etc/sysctl.d'))) {
    const m = /^-?([^=\s]+)\s*=\s*(.*)$/.exec(line);
    if (!m) continue;
    try {
      writeFileSync(at(ctx, sysctlPath(m[1]!)), m[2]!);
    } catch {
      // a leading "-" means: ignore when the key does not exist
      if (!line.startsWith('-')) failed.push(m[1]!);
    }
  }
  if (failed.length) throw new Error(`not set: ${failed.join(', ')}`);
}
