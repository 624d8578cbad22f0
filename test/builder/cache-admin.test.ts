// What the cache holds (cairn cache), and pruning it: superseded packages,
// old entries, the least recently used to a size, never what a running build uses.
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { StageCache } from '../../src/builder/cache.js';
import { cacheItems, cacheLimit, DEFAULT_CACHE_MAX_BYTES, parseDuration, parseSize, pruneCache, renderCacheReport } from '../../src/builder/cache-admin.js';
import { build } from '../../src/builder/pipeline.js';
import { REPO, plantRootfs, quickBuild, tempDir, writeSpec } from './support.js';

const quiet = { log: () => {} };
const DAY = 86_400_000;

/** A cache with three entries of known sizes and last uses (days ago), two versions of a .deb and an unpacked package. */
async function sample() {
  const root = await tempDir();
  const cache = new StageCache(root, quiet);
  await cache.open();
  const entry = async (stage: string, key: string, arch: string, bytes: number, daysAgo: number) => {
    const e = await cache.get(stage, key, { stage: 1, release: { arch } }, async (dir) => writeFileSync(path.join(dir, 'f'), Buffer.alloc(bytes)));
    // sizes on disk as the test names them (a small file takes a whole block)
    const meta = JSON.parse(readFileSync(path.join(e.dir, 'meta.json'), 'utf8')) as { diskBytes: number };
    writeFileSync(path.join(e.dir, 'meta.json'), JSON.stringify({ ...meta, diskBytes: bytes }));
    const use = JSON.parse(readFileSync(path.join(e.dir, '.use.json'), 'utf8')) as { lastUsed: string };
    writeFileSync(path.join(e.dir, '.use.json'), JSON.stringify({ ...use, lastUsed: new Date(Date.now() - daysAgo * DAY).toISOString() }));
    return path.basename(e.dir);
  };
  const names = {
    old: await entry('system', 'aa01', 'amd64', 3000, 40),
    mid: await entry('squashfs', 'bb02', 'arm64', 2000, 10),
    recent: await entry('system', 'cc03', 'amd64', 1000, 1),
  };
  const debs = path.join(root, 'debs', 'amd64');
  mkdirSync(debs, { recursive: true });
  writeFileSync(path.join(debs, 'tini_0.19.0-1_amd64.deb'), Buffer.alloc(500));
  writeFileSync(path.join(debs, 'tini_0.19.0-3_amd64.deb'), Buffer.alloc(600));
  writeFileSync(path.join(debs, 'zstd_1.5.7%2bdfsg-1_amd64.deb'), Buffer.alloc(700));
  // the archive published 0.19.0-1 first
  utimesSync(path.join(debs, 'tini_0.19.0-1_amd64.deb'), new Date(Date.now() - 300 * DAY), new Date(Date.now() - 300 * DAY));
  utimesSync(path.join(debs, 'tini_0.19.0-3_amd64.deb'), new Date(Date.now() - 30 * DAY), new Date(Date.now() - 30 * DAY));
  mkdirSync(path.join(root, 'debs-unpacked', 'grub-efi-arm64-bin_arm64_trixie', 'usr'), { recursive: true });
  writeFileSync(path.join(root, 'debs-unpacked', 'grub-efi-arm64-bin_arm64_trixie', 'usr', 'x'), Buffer.alloc(800));
  utimesSync(path.join(root, 'debs-unpacked', 'grub-efi-arm64-bin_arm64_trixie'), new Date(Date.now() - 20 * DAY), new Date(Date.now() - 20 * DAY));
  await cache.close();
  return { root, names };
}

const entryNames = (root: string) => readdirSync(path.join(root, 'entries')).sort();

