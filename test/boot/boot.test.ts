// Boots of the default amd64 image in QEMU (TCG here: /dev/kvm is not usable
// for stock kernels on these machines), with the k3s test double as k3s.
// Each test boots a node with a NoCloud seed made from its config and checks
// what the init did, over ssh and on the serial console.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { bootForTest, makeSshKey, overlay, type SshKey, type Vm } from '../../qemu/harness.js';
import { K3OS_SAMPLE } from '../support/shared.js';
import { buildTestImage, type TestImage } from './image.js';
import { BOOT_TIMEOUT, Node } from './node.js';

t.setTimeout(90 * 60_000);

let image: TestImage;
let key: SshKey;

t.before(async () => {
  image = buildTestImage();
  key = await makeSshKey('cairn-boot-test');
});
t.teardown(() => key?.remove());

/**
 * k3OS' README sample config with only its network-dependent values adapted:
 * the github: key (no GitHub from the test machines) becomes the test's own key.
 */
function sampleConfig(): string {
  const text = readFileSync(K3OS_SAMPLE, 'utf8');
  if (!text.includes('- github:ibuildthecloud')) throw new Error('the k3OS sample changed');
  return text.replace('- github:ibuildthecloud', `- ${key.publicKey.trim()}`);
}

/** The assertions these tests use (a tap subtest has them all). */
interface Check {
  ok(v: unknown, ...m: [] | [string]): unknown;
  pass(...m: [] | [string]): unknown;
  equal(a: unknown, b: unknown, ...m: [] | [string]): unknown;
  same(a: unknown, b: unknown, ...m: [] | [string]): unknown;
  match(a: unknown, re: RegExp, ...m: [] | [string]): unknown;
  notMatch(a: unknown, re: RegExp, ...m: [] | [string]): unknown;
}

async function bootNode(tt: Parameters<typeof bootForTest>[0], artifact: Parameters<typeof bootForTest>[1]['artifact'], configText: string, name: string): Promise<Node> {
  const vm = await bootForTest(tt, { artifact, configText, sshPort: 'auto', memMb: 2048, cpus: 2, name, timeoutMs: BOOT_TIMEOUT });
  return new Node(vm, key);
}

/** A console line, also when it follows a login prompt that a getty printed without a newline. */
function L(re: RegExp): RegExp {
  return new RegExp(`(?:^|login: )${re.source}`, 'm');
}
const line = (source: string): RegExp => L(new RegExp(source));

const PHASES = ['mounts', 'config', 'initrd-keys', 'init-cmd', 'network', 'data-sources', 'users', 'time', 'boot-cmd', 'services', 'runtime', 'run-cmd', 'mark-good'];

/** Every phase printed its line, in order, and the boot completed. */
async function bootsThrough(tt: Check, vm: Vm, failing: string[] = []): Promise<void> {
  for (const p of PHASES) {
    const r = await vm.waitFor(line(`cairn: ${p} (ok \\(\\d+ ms\\).*|FAILED: .*)$`), BOOT_TIMEOUT);
    const ok = r.match.includes(' ok (');
    tt.ok(failing.includes(p) ? !ok : ok, `${p}: ${r.match.slice(7)}`);
  }
  await vm.waitFor(L(/cairn: boot complete 0\.1\.0/), 60_000);
}

