/**
 * Data sources: where a node finds more config at boot (user-data), as k3OS'
 * `data_sources`. What is found is saved in /var/lib/cairn/userdata/NN-<source>
 * (NN: the source's place in `data_sources`), which the config loader reads
 * after the node's own config.yaml. A saved copy belongs to its source: it
 * keeps applying while the source is listed, also when the source is not
 * there at a boot (a seed stick taken out, a metadata service down), and
 * stops applying when the source leaves `data_sources`.
 */
import { crypto } from '../lazy.js';
import { mkdtempSync, readFileSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Diagnostic } from '../../config/diagnostics.js';
import { at, urlForLog, withoutQuery, type NodeContext } from '../context.js';
import { writeFileAtomic } from './files.js';
import { CONFIG_PATHS } from '../../config/loader.js';
import { load as parseYaml } from 'js-yaml';
import { MetadataFormatError, PROVIDERS, metadataConfig, openstackMetadata, shortHostname, type Metadata } from './metadata.js';

/** Volume labels a NoCloud seed or a config CD may carry. */
const VOLUME_LABELS: Record<string, string[]> = { nocloud: ['cidata', 'CIDATA'], cdrom: ['cidata', 'CIDATA', 'config-2', 'CONFIG-2'] };
const VOLUME_FILES = ['user-data', 'openstack/latest/user_data', 'config.yaml'];

/** NoCloud's meta-data (YAML): local-hostname, and public-keys as a list or a map of names to keys. */
export function nocloudMetadata(text: string): Omit<Metadata, 'userData'> {
  let md: unknown;
  try {
    md = parseYaml(text);
  } catch {
    return { sshKeys: [] };
  }
  if (!md || typeof md !== 'object') return { sshKeys: [] };
  const m = md as Record<string, unknown>;
  const pk = m['public-keys'] ?? m.public_keys;
  const list = Array.isArray(pk) ? pk : pk && typeof pk === 'object' ? Object.values(pk) : typeof pk === 'string' ? [pk] : [];
  const hostname = shortHostname(m['local-hostname'] ?? m.hostname);
  return { ...(hostname ? { hostname } : {}), sshKeys: list.filter((k): k is string => typeof k === 'string').map((k) => k.trim()).filter(Boolean) };
}

/**
 * The first device with each label, from one blkid for every device (a
 * process start and a probe of every disk cost on a small board: one, not
 * one per label a source may have). `-c /dev/null`: no cache, what is
 * there now.
 */
export async function devicesByLabel(ctx: NodeContext): Promise<Map<string, string>> {
  const r = await ctx.exec('blkid', ['-c', '/dev/null', '-o', 'export', '-s', 'LABEL'], { timeoutMs: 10_000 });
  const found = new Map<string, string>();
  if (r.code !== 0) return found;
  let dev: string | undefined;
  for (const line of r.stdout.split('\n')) {
    if (line.startsWith('DEVNAME=')) dev = line.slice('DEVNAME='.length);
    else if (line.startsWith('LABEL=') && dev && !found.has(line.slice('LABEL='.length))) found.set(line.slice('LABEL='.length), dev);
    else if (line.trim() === '') dev = undefined;
  }
  return found;
}

