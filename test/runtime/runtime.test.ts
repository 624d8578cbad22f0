import t from 'tap';
import { spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { extractTokens, k3sInvocation, redactEnv, redactK3sArgs } from '../../src/runtime/k3s-args.js';
import { toLabelValue } from '../../src/config/labels.js';
import { planSync, syncRuntimeFiles } from '../../src/runtime/manifests.js';
import { checkDatastore, listSnapshots, quickCheck, snapshot } from '../../src/runtime/datastore.js';
import { readKubeconfig, readyz, waitServerReady } from '../../src/runtime/health.js';
import { execCommand, type Exec, type ExecResult } from '../../src/init/exec.js';
import { runPhases, phase } from '../../src/init/phase.js';
import { startK3s } from '../../src/runtime/k3s.js';
import { createLogger } from '../../src/init/log.js';
import { put, testContext } from '../init/support.js';

const DOUBLE = new URL('../fixtures/k3s-double', import.meta.url).pathname;

t.test('k3s arguments: server by default, with labels, taints and args', async (t) => {
  const inv = k3sInvocation({ cairn: { labels: { region: 'us-west-1' }, taints: ['key1=value1:NoSchedule'], k3s_args: ['--cluster-init'], environment: { http_proxy: 'http://p' } } }, { version: '0.1.0', bootMode: 'live' });
  t.equal(inv.mode, 'server');
  t.same(inv.args, ['server', '--write-kubeconfig-mode', '0600', '--node-label', 'region=us-west-1', '--node-label', 'cairn.io/version=0.1.0', '--node-label', 'cairn.io/mode=live', '--node-taint', 'key1=value1:NoSchedule', '--cluster-init']);
  t.same(inv.env, { http_proxy: 'http://p' });
  t.same(inv.secrets, [], 'no token, no token file');
});

t.test('k3s arguments: agent when server_url and token are set; k3s_args[0] decides outright', async (t) => {
  const agent = k3sInvocation({ cairn: { server_url: 'https://s:6443', token: 'T' } }, { version: '1', bootMode: 'state' });
  t.equal(agent.mode, 'agent');
  t.same(agent.args.slice(0, 5), ['agent', '--server', 'https://s:6443', '--token-file', '/run/cairn/k3s/token']);
  t.same(agent.secrets, [{ path: '/run/cairn/k3s/token', value: 'T' }]);
  t.notOk(agent.args.includes('T'), 'the token is not an argument');
  t.notOk(agent.args.includes('--write-kubeconfig-mode'));
  // k3OS' README sample: server_url and token, but k3s_args starts with "server".
  const sample = k3sInvocation({ cairn: { server_url: 'https://someserver:6443', token: 'TOKEN_VALUE', k3s_args: ['server', '--cluster-init'] } }, { version: '1', bootMode: 'state' });
  t.equal(sample.mode, 'server');
  t.equal(sample.args.at(-1), '--cluster-init');
  t.notOk(sample.args.includes('server', 1));
});

t.test("tokens in k3s_args move to files; a datastore password to k3s' environment", async (t) => {
  for (const form of [['--token', 'S3CRET'], ['--token=S3CRET'], ['-t', 'S3CRET'], ['-t=S3CRET'], ['-token', 'S3CRET']]) {
    const inv = k3sInvocation({ cairn: { token: 'from-config', k3s_args: ['server', '--cluster-init', ...form, '--disable=traefik'] } }, { version: '1', bootMode: 'state' });
    t.notOk(inv.args.some((a) => a.includes('S3CRET') || a.includes('from-config')), `${form.join(' ')}: no token in argv (${inv.args.join(' ')})`);
    t.same(inv.secrets, [{ path: '/run/cairn/k3s/token', value: 'S3CRET' }], `${form.join(' ')}: k3s_args' token wins over the config's, as it would on k3s' command line`);
    t.same(inv.args.slice(-2), ['--cluster-init', '--disable=traefik'], 'the other arguments kept, in order');
    t.equal(inv.args.filter((a) => a === '--token-file').length, 1);
  }
  const both = k3sInvocation({ cairn: { k3s_args: ['server', '--agent-token', 'AG3NT', '--datastore-endpoint=postgres://k3s:pw0rd@db:5432/k3s'] } }, { version: '1', bootMode: 'state' });
  t.same(both.secrets, [{ path: '/run/cairn/k3s/agent-token', value: 'AG3NT' }]);
  t.ok(both.args.includes('--agent-token-file'));
  t.equal(both.env.K3S_DATASTORE_ENDPOINT, 'postgres://k3s:pw0rd@db:5432/k3s');
  t.notOk(both.args.join(' ').match(/AG3NT|pw0rd/), 'neither on the command line');
  // An endpoint without credentials stays an argument; a flag without a value is left alone.
  t.same(extractTokens(['--datastore-endpoint', 'https://etcd:2379', '--token']), { args: ['--datastore-endpoint', 'https://etcd:2379', '--token'] });
});

t.test('redaction of k3s arguments and environment is complete', async (t) => {
  t.same(
    redactK3sArgs(['agent', '--token', 'T1', '--token=T2', '-t', 'T3', '-t=T4', '--agent-token', 'T5', '--agent-token=T6', '--etcd-s3-secret-key=T7', '--x']),
    ['agent', '--token', '<redacted>', '--token=<redacted>', '-t', '<redacted>', '-t=<redacted>', '--agent-token', '<redacted>', '--agent-token=<redacted>', '--etcd-s3-secret-key=<redacted>', '--x'],
  );
  t.same(redactK3sArgs(['--token-file', '/run/cairn/k3s/token', '--datastore-keyfile', '/k.pem']), ['--token-file', '/run/cairn/k3s/token', '--datastore-keyfile', '/k.pem'], 'file paths are not secrets');
  t.same(
    redactK3sArgs(['--datastore-endpoint', 'mysql://user:pa:ss@tcp(db:3306)/k3s', '--datastore-endpoint=postgres://u:p@h:5432/db', '--datastore-endpoint=https://etcd1:2379,https://etcd2:2379']),
    ['--datastore-endpoint', 'mysql://user:<redacted>@tcp(db:3306)/k3s', '--datastore-endpoint=postgres://u:<redacted>@h:5432/db', '--datastore-endpoint=https://etcd1:2379,https://etcd2:2379'],
  );
  t.same(redactEnv({ K3S_TOKEN: 'a', MY_PASSWORD: 'b', api_secret: 'c', AWS_ACCESS_KEY_ID: 'd', https_proxy: 'http://me:pw@proxy:3128', http_proxy: 'http://proxy:3128', LANG: 'C' }), {
    K3S_TOKEN: '<redacted>',
    MY_PASSWORD: '<redacted>',
    api_secret: '<redacted>',
    AWS_ACCESS_KEY_ID: '<redacted>',
    https_proxy: 'http://me:<redacted>@proxy:3128',
    http_proxy: 'http://proxy:3128',
    LANG: 'C',
  });
});

t.test('cairn.io/version and cairn.io/mode are valid label values', async (t) => {
  const valid = (v: string) => v === '' || (v.length <= 63 && /^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$/.test(v));
  for (const version of ['0.1.0', '1.2.3+build.7', `1.0.0-${'x'.repeat(80)}`, '+weird~', '2024.05.01-rc1_']) {
    const inv = k3sInvocation({}, { version, bootMode: 'state' });
    const label = inv.args.find((a) => a.startsWith('cairn.io/version='))!.slice('cairn.io/version='.length);
    t.ok(valid(label), `${version} → ${label}`);
  }
  t.equal(toLabelValue('1.2.3+build.7'), '1.2.3-build.7');
  t.same(k3sInvocation({}, { version: '1.2.3+build.7', bootMode: 'state' }).args.filter((a) => a.startsWith('cairn.io/')), ['cairn.io/version=1.2.3-build.7', 'cairn.io/mode=state']);
  t.equal(toLabelValue('x'.repeat(70)).length, 63);
});

t.test('manifests: image files synced, files the image dropped removed, the user\'s kept', async (t) => {
  t.same(planSync(['a.yaml', 'b.yaml'], ['a.yaml', 'old.yaml', 'mine.yaml'], ['a.yaml', 'old.yaml']), { copy: ['a.yaml', 'b.yaml'], remove: ['old.yaml'], keep: ['mine.yaml'] });
  const root = t.testdir();
  put(root, 'usr/lib/cairn/manifests/suc.yaml', 'kind: Deployment\n');
  put(root, 'usr/lib/cairn/manifests/plan.yaml', 'kind: Plan\n');
  put(root, 'usr/lib/cairn/images/airgap.tar.zst', 'tar');
  put(root, 'usr/lib/cairn/registries.yaml', 'mirrors: {}\n');
  const first = syncRuntimeFiles(root);
  t.same(first.manifests.copied, ['plan.yaml', 'suc.yaml']);
  t.same(first.images.copied, ['airgap.tar.zst']);
  t.ok(first.registries);
  t.equal(statSync(join(root, 'etc/rancher/k3s/registries.yaml')).mode & 0o777, 0o600);
  const auto = join(root, 'var/lib/rancher/k3s/server/manifests');
  writeFileSync(join(auto, 'user-app.yaml'), 'kind: ConfigMap\n');
  // The next image drops plan.yaml and changes suc.yaml.
  execFileSync('rm', [join(root, 'usr/lib/cairn/manifests/plan.yaml')]);
  put(root, 'usr/lib/cairn/manifests/suc.yaml', 'kind: Deployment # v2\n');
  const second = syncRuntimeFiles(root);
  t.same(second.manifests.copied, ['suc.yaml']);
  t.same(second.manifests.removed, ['plan.yaml']);
  t.same(second.manifests.kept, ['user-app.yaml']);
  t.same(second.images.copied, [], 'unchanged tarballs are not copied again');
  t.same(readdirSync(auto).sort(), ['.cairn-managed', 'suc.yaml', 'user-app.yaml']);
  t.equal(readFileSync(join(auto, 'suc.yaml'), 'utf8'), 'kind: Deployment # v2\n');
});

function makeDb(path: string, rows: number) {
  mkdirSync(join(path, '..'), { recursive: true });
  execFileSync('sqlite3', [path, `CREATE TABLE kine(id INTEGER PRIMARY KEY, name TEXT, value BLOB); WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < ${rows}) INSERT INTO kine(name, value) SELECT 'key' || x, randomblob(200) FROM c;`]);
}

t.test('datastore: quick_check, online snapshots kept to N, a damaged db restored from the newest good snapshot', async (t) => {
  const dir = t.testdir();
  const db = join(dir, 'server/db/state.db');
  const snaps = join(dir, 'snapshots');
  t.same(await checkDatastore(execCommand, db, snaps), { state: 'missing', detail: 'no datastore yet (first start)' });
  makeDb(db, 2000);
  t.ok((await quickCheck(execCommand, db)).ok);
  t.equal((await checkDatastore(execCommand, db, snaps)).state, 'ok');
  const made: string[] = [];
  for (let i = 0; i < 3; i++) {
    made.push(await snapshot(execCommand, db, snaps, { reason: `r${i}`, keep: 2 }));
    await new Promise((r) => setTimeout(r, 1100));
  }
  t.same(listSnapshots(snaps), [made[2], made[1]], 'the newest two are kept');
  t.equal(statSync(snaps).mode & 0o777, 0o700, 'the snapshot folder is 0700');
  t.same(listSnapshots(snaps).map((f) => statSync(f).mode & 0o777), [0o600, 0o600], 'each snapshot is 0600');
  // As an older version left it: a readable snapshot. What is restored from it is 0600 all the same.
  chmodSync(made[2]!, 0o644);
  // Damage the database: overwrite pages in the middle of the file.
  const size = statSync(db).size;
  const fd = execFileSync('sh', ['-c', `dd if=/dev/urandom of=${db} bs=4096 seek=${Math.floor(size / 4096 / 2)} count=8 conv=notrunc 2>/dev/null; echo done`]);
  t.equal(fd.toString().trim(), 'done');
  t.notOk((await quickCheck(execCommand, db)).ok, 'the damage is seen');
  const r = await checkDatastore(execCommand, db, snaps);
  t.equal(r.state, 'restored');
  t.match(r.detail, /state\.db was damaged .*moved to state\.db\.damaged-\d{8}T\d{6}Z, restored state-.*-r2\.db/);
  t.ok((await quickCheck(execCommand, db)).ok, 'the restored database is sound');
  t.equal(execFileSync('sqlite3', [db, 'SELECT count(*) FROM kine']).toString().trim(), '2000');
  t.equal(statSync(db).mode & 0o777, 0o600, 'the restored state.db is 0600');
  t.ok(readdirSync(join(dir, 'server/db')).some((n) => n.startsWith('state.db.damaged-')), 'the damaged file is kept aside');
});

t.test('datastore: damaged with no snapshot: moved aside, k3s starts empty', async (t) => {
  const dir = t.testdir();
  const db = join(dir, 'state.db');
  writeFileSync(db, Buffer.alloc(8192, 7));
  const r = await checkDatastore(execCommand, db, join(dir, 'none'));
  t.equal(r.state, 'damaged');
  t.match(r.detail, /no good snapshot to restore/);
  t.notOk(existsSync(db));
});

t.test('the k3s double: argv and environment recorded, datastore, kubeconfig 0600, /readyz over TLS, manifests listed', async (t) => {
  const root = t.testdir();
  put(root, 'var/lib/rancher/k3s/server/manifests/suc.yaml', 'x');
  const port = 20000 + Math.floor(Math.random() * 20000);
  const child = spawn(DOUBLE, ['server', '--write-kubeconfig-mode', '0600', '--node-label', 'a=b'], { env: { ...process.env, K3S_DOUBLE_ROOT: root, K3S_DOUBLE_PORT: String(port), SPECIAL: 'yes' } });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  t.teardown(() => child.kill('SIGKILL'));
  const kubeconfig = join(root, 'etc/rancher/k3s/k3s.yaml');
  const creds = async () => {
    for (let i = 0; i < 100 && !readKubeconfig(kubeconfig); i++) await new Promise((r) => setTimeout(r, 100));
    return readKubeconfig(kubeconfig)!;
  };
  const c = await creds();
  t.equal(statSync(kubeconfig).mode & 0o777, 0o600);
  let status = 0;
  for (let i = 0; i < 50 && status !== 200; i++) {
    status = await readyz({ ...c, server: `https://127.0.0.1:${port}` });
    if (status !== 200) await new Promise((r) => setTimeout(r, 100));
  }
  t.equal(status, 200);
  t.ok(existsSync(join(root, 'var/lib/rancher/k3s/server/db/state.db')));
  const rec = JSON.parse(readFileSync(join(root, 'var/lib/rancher/k3s/double/invocations.jsonl'), 'utf8').trim()) as { argv: string[]; env: Record<string, string> };
  t.same(rec.argv, ['server', '--write-kubeconfig-mode', '0600', '--node-label', 'a=b']);
  t.equal(rec.env.SPECIAL, 'yes');
  t.match(out, /k3s-double: manifest suc\.yaml/);
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'exits 0 on SIGTERM');
  t.notOk(await waitServerReady(kubeconfig, 300, 100), 'nothing answers once it stopped');
});

