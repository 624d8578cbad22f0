import t from 'tap';
import { spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { k3sInvocation, redactArgs } from '../../src/runtime/k3s-args.js';
import { planSync, syncRuntimeFiles } from '../../src/runtime/manifests.js';
import { checkDatastore, listSnapshots, quickCheck, snapshot } from '../../src/runtime/datastore.js';
import { readKubeconfig, readyz, waitServerReady } from '../../src/runtime/health.js';
import { execCommand } from '../../src/init/exec.js';
import { put } from '../init/support.js';

const DOUBLE = new URL('../fixtures/k3s-double', import.meta.url).pathname;

t.test('k3s arguments: server by default, with labels, taints and args', async (t) => {
  const inv = k3sInvocation({ cairn: { labels: { region: 'us-west-1' }, taints: ['key1=value1:NoSchedule'], k3s_args: ['--cluster-init'], environment: { http_proxy: 'http://p' } } }, { version: '0.1.0', bootMode: 'live' });
  t.equal(inv.mode, 'server');
  t.same(inv.args, ['server', '--write-kubeconfig-mode', '0600', '--node-label', 'region=us-west-1', '--node-label', 'cairn.io/version=0.1.0', '--node-label', 'cairn.io/mode=live', '--node-taint', 'key1=value1:NoSchedule', '--cluster-init']);
  t.same(inv.env, { http_proxy: 'http://p' });
});

t.test('k3s arguments: agent when server_url and token are set; k3s_args[0] decides outright', async (t) => {
  const agent = k3sInvocation({ cairn: { server_url: 'https://s:6443', token: 'T' } }, { version: '1', bootMode: 'state' });
  t.equal(agent.mode, 'agent');
  t.same(agent.args.slice(0, 5), ['agent', '--server', 'https://s:6443', '--token', 'T']);
  t.notOk(agent.args.includes('--write-kubeconfig-mode'));
  // k3OS' README sample: server_url and token, but k3s_args starts with "server".
  const sample = k3sInvocation({ cairn: { server_url: 'https://someserver:6443', token: 'TOKEN_VALUE', k3s_args: ['server', '--cluster-init'] } }, { version: '1', bootMode: 'state' });
  t.equal(sample.mode, 'server');
  t.equal(sample.args.at(-1), '--cluster-init');
  t.notOk(sample.args.includes('server', 1));
  t.same(redactArgs(['agent', '--token', 'T', '--token=abc', '--x']), ['agent', '--token', '<redacted>', '--token=<redacted>', '--x']);
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