/** What a seed volume holds: its user-data and what its meta-data says (NoCloud meta-data, OpenStack meta_data.json). */
async function fromVolume(ctx: NodeContext, kind: string): Promise<Metadata | undefined> {
  const labels = VOLUME_LABELS[kind] ?? [];
  const devices = labels.length ? await devicesByLabel(ctx) : new Map<string, string>();
  for (const label of labels) {
    const dev = devices.get(label);
    if (!dev) continue;
    const mnt = mkdtempSync(at(ctx, '/run/cairn/ds-'));
    try {
      const m = await ctx.exec('mount', ['-o', 'ro', dev, mnt], { timeoutMs: 15_000 });
      if (m.code !== 0) {
        ctx.log.info(`data source ${kind}: ${dev} (${label}) does not mount: ${m.stderr.trim()}`);
        continue;
      }
      try {
        const read = (f: string) => {
          try {
            return readFileSync(join(mnt, f), 'utf8');
          } catch {
            return undefined;
          }
        };
        let md: Omit<Metadata, 'userData'> = { sshKeys: [] };
        const nocloud = read('meta-data');
        const os = read('openstack/latest/meta_data.json');
        if (nocloud !== undefined) md = nocloudMetadata(nocloud);
        else if (os !== undefined) {
          try {
            md = openstackMetadata(JSON.parse(os) as Record<string, unknown>);
          } catch (e) {
            ctx.log.info(`data source ${kind}: ${label}'s openstack/latest/meta_data.json is not JSON (${(e as Error).message}); its user-data is read alone`);
          }
        }
        const userData = VOLUME_FILES.map(read).find((d) => d !== undefined);
        return { ...md, ...(userData !== undefined ? { userData } : {}) };
      } finally {
        await ctx.exec('umount', [mnt], { timeoutMs: 15_000 });
      }
    } finally {
      rmSync(mnt, { recursive: true, force: true });
    }
  }
  return undefined;
}

/** Sources on the machine itself (a volume): read before the network is up. */
export function isLocalSource(source: string): boolean {
  return source in VOLUME_LABELS;
}

