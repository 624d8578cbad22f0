// `cairn seed` and `cairn run` as a user runs them (the bundled CLI; npm test builds it first):
// the seed ISO's contents, and every kind of bad input.
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { K3OS_SAMPLE } from '../support/shared.js';

const CAIRN = new URL('../../bin/cairn', import.meta.url).pathname;

function cairn(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) {
  const r = spawnSync(process.execPath, [CAIRN, ...args], { encoding: 'utf8', cwd: opts.cwd, env: { ...process.env, NO_COLOR: '1', ...opts.env } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

t.before(() => {
  const dist = new URL('../../dist/cairn.js', import.meta.url);
  if (!existsSync(dist) || !readFileSync(dist, 'utf8').includes('registerSeed')) execFileSync('npm', ['run', 'build'], { stdio: 'inherit' });
});

/** The files of an ISO, extracted with xorriso. */
function extract(iso: string, into: string): Record<string, string> {
  execFileSync('xorriso', ['-osirrox', 'on', '-indev', iso, '-extract', '/', into], { stdio: 'ignore' });
  return Object.fromEntries(readdirSync(into).sort().map((n) => [n, readFileSync(path.join(into, n), 'utf8')]));
}

function pvdInfo(iso: string): string {
  return execFileSync('xorriso', ['-indev', iso, '-pvd_info'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
}

t.test('cairn seed: an ISO labelled cidata with user-data and meta-data (Joliet, Rock Ridge)', async (t) => {
  const dir = t.testdir({ 'node.yaml': 'hostname: edge-1\nssh_authorized_keys:\n  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEx test\n', out: {} });
  const r = cairn(['seed', path.join(dir, 'node.yaml'), '-o', path.join(dir, 'seed.iso')]);
  t.equal(r.code, 0, r.err);
  t.match(r.out, /seed\.iso: instance-id iid-cairn-[0-9a-f]{16}, hostname edge-1/);
  const iso = readFileSync(path.join(dir, 'seed.iso'));
  t.match(pvdInfo(path.join(dir, 'seed.iso')), /Volume Id\s*: cidata/);
  t.equal(iso[17 * 2048], 2, 'a supplementary volume descriptor (Joliet) follows the primary one');
  t.match(iso.toString('latin1', 17 * 2048 + 88, 17 * 2048 + 91), /^%\/[@CE]$/, 'Joliet escape sequence');
  t.ok(iso.includes('RRIP_1991A') || iso.includes('IEEE_P1282'), 'Rock Ridge');
  const files = extract(path.join(dir, 'seed.iso'), path.join(dir, 'out'));
  t.same(Object.keys(files), ['meta-data', 'user-data']);
  t.equal(files['user-data'], '#cloud-config\nhostname: edge-1\nssh_authorized_keys:\n  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEx test\n');
  t.match(files['meta-data'], /^instance-id: iid-cairn-[0-9a-f]{16}\nlocal-hostname: edge-1\n$/);
});

t.test('cairn seed: reproducible, and the default output is seed.iso', async (t) => {
  const dir = t.testdir({ 'c.yaml': '#cloud-config\nhostname: a\n' });
  t.equal(cairn(['seed', 'c.yaml'], { cwd: dir }).code, 0);
  t.equal(cairn(['seed', 'c.yaml', '-o', 'again.iso'], { cwd: dir }).code, 0);
  t.ok(readFileSync(path.join(dir, 'seed.iso')).equals(readFileSync(path.join(dir, 'again.iso'))), 'the same config gives the same bytes');
  const files = extract(path.join(dir, 'seed.iso'), path.join(dir, 'x'));
  t.equal(files['user-data'], '#cloud-config\nhostname: a\n', 'no second #cloud-config line');
});

t.test('cairn seed: k3OS\' README sample config', async (t) => {
  const dir = t.testdir();
  const r = cairn(['seed', K3OS_SAMPLE, '-o', path.join(dir, 'seed.iso')]);
  t.equal(r.code, 0, r.err);
  const files = extract(path.join(dir, 'seed.iso'), path.join(dir, 'x'));
  const sample = readFileSync(K3OS_SAMPLE, 'utf8');
  t.equal(files['user-data'], sample.startsWith('#cloud-config') ? sample : `#cloud-config\n${sample}`);
});

t.test('cairn seed: a bad config is reported with its location, exit 1, nothing written', async (t) => {
  const dir = t.testdir({ 'bad.yaml': 'hostname: ok\nk3os:\n  modules: {x: 1}\n' });
  const r = cairn(['seed', path.join(dir, 'bad.yaml'), '-o', path.join(dir, 'seed.iso')]);
  t.equal(r.code, 1);
  t.match(r.err, /bad\.yaml:3:12: error: k3os\.modules\[0\]: expected a kernel module name/);
  t.match(r.err, /no seed written/);
  t.notMatch(r.err, /\n\s+at /, 'no stack trace');
  t.notOk(existsSync(path.join(dir, 'seed.iso')));
});

t.test('cairn seed: warnings are shown, the seed is still written', async (t) => {
  const dir = t.testdir({ 'warn.yaml': 'k3os:\n  sysctlz: {}\n' });
  const r = cairn(['seed', path.join(dir, 'warn.yaml'), '-o', path.join(dir, 'seed.iso')]);
  t.equal(r.code, 0);
  t.match(r.err, /warn\.yaml:2:3: warning: k3os\.sysctlz/);
  t.ok(existsSync(path.join(dir, 'seed.iso')));
});

t.test('cairn seed: missing or unreadable config, YAML syntax errors', async (t) => {
  const dir = t.testdir({ 'syntax.yaml': 'hostname: [unclosed\n', folder: {} });
  const missing = cairn(['seed', path.join(dir, 'nope.yaml'), '-o', path.join(dir, 's.iso')]);
  t.equal(missing.code, 1);
  t.match(missing.err, /nope\.yaml:1:1: error: no such file; check the path/);
  const folder = cairn(['seed', path.join(dir, 'folder'), '-o', path.join(dir, 's.iso')]);
  t.equal(folder.code, 1);
  t.match(folder.err, /is a folder, not a file/);
  const syntax = cairn(['seed', path.join(dir, 'syntax.yaml'), '-o', path.join(dir, 's.iso')]);
  t.equal(syntax.code, 1);
  t.match(syntax.err, /syntax\.yaml:\d+:\d+: error: /);
  t.notOk(existsSync(path.join(dir, 's.iso')));
  t.equal(cairn(['seed']).code, 1, 'the config argument is required');
});

t.test('cairn run: a missing image, an unknown format, a folder without a boot script', async (t) => {
  const dir = t.testdir({ 'notes.txt': 'just text', pxe: {} });
  const missing = cairn(['run', path.join(dir, 'cairn.iso')]);
  t.equal(missing.code, 1);
  t.match(missing.err, /cairn\.iso does not exist/);
  t.notMatch(missing.err, /\n\s+at /);
  const unknown = cairn(['run', path.join(dir, 'notes.txt')]);
  t.equal(unknown.code, 1);
  t.match(unknown.err, /cannot tell what kind of image .*notes\.txt is/);
  t.match(unknown.err, /\.iso, \.raw\/\.img and \.qcow2/);
  const folder = cairn(['run', path.join(dir, 'pxe')]);
  t.equal(folder.code, 1);
  t.match(folder.err, /without an iPXE script/);
});

t.test('cairn run: a bad config is reported with its location before anything boots', async (t) => {
  const dir = t.testdir({ 'disk.img': Buffer.alloc(1024), 'bad.yaml': 'hostname: "a b"\n' });
  const r = cairn(['run', path.join(dir, 'disk.img'), '--config', path.join(dir, 'bad.yaml'), '--dry-run']);
  t.equal(r.code, 1);
  t.match(r.err, /bad\.yaml:1:11: error: hostname: expected a hostname/);
  t.match(r.err, /cairn config validate/);
  t.equal(r.out, '', 'no QEMU command');
  const missing = cairn(['run', path.join(dir, 'disk.img'), '--config', path.join(dir, 'nope.yaml'), '--dry-run']);
  t.equal(missing.code, 1);
  t.match(missing.err, /config .*nope\.yaml: no such file/);
});

t.test('cairn run: bad options', async (t) => {
  const dir = t.testdir({ 'disk.img': Buffer.alloc(1024) });
  const img = path.join(dir, 'disk.img');
  const cases: [string[], RegExp][] = [
    [['--arch', 'mips'], /unknown arch "mips"\nuse one of: amd64, arm64, armv7/],
    [['--mem', 'lots'], /--mem must be a whole number/],
    [['--cpus', '0'], /--cpus must be a whole number from 1/],
    [['--ssh-port', '70000'], /--ssh-port must be a whole number from 1 to 65535/],
    [['--firmware', 'coreboot'], /unknown firmware "coreboot"/],
    [['--arch', 'arm64', '--firmware', 'bios'], /arm64 has no BIOS firmware; use uefi/],
    [['--accel', 'hvf'], /unknown accelerator/],
    [['--disk-size', 'big'], /--disk-size must be a size/],
  ];
  for (const [args, message] of cases) {
    const r = cairn(['run', img, '--dry-run', ...args]);
    t.equal(r.code, 1, args.join(' '));
    t.match(r.err, message, args.join(' '));
  }
});

t.test('cairn run: qemu not installed: the apt-get line', async (t) => {
  const dir = t.testdir({ 'disk.img': Buffer.alloc(1024) });
  const r = cairn(['run', path.join(dir, 'disk.img'), '--arch', 'arm64'], { env: { PATH: '/nonexistent' } });
  t.equal(r.code, 1);
  t.match(r.err, /qemu-system-aarch64 is not installed/);
  t.match(r.err, /apt-get install qemu-system-arm/);
});

t.test('cairn run --dry-run: the QEMU command for a disk, with an overlay, the seed and the ssh forward; temp files removed', async (t) => {
  const dir = t.testdir({ 'disk.img': Buffer.alloc(1024 * 1024), 'node.yaml': 'hostname: n\n' });
  const r = cairn(['run', path.join(dir, 'disk.img'), '--config', path.join(dir, 'node.yaml'), '--ssh-port', '2222', '--mem', '1536', '--cpus', '1', '--accel', 'tcg', '--dry-run']);
  t.equal(r.code, 0, r.err);
  const line = r.out.trim();
  t.match(line, /^\S*qemu-system-x86_64 -machine q35 -accel tcg -m 1536 -smp 1 /);
  t.match(line, /-nographic/);
  const overlay = /file=(\/\S+\/disk\.qcow2),format=qcow2/.exec(line);
  t.ok(overlay, 'the disk runs on a qcow2 overlay');
  t.match(line, /file=\S+\/seed\.iso,format=raw,if=none,id=seed0,readonly=on/);
  t.match(line, /hostfwd=tcp:127\.0\.0\.1:2222-:22/);
  t.notOk(overlay && existsSync(path.dirname(overlay[1] ?? '')), 'the temp folder is gone after the run');
  const uefi = cairn(['run', path.join(dir, 'disk.img'), '--firmware', 'uefi', '--accel', 'tcg', '--dry-run']);
  t.equal(uefi.code, 0, uefi.err);
  t.match(uefi.out, /if=pflash,format=raw,unit=0,readonly=on,file=\/usr\/share\/OVMF\/OVMF_CODE_4M\.fd/);
  const arm = cairn(['run', path.join(dir, 'disk.img'), '--arch', 'arm64', '--dry-run']);
  t.equal(arm.code, 0, arm.err);
  t.match(arm.out, /^\S*qemu-system-aarch64 -machine virt -accel tcg -cpu cortex-a57 /);
  t.match(arm.out, /if=pflash/);
});

t.test('cairn run: the image file is never written', async (t) => {
  const dir = t.testdir({ 'disk.img': Buffer.alloc(4096, 7) });
  writeFileSync(path.join(dir, 'disk.img'), Buffer.alloc(4096, 7));
  const before = readFileSync(path.join(dir, 'disk.img'));
  t.equal(cairn(['run', path.join(dir, 'disk.img'), '--dry-run']).code, 0);
  t.ok(readFileSync(path.join(dir, 'disk.img')).equals(before));
});
