/**
 * Cloud metadata services, each read in its provider's own format: the
 * node's hostname, its SSH keys and its user-data, where the provider has
 * them. k3OS' data source names: aws, gcp, openstack, digitalocean,
 * hetzner, scaleway, vultr, packet.
 *
 *   aws           IMDSv2: PUT /latest/api/token first, then every request
 *                 with the token: meta-data/local-hostname,
 *                 meta-data/public-keys/ (N=name lines) and each
 *                 N/openssh-key, user-data
 *   gcp           Metadata-Flavor: Google; instance/hostname (the first
 *                 label), the ssh-keys attributes of the instance and the
 *                 project (user:key lines), instance/attributes/user-data
 *   openstack     openstack/latest/meta_data.json (hostname, public_keys),
 *                 openstack/latest/user_data
 *   digitalocean  metadata/v1.json (hostname, public_keys, user_data)
 *   hetzner       hetzner/v1/metadata (YAML: hostname, public-keys),
 *                 hetzner/v1/userdata
 *   scaleway      169.254.42.42/conf?format=json (hostname,
 *                 ssh_public_keys[].key), user_data/cloud-init
 *   vultr         v1.json (hostname, public-keys), user-data/user-data
 *   packet        metadata.platformequinix.com/metadata (hostname,
 *                 ssh_keys), /userdata
 *
 * A missing item (HTTP 404) is not an error; a service that does not
 * answer, or answers with what is not its format, is. Parsing is pure:
 * the tests feed each provider recorded-format responses.
 */
import { load as parseYaml } from 'js-yaml';
import type { Fetch } from '../context.js';

export interface Metadata {
  hostname?: string;
  sshKeys: string[];
  userData?: string;
}

export type Provider = (get: Fetch) => Promise<Metadata>;

/** Where each provider's service is (what the clock check and the logs name). */
export const PROVIDER_URLS: Record<string, string> = {
  aws: 'http://169.254.169.254/latest/',
  gcp: 'http://metadata.google.internal/computeMetadata/v1/',
  openstack: 'http://169.254.169.254/openstack/latest/',
  digitalocean: 'http://169.254.169.254/metadata/v1.json',
  hetzner: 'http://169.254.169.254/hetzner/v1/',
  scaleway: 'http://169.254.42.42/conf',
  vultr: 'http://169.254.169.254/v1.json',
  packet: 'https://metadata.platformequinix.com/metadata',
};

const TIMEOUT_MS = 3000;

/** The item, or undefined when the service says it has none (404). */
/** A provider answered, but not in its format: asking again will not help (unlike a service that does not answer yet). */
export class MetadataFormatError extends Error {}

async function optional(p: Promise<string>): Promise<string | undefined> {
  try {
    return await p;
  } catch (e) {
    if (/HTTP 404\b/.test((e as Error).message)) return undefined;
    throw e;
  }
}

function json(text: string, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new MetadataFormatError(`${what} is not JSON: ${(e as Error).message}`);
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new MetadataFormatError(`${what} is not a JSON object`);
  return v as Record<string, unknown>;
}

/** The first DNS label of a hostname (GCP and OpenStack give FQDNs). */
export function shortHostname(h: unknown): string | undefined {
  if (typeof h !== 'string') return undefined;
  const first = h.trim().split('.')[0];
  return first ? first : undefined;
}

/** Key lines: trimmed, no comments or blanks, each once. */
function keys(list: unknown[]): string[] {
  const out: string[] = [];
  for (const k of list) {
    if (typeof k !== 'string') continue;
    for (const line of k.split('\n')) {
      const t = line.trim();
      if (t && !t.startsWith('#') && !out.includes(t)) out.push(t);
    }
  }
  return out;
}

const textOrUndefined = (v: unknown): string | undefined => (typeof v === 'string' && v.trim() ? v : undefined);

export const AWS_BASE = 'http://169.254.169.254';

/** GCP's ssh-keys attribute: `user:ssh-ed25519 AAAA... comment` lines (also `user:key google-ssh {...}`). */
export function gcpSshKeys(attr: string | undefined): string[] {
  if (!attr) return [];
  return keys(attr.split('\n').map((l) => l.trim().replace(/^[^\s:]+:(?=(ssh-|ecdsa-|sk-))/, '')));
}

