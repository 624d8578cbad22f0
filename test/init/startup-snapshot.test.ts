// The init's startup snapshot, made on the node (src/init/startup-snapshot.ts),
// with the real init bundle and this host's real Node.js (/usr/bin/node): made,
// checked, kept, made again on another CPU, never retried after a failure.
import t from 'tap';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { bundleInit } from '../../src/builder/stages/init.js';
import { CPU_ID, SNAPSHOT_DIR, SNAPSHOT_ENTRY, confirmSnapshotStart, makeStartupSnapshot, snapshotWanted } from '../../src/init/startup-snapshot.js';
import { SNAPSHOT_CHECK_LINE } from '../../src/init/snapshot-check.js';
import { nodeRoot, put, testContext } from './support.js';

t.setTimeout(300_000);

const CPU = 'flags\t\t: fpu sse sse2\n';

let entry = '';
t.before(async () => {
  entry = (await bundleInit()).snapshotEntry ?? '';
});

function node(t: { testdir: () => string }, opts: { entry?: string; cpu?: string | null } = {}) {
  const root = nodeRoot(t.testdir());
  put(root, SNAPSHOT_ENTRY.slice(1), opts.entry ?? entry);
  if (opts.cpu !== null) put(root, CPU_ID.slice(1), opts.cpu ?? CPU);
  const c = testContext(root, {}, { realExec: true });
  return { root, ...c, snap: (name: string) => join(root, SNAPSHOT_DIR.slice(1), name) };
}

t.test('made beside the boot, checked by starting node from it, kept while the CPU and version stay', async (t) => {
  t.ok(entry.length > 100_000, 'the bundle has the snapshot entry');
  const { ctx, calls, snap } = node(t);
  mkdirSync(snap(''), { recursive: true });
  writeFileSync(snap('0.0.9.blob'), 'old');
  writeFileSync(snap('0.0.9.ok'), 'old');
  const what = await makeStartupSnapshot(ctx);
  t.match(what, /^made for 0\.1\.0-test \(\d+\.\d MiB, [\d.]+ s\); the next boot starts from it$/);
  t.same(calls.map((c) => [c.file, ...c.args.slice(0, 4)]), [
    ['nice', '-n', '19', '/usr/bin/node', '--snapshot-blob'],
    ['nice', '-n', '19', '/usr/bin/node', '--snapshot-blob'],
  ], 'one build, one check run, both at the lowest priority');
  t.equal(readFileSync(snap('0.1.0-test.cpu'), 'utf8'), CPU, "the CPU's features it was made on");
  t.ok(existsSync(snap('0.1.0-test.ok')), 'marked ok');
  t.notOk(existsSync(snap('0.0.9.blob')) || existsSync(snap('0.0.9.ok')), "another version's files are gone");
  t.notOk(existsSync(snap('0.1.0-test.blob.tmp')));
  const blob = snap('0.1.0-test.blob');
  t.ok(statSync(blob).size > 1024 * 1024, 'a blob of MiBs');
  // node starts from it: the deserialized init, not a fresh start
  const run = await execa('/usr/bin/node', ['--snapshot-blob', blob], { env: { CAIRN_SNAPSHOT_CHECK: '1' } });
  t.equal(run.stdout, `${SNAPSHOT_CHECK_LINE} function`);

  const mtime = statSync(blob).mtimeMs;
  t.equal(await makeStartupSnapshot(ctx), 'the one made before is kept');
  t.equal(calls.length, 2, 'node did not run again');
  t.equal(statSync(blob).mtimeMs, mtime);

  // the disk moved to a machine with other CPU features: made again
  writeFileSync(join(ctx.root, CPU_ID.slice(1)), 'flags\t\t: fpu sse sse2 avx2\n');
  t.match(await makeStartupSnapshot(ctx), /^made for 0\.1\.0-test/);
  t.equal(calls.length, 4);
  t.equal(readFileSync(snap('0.1.0-test.cpu'), 'utf8'), 'flags\t\t: fpu sse sse2 avx2\n');
});