/** What the k3OS sample config asks for, checked on the node. */
async function checkSampleApplied(tt: Check, node: Node): Promise<void> {
  await node.waitSsh();
  tt.equal((await node.sh('hostname')).trim(), 'myhost', 'hostname set');
  const keys = await node.sh('cat ~/.ssh/authorized_keys');
  tt.match(keys, /^ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB\.\.\.$/m, "the sample's key installed for cairn");
  tt.equal((await node.sh('id -u')).trim(), '1000', 'cairn is uid 1000');
  tt.equal((await node.sh('stat -c "%a %U" /etc/local.d/example.start')).trim(), '755 root', 'write_files with owner and mode');
  tt.equal((await node.sh('cat /etc/local.d/example.start')).trim(), '#!/bin/bash\necho hello, local service start');
  const cmds = await node.sh('sudo cat /var/log/cairn/commands.log');
  const order = [...cmds.matchAll(/^hello, (\w+) command$/gm)].map((m) => m[1]);
  tt.same(order, ['init', 'boot', 'run'], 'init_cmd, boot_cmd, run_cmd ran in that order');
  tt.equal((await node.sh('cat /proc/sys/kernel/printk')).trim().split(/\s+/).join(' '), '4 4 1 7', 'sysctl kernel.printk');
  tt.equal((await node.sh('cat /proc/sys/kernel/kptr_restrict')).trim(), '1', 'sysctl kernel.kptr_restrict');
  const modules = await node.sh('cut -d" " -f1 /proc/modules');
  tt.match(modules, /^kvm$/m, 'module kvm loaded');
  tt.match(modules, /^nvme$/m, 'module nvme loaded');
  const k3s = await node.sh('sudo cat /var/log/cairn/k3s.log');
  tt.match(k3s, /k3s-double: server starting/, 'k3s started as a server');
  for (const arg of ['--node-label region=us-west-1', '--node-label somekey=somevalue', '--node-taint key1=value1:NoSchedule', '--node-taint key1=value1:NoExecute', '--cluster-init', '--node-label cairn.io/version=0.1.0']) {
    tt.ok(k3s.includes(arg), `k3s got ${arg}`);
  }
  tt.match(k3s, /k3s-double: manifest system-upgrade-controller\.yaml/, 'the baked-in system-upgrade-controller manifest is listed');
  tt.match(k3s, /k3s-double: manifest cairn-upgrade-plan\.yaml/, 'the baked-in Plan is listed');
  tt.match(await node.sh('sudo ls -l /var/lib/rancher/k3s/server/db/state.db'), /state\.db/, 'the datastore exists');
  tt.equal((await node.sh('sudo stat -c %a /etc/rancher/k3s/k3s.yaml')).trim(), '600', 'the kubeconfig is 0600');
  const env = JSON.parse((await node.sh('sudo tail -n 1 /var/lib/rancher/k3s/double/invocations.jsonl')) || '{}') as { env?: Record<string, string> };
  tt.equal(env.env?.http_proxy, 'http://myserver', 'environment handed to k3s');
  const status = JSON.parse(await node.sh('cairn status --json')) as { version: string; services: { name: string; state: string }[]; bootComplete: boolean };
  tt.equal(status.version, '0.1.0');
  tt.ok(status.bootComplete);
  tt.same(status.services.filter((s) => ['sshd', 'chronyd', 'k3s'].includes(s.name)).map((s) => [s.name, s.state]), [['sshd', 'running'], ['chronyd', 'running'], ['k3s', 'running']]);
}

t.test("ISO: k3OS' README sample config", async (tt) => {
  const node = await bootNode(tt, { kind: 'iso', path: image.iso }, sampleConfig(), 'iso-sample');
  await bootsThrough(tt, node.vm);
  await checkSampleApplied(tt, node);
  tt.ok(await node.vm.shutdown(90_000), 'clean poweroff on the ACPI power button');
  tt.match(node.vm.output, L(/cairn: power button pressed$/));
  tt.match(node.vm.output, L(/cairn: shutting down \(poweroff\): stopping services$/));
  tt.match(node.vm.output, L(/cairn: powering off$/), 'the init stopped the services and powered off');
});

