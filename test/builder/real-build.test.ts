// Real builds with mmdebstrap from Debian trixie: slow, so few, and they
// share one cache (CAIRN_TEST_CACHE, default ~/.cache/cairn-test) with the
// .deb pool. Skipped when not root or without mmdebstrap; CAIRN_TEST_REAL=0
// skips them too. Foreign arches (arm64, armv7 under qemu-user) run only
// with CAIRN_TEST_FOREIGN=1.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { build } from '../../src/builder/pipeline.js';
import { createReporter } from '../../src/builder/progress.js';
import { defaultOutputs } from '../../src/builder/writers.js';
import type { Arch, Format, OutputWriter } from '../../src/builder/types.js';
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

async function writers(): Promise<Partial<Record<Format, OutputWriter>>> {
  const table = await defaultOutputs();
  return table.pxe ? { pxe: table.pxe } : { pxe: fakePxe };
}

async function realBuild(arch: Arch, outDir: string, extra: Record<string, unknown> = {}) {
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
    outputs: await writers(),
    reporter: createReporter({ tty: false, write: (s) => void lines.push(s) }),
    ...extra,
  });
  return { record, lines };
}

t.test('amd64 from Debian packages: twice from scratch gives the same squashfs and initramfs', { skip, timeout: 1_500_000 }, async (t) => {
  const dir = await tempDir();
  const a = await realBuild('amd64', path.join(dir, 'a'));
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

  // Same inputs, nothing reused but the .deb pool: mmdebstrap runs again.
  const b = await realBuild('amd64', path.join(dir, 'b'), { noCache: true });
  const byName = (r: typeof a.record) => Object.fromEntries(r.artifacts.map((x) => [x.file, x.sha256]));
  t.same(byName(b.record), byName(a.record), 'byte-identical artifacts (squashfs, initramfs, kernel)');
  t.equal(b.record.systems[0]!.squashfs.sha256, sys.squashfs.sha256);
  t.equal(sha(path.join(dir, 'b', a.record.artifacts[0]!.file)), a.record.artifacts[0]!.sha256);

  // Warm: everything comes from the cache.
  const c = await realBuild('amd64', path.join(dir, 'c'));
  const cached = Object.fromEntries(c.record.systems[0]!.stages.map((s) => [s.name, s.cached]));
  t.same({ k3s: cached.k3s, system: cached.system, squashfs: cached.squashfs }, { k3s: true, system: true, squashfs: true });
  t.ok(c.record.seconds < a.record.seconds, `warm ${c.record.seconds.toFixed(1)}s < cold ${a.record.seconds.toFixed(1)}s`);
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