t.test('a blob whose last start did not run (no ok marker) is made again', async (t) => {
  const { ctx, calls, snap } = node(t);
  await makeStartupSnapshot(ctx);
  writeFileSync(snap('0.1.0-test.blob'), 'a blob node could not start from');
  // the first stage removed the marker before it started node from the blob; the init never wrote it back
  rmSync(snap('0.1.0-test.ok'));
  t.match(await makeStartupSnapshot(ctx), /^made for/);
  t.equal(calls.length, 4);
  t.ok(statSync(snap('0.1.0-test.blob')).size > 1024 * 1024, 'a whole blob again');
  t.ok(existsSync(snap('0.1.0-test.ok')));
});

t.test('an init that a snapshot cannot hold: the reason kept, no blob, not tried again', async (t) => {
  const { ctx, calls, snap } = node(t, { entry: "throw new Error('boom at load time');\n" });
  const what = await makeStartupSnapshot(ctx);
  t.match(what, /^not made for 0\.1\.0-test: node --build-snapshot exited 1: .*boom at load time/);
  for (const f of ['blob', 'ok', 'cpu', 'blob.tmp']) t.notOk(existsSync(snap(`0.1.0-test.${f}`)), `no .${f}`);
  t.match(readFileSync(snap('0.1.0-test.failed'), 'utf8'), /boom at load time/);
  t.match(await makeStartupSnapshot(ctx), /^not made for 0\.1\.0-test: node --build-snapshot exited 1/);
  t.equal(calls.length, 1, 'node ran once');
});

t.test('a snapshot node cannot start from is not kept', async (t) => {
  // builds fine, but its main function fails: the check run exits non-zero
  const bad = "require('v8').startupSnapshot.setDeserializeMainFunction(() => { process.exit(3); });\n";
  const { ctx, snap } = node(t, { entry: bad });
  t.match(await makeStartupSnapshot(ctx), /^not made for 0\.1\.0-test: node does not start from the snapshot it made \(exit 3\)/);
  t.notOk(existsSync(snap('0.1.0-test.blob')) || existsSync(snap('0.1.0-test.ok')));
});

t.test('nothing is made without what it needs', async (t) => {
  const noCpu = node(t, { cpu: null });
  t.equal(await makeStartupSnapshot(noCpu.ctx), 'not made: the first stage left no /run/cairn/cpu-id');
  const noEntry = node(t);
  rmSync(join(noEntry.root, SNAPSHOT_ENTRY.slice(1)));
  t.equal(await makeStartupSnapshot(noEntry.ctx), 'not made: the image has no /usr/lib/cairn/init-snapshot.cjs');
  t.equal(noCpu.calls.length + noEntry.calls.length, 0);
});

t.test('only state boots with a writable state make one; cairn.snapshot=0 turns it off', async (t) => {
  const { ctx } = node(t);
  t.equal(snapshotWanted(ctx), true);
  t.equal(snapshotWanted({ ...ctx, boot: { ...ctx.boot, mode: 'live' } }), false, 'live');
  t.equal(snapshotWanted({ ...ctx, boot: { ...ctx.boot, stateReadOnly: true } }), false, 'state mounted read-only');
  t.equal(snapshotWanted({ ...ctx, cmdline: 'quiet cairn.snapshot=0 console=ttyS0' }), false, 'cairn.snapshot=0');
  t.equal(snapshotWanted({ ...ctx, cmdline: 'cairn.snapshot=false' }), false, 'cairn.snapshot=false');
  t.equal(snapshotWanted({ ...ctx, cmdline: 'cairn.snapshot=1' }), true);
});

t.test('a start from the snapshot writes its ok marker back', async (t) => {
  const { ctx, snap } = node(t);
  confirmSnapshotStart(ctx);
  t.match(readFileSync(snap('0.1.0-test.ok'), 'utf8'), /^\d{4}-\d\d-\d\dT/);
});
