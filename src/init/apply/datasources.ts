/**
 * Data sources: where a node finds more config at boot (user-data), as k3OS'
 * `data_sources`. What is found is saved in /var/lib/cairn/userdata/<source>,
 * which the config loader reads after the node's own config.yaml.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { at, type NodeContext } from '../context.js';
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
    let name = source;
    try {
      if (/^https?:\/\//.test(source)) {
        name = `url-${i}`;
        data = await ctx.fetch(source, { timeoutMs: 10_000 });
      } else if (METADATA[source]) {
        data = await ctx.fetch(METADATA[source].url, { timeoutMs: 3000, headers: METADATA[source].headers });
      } else {
        data = await fromVolume(ctx, source);
      }
    } catch (e) {
      ctx.log.debug(`data source ${source}: ${(e as Error).message}`);
    }
    if (data !== undefined && data.trim()) {
      writeFileAtomic(at(ctx, `${CONFIG_PATHS.userdata}/${String(i).padStart(2, '0')}-${name}`), data, { mode: 0o600 });
      found.push(source);
    }
  }
  return found;
}
