// The image spec: the shipped specs are valid; every kind of mistake is
// reported with file:line:col and the key path.
import t from 'tap';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { loadSpec, parseSpec, SpecError } from '../../src/builder/spec.js';
import { REPO } from './support.js';

t.test('images/default.yaml and images/agent.yaml are valid', async (t) => {
  const d = loadSpec(path.join(REPO, 'images/default.yaml'));
  t.equal(d.name, 'default');
  t.same(d.arches, ['amd64', 'arm64', 'armv7']);
  t.equal(d.debian.suite, 'trixie');
  t.equal(d.debian.mirror, 'http://deb.debian.org/debian');
  t.ok(d.manifests.some((m) => m.endsWith('system-upgrade-controller.yaml')), 'ships system-upgrade-controller');
  t.ok(d.manifests.every((m) => path.isAbsolute(m)), 'paths made absolute');
  t.same(d.squashfs, { compression: 'zstd', level: 19 });
  t.notOk('hostname' in d.config, 'no hostname baked in: every node names itself');
  t.notOk((d.config.cairn as { k3s_args?: string[] }).k3s_args, 'a server unless the config names a server to join');
  const a = loadSpec(path.join(REPO, 'images/agent.yaml'));
  t.same((a.config.cairn as { k3s_args: string[] }).k3s_args, ['agent']);
});

const base = `name: x
version: 1.0.0
arches: [amd64]
debian:
  suite: trixie
k3s:
  version: v1.33.5+k3s1
`;

function problems(text: string) {
  try {
    parseSpec(text, 'images/x.yaml');
  } catch (err) {
    if (err instanceof SpecError) return err;
    throw err;
  }
  throw new Error('no error');
}

t.test('a minimal spec gets defaults', async (t) => {
  const s = parseSpec(base, '/tmp/x.yaml');
  t.same(s.formats, ['iso']);
  t.equal(s.modules.profile, 'default');
  t.same(s.packages, []);
  t.equal(s.cmdline, '');
});

t.test('a snapshot sets the snapshot mirror', async (t) => {
  const s = parseSpec(base.replace('suite: trixie', 'suite: trixie\n  snapshot: 20250101T000000Z'), '/tmp/x.yaml');
  t.equal(s.debian.mirror, 'http://snapshot.debian.org/archive/debian/20250101T000000Z');
});

t.test('unknown key: line of the key, its path', async (t) => {
  const e = problems(`${base}pakages: [vim]\n`);
  t.equal(e.problems.length, 1);
  t.match(e.problems[0], { line: 8, col: 1, keyPath: 'pakages', message: /unknown key "pakages"/ });
  t.match(e.message, /images\/x\.yaml:8:1: pakages: unknown key/);
});

t.test('unknown arch: line of the item', async (t) => {
  const e = problems(base.replace('arches: [amd64]', 'arches:\n  - amd64\n  - riscv64'));
  t.match(e.problems[0], { line: 5, col: 5, keyPath: 'arches[1]', message: /must be one of "amd64", "arm64", "armv7"/ });
});

t.test('unknown format and bad sha256, both reported at once', async (t) => {
  const e = problems(`${base}  sha256:\n    amd64: abc\nformats: [iso, floppy]\n`);
  t.equal(e.problems.length, 2);
  t.match(e.problems[0], { line: 9, keyPath: 'k3s.sha256.amd64' });
  t.match(e.problems[1], { line: 10, keyPath: 'formats[1]' });
});

t.test('missing required key', async (t) => {
  const e = problems(base.replace('version: 1.0.0\n', ''));
  t.match(e.problems[0], { line: 1, keyPath: '', message: /missing required key "version"/ });
});

t.test('k3s needs a version or a path', async (t) => {
  const e = problems(base.replace('  version: v1.33.5+k3s1\n', '  sha256: {}\n'));
  t.match(e.problems[0], { keyPath: 'k3s', line: 7 });
});

t.test('a pinned sha256 for an arch the spec does not build', async (t) => {
  const e = problems(`${base}  sha256:\n    arm64: ${'a'.repeat(64)}\n`);
  t.match(e.problems[0], { line: 9, col: 5, keyPath: 'k3s.sha256.arm64', message: /arm64 is not in arches/ });
});

t.test('files need a source or a content', async (t) => {
  const e = problems(`${base}files:\n  - path: /etc/x\n    mode: "0644"\n`);
  t.match(e.problems[0], { line: 9, keyPath: 'files[0]' });
});

t.test('YAML syntax error is located', async (t) => {
  const e = problems(`${base}packages: [vim\n`);
  t.equal(e.problems[0]!.file, 'images/x.yaml');
  t.ok(e.problems[0]!.line >= 8);
});

t.test('duplicate keys are errors', async (t) => {
  const e = problems(`${base}cmdline: a\ncmdline: b\n`);
  t.match(e.problems[0], { line: 9 });
});

t.test('a missing spec file is a user error', async (t) => {
  t.throws(() => loadSpec('/nonexistent/spec.yaml'), { name: 'UserError', message: /cannot read image spec \/nonexistent\/spec\.yaml: ENOENT/ });
});

t.test('the default cloud-config is checked by the config schema, located in the spec', async (t) => {
  const e = problems(`${base}config:\n  hostname: ok\n  cairn:\n    ntp_servers: 5\n    k3s_args:\n      - server\n      - {bad: map}\n`);
  t.ok(e.problems.length >= 1);
  t.ok(e.problems.every((p) => p.keyPath.startsWith('config.')), e.problems.map((p) => `${p.line}:${p.keyPath}: ${p.message}`).join('\n'));
  t.ok(e.problems.some((p) => p.line >= 11), 'located on the config lines');
});

t.test('the formats enum of images/schema.json is the format table\'s', async (t) => {
  const { FORMATS } = await import('../../src/builder/formats.js');
  const file = JSON.parse(readFileSync(new URL('../../images/schema.json', import.meta.url), 'utf8')) as { properties: { formats: { items: { enum: string[] } } } };
  t.same(file.properties.formats.items.enum, FORMATS, 'the file editors read lists every format, in the table\'s order');
  t.throws(() => parseSpec('name: x\nversion: 1.0.0\narches: [amd64]\ndebian: {suite: trixie}\nk3s: {}\nformats: [rpi4]\n', 'x.yaml'), { message: /formats\[0\]: must be one of "iso", "pxe", "raw", "qcow2", "oci"/ });
});