export const PROVIDERS: Record<string, Provider> = {
  async aws(get) {
    const token = await get(`${AWS_BASE}/latest/api/token`, { method: 'PUT', headers: { 'X-aws-ec2-metadata-token-ttl-seconds': '21600' }, timeoutMs: TIMEOUT_MS });
    const headers = { 'X-aws-ec2-metadata-token': token.trim() };
    const md = (p: string) => get(`${AWS_BASE}/latest/${p}`, { headers, timeoutMs: TIMEOUT_MS });
    const hostname = shortHostname(await optional(md('meta-data/local-hostname')));
    const index = (await optional(md('meta-data/public-keys/'))) ?? '';
    const sshKeys: string[] = [];
    for (const line of index.split('\n')) {
      const n = /^(\d+)=/.exec(line.trim())?.[1];
      if (n === undefined) continue;
      const k = await optional(md(`meta-data/public-keys/${n}/openssh-key`));
      if (k) sshKeys.push(...keys([k]));
    }
    return { hostname, sshKeys, userData: textOrUndefined(await optional(md('user-data'))) };
  },
  async gcp(get) {
    const base = 'http://metadata.google.internal/computeMetadata/v1';
    const g = (p: string) => optional(get(`${base}/${p}`, { headers: { 'Metadata-Flavor': 'Google' }, timeoutMs: TIMEOUT_MS }));
    const hostname = shortHostname(await g('instance/hostname'));
    const sshKeys = keys([...gcpSshKeys(await g('instance/attributes/ssh-keys')), ...gcpSshKeys(await g('project/attributes/ssh-keys'))]);
    return { hostname, sshKeys, userData: textOrUndefined(await g('instance/attributes/user-data')) };
  },
  async openstack(get) {
    const base = `${AWS_BASE}/openstack/latest`;
    const md = json(await get(`${base}/meta_data.json`, { timeoutMs: TIMEOUT_MS }), 'openstack meta_data.json');
    return { ...openstackMetadata(md), userData: textOrUndefined(await optional(get(`${base}/user_data`, { timeoutMs: TIMEOUT_MS }))) };
  },
  async digitalocean(get) {
    const md = json(await get(`${AWS_BASE}/metadata/v1.json`, { timeoutMs: TIMEOUT_MS }), 'digitalocean metadata/v1.json');
    return { hostname: shortHostname(md.hostname), sshKeys: keys(Array.isArray(md.public_keys) ? md.public_keys : []), userData: textOrUndefined(md.user_data) };
  },
  async hetzner(get) {
    const text = await get(`${AWS_BASE}/hetzner/v1/metadata`, { timeoutMs: TIMEOUT_MS });
    let md: unknown;
    try {
      md = parseYaml(text);
    } catch (e) {
      throw new MetadataFormatError(`hetzner metadata is not YAML: ${(e as Error).message.split('\n')[0]}`);
    }
    if (!md || typeof md !== 'object') throw new MetadataFormatError('hetzner metadata is not a YAML map');
    const m = md as Record<string, unknown>;
    return { hostname: shortHostname(m.hostname), sshKeys: keys(Array.isArray(m['public-keys']) ? m['public-keys'] : []), userData: textOrUndefined(await optional(get(`${AWS_BASE}/hetzner/v1/userdata`, { timeoutMs: TIMEOUT_MS }))) };
  },
  async scaleway(get) {
    const base = 'http://169.254.42.42';
    const md = json(await get(`${base}/conf?format=json`, { timeoutMs: TIMEOUT_MS }), 'scaleway conf');
    const list = Array.isArray(md.ssh_public_keys) ? md.ssh_public_keys.map((k: unknown) => (k && typeof k === 'object' ? (k as { key?: unknown }).key : undefined)) : [];
    return { hostname: shortHostname(md.hostname), sshKeys: keys(list), userData: textOrUndefined(await optional(get(`${base}/user_data/cloud-init`, { timeoutMs: TIMEOUT_MS }))) };
  },
  async vultr(get) {
    const md = json(await get(`${AWS_BASE}/v1.json`, { timeoutMs: TIMEOUT_MS }), 'vultr v1.json');
    return { hostname: shortHostname(md.hostname), sshKeys: keys(Array.isArray(md['public-keys']) ? md['public-keys'] : []), userData: textOrUndefined(await optional(get(`${AWS_BASE}/user-data/user-data`, { timeoutMs: TIMEOUT_MS }))) };
  },
  async packet(get) {
    const base = 'https://metadata.platformequinix.com';
    const md = json(await get(`${base}/metadata`, { timeoutMs: TIMEOUT_MS }), 'packet metadata');
    return { hostname: shortHostname(md.hostname), sshKeys: keys(Array.isArray(md.ssh_keys) ? md.ssh_keys : []), userData: textOrUndefined(await optional(get(`${base}/userdata`, { timeoutMs: TIMEOUT_MS }))) };
  },
};

/** OpenStack's meta_data.json (the metadata service's and the config-2 drive's): hostname and public_keys {name: key}. */
export function openstackMetadata(md: Record<string, unknown>): Omit<Metadata, 'userData'> {
  const pk = md.public_keys && typeof md.public_keys === 'object' && !Array.isArray(md.public_keys) ? Object.values(md.public_keys as Record<string, unknown>) : [];
  return { hostname: shortHostname(md.hostname ?? md.name), sshKeys: keys(pk) };
}

/**
 * The node config the metadata gives (hostname, keys) as a cloud-config
 * document, for the config loader to read before the user-data (which
 * overrides it, as in cloud-init). Undefined when it gives neither.
 */
export function metadataConfig(md: Metadata): string | undefined {
  const lines: string[] = [];
  if (md.hostname) lines.push(`hostname: ${JSON.stringify(md.hostname)}`);
  if (md.sshKeys.length) lines.push('ssh_authorized_keys:', ...md.sshKeys.map((k) => `  - ${JSON.stringify(k)}`));
  return lines.length ? `# from the metadata service\n${lines.join('\n')}\n` : undefined;
}