/** The part of a saved copy's name that says which source it came from: the source's name, or `url-<hash>` for a URL. */
export function sourceKey(source: string): string {
  if (/^https?:\/\//.test(source)) return `url-${crypto().createHash('sha256').update(source).digest('hex').slice(0, 16)}`;
  return source.replace(/[^A-Za-z0-9_.-]/g, '_');
}

/** The saved copy of the `index`th source: `NN-<key>`, so that the loader reads them in `data_sources` order. */
export function userdataName(index: number, source: string): string {
  return `${String(index).padStart(2, '0')}-${sourceKey(source)}`;
}

export interface UserdataPlan {
  /** Saved copies whose source is still listed, at a new place in the list: old name to new name. */
  rename: [string, string][];
  /** Saved copies whose source left `data_sources`. */
  remove: string[];
}

/**
 * Which saved copies still belong to a listed source (pure). Copies named
 * `NN-url-NN` (an index rather than a hash) belong to the URL at that index.
 */
export function planUserdata(saved: string[], sources: string[]): UserdataPlan {
  const plan: UserdataPlan = { rename: [], remove: [] };
  const placeOf = new Map<string, number>();
  for (const [i, s] of sources.entries()) if (!placeOf.has(sourceKey(s))) placeOf.set(sourceKey(s), i);
  for (const name of saved) {
    const m = /^(\d+)-(.+?)(\.user-data)?$/.exec(name);
    let key = m?.[2];
    const legacy = key && /^url-(\d+)$/.exec(key);
    if (legacy && Number(legacy[1]) === Number(m![1]) && /^https?:\/\//.test(sources[Number(legacy[1])] ?? '')) key = sourceKey(sources[Number(legacy[1])]!);
    const place = key === undefined ? undefined : placeOf.get(key);
    const want = place === undefined ? undefined : `${userdataName(place, sources[place]!)}${m?.[3] ?? ''}`;
    if (want === undefined) plan.remove.push(name);
    else if (want !== name) plan.rename.push([name, want]);
  }
  return plan;
}

/** Whether the config's own list of data sources may be wrong this boot (an error in it, or a file that did not read). */
function sourcesUncertain(problems: Diagnostic[]): boolean {
  return problems.some((d) => d.severity === 'error' && !d.file.startsWith(CONFIG_PATHS.userdata) && (d.path === '' || /data_?sources?|datasource/i.test(d.path)));
}

/**
 * Drops the saved user-data of sources no longer in `data_sources`, and
 * renames the copies of sources that moved in the list. Nothing is dropped
 * while the config that lists the sources has errors (a typo must not lose
 * a node's user-data). Returns the names it dropped.
 */
export function pruneUserdata(ctx: NodeContext): string[] {
  if (sourcesUncertain(ctx.configProblems)) {
    ctx.log.info('data sources: saved user-data kept as it is: the config that lists data_sources has errors');
    return [];
  }
  const dir = at(ctx, CONFIG_PATHS.userdata);
  let saved: string[] = [];
  try {
    saved = readdirSync(dir).filter((n) => !n.startsWith('.'));
  } catch {
    return [];
  }
  const plan = planUserdata(saved, ctx.config.cairn?.data_sources ?? []);
  for (const name of plan.remove) {
    rmSync(join(dir, name), { force: true });
    ctx.log.info(`data sources: the user-data saved as ${name} no longer applies: its source is not in data_sources`);
  }
  for (const [from, to] of plan.rename) renameSync(join(dir, from), join(dir, to));
  return plan.remove;
}

/** The suffix of the saved user-data of a source that also gives metadata (read after it: user-data overrides). */
export const USERDATA_SUFFIX = '.user-data';

/**
 * Fetches from the configured sources (`which`: the local ones, the
 * network ones, or all) and saves what each gives: a URL its user-data as
 * NN-<key>; a volume or a metadata service the config its metadata gives
 * (hostname, SSH keys) as NN-<key> and its user-data as
 * NN-<key>.user-data, read after it. Returns the sources that answered.
 */
/**
 * Whether a failed source may answer later: it did not answer (no route, a
 * timeout, a refused connection) or answered a server error. Not when it
 * answered in another format, or said the item is not there (4xx).
 */
export function worthRetrying(e: unknown): boolean {
  if (e instanceof MetadataFormatError) return false;
  const status = /: HTTP (\d{3})\b/.exec((e as Error).message ?? '');
  return !status || Number(status[1]) >= 500;
}

/**
 * Reads the data sources (`which`: the local volumes, the network ones, or
 * all; `only`: just these). A network source that could not be reached is
 * added to `missed` (see worthRetrying), to be asked again in the background.
 */
export async function fetchDataSources(ctx: NodeContext, which: 'local' | 'network' | 'all' = 'all', opts: { only?: string[]; missed?: string[] } = {}): Promise<string[]> {
  const found: string[] = [];
  const sources = ctx.config.cairn?.data_sources ?? [];
  for (const [i, source] of sources.entries()) {
    if (which !== 'all' && isLocalSource(source) !== (which === 'local')) continue;
    if (opts.only && !opts.only.includes(source)) continue;
    let got: Metadata | undefined;
    let plain = false;
    try {
      if (/^https?:\/\//.test(source)) {
        got = { sshKeys: [], userData: await ctx.fetch(source, { timeoutMs: 10_000 }) };
        plain = true;
      } else if (PROVIDERS[source]) {
        got = await PROVIDERS[source](ctx.fetch);
      } else {
        got = await fromVolume(ctx, source);
      }
    } catch (e) {
      ctx.log.debug(`data source ${urlForLog(source)}: ${withoutQuery((e as Error).message, source)}`);
      if (!isLocalSource(source) && worthRetrying(e)) opts.missed?.push(source);
    }
    if (!got) continue;
    const dir = at(ctx, CONFIG_PATHS.userdata);
    const base = `${dir}/${userdataName(i, source)}`;
    const userData = got.userData !== undefined && got.userData.trim() ? got.userData : undefined;
    // A `#!` script runs as the last run_cmd: executable, by root only.
    const save = (file: string, data: string | undefined) => {
      if (data === undefined) rmSync(file, { force: true });
      else writeFileAtomic(file, data, { mode: data.startsWith('#!') ? 0o700 : 0o600 });
    };
    if (plain) {
      if (!userData) continue;
      save(base, userData);
    } else {
      const meta = metadataConfig(got);
      if (!meta && !userData) continue;
      save(base, meta);
      save(`${base}${USERDATA_SUFFIX}`, userData);
    }
    found.push(source);
  }
  return found;
}
