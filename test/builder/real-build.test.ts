// Real builds with mmdebstrap from Debian trixie: slow, so few, and they
// share one cache (CAIRN_TEST_CACHE, default ~/.cache/cairn-test) with the
// .deb pool. Skipped when not root or without mmdebstrap; CAIRN_TEST_REAL=0
// skips them too. Foreign arches (arm64, armv7 under qemu-user) run only
// with CAIRN_TEST_FOREIGN=1.
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import { build } from '../../src/builder/pipeline.js';
import { createReporter } from '../../src/builder/progress.js';
import { SNAPSHOT_ENTRY_PATH, checkInitSnapshot } from '../../src/builder/stages/snapshot.js';
import type { Arch, Format } from '../../src/builder/types.js';
import { K3S_DOUBLE, REPO, fakePxe, tempDir, writeSpec } from './support.js';

const have = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
const skip =
  process.env.CAIRN_TEST_REAL === '0'
    ? 'CAIRN_TEST_REAL=0'
    : process.getuid?.() !== 0
      ? 'needs root (mmdebstrap --mode=root)'
      : !have('mmdebstrap')
        ? 'needs mmdebstrap'
        : false;
// The file as a whole may take longer than .taprc's per-file limit.
t.setTimeout(3_600_000);
const cacheDir = process.env.CAIRN_TEST_CACHE ?? path.join(homedir(), '.cache', 'cairn-test');
const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

async function realBuild(arch: Arch, outDir: string, extra: Partial<Parameters<typeof build>[0]> = {}) {
  const lines: string[] = [];
  const record = await build({
    spec: path.join(REPO, 'images/default.yaml'),
    arches: [arch],
    formats: ['pxe'],
    cacheDir,
    outDir,
    k3s: K3S_DOUBLE,
    sourceDateEpoch: 1_750_000_000,
    squashfs: { level: 3 },
    reporter: createReporter({ tty: false, write: (s) => void lines.push(s) }),
    ...extra,
  });
  return { record, lines };
}

/** Every file under `dir` (relative paths, sorted), SHA256SUMS and build.json left out: build.json holds timings. */
function artifactFiles(dir: string, rel = ''): string[] {
  return readdirSync(path.join(dir, rel), { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? artifactFiles(dir, path.join(rel, e.name)) : [path.join(rel, e.name)]))
    .filter((f) => f !== 'build.json')
    .sort();
}