t.test("the k3s double as an agent asks its server's /readyz until it answers", async (t) => {
  const root = t.testdir();
  const port = 20000 + Math.floor(Math.random() * 20000);
  // K3S_DOUBLE_ROOT prefixes its paths: each double finds /run/token under its own root
  put(root, 'agent/run/token', 'T0KEN\n');
  put(root, 'server/run/token', 'T0KEN\n');
  const agent = spawn(DOUBLE, ['agent', '--server', `https://127.0.0.1:${port}`, '--token-file', '/run/token'], { env: { ...process.env, K3S_DOUBLE_ROOT: join(root, 'agent') } });
  let out = '';
  agent.stdout.on('data', (d: Buffer) => (out += d.toString()));
  t.teardown(() => agent.kill('SIGKILL'));
  await new Promise((r) => setTimeout(r, 2500));
  t.notMatch(out, /agent reached/, 'no server yet: not reached');
  const server = spawn(DOUBLE, ['server', '--token-file', '/run/token'], { env: { ...process.env, K3S_DOUBLE_ROOT: join(root, 'server'), K3S_DOUBLE_PORT: String(port) } });
  t.teardown(() => server.kill('SIGKILL'));
  for (let i = 0; i < 100 && !/agent reached/.test(out); i++) await new Promise((r) => setTimeout(r, 100));
  t.match(out, new RegExp(`k3s-double: agent reached https://127\\.0\\.0\\.1:${port}: readyz ok`), 'reached once the server listens');
  t.notMatch(out, /T0KEN/, 'the token is not logged');
});