t.test('cairn cache: every item with its size, arch and last use; superseded packages marked', async (t) => {
  const { root, names } = await sample();
  const items = await cacheItems(root);
  const row = (rel: string) => items.find((i) => i.rel === rel)!;
  t.same([row(`entries/${names.old}`).group, row(`entries/${names.old}`).arch, row(`entries/${names.old}`).bytes], ['system', 'amd64', 3000]);
  t.same([row(`entries/${names.mid}`).group, row(`entries/${names.mid}`).arch], ['squashfs', 'arm64']);
  t.ok(Math.abs(Date.now() - 40 * DAY - row(`entries/${names.old}`).lastUsed.getTime()) < 60_000, 'last use from .use.json');
  t.equal(row('debs/amd64/tini_0.19.0-1_amd64.deb').superseded, true, 'the older tini');
  t.notOk(row('debs/amd64/tini_0.19.0-3_amd64.deb').superseded, 'the newer tini');
  t.notOk(row('debs/amd64/zstd_1.5.7%2bdfsg-1_amd64.deb').superseded, 'the only zstd');
  t.same([row('debs-unpacked/grub-efi-arm64-bin_arm64_trixie').arch, row('debs-unpacked/grub-efi-arm64-bin_arm64_trixie').bytes], ['arm64', 800]);
  const report = renderCacheReport(root, items, new Date(), 5 * 1024 ** 3);
  t.match(report, /^system\s+amd64\s+2\s+3\.9 KiB\s+\d+ h ago$/m, 'two amd64 system entries, 4000 bytes, last used a day ago');
  t.match(report, /^squashfs\s+arm64\s+1\s+2\.0 KiB\s+10 days ago$/m);
  t.match(report, /^debs\s+amd64\s+3\s+1.8 KiB\s+\d+ s ago\s+500 B superseded$/m);
  t.match(report, /^unpacked\s+arm64\s+1\s+800 B\s+20 days ago$/m);
  t.match(report, /: 8\.4 KiB in 7 items \(builds prune it to 5\.0 GiB\)$/m);
});

t.test('prune: superseded packages first, then the least recently used until it fits', async (t) => {
  const { root, names } = await sample();
  // 8600 bytes in all; the old tini goes first (500), then the least recently used entry (3000 B, 40 days)
  const r = await pruneCache(root, { maxBytes: 6500 });
  t.same(r.removed.map((i) => i.rel), ['debs/amd64/tini_0.19.0-1_amd64.deb', `entries/${names.old}`]);
  t.equal(r.bytes, 8600 - 3500);
  t.same(entryNames(root), [names.mid, names.recent].sort());
  t.notOk(existsSync(path.join(root, 'debs/amd64/tini_0.19.0-1_amd64.deb')));
  t.ok(existsSync(path.join(root, 'debs/amd64/tini_0.19.0-3_amd64.deb')), 'the current version stays');
  // next: the unpacked package (20 days), then the squashfs entry (10 days)
  const r2 = await pruneCache(root, { maxBytes: 3000 });
  t.same(r2.removed.map((i) => i.rel), ['debs-unpacked/grub-efi-arm64-bin_arm64_trixie', `entries/${names.mid}`]);
  t.equal(r2.keptOverLimit, false);
  // a limit below what current packages take: the rest stays, and that is said
  const r3 = await pruneCache(root, { maxBytes: 100 });
  t.same(r3.removed.map((i) => i.rel), [`entries/${names.recent}`]);
  t.equal(r3.keptOverLimit, true, 'current .debs are not removed to reach a size');
  t.equal(readdirSync(path.join(root, 'debs/amd64')).length, 2);
});

t.test('prune --older-than; --dry-run removes nothing', async (t) => {
  const { root, names } = await sample();
  const dry = await pruneCache(root, { olderThanMs: 15 * DAY, dryRun: true });
  t.same(dry.removed.map((i) => i.rel).sort(), ['debs-unpacked/grub-efi-arm64-bin_arm64_trixie', 'debs/amd64/tini_0.19.0-1_amd64.deb', `entries/${names.old}`].sort());
  t.equal(entryNames(root).length, 3, 'a dry run removes nothing');
  const r = await pruneCache(root, { olderThanMs: 15 * DAY });
  t.same(r.removed.map((i) => i.rel).sort(), dry.removed.map((i) => i.rel).sort());
  t.same(entryNames(root), [names.mid, names.recent].sort());
});

