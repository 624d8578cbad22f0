// The cluster plan behind `cairn run --cluster N [--ha]`: roles, addresses,
// each node's config (validated as a node reads it) and the k3s command line
// it gives; the token in the seeds only; the QEMU command lines of a dry run.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { planCluster, renderNodeConfig } from '../../src/cluster/plan.js';
import { readConfig } from '../../src/config/read.js';
import { UserError } from '../../src/errors.js';
import { k3sInvocation } from '../../src/runtime/k3s-args.js';
import { REPO } from '../boot/image.js';

const TOKEN = 'a'.repeat(64);

function k3sOf(node: ReturnType<typeof planCluster>['nodes'][number]) {
  const r = readConfig(renderNodeConfig(node), node.name);
  if (r.diagnostics.length) throw new Error(r.diagnostics.map((d) => d.message).join('; '));
  return { config: r.config, k3s: k3sInvocation(r.config, { version: '0.1.0', bootMode: 'state' }) };
}

t.test('--cluster 3: a server and two agents joined by token on the private network', async (t) => {
  const plan = planCluster({ size: 3, token: TOKEN });
  t.same(plan.nodes.map((n) => [n.name, n.role, n.address, n.mac]), [
    ['cairn-server-1', 'server', '10.77.0.11', '52:54:00:77:00:01'],
    ['cairn-agent-1', 'agent', '10.77.0.12', '52:54:00:77:00:02'],
    ['cairn-agent-2', 'agent', '10.77.0.13', '52:54:00:77:00:03'],
  ]);
  t.equal(plan.serverUrl, 'https://10.77.0.11:6443');
  const [server, agent] = plan.nodes.map(k3sOf);
  t.equal(server!.k3s.mode, 'server');
  t.same(server!.k3s.args.filter((a) => !a.startsWith('cairn.io/') && a !== '--node-label'), ['server', '--token-file', '/run/cairn/k3s/token', '--write-kubeconfig-mode', '0600', '--node-ip', '10.77.0.11', '--advertise-address', '10.77.0.11']);
  t.equal(agent!.k3s.mode, 'agent');
  t.same(agent!.k3s.args.slice(0, 5), ['agent', '--server', 'https://10.77.0.11:6443', '--token-file', '/run/cairn/k3s/token']);
  t.same(agent!.k3s.args.slice(-2), ['--node-ip', '10.77.0.12']);
  t.same(agent!.k3s.secrets, [{ path: '/run/cairn/k3s/token', value: TOKEN }], "the token reaches k3s in a file, from the node's seed");
  t.notOk(agent!.k3s.args.includes(TOKEN), 'never as an argument');
  t.same(agent!.config.cairn?.network?.interfaces, { eth1: { addresses: ['10.77.0.12/24'] } }, 'its address on the private NIC');
  t.equal(agent!.config.hostname, 'cairn-agent-1');
  t.not(planCluster({ size: 2 }).token, planCluster({ size: 2 }).token, 'a new random token for each cluster');
  t.match(planCluster({ size: 2 }).token, /^[0-9a-f]{64}$/);
});

t.test('--ha: three servers with embedded etcd, the first starts the cluster', async (t) => {
  const plan = planCluster({ size: 4, ha: true, token: TOKEN });
  t.same(plan.nodes.map((n) => [n.name, n.role]), [['cairn-server-1', 'server'], ['cairn-server-2', 'server'], ['cairn-server-3', 'server'], ['cairn-agent-1', 'agent']]);
  const ks = plan.nodes.map((n) => k3sOf(n).k3s);
  t.ok(ks[0]!.args.includes('--cluster-init') && !ks[0]!.args.includes('--server'), 'the first: --cluster-init');
  for (const k of ks.slice(1, 3)) {
    t.equal(k.mode, 'server', 'the others are servers too');
    t.same(k.args.slice(0, 3), ['server', '--server', 'https://10.77.0.11:6443'], 'joining the first');
    t.notOk(k.args.includes('--cluster-init'));
  }
  t.equal(ks[3]!.mode, 'agent');
});

t.test('bad sizes, and a user config kept under the cluster keys', async (t) => {
  const refusal = (fn: () => unknown) => {
    try {
      fn();
    } catch (e) {
      if (e instanceof UserError) return e.message;
      throw e;
    }
    return 'not refused';
  };
  t.match(refusal(() => planCluster({ size: 0 })), /^--cluster takes a number of nodes from 1 to 9, not 0/);
  t.match(refusal(() => planCluster({ size: 12 })), /not 12/);
  t.match(refusal(() => planCluster({ size: 2, ha: true })), /^--ha makes three servers .*--cluster 2 is too few/);
  const base = readConfig('hostname: mine\nssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ4Yl6kVvKUqvWGcd1FzIeHcgGx4bS1a6xXoQn9dW0cP me]\nk3os:\n  labels: {site: lab}\n  ntp_servers: [ntp.lab]\n', 'base').config;
  const node = planCluster({ size: 2, base: base as never, token: TOKEN }).nodes[1]!;
  const { config, k3s } = k3sOf(node);
  t.equal(config.hostname, 'cairn-agent-1', "each node's own hostname");
  t.equal(config.ssh_authorized_keys?.length, 1, "the user's key on every node");
  t.same([config.cairn?.labels, config.cairn?.ntp_servers], [{ site: 'lab' }, ['ntp.lab']], "the user's system keys kept");
  t.ok(k3s.args.includes('site=lab'));
});

t.test('cairn run --cluster 3 --dry-run: one QEMU per node on one private network; the token in no command line', async (t) => {
  const dir = t.testdir();
  const iso = join(dir, 'default-0.1.0-amd64.iso');
  writeFileSync(iso, Buffer.alloc(64 * 1024));
  const tmp = join(dir, 'tmp');
  mkdirSync(tmp);
  const r = spawnSync(join(REPO, 'bin/cairn'), ['run', '--cluster', '3', '--dry-run', iso], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, TMPDIR: tmp } });
  t.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  t.equal(lines.length, 3);
  t.match(lines[0], /^cairn-server-1 \(server, 10\.77\.0\.11\): \S*qemu-system-x86_64 /);
  const groups = lines.map((l) => /-netdev socket,id=net1,mcast=(230\.77\.\d+\.\d+:\d+),localaddr=127\.0\.0\.1/.exec(l)?.[1]);
  t.ok(groups[0] && groups.every((g) => g === groups[0]), `every node on the same multicast group (${groups[0]})`);
  t.same(lines.map((l) => /virtio-net-pci,netdev=net1,mac=([0-9a-f:]+)/.exec(l)?.[1]), ['52:54:00:77:00:01', '52:54:00:77:00:02', '52:54:00:77:00:03']);
  t.notMatch(r.stdout, /[0-9a-f]{64}|-append/, 'no token on a command line (it is in each seed)');
  t.same(readdirSync(tmp).filter((f) => f.startsWith('cairn-cluster-')), [], 'a dry run leaves no cluster folder (and no token) behind');
  const bad = spawnSync(join(REPO, 'bin/cairn'), ['run', '--ha', iso], { encoding: 'utf8' });
  t.equal(bad.status, 1);
  t.match(bad.stderr, /--ha is for clusters/);
});
