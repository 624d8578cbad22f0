// Fleets: one checked cloud-config per site from a template and a CSV
// table (src/config/fleet.ts), and `cairn config render` writing them (mode
// 0600, with --seeds a cidata ISO each), or nothing when any site is bad.
import t from 'tap';
import { spawnSync, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { formatDiagnostic } from '../../src/config/diagnostics.js';
import { renderFleet } from '../../src/config/fleet.js';
import { readConfig } from '../../src/config/read.js';

const FIX = new URL('../fixtures/fleet/', import.meta.url).pathname;
const TEMPLATE = readFileSync(join(FIX, 'site.yaml'), 'utf8');
const SITES = readFileSync(join(FIX, 'sites.csv'), 'utf8');
const CAIRN = new URL('../../bin/cairn', import.meta.url).pathname;
const TOKEN = 'K10abc::server:s3cr3t#1"quoted"';

const render = (template: string, csv: string) => renderFleet(template, 'site.yaml', csv, 'sites.csv');
const lines = (r: ReturnType<typeof render>) => r.diagnostics.map(formatDiagnostic);

t.test('one config per site, each filled from its row and read as a node reads it', async (t) => {
  const r = render(TEMPLATE, SITES);
  t.same(lines(r), []);
  t.same(r.sites.map((s) => [s.hostname, s.line]), [['store-001', 2], ['store-002', 3]]);
  const c = readConfig(r.sites[0]!.text, 'store-001.yaml');
  t.same(c.diagnostics, []);
  const k3os = c.config.cairn as Record<string, unknown>; // k3os: is read as cairn:
  t.equal(c.config.hostname, 'store-001');
  t.equal(k3os.token, TOKEN, "a token with a colon, a # and quotes stays the token: it cannot change the YAML around it");
  t.equal(k3os.server_url, 'https://10.0.0.1:6443', 'a placeholder inside a longer string');
  t.same(k3os.labels, { 'cairn.io/site': 'store-001', 'topology.kubernetes.io/region': 'eu-west' });
  t.same(k3os.ntp_servers, ['pool.ntp.org']);
  t.match(r.sites[0]!.text, /^# One edge site/, "the template's comments are kept");
  t.equal((readConfig(r.sites[1]!.text, 'b').config.cairn as Record<string, unknown>).token, 'K10def::server:other');
});

t.test('bad tables and templates: located errors, no site rendered, no cell value shown', async (t) => {
  const cases: [string, string, string, RegExp][] = [
    ['a column the template uses is missing', TEMPLATE, SITES.replace(',ntp\n', '\n').replace(/,pool\.ntp\.org\n/, '\n').replace(/,192\.168\.1\.1\n/, '\n'), /^site\.yaml:12:8: error: \{\{ntp\}\}: sites\.csv has no column ntp \(it has hostname, site, region, server, token, ssh_key\)$/m],
    ['no hostname column', 'hostname: "{{name}}"\n', 'name\na\n', /^sites\.csv:1:1: error: the table has no hostname column \(it has name\): each site needs one, it names the site's file$/m],
    ['duplicate hostnames', TEMPLATE, `${SITES}${SITES.split('\n')[1]!.replace('eu-west', 'eu-south')}\n`, /^sites\.csv:4:1: error: hostname store-001 is on line 2 too: each site needs its own$/m],
    ['an empty cell the template uses', TEMPLATE, SITES.replace(',eu-north,', ',,'), /^sites\.csv:3:1: error: site store-002: the region cell is empty, and site\.yaml:10:37 uses it$/m],
    ['a value the schema refuses', TEMPLATE, SITES.replace('store-002,store-002', 'store_002!,store-002'), /^site\.yaml:2:11: error: hostname: site store_002! \(sites\.csv:3\): /m],
    ['a CSV that does not parse', TEMPLATE, SITES.replace('"K10abc', '"K10abc\n'.repeat(1)).replace('quoted"""', 'quoted'), /^sites\.csv:\d+:1: error: not a CSV table: /m],
    ['a placeholder outside quotes', 'hostname: {{hostname}}\n', 'hostname\na\n', /^site\.yaml:1:11: error: a placeholder must be inside a quoted string/m],
    ['a template that is not YAML', 'hostname: "a\n', 'hostname\na\n', /^site\.yaml:\d+:\d+: error: the template is not YAML: /m],
    ['a table without sites', TEMPLATE, 'hostname,site,region,server,token,ssh_key,ntp\n', /^sites\.csv:1:1: error: the table names its columns but has no sites$/m],
    ['a cell with a line break', TEMPLATE, SITES.replace('eu-north', '"eu\nnorth"'), /^sites\.csv:4:1: error: site store-002: the region cell holds a line break/m],
  ];
  for (const [what, template, csv, want] of cases) {
    const r = render(template, csv);
    const out = lines(r).join('\n');
    t.match(out, want, what);
    t.same(r.sites, [], `${what}: no site rendered`);
    t.notMatch(out, /s3cr3t|K10def/, `${what}: no token in the messages`);
  }
  const unused = render('hostname: "{{hostname}}"\n', 'hostname,extra\na,b\n');
  t.same(lines(unused), ['sites.csv:1:1: warning: column extra is not used by site.yaml'], 'an unused column is a warning');
  t.equal(unused.sites.length, 1);
});

t.test('cairn config render: 0600 files, seeds on request; nothing written when a site is bad', async (t) => {
  if (!existsSync(new URL('../../dist/cairn.js', import.meta.url))) execFileSync('npm', ['run', 'build'], { stdio: 'inherit' });
  const dir = t.testdir();
  const out = join(dir, 'out');
  const r = spawnSync(CAIRN, ['config', 'render', '--template', join(FIX, 'site.yaml'), '--sites', join(FIX, 'sites.csv'), '-o', out, '--seeds'], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /^2 sites written to /m);
  t.same(readdirSync(out).sort(), ['store-001.iso', 'store-001.yaml', 'store-002.iso', 'store-002.yaml']);
  for (const f of readdirSync(out)) t.equal(statSync(join(out, f)).mode & 0o777, 0o600, `${f} is for its owner only: it holds the token`);
  t.notMatch(r.stdout + r.stderr, /s3cr3t/, 'the token is not printed');
  const iso = readFileSync(join(out, 'store-002.iso'));
  t.ok(iso.includes('local-hostname: store-002'), "the seed's meta-data names the site");
  t.ok(iso.includes('K10def::server:other'), "and its user-data is the site's config");

  const bad = join(dir, 'bad.csv');
  writeFileSync(bad, SITES.replace('store-002,store-002', 'store-001,store-002'));
  const empty = join(dir, 'none');
  mkdirSync(empty);
  const b = spawnSync(CAIRN, ['config', 'render', '--template', join(FIX, 'site.yaml'), '--sites', bad, '-o', empty], { encoding: 'utf8' });
  t.equal(b.status, 1);
  t.match(b.stderr, /bad\.csv:3:1: error: hostname store-001 is on line 2 too/);
  t.match(b.stderr, /^cairn: no config written: fix the 1 problem\(s\) above$/m);
  t.same(readdirSync(empty), [], 'not even the good site is written');
  const missing = spawnSync(CAIRN, ['config', 'render', '--template', join(dir, 'nope.yaml'), '--sites', bad, '-o', empty], { encoding: 'utf8' });
  t.equal(missing.status, 1);
  t.match(missing.stderr, /nope\.yaml:1:1: error: no such file; check the path/);
});
