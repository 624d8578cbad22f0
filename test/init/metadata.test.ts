// Cloud metadata services, each in its provider's format (responses shaped
// as the providers document and serve them): hostname, SSH keys and
// user-data, the requests each provider wants (IMDSv2's token, GCP's
// header), missing items, and answers that are not the provider's format.
import t from 'tap';
import { PROVIDERS, gcpSshKeys, metadataConfig, shortHostname } from '../../src/init/apply/metadata.js';
import { nocloudMetadata } from '../../src/init/apply/datasources.js';
import type { Fetch } from '../../src/init/context.js';
import { readConfig } from '../../src/config/read.js';

const KEY1 = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBn3Yw5Pp6kW0rVx1m0b7s4m1Zc3bJ8v3y1QmW5a2Xo ops@hq';
const KEY2 = 'ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 admin@laptop';

interface Req { url: string; method: string; headers: Record<string, string> }

/** A service from a table of URL → body (a number: that HTTP status); records every request. */
function service(routes: Record<string, string | number>, check?: (r: Req) => void): { get: Fetch; reqs: Req[] } {
  const reqs: Req[] = [];
  const get: Fetch = async (url, o = {}) => {
    const r = { url, method: o.method ?? 'GET', headers: o.headers ?? {} };
    reqs.push(r);
    check?.(r);
    const body = routes[`${r.method} ${url}`] ?? routes[url];
    if (body === undefined) throw new Error(`${url}: HTTP 404`);
    if (typeof body === 'number') throw new Error(`${url}: HTTP ${body}`);
    return body;
  };
  return { get, reqs };
}

t.test('aws: IMDSv2, the token first and on every request', async (t) => {
  const b = 'http://169.254.169.254/latest';
  const { get, reqs } = service({
    [`PUT ${b}/api/token`]: 'AQAEAN-token==',
    [`${b}/meta-data/local-hostname`]: 'ip-172-31-1-2.eu-west-1.compute.internal',
    [`${b}/meta-data/public-keys/`]: '0=ops\n1=admin',
    [`${b}/meta-data/public-keys/0/openssh-key`]: `${KEY1}\n`,
    [`${b}/meta-data/public-keys/1/openssh-key`]: `${KEY2}\n`,
    [`${b}/user-data`]: '#cloud-config\nhostname: edge-7\n',
  }, (r) => {
    if (r.method === 'GET' && r.headers['X-aws-ec2-metadata-token'] !== 'AQAEAN-token==') throw new Error(`${r.url}: HTTP 401`);
  });
  t.same(await PROVIDERS.aws!(get), { hostname: 'ip-172-31-1-2', sshKeys: [KEY1, KEY2], userData: '#cloud-config\nhostname: edge-7\n' });
  t.same([reqs[0]!.method, reqs[0]!.url, reqs[0]!.headers['X-aws-ec2-metadata-token-ttl-seconds']], ['PUT', `${b}/api/token`, '21600'], 'the token is asked for first, with a TTL');
  // no user-data and no keys on this instance: 404s are not errors
  const bare = service({ [`PUT ${b}/api/token`]: 't', [`${b}/meta-data/local-hostname`]: 'ip-10-0-0-1' });
  t.same(await PROVIDERS.aws!(bare.get), { hostname: 'ip-10-0-0-1', sshKeys: [], userData: undefined });
  // IMDSv1 only (the PUT refused): an error, not a guess
  await t.rejects(PROVIDERS.aws!(service({ [`PUT ${b}/api/token`]: 403 }).get), /HTTP 403/);
});

t.test('gcp: Metadata-Flavor: Google, ssh-keys as user:key lines, the short hostname', async (t) => {
  const b = 'http://metadata.google.internal/computeMetadata/v1';
  const { get, reqs } = service({
    [`${b}/instance/hostname`]: 'edge-3.europe-west1-b.c.my-project.internal',
    [`${b}/instance/attributes/ssh-keys`]: `ops:${KEY1}\nadmin:${KEY2} google-ssh {"userName":"admin@example.com","expireOn":"2027-01-01T00:00:00+0000"}\n`,
    [`${b}/project/attributes/ssh-keys`]: `ops:${KEY1}\n`,
    [`${b}/instance/attributes/user-data`]: 'run_cmd: [x]\n',
  });
  const md = await PROVIDERS.gcp!(get);
  t.equal(md.hostname, 'edge-3');
  t.same(md.sshKeys, [KEY1, `${KEY2} google-ssh {"userName":"admin@example.com","expireOn":"2027-01-01T00:00:00+0000"}`], "each key once, without its user: prefix");
  t.equal(md.userData, 'run_cmd: [x]\n');
  t.ok(reqs.every((r) => r.headers['Metadata-Flavor'] === 'Google'), 'every request says Metadata-Flavor: Google');
  t.same(gcpSshKeys('# comment\n\nops:ecdsa-sha2-nistp256 AAAAE2 x\n'), ['ecdsa-sha2-nistp256 AAAAE2 x']);
});

