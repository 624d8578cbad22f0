// The stage cache: entries appear whole or not at all, are checked before
// use, and a corrupt one, a killed build's leftovers or a full disk leave it
// consistent.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { StageCache } from '../../src/builder/cache.js';
import { tempDir } from './support.js';

const quiet = { log: () => {} };

t.test('an entry is built once, then read from the cache', async (t) => {
  const root = await tempDir();
  const cache = new StageCache(root, quiet);
  await cache.open();
  let runs = 0;
  const make = async (dir: string) => {
    runs++;
    writeFileSync(path.join(dir, 'out'), 'hello');
    return { n: runs };
  };
  const a = await cache.get('demo', 'k1', { x: 1 }, make);
  t.equal(a.cached, false);
  const fresh = new StageCache(root, quiet);
  const b = await fresh.get('demo', 'k1', { x: 1 }, make);
  t.equal(b.cached, true);
  t.equal(runs, 1);
  t.same(b.meta.data, { n: 1 });
  t.equal(readFileSync(path.join(b.dir, 'out'), 'utf8'), 'hello');
  t.same(readdirSync(path.join(root, 'tmp')), [], 'no temporary folder left');
});

t.test('a corrupt entry is found by its checksum and rebuilt', async (t) => {
  const root = await tempDir();
  const logs: string[] = [];
  const mk = () => new StageCache(root, { log: (l) => logs.push(l) });
  const make = async (dir: string) => {
    writeFileSync(path.join(dir, 'out'), 'good content');
    return {};
  };
  const first = await mk().get('demo', 'k', {}, make);
  appendFileSync(path.join(first.dir, 'out'), 'bit rot');
  const again = await mk().get('demo', 'k', {}, make);
  t.equal(again.cached, false, 'rebuilt');
  t.match(logs.join('\n'), /demo entry k is corrupt .*rebuilding it/);
  t.equal(readFileSync(path.join(again.dir, 'out'), 'utf8'), 'good content');
  // A truncated meta.json is corrupt too.
  writeFileSync(path.join(again.dir, 'meta.json'), '{"sta');
  t.equal((await mk().get('demo', 'k', {}, make)).cached, false);
  // So is a removed file.
  const third = await mk().get('demo', 'k', {}, make);
  rmSync(path.join(third.dir, 'out'));
  t.equal((await mk().get('demo', 'k', {}, make)).cached, false);
});

t.test('a failing stage leaves no entry and no temporary folder', async (t) => {
  const root = await tempDir();
  const cache = new StageCache(root, quiet);
  await cache.open();
  await t.rejects(
    cache.get('demo', 'k', {}, async (dir) => {
      writeFileSync(path.join(dir, 'half'), 'x');
      throw new Error('stage broke');
    }),
    { message: 'stage broke' },
  );
  t.notOk(existsSync(cache.entryDir('demo', 'k')));
  t.same(readdirSync(path.join(root, 'tmp')), []);
});

t.test('what a killed build left in tmp/ is removed by the next one', async (t) => {
  const root = await tempDir();
  // A process that has exited: its pid names the leftover folder.
  const dead = spawnSync('true').pid!;
  mkdirSync(path.join(root, 'tmp', `rootfs-abc.${dead}.0`, 'rootfs'), { recursive: true });
  const logs: string[] = [];
  await new StageCache(root, { log: (l) => logs.push(l) }).open();
  t.same(readdirSync(path.join(root, 'tmp')), []);
  t.match(logs[0], /left by an interrupted build/);
});

t.test('--no-cache: nothing read, nothing kept', async (t) => {
  const root = await tempDir();
  const make = async (dir: string) => {
    writeFileSync(path.join(dir, 'out'), 'x');
    return {};
  };
  await new StageCache(root, quiet).get('demo', 'k', {}, make);
  const nc = new StageCache(root, { ...quiet, reuse: false });
  await nc.open();
  t.equal((await nc.get('demo', 'k', {}, make)).cached, false);
  await nc.close();
  t.same(readdirSync(path.join(root, 'tmp')), []);
});

t.test('a full disk: clear error, partial output removed, cache unchanged', { skip: process.getuid?.() !== 0 && 'needs root to mount a tmpfs' }, async (t) => {
  const mnt = await tempDir('cairn-tmpfs-');
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mnt], { encoding: 'utf8' });
  if (!t.equal(m.status, 0, `as root, a tmpfs mounts for the test: ${m.stderr}`)) return;
  t.teardown(() => void spawnSync('umount', [mnt]));
  const cache = new StageCache(mnt, quiet);
  await cache.open();
  await cache.get('small', 'k', {}, async (dir) => {
    writeFileSync(path.join(dir, 'out'), 'fits');
    return {};
  });
  await t.rejects(
    cache.get('big', 'k', {}, async (dir) => {
      writeFileSync(path.join(dir, 'out'), Buffer.alloc(4 * 1024 * 1024));
      return {};
    }),
    { name: 'UserError', message: /disk full while building the big stage .* partial output was removed and the cache is unchanged/ },
  );
  t.same(readdirSync(path.join(mnt, 'tmp')), [], 'partial output removed');
  t.same(readdirSync(path.join(mnt, 'entries')), ['small-k']);
  t.equal((await new StageCache(mnt, quiet).lookup('small', 'k'))?.cached, true, 'earlier entry still valid');
  await t.rejects(cache.ensureSpace(64 * 1024 * 1024, 'rootfs'), { message: /not enough free space .* for the rootfs stage/ });
});
