/**
 * Data sources: where a node finds more config at boot (user-data), as k3OS'
 * `data_sources`. What is found is saved in /var/lib/cairn/userdata/NN-<source>
 * (NN: the source's place in `data_sources`), which the config loader reads
 * after the node's own config.yaml. A saved copy belongs to its source: it
 * keeps applying while the source is listed, also when the source is not
 * there at a boot (a seed stick taken out, a metadata service down), and
 * stops applying when the source leaves `data_sources`.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Diagnostic } from '../../config/diagnostics.js';
import { at, urlForLog, withoutQuery, type NodeContext } from '../context.js';
import { writeFileAtomic } from './files.js';
import { CONFIG_PATHS } from '../../config/loader.js';

/** Cloud metadata services: the URL of the user-data and the headers they want. */
export const METADATA: Record<string, { url: string; headers?: Record<string, string> }> = {
  aws: { url: 'http://169.254.169.254/latest/user-data' },
  digitalocean: { url: 'http://169.254.169.254/metadata/v1/user-data' },
  gcp: { url: 'http://metadata.google.internal/computeMetadata/v1/instance/attributes/user-data', headers: { 'Metadata-Flavor': 'Google' } },
  hetzner: { url: 'http://169.254.169.254/hetzner/v1/userdata' },
  openstack: { url: 'http://169.254.169.254/openstack/latest/user_data' },
  packet: { url: 'https://metadata.platformequinix.com/userdata' },
  scaleway: { url: 'http://169.254.42.42/user_data/cloud-init' },
  vultr: { url: 'http://169.254.169.254/user-data/user-data' },
};

/** Volume labels a NoCloud seed or a config CD may carry. */
const VOLUME_LABELS: Record<string, string[]> = { nocloud: ['cidata', 'CIDATA'], cdrom: ['cidata', 'CIDATA', 'config-2', 'CONFIG-2'] };
const VOLUME_FILES = ['user-data', 'openstack/latest/user_data', 'config.yaml'];

async function fromVolume(ctx: NodeContext, kind: string): Promise<string | undefined> {
  for (const label of VOLUME_LABELS[kind] ?? []) {
    const found = await ctx.exec('blkid', ['-L', label], { timeoutMs: 10_000 });
    const dev = found.stdout.trim().split('\n')[0];
    if (found.code !== 0 || !dev) continue;
    const mnt = mkdtempSync(at(ctx, '/run/cairn/ds-'));
    try {
      const m = await ctx.exec('mount', ['-o', 'ro', dev, mnt], { timeoutMs: 15_000 });
      if (m.code !== 0) {
        ctx.log.info(`data source ${kind}: ${dev} (${label}) does not mount: ${m.stderr.trim()}`);
        continue;
      }
      try {
        for (const f of VOLUME_FILES) {
          try {
            return readFileSync(join(mnt, f), 'utf8');
          } catch {
            // try the next name
          }
        }
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
  if (/^https?:\/\//.test(source)) return `url-${createHash('sha256').update(source).digest('hex').slice(0, 16)}`;
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
    const m = /^(\d+)-(.+)$/.exec(name);
    let key = m?.[2];
    const legacy = key && /^url-(\d+)$/.exec(key);
    if (legacy && Number(legacy[1]) === Number(m![1]) && /^https?:\/\//.test(sources[Number(legacy[1])] ?? '')) key = sourceKey(sources[Number(legacy[1])]!);
    const place = key === undefined ? undefined : placeOf.get(key);
    if (place === undefined) plan.remove.push(name);
    else if (userdataName(place, sources[place]!) !== name) plan.rename.push([name, userdataName(place, sources[place]!)]);
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

/**
 * Fetches user-data from the configured sources (`which`: the local ones,
 * the network ones, or all); returns the names of the sources that gave some.
 */
export async function fetchDataSources(ctx: NodeContext, which: 'local' | 'network' | 'all' = 'all'): Promise<string[]> {
  const found: string[] = [];
  const sources = ctx.config.cairn?.data_sources ?? [];
  for (const [i, source] of sources.entries()) {
    if (which !== 'all' && isLocalSource(source) !== (which === 'local')) continue;
    let data: string | undefined;
    try {
      if (/^https?:\/\//.test(source)) {
        data = await ctx.fetch(source, { timeoutMs: 10_000 });
      } else if (METADATA[source]) {
        data = await ctx.fetch(METADATA[source].url, { timeoutMs: 3000, headers: METADATA[source].headers });
      } else {
        data = await fromVolume(ctx, source);
      }
    } catch (e) {
      ctx.log.debug(`data source ${urlForLog(source)}: ${withoutQuery((e as Error).message, source)}`);
    }
    if (data !== undefined && data.trim()) {
      // A `#!` script runs as the last run_cmd: executable, by root only.
      writeFileAtomic(at(ctx, `${CONFIG_PATHS.userdata}/${userdataName(i, source)}`), data, { mode: data.startsWith('#!') ? 0o700 : 0o600 });
      found.push(source);
    }
  }
  return found;
}
