// The cairn command as a user runs it: the bundled CLI (npm test builds it first).
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const CAIRN = new URL('../bin/cairn', import.meta.url).pathname;
import { K3OS_SAMPLE as SAMPLE } from './support/shared.js';

function cairn(...args: string[]) {
  const r = spawnSync(CAIRN, args, { encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

t.before(() => {
  if (!existsSync(new URL('../dist/cairn.js', import.meta.url))) execFileSync('npm', ['run', 'build'], { stdio: 'inherit' });
});

t.test('every command has --help', async (t) => {
  for (const args of [[], ['config'], ['config', 'validate'], ['config', 'show']]) {
    const r = cairn(...args, '--help');
    t.equal(r.code, 0, `cairn ${args.join(' ')} --help`);
    t.match(r.out, /Usage: cairn/);
  }
});

t.test('config validate: the k3OS sample is ok (exit 0)', async (t) => {
  const r = cairn('config', 'validate', SAMPLE);
  t.equal(r.code, 0);
  t.match(r.out, /readme-sample-config\.yaml: ok/);
  t.equal(r.err, '');
});

t.test('config validate: every problem located, exit 1, no stack trace', async (t) => {
  const dir = t.testdir({ 'bad.yaml': 'hostname: "a b"\nk3os:\n  modules: {x: 1}\n  sysctlz: {}\n' });
  const r = cairn('config', 'validate', join(dir, 'bad.yaml'), join(dir, 'missing.yaml'));
  t.equal(r.code, 1);
  t.match(r.err, /bad\.yaml:1:11: error: hostname: expected a hostname/);
  t.match(r.err, /bad\.yaml:3:12: error: k3os\.modules\[0\]: expected a kernel module name, found a map/);
  t.match(r.err, /bad\.yaml:4:3: warning: k3os\.sysctlz: unknown key "sysctlz" in k3os, ignored; did you mean "sysctls"\?/);
  t.match(r.err, /missing\.yaml:1:1: error: no such file/);
  t.notMatch(r.err, /\n\s+at /, 'no stack trace');
});

t.test('config validate --json', async (t) => {
  const dir = t.testdir({ 'bad.yaml': 'hostname: [x]\n' });
  const r = cairn('config', 'validate', '--json', join(dir, 'bad.yaml'));
  t.equal(r.code, 1);
  const parsed = JSON.parse(r.out) as { ok: boolean; diagnostics: { line: number; path: string }[] };
  t.equal(parsed.ok, false);
  t.same(parsed.diagnostics.map((d) => [d.line, d.path]), [[1, 'hostname']]);
});

t.test('config show merges the sources and redacts secrets', async (t) => {
  const root = t.testdir();
  mkdirSync(join(root, 'cairn/system'), { recursive: true });
  writeFileSync(join(root, 'cairn/system/config.yaml'), 'hostname: node\nk3os:\n  token: T0KEN\n  wifi: [{name: home, passphrase: longenough}]\n');
  const r = cairn('config', 'show', '--root', root, '--cmdline', 'cairn.password=hunter22 cairn.labels[site]=x');
  t.equal(r.code, 0, r.err);
  t.match(r.out, /hostname: node/);
  t.match(r.out, /site: x/);
  t.notMatch(r.out, /T0KEN|hunter22|longenough/);
  t.match(r.out, /<redacted>/);
  const shown = cairn('config', 'show', '--root', root, '--cmdline', 'cairn.password=hunter22', '--show-secrets', '--json');
  const parsed = JSON.parse(shown.out) as { config: { cairn: { password: string; token: string } } };
  t.equal(parsed.config.cairn.password, 'hunter22');
  t.equal(parsed.config.cairn.token, 'T0KEN');
});

t.test('unknown command or option: exit 1 with a usage hint', async (t) => {
  const r = cairn('frobnicate');
  t.equal(r.code, 1);
  t.match(r.err, /unknown command 'frobnicate'/);
  t.equal(cairn('config', 'validate', '--nope', SAMPLE).code, 1);
});