/** The build's snapshot check run again on the tree of a built image: it passes, and names a bundle a snapshot cannot hold. */
async function snapshotCheckCases(t: Test, squash: string, dir: string) {
  const tree = path.join(dir, 'tree');
  t.equal(spawnSync('unsquashfs', ['-q', '-n', '-d', tree, squash]).status, 0, 'the image unpacked');
  t.teardown(() => rm(tree, { recursive: true, force: true }));
  const entry = path.join(tree, SNAPSHOT_ENTRY_PATH);
  const logged: string[] = [];
  await checkInitSnapshot(tree, 'amd64', (l) => void logged.push(l));
  t.match(logged.join('\n'), /^init snapshot: made and started once in \d+\.\d s \(\d+\.\d MiB; the node makes its own\)$/m);
  t.same(readdirSync(path.join(tree, 'tmp')), [], 'the blob thrown away');

  // a module of the bundle that throws while it loads
  writeFileSync(entry, "require('node:v8').startupSnapshot.setDeserializeMainFunction(() => {});\nthrow new Error('cairn-test: thrown at load time');\n");
  await t.rejects(checkInitSnapshot(tree, 'amd64', () => {}), { name: 'UserError', message: /^the init's startup snapshot could not be made \(node --build-snapshot exited \d+\):\n[^]*cairn-test: thrown at load time/ });
  t.same(readdirSync(path.join(tree, 'tmp')), [], 'nothing left in /tmp after a failure');

  // a snapshot node starts from, whose main does not say it is the init's
  writeFileSync(entry, "require('node:v8').startupSnapshot.setDeserializeMainFunction(() => { process.exitCode = 3; });\n");
  await t.rejects(checkInitSnapshot(tree, 'amd64', () => {}), { name: 'UserError', message: /^the init's startup snapshot was made but node does not start from it \(exit 3\):/ });

  rmSync(path.join(tree, 'usr/bin/env'));
  await t.rejects(checkInitSnapshot(tree, 'amd64', () => {}), { message: 'init snapshot: the system tree has no /usr/bin/env' });
}

const EVERY_FORMAT: Format[] = ['iso', 'pxe', 'raw', 'qcow2', 'oci'];

t.test('amd64 from Debian packages, twice from scratch: every artifact byte-identical', { skip, timeout: 1_500_000 }, async (t) => {
  const dir = await tempDir();
  // Neither build reads a cached stage: a with --no-cache, b with a cache of
  // its own that holds only the .deb pool (hard links to the shared one).
  const started = Date.now();
  const a = await realBuild('amd64', path.join(dir, 'a'), { formats: EVERY_FORMAT, noCache: true });
  const freshCache = path.join(dir, 'cache');
  mkdirSync(path.join(freshCache, 'debs'), { recursive: true });
  const pool = path.join(cacheDir, 'debs', 'amd64');
  if (existsSync(pool)) t.equal(spawnSync('cp', ['-al', pool, path.join(freshCache, 'debs')]).status, 0, 'the .deb pool linked into the fresh cache');
  const b = await realBuild('amd64', path.join(dir, 'b'), { formats: EVERY_FORMAT, cacheDir: freshCache });
  t.comment(`two builds of every format: ${((Date.now() - started) / 1000).toFixed(0)} s`);
  t.ok(b.record.systems[0]!.stages.every((s) => !s.cached), 'the second build ran every stage');

  const sys = a.record.systems[0]!;
  t.match(sys.kernelRelease, /^6\.\d+\.\d+.*-amd64$/);
  for (const p of ['linux-image-amd64', 'nodejs', 'tini', 'openssh-server', 'chrony', 'sqlite3', 'iproute2', 'wpasupplicant', 'ca-certificates', 'kmod', 'e2fsprogs', 'iptables', 'nftables', 'busybox-static']) {
    t.ok(sys.packages[p], `${p} ${sys.packages[p]}`);
  }
  t.ok(sys.sizes.squashfs! < 150 * 1024 * 1024, `squashfs ${(sys.sizes.squashfs! / 1048576).toFixed(1)} MiB without k3s`);
  t.ok(sys.pruned.modules! > 50 * 1024 * 1024, 'modules outside the profile pruned');
  const squash = path.join(dir, 'a', a.record.artifacts.find((x) => x.file.endsWith('squashfs'))!.file);
  const info = spawnSync('unsquashfs', ['-s', squash], { encoding: 'utf8' });
  t.equal(info.status, 0, 'unsquashfs -s reads it');
  t.match(info.stdout, /Compression zstd/);
  const list = spawnSync('unsquashfs', ['-l', squash], { encoding: 'utf8', maxBuffer: 64 << 20 }).stdout;
  for (const p of ['usr/bin/node', 'usr/bin/tini', 'usr/sbin/sshd', 'usr/local/bin/k3s', 'usr/lib/cairn/config.yaml', 'usr/lib/cairn/manifests/system-upgrade-controller.yaml', `usr/lib/modules/${sys.kernelRelease}/modules.dep`]) {
    t.ok(list.includes(`squashfs-root/${p}\n`), `image has /${p}`);
  }
  t.notOk(/squashfs-root\/etc\/ssh\/ssh_host_\w+_key\n/.test(list), 'no SSH host keys baked in');
  t.notOk(list.includes('squashfs-root/usr/share/man/'), 'no man pages');

  // Same inputs (a source file edited between the two builds would show here, not as a reproducibility failure)...
  const inputs = (r: typeof a.record) => r.systems[0]!.inputs;
  t.same(inputs(b.record), inputs(a.record), 'both builds had the same inputs');
  // ...so every file of every format is the same, byte for byte.
  const files = artifactFiles(path.join(dir, 'a'));
  t.same(artifactFiles(path.join(dir, 'b')), files, 'the same files');
  for (const ext of ['.iso', '.raw', '.qcow2', '.oci.tar', '-pxe/boot.ipxe', '-pxe/initrd', '-pxe/rootfs.squashfs', '-pxe/vmlinuz', '-pxe/release.json', 'SHA256SUMS']) {
    t.ok(files.some((f) => f.endsWith(ext)), `compared: *${ext}`);
  }
  const differ = files.filter((f) => existsSync(path.join(dir, 'b', f)) && sha(path.join(dir, 'a', f)) !== sha(path.join(dir, 'b', f)));
  t.same(differ, [], `artifacts that differ between the two builds: ${differ.join(', ') || 'none'}`);
  t.same(b.record.artifacts, a.record.artifacts, 'the build records list the same artifacts and checksums');

  // Warm: everything comes from b's cache.
  const w = await realBuild('amd64', path.join(dir, 'w'), { cacheDir: freshCache });
  const cached = Object.fromEntries(w.record.systems[0]!.stages.map((s) => [s.name, s.cached]));
  t.same({ k3s: cached.k3s, system: cached.system, squashfs: cached.squashfs }, { k3s: true, system: true, squashfs: true });
  t.ok(w.record.seconds < a.record.seconds, `warm ${w.record.seconds.toFixed(1)}s < cold ${a.record.seconds.toFixed(1)}s`);

  // Another SOURCE_DATE_EPOCH: other ids and time stamps, so other bytes.
  const c = await realBuild('amd64', path.join(dir, 'c'), { formats: ['raw'], cacheDir: freshCache, sourceDateEpoch: 1_760_000_000 });
  const rawFile = (r: typeof a.record) => r.artifacts.find((x) => x.file.endsWith('.raw'))!;
  t.not(rawFile(c.record).sha256, rawFile(a.record).sha256, 'another SOURCE_DATE_EPOCH, another disk');
  const labelId = (f: string) => /label-id: (\S+)/.exec(spawnSync('sfdisk', ['-d', f], { encoding: 'utf8' }).stdout)?.[1];
  t.not(labelId(path.join(dir, 'c', rawFile(c.record).file)), labelId(path.join(dir, 'a', rawFile(a.record).file)), 'another disk id');

  await t.test("the build's snapshot check on a's tree", (t) => snapshotCheckCases(t, squash, dir));
});

t.test('a Debian package that does not exist is named', { skip, timeout: 300_000 }, async (t) => {
  const dir = await tempDir();
  const spec = await writeSpec(dir, { arches: ['amd64'], debian: { suite: 'trixie' }, packages: ['cairn-no-such-package'] });
  await t.rejects(
    build({ spec, arches: ['amd64'], formats: ['pxe'], cacheDir, outDir: path.join(dir, 'out'), k3s: K3S_DOUBLE, outputs: { pxe: fakePxe }, reporter: createReporter({ quiet: true }) }),
    { name: 'UserError', message: /Debian package not found in trixie \(amd64\): cairn-no-such-package/ },
  );
});

const foreignSkip = skip || (process.env.CAIRN_TEST_FOREIGN === '1' ? false : 'set CAIRN_TEST_FOREIGN=1 (arm64 and armv7 under qemu-user take minutes)');
for (const arch of ['arm64', 'armv7'] as const) {
  t.test(`${arch} on an amd64 host (qemu-user for maintainer scripts)`, { skip: foreignSkip, timeout: 1_800_000 }, async (t) => {
    const dir = await tempDir();
    const { record } = await realBuild(arch, dir);
    const sys = record.systems[0]!;
    t.match(sys.kernelRelease, arch === 'arm64' ? /-arm64$/ : /-armmp-lpae$/);
    t.ok(sys.packages.nodejs);
    const squash = path.join(dir, record.artifacts.find((x) => x.file.endsWith('squashfs'))!.file);
    t.equal(spawnSync('unsquashfs', ['-s', squash]).status, 0);
    t.ok(sys.sizes.squashfs! < 150 * 1024 * 1024, `squashfs ${(sys.sizes.squashfs! / 1048576).toFixed(1)} MiB`);
  });
}