t.test("prune never removes what a running build uses, nor the build's own entries", async (t) => {
  const { root, names } = await sample();
  // another build, still running, uses the oldest entry
  const other = spawn('sleep', ['30']);
  t.teardown(() => other.kill());
  mkdirSync(path.join(root, 'inuse'), { recursive: true });
  writeFileSync(path.join(root, 'inuse', String(other.pid)), `${names.old}\n`);
  // a build that has ended left its list behind: it protects nothing
  const gone = spawn('true');
  await new Promise((r) => gone.on('exit', r));
  writeFileSync(path.join(root, 'inuse', String(gone.pid)), `${names.mid}\n`);
  const r = await pruneCache(root, { maxBytes: 0, keep: [names.recent] });
  t.same(r.removed.filter((i) => i.kind === 'stage').map((i) => i.rel), [`entries/${names.mid}`]);
  t.same(entryNames(root), [names.old, names.recent].sort());
  t.same(readdirSync(path.join(root, 'inuse')), [String(other.pid)], "the ended build's list is removed");
  t.equal((await cacheItems(root)).find((i) => i.rel === `entries/${names.old}`)?.inUse, true);
});

t.test('a cache entry checked once is not read again while its files are unchanged', async (t) => {
  const root = await tempDir();
  const make = async (dir: string) => writeFileSync(path.join(dir, 'out'), 'good content');
  const first = await new StageCache(root, quiet).get('demo', 'k', {}, make);
  const file = path.join(first.dir, 'out');
  // the same size, the same time stamp and inode: not hashed again (the trade for a fast warm build)
  const st = { atime: new Date(), mtime: new Date(Date.now() - 5000) };
  utimesSync(file, st.atime, st.mtime);
  t.equal((await new StageCache(root, quiet).get('demo', 'k', {}, make)).cached, true);
  writeFileSync(file, 'evil content');
  utimesSync(file, st.atime, st.mtime);
  t.equal((await new StageCache(root, quiet).get('demo', 'k', {}, make)).cached, true, 'a change that keeps size, time and inode is not seen');
  // a change of time stamp: hashed again, found corrupt, rebuilt
  utimesSync(file, new Date(), new Date());
  const logs: string[] = [];
  const again = await new StageCache(root, { log: (l) => logs.push(l) }).get('demo', 'k', {}, make);
  t.equal(again.cached, false);
  t.match(logs.join('\n'), /demo entry k is corrupt/);
});

t.test('sizes and lengths of time: clear errors', async (t) => {
  t.equal(parseSize('10G', 'x'), 10 * 1024 ** 3);
  t.equal(parseSize('1.5GiB', 'x'), 1.5 * 1024 ** 3);
  t.equal(parseSize('2GB', 'x'), 2e9);
  t.equal(parseSize('512m', 'x'), 512 * 1024 ** 2);
  t.equal(parseSize('1048576', 'x'), 1048576);
  t.throws(() => parseSize('ten gigs', '--max-size'), { message: '--max-size "ten gigs" is not a size' });
  t.throws(() => parseSize('5X', '--max-size'), { message: /not a size/ });
  t.equal(parseDuration('30d', 'x'), 30 * DAY);
  t.equal(parseDuration('12h', 'x'), 12 * 3_600_000);
  t.equal(parseDuration('90m', 'x'), 90 * 60_000);
  t.equal(parseDuration('2w', 'x'), 14 * DAY);
  t.throws(() => parseDuration('30', '--older-than'), { message: '--older-than "30" is not a length of time' });
  const env = process.env.CAIRN_CACHE_MAX_SIZE;
  t.teardown(() => (env === undefined ? delete process.env.CAIRN_CACHE_MAX_SIZE : (process.env.CAIRN_CACHE_MAX_SIZE = env)));
  delete process.env.CAIRN_CACHE_MAX_SIZE;
  t.equal(cacheLimit(), DEFAULT_CACHE_MAX_BYTES);
  process.env.CAIRN_CACHE_MAX_SIZE = '2G';
  t.equal(cacheLimit(), 2 * 1024 ** 3, 'the environment');
  t.equal(cacheLimit('1G'), 1024 ** 3, 'the option wins');
  t.equal(cacheLimit('off'), undefined);
  process.env.CAIRN_CACHE_MAX_SIZE = 'lots';
  t.throws(() => cacheLimit(), { message: 'CAIRN_CACHE_MAX_SIZE "lots" is not a size' });
});

