// binfmt_misc shared by builds side by side (arm64 and armv7 at once): each
// records its use, and what they changed is undone when the last one ends.
// Runs on a fake binfmt_misc folder: a handler entry is a file holding
// "enabled" or "disabled", as the kernel's read back.
import t from 'tap';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { enableForeignArch, hostArch } from '../../src/builder/binfmt.js';
import { tempDir } from './support.js';

const skip = hostArch() !== 'amd64' ? 'arm64 and armv7 are foreign only on an amd64 host' : false;

async function fakeHost() {
  const dir = await tempDir();
  const binfmt = path.join(dir, 'binfmt_misc');
  mkdirSync(binfmt);
  writeFileSync(path.join(binfmt, 'register'), '');
  // Registered but switched off: the builds switch it on ("1") and back ("0").
  writeFileSync(path.join(binfmt, 'qemu-aarch64'), 'disabled\n');
  writeFileSync(path.join(binfmt, 'qemu-arm'), 'enabled\n');
  return { binfmt, runDir: path.join(dir, 'run') };
}

t.test('two builds: the handler stays on until the last one ends', { skip }, async (t) => {
  const paths = await fakeHost();
  const entry = path.join(paths.binfmt, 'qemu-aarch64');
  const [a, b] = await Promise.all([enableForeignArch('arm64', () => {}, paths), enableForeignArch('arm64', () => {}, paths)]);
  t.equal(readFileSync(entry, 'utf8'), '1', 'switched on');
  t.equal(readdirSync(path.join(paths.runDir, 'users')).length, 2, 'both builds recorded');
  await a();
  t.equal(readFileSync(entry, 'utf8'), '1', 'still on while the second build runs');
  await b();
  t.equal(readFileSync(entry, 'utf8'), '0', 'switched off by the last build');
  t.notOk(existsSync(path.join(paths.runDir, 'changes.json')));
  t.notOk(existsSync(path.join(paths.runDir, 'lock')), 'the lock is released');
});

t.test('a handler that was already on is left on; a dead build does not hold it', { skip }, async (t) => {
  const paths = await fakeHost();
  const undo = await enableForeignArch('armv7', () => {}, paths);
  await undo();
  t.equal(readFileSync(path.join(paths.binfmt, 'qemu-arm'), 'utf8'), 'enabled\n', 'not switched off: no build switched it on');
  // A build killed before its undo left its record behind; the next build's undo is the last.
  const arm64 = await enableForeignArch('arm64', () => {}, paths);
  writeFileSync(path.join(paths.runDir, 'users', '999999999-arm64-dead'), '999999999\n');
  await arm64();
  t.equal(readFileSync(path.join(paths.binfmt, 'qemu-aarch64'), 'utf8'), '0');
});

t.test('a lock left by a killed build is taken after a minute, a fresh one is waited for', { skip }, async (t) => {
  const paths = await fakeHost();
  const lock = path.join(paths.runDir, 'lock');
  mkdirSync(lock, { recursive: true });
  let done = false;
  const p = enableForeignArch('arm64', () => {}, paths).then((u) => ((done = true), u));
  await new Promise((r) => setTimeout(r, 400));
  t.notOk(done, 'waits while another build holds the lock');
  rmSync(lock, { recursive: true });
  const undo = await p;
  t.equal(readFileSync(path.join(paths.binfmt, 'qemu-aarch64'), 'utf8'), '1');
  await undo();
  // Two minutes old: a killed build's, taken at once.
  mkdirSync(lock);
  const old = new Date(Date.now() - 120_000);
  utimesSync(lock, old, old);
  const started = Date.now();
  await (await enableForeignArch('arm64', () => {}, paths))();
  t.ok(Date.now() - started < 1_000, 'the stale lock did not hold the build');
});