t.test('the k3s double crashes or hangs on request', async (t) => {
  const root = t.testdir();
  put(root, 'var/lib/rancher/k3s/double/crash-once', '');
  const crash = spawn(DOUBLE, ['agent', '--server', 'https://s:6443', '--token', 'T'], { env: { ...process.env, K3S_DOUBLE_ROOT: root } });
  t.equal(await new Promise((r) => crash.once('exit', r)), 1, 'crash-once exits 1');
  t.notOk(existsSync(join(root, 'var/lib/rancher/k3s/double/crash-once')), 'and only once');
  put(root, 'var/lib/rancher/k3s/double/hang', '');
  const hang = spawn(DOUBLE, ['agent'], { env: { ...process.env, K3S_DOUBLE_ROOT: root } });
  await new Promise((r) => setTimeout(r, 800));
  hang.kill('SIGTERM');
  const res = await Promise.race([new Promise((r) => hang.once('exit', () => r('exited'))), new Promise((r) => setTimeout(() => r('still running'), 800))]);
  t.equal(res, 'still running', 'hang ignores SIGTERM');
  hang.kill('SIGKILL');
});

t.test('snapshots: an existing folder and files with open modes are tightened', async (t) => {
  const dir = t.testdir();
  const db = join(dir, 'state.db');
  makeDb(db, 10);
  const snaps = join(dir, 'snaps');
  mkdirSync(snaps, { mode: 0o755 });
  chmodSync(snaps, 0o755);
  const old = join(snaps, 'state-20240101T000000Z-boot.db');
  copyFileSync(db, old);
  chmodSync(old, 0o644);
  const made = await snapshot(execCommand, db, snaps, { reason: 'test' });
  t.equal(statSync(snaps).mode & 0o777, 0o700, 'folder 0700');
  t.equal(statSync(made).mode & 0o777, 0o600, 'new snapshot 0600');
  t.equal(statSync(old).mode & 0o777, 0o600, 'the old snapshot 0600 too');
});