t.test('cairn cache and cairn cache prune on the command line', async (t) => {
  const { root, names } = await sample();
  const cli = (...args: string[]) => execa('node', [path.join(REPO, 'dist/cairn.js'), ...args], { reject: false, env: { CAIRN_CACHE_MAX_SIZE: '' } });
  const show = await cli('cache', '--cache', root);
  t.equal(show.exitCode, 0, show.stderr);
  t.match(show.stdout, /^WHAT\s+ARCH\s+ITEMS\s+SIZE\s+LAST USE$/m);
  t.match(show.stdout, /\(builds prune it to 10\.0 GiB\)/);
  const json = JSON.parse((await cli('cache', '--cache', root, '--json')).stdout) as { rel: string }[];
  t.equal(json.length, 7);
  const pruned = await cli('cache', 'prune', '--cache', root, '--max-size', '6500');
  t.equal(pruned.exitCode, 0, pruned.stderr);
  t.match(pruned.stdout, new RegExp(`^removed entries/${names.old} \\(2\\.9 KiB\\)$`, 'm'));
  t.match(pruned.stdout, /^removed 2 items, 3\.4 KiB; the cache holds 5\.0 KiB$/m);
  const bad = await cli('cache', 'prune', '--cache', root, '--max-size', 'big');
  t.equal(bad.exitCode, 1);
  t.match(bad.stderr, /--max-size "big" is not a size\n.*500M, 10G/);
  const none = await cli('cache', '--cache', path.join(root, 'nowhere'));
  t.equal(none.exitCode, 1);
  t.match(none.stderr, /no cache at .*nowhere/);
});

t.test('a build prunes the cache to its limit by itself, never what it uses', async (t) => {
  const dir = await tempDir();
  const cacheDir = path.join(dir, 'cache');
  const spec1 = await writeSpec(dir, {}, 'one.yaml');
  await plantRootfs(cacheDir, spec1, 'amd64');
  await build(quickBuild(spec1, cacheDir, path.join(dir, 'out1'), { cacheMaxBytes: null }).opts);
  const before = entryNames(cacheDir);
  const STAGES = ['init', 'initramfs', 'k3s', 'output', 'rootfs', 'squashfs', 'system'];
  t.same(before.map((n) => n.replace(/-.*/, '')).sort(), STAGES);
  // a second version: its own system, squashfs and output; a limit of one byte leaves only what it used
  const spec2 = await writeSpec(dir, { version: '0.0.2' }, 'two.yaml');
  const q = quickBuild(spec2, cacheDir, path.join(dir, 'out2'), { cacheMaxBytes: 1 });
  await build(q.opts);
  const after = entryNames(cacheDir);
  const oldSystem = before.filter((n) => /^(system|squashfs|output)-/.test(n));
  t.equal(oldSystem.length, 3);
  t.same(after.filter((n) => oldSystem.includes(n)), [], "the first build's system, squashfs and output are pruned");
  t.same(after.map((n) => n.replace(/-.*/, '')).sort(), STAGES, "this build's entries stay (the init and initramfs it shares with the first)");
  t.match(q.lines.join(''), /cache: pruned 3 unused items \([\d.]+ (KiB|MiB)\); it holds [\d.]+ (KiB|MiB) of its 1 B limit/);
  t.same(readdirSync(path.join(cacheDir, 'inuse')), [], 'the build removed its in-use list');
});

t.test('an entry counts what it takes on disk: a sparse disk image its blocks, not its length', async (t) => {
  const root = await tempDir();
  const e = await new StageCache(root, quiet).get('output', 'sparse', { arch: 'amd64' }, async (dir) => {
    writeFileSync(path.join(dir, 'disk.raw'), Buffer.alloc(0));
    truncateSync(path.join(dir, 'disk.raw'), 512 * 1024 ** 2);
    writeFileSync(path.join(dir, 'data'), Buffer.alloc(64 * 1024, 1));
  });
  t.equal(e.meta.bytes, 512 * 1024 ** 2 + 64 * 1024, 'the apparent size');
  const item = (await cacheItems(root)).find((i) => i.group === 'output')!;
  t.ok(item.bytes >= 64 * 1024 && item.bytes < 1024 ** 2, `on disk: ${item.bytes} bytes`);
});