t.test("raw disk: k3OS' sample config; state kept across a reboot", async (tt) => {
  const disk = join(tt.testdir(), 'node.qcow2');
  await overlay(image.raw, disk, '4G');
  const first = await bootNode(tt, { kind: 'qcow2', path: disk, writable: true }, sampleConfig(), 'raw-sample-1');
  await bootsThrough(tt, first.vm);
  await checkSampleApplied(tt, first);
  tt.match(await first.sh('findmnt -n -o FSTYPE /var'), /ext4/, '/var is on the state partition');
  await first.sh('sudo cairn reboot');
  await first.vm.waitFor(L(/cairn: shutting down \(reboot\)/), 60_000);
  await first.vm.waitFor(L(/cairn: rebooting$/), 120_000);
  await first.vm.waitFor(L(/cairn: boot complete 0\.1\.0/), BOOT_TIMEOUT);
  tt.equal((await first.sh('hostname')).trim(), 'myhost', 'hostname kept');
  const history = JSON.parse(await first.sh('cairn status --json')) as { history: { result: string }[] };
  tt.same(history.history.map((h) => h.result), ['good', 'good'], 'two good boots in the history');
  tt.match(await first.sh('sudo cat /var/log/cairn/boot.log'), /datastore: .*quick_check ok/, 'the datastore was checked on the second boot');
});

t.test('agent: server_url and token', async (tt) => {
  const config = `hostname: agent-1\nssh_authorized_keys: ["${key.publicKey.trim()}"]\nk3os:\n  server_url: https://10.0.2.2:6443\n  token: s3cret-token\n  labels: {role: edge}\n`;
  const node = await bootNode(tt, { kind: 'iso', path: image.iso }, config, 'agent');
  const runtime = await node.vm.waitFor(L(/cairn: runtime ok .*$/), BOOT_TIMEOUT);
  tt.match(runtime.match, /k3s agent --server https:\/\/10\.0\.2\.2:6443 --token <redacted> --node-label role=edge/, 'agent mode, token not shown');
  await node.vm.waitFor(L(/cairn: boot complete/), BOOT_TIMEOUT);
  await node.waitSsh();
  const inv = JSON.parse(await node.sh('sudo tail -n 1 /var/lib/rancher/k3s/double/invocations.jsonl')) as { argv: string[] };
  tt.same(inv.argv.slice(0, 5), ['agent', '--server', 'https://10.0.2.2:6443', '--token', 's3cret-token'], 'k3s started in agent mode with them');
  tt.match(await node.sh('sudo cat /var/log/cairn/k3s.log'), /agent joining https:\/\/10\.0\.2\.2:6443/);
  tt.notMatch(await node.sh('cairn status'), /s3cret-token/, 'cairn status does not show the token');
});

t.test('a broken config: the node still comes up, reachable, the errors named', async (tt) => {
  const config = `hostname: "not a hostname"\nssh_authorized_keys: ["${key.publicKey.trim()}"]\nk3os:\n  modules: {x: 1}\n  sysctls: {kernel.printk: "4 4 1 7"}\n  dns_nameservers: [1.2.3]\n`;
  const node = await bootNode(tt, { kind: 'iso', path: image.iso }, config, 'broken');
  const err = await node.vm.waitFor(L(/cairn: config: \/var\/lib\/cairn\/userdata\/\S+:\d+:11: error: hostname: .*$/), BOOT_TIMEOUT);
  tt.pass(`named on the console: ${err.match}`);
  await node.vm.waitFor(L(/cairn: boot complete 0\.1\.0/), BOOT_TIMEOUT);
  await node.waitSsh();
  tt.pass('reachable by ssh');
  const status = await node.sh('cairn status');
  tt.match(status, /config problems:/);
  tt.match(status, /hostname: expected a hostname/, 'the hostname error in cairn status');
  tt.match(status, /k3os\.modules\[0\]: expected a kernel module name, found a map/);
  tt.match(status, /k3os\.dns_nameservers\[0\]: expected an IP address, found the string "1\.2\.3"/);
  tt.equal((await node.sh('cat /proc/sys/kernel/printk')).trim().split(/\s+/).join(' '), '4 4 1 7', 'the valid keys were applied');
  tt.match(await node.sh('sudo cat /var/log/cairn/boot.log'), /hostname: expected a hostname/, 'the error in the boot log');
  await node.sh('sudo cairn poweroff');
  await node.vm.waitFor(L(/cairn: shutting down \(poweroff\): stopping services$/), 60_000);
  await node.vm.waitFor(L(/cairn: powering off$/), 120_000);
  tt.ok(await node.vm.waitExit(60_000), 'QEMU exits: the machine powered off');
});