/** An exec that answers sqlite3 with a canned result (and runs nothing). */
function cannedSqlite(r: Partial<ExecResult>): Exec {
  return async () => ({ code: 0, stdout: '', stderr: '', timedOut: false, ...r });
}

t.test('datastore: only a corruption quick_check reports moves state.db aside', async (t) => {
  const cases: [string, Partial<ExecResult>, RegExp][] = [
    ['a timeout', { code: 128, timedOut: true, signal: 'SIGKILL' }, /did not finish in time/],
    ['a lock', { code: 5, stderr: 'Error: in prepare, database is locked (5)' }, /locked/],
    ['sqlite3 missing', { code: 127, notStarted: true, stderr: 'spawn sqlite3 ENOENT' }, /sqlite3 could not be run .*ENOENT/],
    ['sqlite3 killed', { code: 128, signal: 'SIGKILL' }, /sqlite3 was killed \(SIGKILL\)/],
    ['a failure without words', { code: 1 }, /no verdict/],
  ];
  for (const [what, result, detail] of cases) {
    const dir = t.testdir();
    const db = join(dir, 'state.db');
    writeFileSync(db, 'the live database');
    const r = await checkDatastore(cannedSqlite(result), db, join(dir, 'snaps'));
    t.equal(r.state, 'unchecked', `${what}: no verdict`);
    t.match(r.detail, detail, `${what}: ${r.detail}`);
    t.match(r.detail, /left in place/);
    t.equal(readFileSync(db, 'utf8'), 'the live database', `${what}: state.db untouched`);
    t.same(readdirSync(dir), ['state.db'], `${what}: nothing moved aside`);
  }
  const dir = t.testdir();
  const db = join(dir, 'state.db');
  writeFileSync(db, 'damaged');
  const r = await checkDatastore(cannedSqlite({ code: 11, stdout: '*** in database main ***\nPage 61: btreeInitPage() returns error code 11' }), db, join(dir, 'snaps'));
  t.equal(r.state, 'damaged', 'a reported corruption is acted on');
  t.notOk(existsSync(db));
});

