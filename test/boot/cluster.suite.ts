// A cluster of three in QEMU, as `cairn run --cluster 3` makes it: one
// server and two agents, each with its own seed (hostname, token, role,
// address), on QEMU's user network for ssh and on a private network between
// the guests (a socket netdev on one multicast group). Each agent's k3s (the
// test double) must start in agent mode pointed at the server's private
// address and reach its port 6443 across that network. Three VMs at once
// under TCG: not in npm test; run it with `npm run test:cluster`. Then the
// same with --ha: three servers, the first with --cluster-init, the others
// joining it.
import t from 'tap';
import { bootForTest, makeSshKey, type SshKey } from '../../qemu/harness.js';
import { clusterGroup } from '../../src/cluster/run.js';
import { planCluster, renderNodeConfig, type ClusterPlan } from '../../src/cluster/plan.js';
import { buildTestImage, type TestImage } from './image.js';
import { L, Node, bootComplete, type Check } from './node.js';

t.setTimeout(60 * 60_000);
/** Three VMs share two cores: a boot takes about three times as long as alone. */
const CLUSTER_BOOT_MS = 1_200_000;

let image: TestImage;
let key: SshKey;
t.before(async () => {
  image = buildTestImage();
  key = await makeSshKey('cairn-cluster-test');
});
t.teardown(() => key?.remove());

/** Boots every node of a plan at once, each with its seed, on one private network; waits for every boot to complete. */
async function bootCluster(tt: Parameters<typeof bootForTest>[0] & Check, plan: ClusterPlan) {
  const group = clusterGroup();
  const nodes = await Promise.all(
    plan.nodes.map(async (n) => {
      const vm = await bootForTest(tt, { artifact: { kind: 'iso', path: image.iso }, configText: renderNodeConfig(n), privateNet: { mcast: group, mac: n.mac }, sshPort: 'auto', memMb: 1536, cpus: 1, name: n.name, timeoutMs: CLUSTER_BOOT_MS });
      return { plan: n, vm, node: new Node(vm, key) };
    }),
  );
  await Promise.all(nodes.map(({ vm }) => bootComplete(tt, vm, CLUSTER_BOOT_MS)));
  for (const { plan: n, vm } of nodes) {
    tt.notOk(vm.output.includes(plan.token), `${n.name}: the token is not on the console`);
    tt.notMatch(vm.output, /cairn\.token|k3os\.token/, `${n.name}: nor on the kernel command line`);
  }
  return nodes;
}

/** k3s' log on a node once it has reached the server (the double asks /readyz every 2 s). */
async function reachedLog(node: Node): Promise<string> {
  let log = '';
  for (let i = 0; i < 60 && !/ reached /.test(log); i++) {
    log = await node.sh('sudo cat /var/log/cairn/k3s.log');
    if (!/ reached /.test(log)) await new Promise((r) => setTimeout(r, 2000));
  }
  return log;
}

t.test('a server and two agents: each agent joins the server and reaches its 6443 over the private network', async (tt) => {
  const plan = planCluster({ size: 3, base: { ssh_authorized_keys: [key.publicKey.trim()] } });
  const nodes = await bootCluster(tt, plan);
  const [server, ...agents] = nodes;
  await server!.node.waitSsh();
  tt.equal((await server!.node.sh('hostname')).trim(), 'cairn-server-1');
  tt.match(await server!.node.sh('ip -4 -o addr show eth1'), /inet 10\.77\.0\.11\/24 /, 'the server on the private network');
  const serverLog = await server!.node.sh('sudo cat /var/log/cairn/k3s.log');
  tt.match(serverLog, /k3s-double: server starting/, 'k3s started as a server');
  tt.match(serverLog, /--node-ip 10\.77\.0\.11 --advertise-address 10\.77\.0\.11/, 'on its private address');
  for (const a of agents) {
    await a.node.waitSsh();
    tt.equal((await a.node.sh('hostname')).trim(), a.plan.name);
    tt.match(await a.node.sh('ip -4 -o addr show eth1'), new RegExp(`inet ${a.plan.address.replace(/\./g, '\\.')}/24 `), `${a.plan.name} on the private network`);
    const log = await reachedLog(a.node);
    tt.match(log, /k3s-double: agent joining https:\/\/10\.77\.0\.11:6443 with a token of 64 characters/, `${a.plan.name}: k3s in agent mode, pointed at the server, with the cluster's token`);
    tt.match(log, /k3s-double: agent reached https:\/\/10\.77\.0\.11:6443: readyz ok/, `${a.plan.name}: reached the server's 6443 across the private network`);
    const pid = (await a.node.sh('pgrep -o -f "[/]usr/local/bin/k3s agent"')).trim();
    tt.notMatch(await a.node.sh(`tr '\\0' ' ' < /proc/${pid}/cmdline`), new RegExp(plan.token), `${a.plan.name}: the token is not on k3s' command line`);
    tt.equal((await a.node.sh('sudo cat /run/cairn/k3s/token')).trim(), plan.token, `${a.plan.name}: the token file holds the cluster's token`);
    tt.match(a.vm.output, L(/cairn: boot complete 0\.1\.0$/));
  }
});

t.test("--ha: three servers with k3s' embedded etcd, the second and third joining the first over the private network", async (tt) => {
  const plan = planCluster({ size: 3, ha: true, base: { ssh_authorized_keys: [key.publicKey.trim()] } });
  const [first, ...others] = await bootCluster(tt, plan);
  await first!.node.waitSsh();
  const firstLog = await first!.node.sh('sudo cat /var/log/cairn/k3s.log');
  tt.match(firstLog, /k3s-double: server starting a cluster \(--cluster-init, embedded etcd\)/, 'the first server starts the cluster');
  tt.notMatch(firstLog, /server joining/, 'and joins none');
  for (const s of others) {
    await s.node.waitSsh();
    const log = await reachedLog(s.node);
    tt.match(log, /k3s-double: server starting/, `${s.plan.name}: k3s as a server`);
    tt.match(log, /k3s-double: server joining https:\/\/10\.77\.0\.11:6443 with a token of 64 characters/, `${s.plan.name}: joining the first with the cluster's token`);
    tt.match(log, /k3s-double: server reached https:\/\/10\.77\.0\.11:6443: readyz ok/, `${s.plan.name}: reached the first server's 6443 across the private network`);
    tt.notMatch(log, /--cluster-init/, `${s.plan.name}: without --cluster-init`);
  }
});