t.test('openstack: meta_data.json and user_data', async (t) => {
  const b = 'http://169.254.169.254/openstack/latest';
  const { get } = service({
    [`${b}/meta_data.json`]: JSON.stringify({ uuid: 'd8e02d56', hostname: 'edge-5.novalocal', name: 'edge-5', public_keys: { mykey: `${KEY1}\n` }, availability_zone: 'nova' }),
    [`${b}/user_data`]: '#cloud-config\nntp: {servers: [ntp.local]}\n',
  });
  t.same(await PROVIDERS.openstack!(get), { hostname: 'edge-5', sshKeys: [KEY1], userData: '#cloud-config\nntp: {servers: [ntp.local]}\n' });
  await t.rejects(PROVIDERS.openstack!(service({ [`${b}/meta_data.json`]: '<html>' }).get), { message: /^openstack meta_data\.json is not JSON: / });
  await t.rejects(PROVIDERS.openstack!(service({ [`${b}/meta_data.json`]: '[]' }).get), { message: 'openstack meta_data.json is not a JSON object' });
});

t.test('digitalocean, hetzner, scaleway, vultr, packet: each its own format', async (t) => {
  const ud = '#cloud-config\nhostname: from-user-data\n';
  const cases: [string, Record<string, string>][] = [
    ['digitalocean', { 'http://169.254.169.254/metadata/v1.json': JSON.stringify({ droplet_id: 1, hostname: 'edge-do', public_keys: [KEY1], user_data: ud, region: 'ams3' }) }],
    ['hetzner', {
      'http://169.254.169.254/hetzner/v1/metadata': `hostname: edge-hz\ninstance-id: 42\npublic-keys:\n- ${KEY1}\nregion: eu-central\n`,
      'http://169.254.169.254/hetzner/v1/userdata': ud,
    }],
    ['scaleway', {
      'http://169.254.42.42/conf?format=json': JSON.stringify({ id: 'x', hostname: 'edge-scw', ssh_public_keys: [{ key: KEY1, fingerprint: '256 MD5:aa' }] }),
      'http://169.254.42.42/user_data/cloud-init': ud,
    }],
    ['vultr', {
      'http://169.254.169.254/v1.json': JSON.stringify({ hostname: 'edge-vultr', 'instance-id': 'abc', 'public-keys': [KEY1] }),
      'http://169.254.169.254/user-data/user-data': ud,
    }],
    ['packet', {
      'https://metadata.platformequinix.com/metadata': JSON.stringify({ id: 'u', hostname: 'edge-em', ssh_keys: [KEY1], facility: 'am6' }),
      'https://metadata.platformequinix.com/userdata': ud,
    }],
  ];
  for (const [name, routes] of cases) {
    const md = await PROVIDERS[name]!(service(routes).get);
    t.same(md, { hostname: `edge-${{ digitalocean: 'do', hetzner: 'hz', scaleway: 'scw', vultr: 'vultr', packet: 'em' }[name]}`, sshKeys: [KEY1], userData: ud }, name);
  }
  await t.rejects(PROVIDERS.hetzner!(service({ 'http://169.254.169.254/hetzner/v1/metadata': 'a: [' }).get), { message: /^hetzner metadata is not YAML: / });
  await t.rejects(PROVIDERS.digitalocean!(service({}).get), /HTTP 404/, 'no metadata at all is an error');
});

t.test('NoCloud meta-data and the config the metadata gives', async (t) => {
  t.same(nocloudMetadata('instance-id: iid-1\nlocal-hostname: edge-nc.example\npublic-keys:\n  k1: ' + KEY1 + '\n'), { hostname: 'edge-nc', sshKeys: [KEY1] }, 'public-keys as a map');
  t.same(nocloudMetadata('instance-id: iid-1\n'), { sshKeys: [] });
  t.same(nocloudMetadata(': ['), { sshKeys: [] }, 'meta-data that is not YAML gives nothing (the user-data is still read)');
  t.equal(shortHostname('  '), undefined);
  const text = metadataConfig({ hostname: 'edge-1', sshKeys: [KEY1, 'ssh-ed25519 AAAA "quoted" #x'] })!;
  const c = readConfig(text, 'md');
  t.same(c.diagnostics, []);
  t.same(c.config, { hostname: 'edge-1', ssh_authorized_keys: [KEY1, 'ssh-ed25519 AAAA "quoted" #x'] }, 'a valid config whatever the keys hold');
  t.equal(metadataConfig({ sshKeys: [] }), undefined, 'nothing to say: no file');
});