t.test('datastore with the real sqlite3: a missing binary and a locked database leave state.db in place', async (t) => {
  const dir = t.testdir();
  const db = join(dir, 'state.db');
  makeDb(db, 100);
  const before = readFileSync(db);
  const noSqlite: Exec = (file, args, o) => execCommand(file === 'sqlite3' ? join(dir, 'no-such-sqlite3') : file, args, o);
  const missing = await checkDatastore(noSqlite, db, join(dir, 'snaps'));
  t.equal(missing.state, 'unchecked');
  t.match(missing.detail, /sqlite3 could not be run/);
  t.ok(readFileSync(db).equals(before), 'untouched');
  // Another process holds an exclusive lock, as a k3s that did not stop would.
  const holder = spawn('sqlite3', [db], { stdio: ['pipe', 'pipe', 'pipe'] });
  t.teardown(() => holder.kill('SIGKILL'));
  holder.stdin.write("PRAGMA locking_mode=EXCLUSIVE; BEGIN EXCLUSIVE; INSERT INTO kine(name) VALUES ('held'); SELECT 'locked';\n");
  await new Promise<void>((resolve) => holder.stdout.on('data', (d: Buffer) => d.toString().includes('locked') && resolve()));
  const locked = await checkDatastore(execCommand, db, join(dir, 'snaps'));
  t.equal(locked.state, 'unchecked', locked.detail);
  t.match(locked.detail, /the database is locked/);
  t.ok(existsSync(db), 'still in place');
  t.same(readdirSync(dir).filter((n) => n.includes('damaged')), [], 'nothing moved aside');
});