t.test('k3s crashes: restarted with back-off; the boot still completes', async (tt) => {
  const config = `hostname: crashy\nssh_authorized_keys: ["${key.publicKey.trim()}"]\nwrite_files:\n- path: /var/lib/rancher/k3s/double/crash-once\n  content: "crash on the first start"\n`;
  const node = await bootNode(tt, { kind: 'iso', path: image.iso }, config, 'crash');
  await node.vm.waitFor(L(/cairn: service k3s exited \(code 1\); restarting in 1\.0 s$/), BOOT_TIMEOUT);
  tt.pass('k3s exited and is restarted after 1 s');
  // The first crash comes 2 s after k3s starts, before or after the boot is marked good.
  await node.vm.waitFor(L(/cairn: boot complete/), BOOT_TIMEOUT, { from: 'start' });
  await node.waitSsh();
  // [/] keeps the pattern from matching sudo's own command line.
  await node.sh('sudo pkill -KILL -f "[/]usr/local/bin/k3s server"');
  await node.vm.waitFor(L(/cairn: service k3s exited \(signal SIGKILL\); restarting in [\d.]+ s$/), 60_000);
  tt.pass('killed with SIGKILL, restarted');
  const status = JSON.parse(await node.sh('cairn status --json')) as { services: { name: string; restarts: number }[] };
  tt.ok((status.services.find((s) => s.name === 'k3s')?.restarts ?? 0) >= 2, 'cairn status counts the restarts');
  const runs = (await node.sh('sudo grep -c "server starting" /var/log/cairn/k3s.log')).trim();
  tt.ok(Number(runs) >= 2, `k3s started ${runs} times`);
});

t.test('a damaged state.db is restored from the newest snapshot', async (tt) => {
  const disk = join(tt.testdir(), 'node.qcow2');
  await overlay(image.raw, disk, '4G');
  // boot_cmd runs before k3s starts: on a boot after the first good one, damage the datastore.
  const config = [
    'hostname: dbnode',
    `ssh_authorized_keys: ["${key.publicKey.trim()}"]`,
    'boot_cmd:',
    '- "if ls /var/lib/cairn/db-snapshots/*.db >/dev/null 2>&1; then dd if=/dev/urandom of=/var/lib/rancher/k3s/server/db/state.db bs=4096 seek=2 count=8 conv=notrunc; echo damaged the datastore; fi"',
    '',
  ].join('\n');
  const node = await bootNode(tt, { kind: 'qcow2', path: disk, writable: true }, config, 'damaged-db');
  await node.vm.waitFor(L(/cairn: mark-good ok .*datastore snapshot state-\S+-boot\.db$/), BOOT_TIMEOUT);
  await node.vm.waitFor(L(/cairn: boot complete/), 60_000);
  await node.vm.reset();
  await node.vm.waitFor(L(/cairn: boot_cmd\[0\]: damaged the datastore$/), BOOT_TIMEOUT);
  const restored = await node.vm.waitFor(L(/cairn: datastore: state\.db was damaged .*restored state-\S+\.db$/), 120_000);
  tt.pass(restored.match);
  await node.vm.waitFor(L(/cairn: boot complete/), BOOT_TIMEOUT);
  await node.waitSsh();
  tt.equal((await node.sh('sudo sqlite3 /var/lib/rancher/k3s/server/db/state.db "PRAGMA quick_check"')).trim(), 'ok', 'the restored datastore is sound');
  tt.match(await node.sh('sudo ls /var/lib/rancher/k3s/server/db/'), /state\.db\.damaged-/, 'the damaged file kept aside');
});
