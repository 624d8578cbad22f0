// `cairn build` as a user runs it (the bundled CLI): bad input is reported
// with exit code 1 and a message that says what to do.
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { REPO, tempDir, writeSpec } from './support.js';

const CAIRN = path.join(REPO, 'bin/cairn');

function cairn(...args: string[]) {
  const r = spawnSync(CAIRN, args, { encoding: 'utf8', cwd: REPO, env: { ...process.env, NO_COLOR: '1' } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

t.before(() => {
  if (!existsSync(path.join(REPO, 'dist/cairn.js'))) execFileSync('npm', ['run', 'build'], { cwd: REPO, stdio: 'inherit' });
});

t.test('cairn build --help lists the options', async (t) => {
  const r = cairn('build', '--help');
  t.equal(r.code, 0);
  for (const o of ['--arch', '--format', '--out', '--cache', '--no-cache', '--k3s', '--json']) t.match(r.out, o);
});

t.test('unknown arch', async (t) => {
  const r = cairn('build', 'images/default.yaml', '--arch', 'amd64,sparc');
  t.equal(r.code, 1);
  t.match(r.err, /unknown arch "sparc"\narches are amd64, arm64, armv7/);
});

t.test('unknown format', async (t) => {
  const r = cairn('build', 'images/default.yaml', '--format', 'iso,floppy');
  t.equal(r.code, 1);
  t.match(r.err, /unknown format "floppy"/);
});

t.test('a format an arch cannot have', async (t) => {
  const r = cairn('build', 'images/default.yaml', '--arch', 'armv7', '--format', 'iso');
  t.equal(r.code, 1);
  t.match(r.err, /cannot build iso for armv7/);
});

t.test('an arch the spec is not made for', async (t) => {
  const dir = await tempDir();
  const spec = await writeSpec(dir, { arches: ['amd64'] });
  const r = cairn('build', spec, '--arch', 'arm64');
  t.equal(r.code, 1);
  t.match(r.err, /is not made for arm64/);
});

t.test('spec errors: file:line:col and key path, no stack', async (t) => {
  const dir = await tempDir();
  const spec = path.join(dir, 'bad.yaml');
  writeFileSync(spec, 'name: bad\nversion: 1\narches: [amd64, z80]\ndebian: {suite: trixie}\nk3s: {version: v1.33.5+k3s1}\nextra: 1\n');
  const r = cairn('build', spec);
  t.equal(r.code, 1);
  t.match(r.err, `${spec}:3:17: arches[1]: must be one of`);
  t.match(r.err, `${spec}:6:1: extra: unknown key "extra"`);
  t.notMatch(r.err, /at .*\.js:\d+/);
});

t.test('a missing spec file', async (t) => {
  const r = cairn('build', 'images/nope.yaml');
  t.equal(r.code, 1);
  t.match(r.err, /cannot read image spec images\/nope\.yaml: ENOENT/);
});