async function waitFor<T>(what: () => T | undefined, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = what();
    if (v) return v;
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 50));
  }
}

t.test('runtime phase: the token reaches k3s in a 0600 file, never its argv, its log or the status', async (t) => {
  const root = t.testdir();
  mkdirSync(join(root, 'usr/local/bin'), { recursive: true });
  copyFileSync(DOUBLE, join(root, 'usr/local/bin/k3s'));
  chmodSync(join(root, 'usr/local/bin/k3s'), 0o755);
  // What an older version left: an open log folder and log file.
  mkdirSync(join(root, 'var/log/cairn'), { recursive: true, mode: 0o755 });
  chmodSync(join(root, 'var/log/cairn'), 0o755);
  writeFileSync(join(root, 'var/log/cairn/k3s.log'), '');
  chmodSync(join(root, 'var/log/cairn/k3s.log'), 0o644);
  const config = { cairn: { server_url: 'https://10.0.2.2:6443', token: 's3cret-token', k3s_args: ['--agent-token=ag3nt-token'], environment: { API_TOKEN: 'env-s3cret', http_proxy: 'http://proxy:3128' } } };
  const { ctx } = testContext(root, config);
  ctx.env = { ...ctx.env, K3S_DOUBLE_ROOT: root };
  t.teardown(() => ctx.services.stopAll());
  const note = await startK3s(ctx);
  t.match(note, /^k3s agent --server https:\/\/10\.0\.2\.2:6443 --token-file \/run\/cairn\/k3s\/token --agent-token-file \/run\/cairn\/k3s\/agent-token /);
  const log = join(root, 'var/log/cairn/k3s.log');
  await waitFor(() => /with a token of 12 characters/.test(readFileSync(log, 'utf8')));
  const tokenFile = join(root, 'run/cairn/k3s/token');
  t.equal(readFileSync(tokenFile, 'utf8'), 's3cret-token\n');
  t.equal(statSync(tokenFile).mode & 0o777, 0o600, 'token file 0600');
  t.equal(statSync(join(root, 'run/cairn/k3s/agent-token')).mode & 0o777, 0o600, 'agent token file 0600');
  t.equal(statSync(join(root, 'run/cairn/k3s')).mode & 0o777, 0o700, 'their folder 0700');
  if (process.getuid?.() === 0) t.equal(statSync(tokenFile).uid, 0, 'owned by root');
  const rec = JSON.parse(readFileSync(join(root, 'var/lib/rancher/k3s/double/invocations.jsonl'), 'utf8').trim()) as { pid: number; argv: string[] };
  t.notOk(rec.argv.some((a) => /s3cret|ag3nt/.test(a)), `no token in k3s' argv: ${rec.argv.join(' ')}`);
  t.equal(rec.argv[rec.argv.indexOf('--token-file') + 1], '/run/cairn/k3s/token');
  const cmdline = readFileSync(`/proc/${rec.pid}/cmdline`, 'utf8');
  t.notMatch(cmdline, /s3cret|ag3nt/, 'nor in /proc/<pid>/cmdline');
  const logText = readFileSync(log, 'utf8');
  t.match(logText, /--- \S+ starting \S+k3s agent --server https:\/\/10\.0\.2\.2:6443 --token-file \/run\/cairn\/k3s\/token/, 'the supervisor logged the (redacted) argv');
  t.notMatch(logText, /s3cret|ag3nt/, 'no token in the k3s log');
  t.equal(statSync(join(root, 'var/log/cairn')).mode & 0o777, 0o750, 'log folder 0750');
  t.equal(statSync(log).mode & 0o777, 0o640, 'k3s.log 0640');
  const status = readFileSync(join(root, 'run/cairn/status.json'), 'utf8');
  t.notMatch(status, /s3cret|ag3nt/, 'no token in status.json');
  t.same(ctx.status.status.k3s?.env, { API_TOKEN: '<redacted>', http_proxy: 'http://proxy:3128' }, 'the environment shown redacted');
});

