// The pipeline after mmdebstrap, for real, on a small fake root planted in
// the cache as the rootfs entry: overlay, runtime, init, prune, squashfs,
// records, and every kind of bad input and failure around them.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:http';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import path from 'node:path';
import { build } from '../../src/builder/pipeline.js';
import { K3S_DOUBLE, KR, REPO, fakeWriters, plantRootfs, quickBuild, tempDir, writeSpec } from './support.js';

const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

async function setup(extra: Record<string, unknown> = {}, plant: { bigFile?: number } = {}) {
  const dir = await tempDir();
  const cacheDir = path.join(dir, 'cache');
  const outDir = path.join(dir, 'out');
  mkdirSync(path.join(dir, 'site/etc/cairn'), { recursive: true });
  writeFileSync(path.join(dir, 'site/etc/cairn/site.conf'), 'site=1\n');
  writeFileSync(path.join(dir, 'app.yaml'), 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\n');
  writeFileSync(path.join(dir, 'images.tar'), 'fake airgap tarball');
  const spec = await writeSpec(dir, {
    overlays: ['site'],
    files: [{ path: '/etc/motd', content: 'welcome\n', mode: '0640', owner: '0:4' }],
    manifests: ['app.yaml'],
    helm_charts: [{ name: 'demo', chart: 'demo', repo: 'https://charts.example' }],
    airgap_images: ['images.tar'],
    registries: { mirrors: { 'docker.io': { endpoint: ['https://mirror.example'] } } },
    ...extra,
  });
  await plantRootfs(cacheDir, spec, 'amd64', plant);
  return { dir, cacheDir, outDir, spec };
}

t.test('a build: system tree, squashfs, artifacts, SHA256SUMS, build.json', async (t) => {
  const { cacheDir, outDir, spec } = await setup();
  const q = quickBuild(spec, cacheDir, outDir);
  const record = await build(q.opts);
  t.same(record.artifacts.map((a) => a.file), ['test-0.0.1-amd64.initrd', 'test-0.0.1-amd64.squashfs', 'test-0.0.1-amd64.vmlinuz']);
  const sums = readFileSync(path.join(outDir, 'SHA256SUMS'), 'utf8');
  for (const a of record.artifacts) {
    t.ok(sums.includes(`${sha(path.join(outDir, a.file))}  ${a.file}\n`), `SHA256SUMS has ${a.file}`);
  }
  t.same(JSON.parse(readFileSync(path.join(outDir, 'build.json'), 'utf8')).artifacts, record.artifacts);
  t.notOk(readdirSync(outDir).some((n) => n.startsWith('.cairn-partial')), 'no staging folder left');
  const rel = record.systems[0]!;
  t.equal(rel.kernelRelease, KR);
  t.same(rel.packages, { nodejs: '20.19.2+dfsg-1', tini: '0.19.0-1' });
  t.equal(rel.inputs.k3s.sha256, sha(K3S_DOUBLE));
  t.ok(rel.sizes.squashfs! > 0 && rel.sizes.modules! > 0 && rel.sizes.total! > 0, 'sizes recorded');
  t.ok(rel.pruned.modules! >= 4096, 'pruned module bytes recorded');
  const names = rel.stages.map((s) => s.name);
  for (const n of ['rootfs', 'k3s', 'copy', 'overlay', 'runtime', 'init', 'prune', 'system', 'squashfs', 'initramfs', 'pxe']) t.ok(names.includes(n), `stage ${n} recorded`);
  t.match(q.lines.join(''), /stage squashfs: done in [\d.]+s/);

  // The squashfs holds the system as built.
  const list = spawnSync('unsquashfs', ['-lln', path.join(outDir, 'test-0.0.1-amd64.squashfs')], { encoding: 'utf8' }).stdout;
  const line = (p: string) => list.split('\n').find((l) => l.endsWith(` squashfs-root/${p}`) || l.includes(` squashfs-root/${p} -> `));
  t.match(line('usr/local/bin/k3s'), /^-rwxr-xr-x 0\/0 /, 'k3s, executable, root-owned');
  t.match(line('usr/local/bin/kubectl'), /-> k3s$/);
  t.match(line('usr/lib/cairn/config.yaml'), /^-rw-r--r-- 0\/0 /);
  t.match(line('usr/lib/cairn/manifests/app.yaml'), /^-rw-r--r-- /);
  t.ok(line('usr/lib/cairn/manifests/helmchart-demo.yaml'));
  t.ok(line('usr/lib/cairn/images/images.tar'));
  t.match(line('usr/lib/cairn/registries.yaml'), /^-rw------- 0\/0 /);
  t.match(line('etc/motd'), /^-rw-r----- 0\/4 /, 'spec file mode and owner');
  t.ok(line('etc/cairn/site.conf'), 'spec overlay folder');
  t.ok(line('etc/sysctl.d/90-k3s.conf'), 'repository overlay');
  t.ok(line('usr/share/doc/tini/copyright'), 'copyright kept');
  for (const gone of ['usr/share/doc/tini/changelog.gz', 'usr/share/man/man1/tini.1.gz', 'usr/share/locale/de/LC_MESSAGES/x.mo', `boot/vmlinuz-${KR}`, `boot/System.map-${KR}`, 'usr/lib/firmware/amdgpu/big.bin', `usr/lib/modules/${KR}/kernel/drivers/gpu/drm/huge/huge.ko.xz`, `usr/lib/modules/${KR}/kernel/sound/core/snd.ko.xz`]) {
    t.notOk(line(gone), `pruned ${gone}`);
  }
  for (const kept of [`usr/lib/modules/${KR}/kernel/net/netfilter/nf_defrag.ko.xz`, `usr/lib/modules/${KR}/kernel/fs/squashfs/squashfs.ko.xz`, 'usr/lib/firmware/rtl_nic/rtl8168.fw', `usr/lib/modules/${KR}/modules.dep`]) {
    t.ok(line(kept), `kept ${kept}`);
  }
  for (const gone of ['var/lib/dpkg/status', 'usr/bin/perl', 'usr/bin/perl-alias', 'usr/lib/x86_64-linux-gnu/perl-base/strict.pm', 'usr/sbin/adduser', 'usr/bin/dpkg', 'usr/lib/x86_64-linux-gnu/gconv/UTF-16.so', 'usr/share/nodejs/corepack/dist/corepack.js']) {
    t.notOk(line(gone), `no package manager's ${gone}`);
  }
  for (const kept of ['usr/share/nodejs/undici/index.js', 'usr/bin/keep-me', 'usr/bin/keep-alias', 'usr/lib/cairn/packages.json']) t.ok(line(kept), `kept ${kept}`);
  const manifest = spawnSync('unsquashfs', ['-cat', path.join(outDir, 'test-0.0.1-amd64.squashfs'), 'usr/lib/cairn/packages.json'], { encoding: 'utf8' }).stdout;
  t.same(JSON.parse(manifest), { nodejs: '20.19.2+dfsg-1', tini: '0.19.0-1' }, 'the package list in the image');
  const etc = JSON.parse(spawnSync('unsquashfs', ['-cat', path.join(outDir, 'test-0.0.1-amd64.squashfs'), 'usr/lib/cairn/etc-manifest.json'], { encoding: 'utf8' }).stdout) as Record<string, string>;
  t.equal(etc.motd, `file 640 0:4 ${createHash('sha256').update('welcome\n').digest('hex')}`, "the image's /etc manifest: the spec's file with its mode, owner and sum");
  t.equal(etc.hostname, undefined, 'files the init writes from the config are left out, as the etc phase leaves them out');
  const osRelease = spawnSync('unsquashfs', ['-cat', path.join(outDir, 'test-0.0.1-amd64.squashfs'), 'etc/os-release']).stdout;
  t.equal(etc['os-release'], `file 644 0:0 ${createHash('sha256').update(osRelease).digest('hex')}`, 'as the image holds the file');
  t.ok(rel.pruned.perl! >= 'perl binary'.length + 'package strict;'.length + '#!/usr/bin/perl\nuse strict;\n'.length, 'the bytes perl took are recorded');
  t.ok(rel.pruned.dpkg! > 0 && rel.pruned.gconv! > 0 && rel.pruned.nodejs_extras! > 0);
  t.match(q.lines.join(''), /prune: 1 perl scripts \(adduser\) and 1 links to removed programs/);
  t.match(q.lines.join(''), /prune: 2 packages listed in \/usr\/lib\/cairn\/packages\.json/);
  const times = new Set(list.split('\n').filter(Boolean).map((l) => l.split(/\s+/).slice(3, 5).join(' ')));
  t.equal(times.size, 1, 'every file has the same time stamp');
  const cfg = spawnSync('unsquashfs', ['-cat', path.join(outDir, 'test-0.0.1-amd64.squashfs'), 'usr/lib/cairn/config.yaml'], { encoding: 'utf8' }).stdout;
  t.match(cfg, /hostname: test-node/);
  t.equal(readFileSync(path.join(outDir, 'test-0.0.1-amd64.vmlinuz'), 'utf8'), 'fake kernel image');

  // The planted rootfs entry was not changed through the hard links.
  const again = await build(quickBuild(spec, cacheDir, path.join(outDir, 'again')).opts);
  t.ok(again.systems[0]!.stages.every((s) => s.cached || ['initramfs', 'pxe'].includes(s.name)), 'warm build: every stage cached');
  t.same(again.artifacts.map((a) => a.sha256), record.artifacts.map((a) => a.sha256), 'same bytes');
});

t.test('rebuilds make only what changed: nothing, then what an overlay file reaches, then what a changed writer makes', async (t) => {
  const { dir, cacheDir, outDir, spec } = await setup();
  let writes = 0;
  const counting = { pxe: async (...a: Parameters<typeof fakeWriters.pxe>) => (writes++, fakeWriters.pxe(...a)) };
  const run = async (out: string, extra: Record<string, unknown> = {}) => {
    const q = quickBuild(spec, cacheDir, path.join(outDir, out), { outputs: counting, ...extra });
    const r = await build(q.opts);
    const ran = r.systems[0]!.stages.filter((s) => !s.cached && ['rootfs', 'k3s', 'system', 'squashfs', 'initramfs', 'pxe'].includes(s.name)).map((s) => s.name);
    return { r, ran, log: q.lines.join('') };
  };
  const cold = await run('cold');
  t.same(cold.ran, ['k3s', 'system', 'squashfs', 'initramfs', 'pxe'], 'a cold build (the rootfs was planted)');
  t.equal(writes, 1);
  const warm = await run('warm');
  t.same(warm.ran, [], 'nothing changed: no stage runs');
  t.equal(writes, 1, 'the writer was not called');
  t.match(warm.log, /stage init: cached/);
  t.same(warm.r.artifacts, cold.r.artifacts, 'the same files, sizes and sums');
  for (const a of warm.r.artifacts) t.equal(sha(path.join(outDir, 'warm', a.file)), a.sha256, `${a.file} is whole`);
  t.equal(readFileSync(path.join(outDir, 'warm', 'SHA256SUMS'), 'utf8'), readFileSync(path.join(outDir, 'cold', 'SHA256SUMS'), 'utf8'));

  writeFileSync(path.join(dir, 'site/etc/cairn/site.conf'), 'site=2\n');
  const overlay = await run('overlay');
  t.same(overlay.ran, ['system', 'squashfs', 'pxe'], 'an overlay file: the system, its squashfs and the output; not the initramfs');
  t.not(overlay.r.systems[0]!.squashfs.sha256, cold.r.systems[0]!.squashfs.sha256);
  t.equal(overlay.r.artifacts.find((a) => a.file.endsWith('.initrd'))!.sha256, cold.r.artifacts.find((a) => a.file.endsWith('.initrd'))!.sha256);

  const other = { pxe: async (...a: Parameters<typeof fakeWriters.pxe>) => (writes += 10, fakeWriters.pxe(...a)) };
  const changed = await run('writer', { outputs: other });
  t.same(changed.ran, ['pxe'], 'another writer: only the output');
  t.equal(writes, 12);
});

t.test('reproducible: two caches, same inputs, byte-identical squashfs', async (t) => {
  const a = await setup();
  const b = await setup();
  // Same spec text in both: point b at a's spec (plant b's cache for it).
  await plantRootfs(b.cacheDir, a.spec);
  const ra = await build(quickBuild(a.spec, a.cacheDir, a.outDir).opts);
  const rb = await build(quickBuild(a.spec, b.cacheDir, b.outDir).opts);
  t.equal(rb.systems[0]!.squashfs.sha256, ra.systems[0]!.squashfs.sha256);
  t.equal(sha(path.join(a.outDir, 'test-0.0.1-amd64.squashfs')), sha(path.join(b.outDir, 'test-0.0.1-amd64.squashfs')));
  const rc = await build(quickBuild(a.spec, b.cacheDir, path.join(b.outDir, 'c'), { sourceDateEpoch: 1_800_000_000 }).opts);
  t.not(rc.artifacts.find((x) => x.file.endsWith('.squashfs'))!.sha256, ra.artifacts.find((x) => x.file.endsWith('.squashfs'))!.sha256, 'another SOURCE_DATE_EPOCH, other bytes');
});

t.test('a missing overlay folder stops the build before any stage', async (t) => {
  const { cacheDir, outDir, spec } = await setup({ overlays: ['site', 'no-such-folder'] });
  const q = quickBuild(spec, cacheDir, outDir);
  await t.rejects(build(q.opts), { name: 'UserError', message: /overlay folder .*no-such-folder does not exist/ });
  t.notOk(q.lines.some((l) => l.startsWith('stage ')), 'no stage ran');
});

t.test('missing manifest and spec file sources are listed together', async (t) => {
  const { cacheDir, outDir, spec } = await setup({ manifests: ['gone.yaml'], airgap_images: ['gone.tar'] });
  await t.rejects(build(quickBuild(spec, cacheDir, outDir).opts), { message: /gone\.yaml does not exist; .*gone\.tar does not exist/ });
});

t.test('k3s checksum mismatch names the file and both checksums', async (t) => {
  const pin = 'f'.repeat(64);
  const { cacheDir, outDir, spec } = await setup({ k3s: { version: 'v1.33.5+k3s1', sha256: { amd64: pin } } });
  const err = await build(quickBuild(spec, cacheDir, outDir).opts).catch((e: Error) => e);
  t.match(err, { name: 'ChecksumMismatch' });
  t.match((err as Error).message, `k3s checksum mismatch for ${K3S_DOUBLE}`);
  t.match((err as Error).message, `expected ${pin} (k3s.sha256.amd64 in test.yaml)`);
  t.match((err as Error).message, `actual   ${sha(K3S_DOUBLE)}`);
  t.notOk(existsSync(path.join(outDir, 'SHA256SUMS')));
});

t.test('k3s download: checked against sha256sum-<arch>.txt; a tampered binary stops the build', async (t) => {
  const binary = readFileSync(K3S_DOUBLE);
  let served = binary;
  const server = createServer((req, res) => {
    if (req.url === '/v1.33.5%2Bk3s1/k3s') return res.end(served);
    if (req.url === '/v1.33.5%2Bk3s1/sha256sum-amd64.txt') return res.end(`${sha(K3S_DOUBLE)}  k3s\n`);
    res.statusCode = 404;
    res.end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => void server.close());
  const port = (server.address() as { port: number }).port;
  process.env.CAIRN_K3S_RELEASES = `http://127.0.0.1:${port}`;
  t.teardown(() => void delete process.env.CAIRN_K3S_RELEASES);
  const { cacheDir, outDir, spec } = await setup();
  const ok = await build(quickBuild(spec, cacheDir, outDir, { k3s: undefined }).opts);
  t.equal(ok.systems[0]!.inputs.k3s.source, `http://127.0.0.1:${port}/v1.33.5%2Bk3s1/k3s`);
  served = Buffer.concat([binary, Buffer.from('tampered')]);
  const other = await setup({ k3s: { version: 'v1.33.5+k3s1' } });
  const err = await build(quickBuild(other.spec, other.cacheDir, other.outDir, { k3s: undefined }).opts).catch((e: Error) => e);
  t.match((err as Error).message, /k3s checksum mismatch for http:\/\/127\.0\.0\.1:\d+\/v1\.33\.5%2Bk3s1\/k3s/);
  t.match((err as Error).message, `expected ${sha(K3S_DOUBLE)} (http://127.0.0.1:${port}/v1.33.5%2Bk3s1/sha256sum-amd64.txt)`);
  t.notOk(readdirSync(path.join(other.cacheDir, 'entries')).some((n) => n.startsWith('k3s-')), 'nothing cached');
});

t.test('a corrupt cached squashfs is rebuilt, with the same bytes', async (t) => {
  const { cacheDir, outDir, spec } = await setup();
  const first = await build(quickBuild(spec, cacheDir, outDir).opts);
  const entry = readdirSync(path.join(cacheDir, 'entries')).find((n) => n.startsWith('squashfs-'))!;
  const file = path.join(cacheDir, 'entries', entry, 'rootfs.squashfs');
  const fd = openSync(file, 'r+');
  writeSync(fd, Buffer.from('XXXX'), 0, 4, 1000);
  closeSync(fd);
  const q = quickBuild(spec, cacheDir, path.join(outDir, '2'));
  const second = await build(q.opts);
  t.match(q.lines.join(''), /cache: squashfs entry \w+ is corrupt .*rebuilding it/);
  t.equal(second.systems[0]!.stages.find((s) => s.name === 'squashfs')!.cached, false);
  t.equal(second.systems[0]!.squashfs.sha256, first.systems[0]!.squashfs.sha256);
});

t.test('a full output disk: partial outputs removed, cache consistent', { skip: process.getuid?.() !== 0 && 'needs root for a tmpfs' }, async (t) => {
  // 72 MiB passes the up-front check (64 MiB) but cannot hold an 80 MiB squashfs plus the rest.
  const { cacheDir, dir, spec } = await setup({}, { bigFile: 80 * 1024 * 1024 });
  const out = path.join(dir, 'small-out');
  mkdirSync(out);
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=72m', 'tmpfs', out], { encoding: 'utf8' });
  if (!t.equal(m.status, 0, `as root, a tmpfs mounts for the test: ${m.stderr}`)) return;
  t.teardown(() => void spawnSync('umount', [out]));
  writeFileSync(path.join(out, 'old-file'), 'from an earlier build');
  const err = await build(quickBuild(spec, cacheDir, out).opts).catch((e: Error) => e);
  t.match(err, { name: 'UserError', message: /disk full while writing the build outputs; partial outputs were removed/ });
  t.same(readdirSync(out).sort(), ['old-file'], 'no partial artifacts, no SHA256SUMS');
  // Every cached entry still matches its checksum: a rebuild elsewhere uses them.
  const q = quickBuild(spec, cacheDir, path.join(dir, 'out2'));
  const rec = await build(q.opts);
  t.ok(rec.systems[0]!.stages.filter((s) => ['system', 'squashfs', 'k3s'].includes(s.name)).every((s) => s.cached), 'cache intact');
  t.notOk(q.lines.join('').includes('corrupt'));
});

t.test('a full cache disk: refused before the stage starts', { skip: process.getuid?.() !== 0 && 'needs root for a tmpfs' }, async (t) => {
  const dir = await tempDir();
  const cacheDir = path.join(dir, 'cache');
  mkdirSync(cacheDir);
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', cacheDir], { encoding: 'utf8' });
  if (!t.equal(m.status, 0, `as root, a tmpfs mounts for the test: ${m.stderr}`)) return;
  t.teardown(() => void spawnSync('umount', [cacheDir]));
  const spec = await writeSpec(dir);
  await plantRootfs(cacheDir, spec);
  const q = quickBuild(spec, cacheDir, path.join(dir, 'out'));
  await t.rejects(build(q.opts), { name: 'UserError', message: /not enough free space in .* for the system stage/ });
  t.same(readdirSync(path.join(cacheDir, 'tmp')), [], 'nothing half-built');
  t.ok(readdirSync(path.join(cacheDir, 'entries')).every((n) => /^(rootfs|k3s|init)-/.test(n)), 'no entry past the planted rootfs, k3s and the init bundle');
});

const child = path.join(REPO, 'test/fixtures/builder/build-child.mts');

async function runUntil(args: string[], ready: () => boolean, signal: NodeJS.Signals) {
  const p = spawn(process.execPath, ['--import', 'tsx', child, ...args], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout.on('data', (d) => (out += d));
  p.stderr.on('data', (d) => (out += d));
  let sent = false;
  const timer = setInterval(() => {
    if (!sent && ready()) {
      sent = true;
      p.kill(signal);
    }
  }, 10);
  const code = await new Promise<number | null>((r) => p.on('exit', (c) => r(c)));
  clearInterval(timer);
  return { sent, code, out };
}

for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
  t.test(`an interrupted build (${signal}) leaves no corrupt entry; the next one goes on from the cache`, async (t) => {
    const { cacheDir, outDir, spec } = await setup({}, { bigFile: 160 * 1024 * 1024 });
    const tmp = path.join(cacheDir, 'tmp');
    const r = await runUntil([spec, cacheDir, outDir], () => existsSync(tmp) && readdirSync(tmp).some((n) => n.startsWith('squashfs-')), signal);
    t.ok(r.sent, `${signal} sent while the squashfs was being made`);
    t.notOk(readdirSync(path.join(cacheDir, 'entries')).some((n) => n.startsWith('squashfs-')), 'no squashfs entry');
    if (signal === 'SIGTERM') {
      t.equal(r.code, 1);
      t.match(r.out, /failed: .*interrupted/);
      t.same(readdirSync(tmp).filter((n) => !n.startsWith('work.')), [], 'SIGTERM: its temporary folders removed at once');
    }
    t.notOk(existsSync(path.join(outDir, 'SHA256SUMS')), 'no artifacts');
    const q = quickBuild(spec, cacheDir, outDir);
    const rec = await build(q.opts);
    const st = Object.fromEntries(rec.systems[0]!.stages.map((s) => [s.name, s.cached]));
    t.equal(st.system, true, 'system tree reused from the cache');
    t.equal(st.squashfs, false, 'squashfs made again');
    t.same(readdirSync(tmp), [], 'leftovers removed');
    t.ok(existsSync(path.join(outDir, 'SHA256SUMS')));
  });
}