t.test('runtime phase: a phase that timed out during the datastore check never starts k3s', async (t) => {
  const root = t.testdir();
  mkdirSync(join(root, 'usr/local/bin'), { recursive: true });
  copyFileSync(DOUBLE, join(root, 'usr/local/bin/k3s'));
  put(root, 'var/lib/rancher/k3s/server/db/state.db', 'db');
  const { ctx } = testContext(root, {});
  t.teardown(() => ctx.services.stopAll());
  let release: () => void = () => undefined;
  // sqlite3 takes its time, and does not react to the signal (the runtime must check it itself).
  ctx.exec = (file) => new Promise((resolve) => (release = () => resolve({ code: 0, stdout: file === 'sqlite3' ? 'ok' : '', stderr: '', timedOut: false })));
  const lines: string[] = [];
  const results = await runPhases([phase('runtime', 50, startK3s)], ctx, createLogger({ debug: false, write: (s) => lines.push(s) }));
  t.same(results.map((r) => [r.name, r.ok, r.detail]), [['runtime', false, 'did not finish within 50 ms']]);
  release();
  await new Promise((r) => setTimeout(r, 300));
  t.equal(ctx.services.get('k3s'), undefined, 'k3s was not started after the timeout');
  t.notOk(existsSync(join(root, 'var/lib/rancher/k3s/double/invocations.jsonl')), 'the k3s binary never ran');
});
