// Boots of the default amd64 image in QEMU (TCG here: /dev/kvm is not usable
// for stock kernels on these machines), with the k3s test double as k3s.
// Each test boots a node with a NoCloud seed made from its config and checks
// what the init did, over ssh and on the serial console.
import t from 'tap';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { bootForTest, makeSshKey, overlay, type SshKey } from '../../qemu/harness.js';
import { checkSampleApplied, sampleConfig } from './sample.js';
import { REPO, buildTestImage, type TestImage } from './image.js';
import { BOOT_TIMEOUT, Node, L, bootComplete, bootsThrough } from './node.js';
import { baseMinFreeKbytes } from '../../src/init/apply/system.js';

t.setTimeout(90 * 60_000);

let image: TestImage;
let key: SshKey;

t.before(async () => {
  image = buildTestImage();
  key = await makeSshKey('cairn-boot-test');
});
t.teardown(() => key?.remove());

async function bootNode(tt: Parameters<typeof bootForTest>[0], artifact: Parameters<typeof bootForTest>[1]['artifact'], configText: string, name: string, more: Partial<Parameters<typeof bootForTest>[1]> = {}): Promise<Node> {
  const vm = await bootForTest(tt, { artifact, configText, sshPort: 'auto', memMb: 2048, cpus: 2, name, timeoutMs: BOOT_TIMEOUT, ...more });
  return new Node(vm, key);
}

// k3OS' sample config through the ISO: test/boot/install.test.ts installs with it and checks it on the installed disk.

t.test("raw disk: k3OS' sample config; state kept across a reboot", async (tt) => {
  const disk = join(tt.testdir(), 'node.qcow2');
  await overlay(image.raw, disk, '4G');
  const first = await bootNode(tt, { kind: 'qcow2', path: disk, writable: true }, sampleConfig(key), 'raw-sample-1');
  await bootsThrough(tt, first.vm);
  await checkSampleApplied(tt, first);
  tt.match(await first.sh('findmnt -n -o FSTYPE /var'), /ext4/, '/var is on the state partition');
  const [total, reserve] = (await first.sh("awk '/^MemTotal:/ {print $2}' /proc/meminfo; cat /proc/sys/vm/min_free_kbytes")).trim().split('\n').map(Number);
  tt.equal(reserve, baseMinFreeKbytes(total!), `the memory reserve is the kernel's base for ${total} KiB, not the 44 MiB THP asks for`);
  tt.equal((await first.sh('stat -c %a /dev/null /dev/zero /dev/urandom /dev/tty')).trim(), '666\n666\n666\n666', "the world-usable devices keep the kernel's modes");
  tt.equal((await first.sh('id -un; echo x >/dev/null && echo written')).trim(), 'cairn\nwritten', 'the cairn user writes to /dev/null');
  // the image's state partition grew to the end of the 4 GiB disk on the first boot
  tt.match(first.vm.output, L(/cairn: grow ok \(\d+ ms\): CAIRN_STATE grown from [\d.]+ to 3\.9 GiB \(the end of \/dev\/vda\)$/), 'CAIRN_STATE grown');
  const stateBytes = Number((await first.sh('df -B1 --output=size /run/cairn/state | tail -n 1')).trim());
  tt.ok(stateBytes > 3.5 * 1024 ** 3, `the file system fills it (${stateBytes} bytes)`);
  // the init's startup snapshot, made beside the first boot, starts the second
  tt.match(first.vm.output, L(/cairn: starting 0\.1\.0 \(from init\.js\)$/), 'the first boot starts from init.js');
  await first.vm.waitFor(L(/cairn: startup snapshot: made for 0\.1\.0 \([\d.]+ MiB, [\d.]+ s\); the next boot starts from it$/), 600_000);
  const mark = first.vm.output.length;
  await first.sh('sudo cairn reboot');
  await first.vm.waitFor(L(/cairn: shutting down \(reboot\)/), 60_000);
  await first.vm.waitFor(L(/cairn: rebooting$/), 120_000);
  await bootComplete(tt, first.vm);
  tt.match(first.vm.output.slice(mark), L(/cairn: starting 0\.1\.0 \(from its startup snapshot\)$/), 'the second boot starts from the snapshot');
  tt.equal(JSON.parse(await first.sh('cairn status --json')).initFrom, 'snapshot');
  tt.equal((await first.sh('hostname')).trim(), 'myhost', 'hostname kept');
  tt.equal(first.vm.output.match(/: CAIRN_STATE grown/g)?.length, 1, 'grown once: the second boot finds nothing to grow');
  const history = JSON.parse(await first.sh('cairn status --json')) as { history: { result: string }[] };
  tt.same(history.history.map((h) => h.result), ['good', 'good'], 'two good boots in the history');
  tt.match(await first.sh('sudo cat /var/log/cairn/boot.log'), /datastore: .*quick_check ok/, 'the datastore was checked on the second boot');
});

t.test('agent: server_url and token', async (tt) => {
  const config = `hostname: agent-1\nssh_authorized_keys: ["${key.publicKey.trim()}"]\nk3os:\n  server_url: https://10.0.2.2:6443\n  token: s3cret-token\n  labels: {role: edge}\n`;
  const node = await bootNode(tt, { kind: 'iso', path: image.iso }, config, 'agent');
  const runtime = await node.vm.waitFor(L(/cairn: runtime ok .*$/), BOOT_TIMEOUT);
  tt.match(runtime.match, /k3s agent --server https:\/\/10\.0\.2\.2:6443 --token-file \S+ .*--node-label role=edge/, 'agent mode, the token in a file');
  tt.notMatch(runtime.match, /s3cret-token/, 'the token is not shown');
  await bootComplete(tt, node.vm);
  await node.waitSsh();
  const inv = JSON.parse(await node.sh('sudo tail -n 1 /var/lib/rancher/k3s/double/invocations.jsonl')) as { argv: string[] };
  tt.same(inv.argv.slice(0, 3), ['agent', '--server', 'https://10.0.2.2:6443'], 'k3s started in agent mode with the server');
  tt.notOk(inv.argv.some((a) => a.includes('s3cret-token')), "the token is not in k3s' argv");
  const tokenFile = inv.argv[inv.argv.indexOf('--token-file') + 1] ?? '';
  tt.equal((await node.sh(`sudo stat -c %a ${tokenFile}`)).trim(), '600', 'the token file is 0600');
  const k3sLog = await node.sh('sudo cat /var/log/cairn/k3s.log');
  tt.match(k3sLog, /agent joining https:\/\/10\.0\.2\.2:6443 with a token of 12 characters/, 'k3s read the token from its file');
  tt.notMatch(k3sLog, /s3cret-token/, 'the token is not in the k3s log');
  tt.notMatch(await node.sh('cairn status'), /s3cret-token/, 'cairn status does not show the token');
});

t.test('a broken config: the node still comes up, reachable, the errors named', async (tt) => {
  const config = `hostname: "not a hostname"\nssh_authorized_keys: ["${key.publicKey.trim()}"]\nk3os:\n  modules: {x: 1}\n  sysctls: {kernel.printk: "4 4 1 7"}\n  dns_nameservers: [1.2.3]\n`;
  const node = await bootNode(tt, { kind: 'iso', path: image.iso }, config, 'broken');
  const err = await node.vm.waitFor(L(/cairn: config: \/var\/lib\/cairn\/userdata\/\S+:\d+:11: error: hostname: .*$/), BOOT_TIMEOUT);
  tt.pass(`named on the console: ${err.match}`);
  await bootComplete(tt, node.vm, BOOT_TIMEOUT, ['config']);
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

/**
 * An EC2-style metadata service (IMDSv2) on the host, for the guest at
 * 169.254.169.254 (QEMU's user network on 169.254.169.0/24 and a guestfwd):
 * a token from PUT /latest/api/token, then only requests that carry it.
 */
async function imdsV2(routes: Record<string, string>): Promise<{ port: number; log: string[]; close: () => Promise<void> }> {
  const token = 'AQAEAtestTOKEN==';
  const log: string[] = [];
  const server = createServer((req, res) => {
    const path = req.url ?? '';
    const withToken = req.headers['x-aws-ec2-metadata-token'] === token;
    log.push(`${req.method} ${path}${withToken ? ' (token)' : ''}`);
    if (req.method === 'PUT' && path === '/latest/api/token' && req.headers['x-aws-ec2-metadata-token-ttl-seconds']) return res.end(token);
    if (!withToken) return res.writeHead(401).end();
    const body = routes[path];
    if (body === undefined) return res.writeHead(404).end();
    res.end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as AddressInfo).port, log, close: () => new Promise((r) => server.close(() => r())) };
}

t.test('k3s crashes: restarted with back-off; the boot still completes (hostname, key and user-data from an IMDSv2 metadata service)', async (tt) => {
  // The seed only names the data source and makes k3s crash once; the rest comes from the metadata service.
  const config = `k3os:\n  data_sources: [aws]\nwrite_files:\n- path: /var/lib/rancher/k3s/double/crash-once\n  content: "crash on the first start"\n`;
  const imds = await imdsV2({
    '/latest/meta-data/local-hostname': 'crashy.eu-west-1.compute.internal',
    '/latest/meta-data/public-keys/': '0=cairn-test',
    '/latest/meta-data/public-keys/0/openssh-key': key.publicKey,
    '/latest/user-data': '#cloud-config\nrun_cmd: ["touch /run/from-imds-user-data"]\n',
  });
  tt.teardown(imds.close);
  const node = await bootNode(tt, { kind: 'iso', path: image.iso }, config, 'crash', {
    network: '169.254.169.0/24',
    guestForwards: [{ guestAddr: '169.254.169.254', guestPort: 80, hostPort: imds.port, relay: `${process.execPath} ${join(REPO, 'qemu/tcp-relay.mjs')}` }],
  });
  await node.vm.waitFor(L(/cairn: service k3s exited \(code 1\); restarting in 1\.0 s$/), BOOT_TIMEOUT);
  tt.pass('k3s exited and is restarted after 1 s');
  // The first crash comes 2 s after k3s starts, before or after the boot is marked good.
  await bootComplete(tt, node.vm, BOOT_TIMEOUT, [], { from: 'start' });
  tt.match(node.vm.output, L(/cairn: data-sources ok \(\d+ ms\): user-data from aws$/), 'the metadata service answered');
  await node.waitSsh();
  tt.pass("ssh with the key only the metadata service gave");
  tt.equal((await node.sh('hostname')).trim(), 'crashy', "the metadata's local-hostname, its first label");
  tt.equal((await node.sh('test -e /run/from-imds-user-data && echo yes')).trim(), 'yes', "the metadata service's user-data ran");
  tt.equal(imds.log[0], 'PUT /latest/api/token', 'IMDSv2: the token first');
  tt.ok(imds.log.slice(1).every((l) => l.endsWith(' (token)')), `and every request after it with the token (${imds.log.length} requests)`);
  // The restart after the crash has started (k3s logs its start) before it is killed: killed while it starts, it logs nothing.
  await node.sh('for i in $(seq 60); do [ "$(sudo grep -c "server starting" /var/log/cairn/k3s.log)" -ge 2 ] && exit 0; sleep 1; done; exit 1');
  // [/] keeps the pattern from matching sudo's own command line.
  await node.sh('sudo pkill -KILL -f "[/]usr/local/bin/k3s server"');
  await node.vm.waitFor(L(/cairn: service k3s exited \(signal SIGKILL\); restarting in [\d.]+ s$/), 60_000);
  tt.pass('killed with SIGKILL, restarted');
  const status = JSON.parse(await node.sh('cairn status --json')) as { services: { name: string; restarts: number }[] };
  tt.ok((status.services.find((s) => s.name === 'k3s')?.restarts ?? 0) >= 2, 'cairn status counts the restarts');
  const runs = (await node.sh('sudo grep -c "server starting" /var/log/cairn/k3s.log')).trim();
  tt.ok(Number(runs) >= 2, `k3s started ${runs} times`);

  // A crash that persists: each restart waits twice as long as the one before.
  await node.sh('sudo touch /var/lib/rancher/k3s/double/crash');
  await node.sh('sudo pkill -KILL -f "[/]usr/local/bin/k3s server"');
  const announced: number[] = [];
  for (let i = 0; i < 3; i++) {
    const r = await node.vm.waitFor(L(/cairn: service k3s exited \((?:code 1|signal SIGKILL)\); restarting in ([\d.]+) s$/), 120_000);
    announced.push(Number(r.groups[0]));
  }
  tt.same(announced.slice(1), [announced[0]! * 2, announced[0]! * 4], `the announced delays double: ${announced.join(', ')} s`);
  await node.vm.waitFor(L(/cairn: service k3s exited \(code 1\); restarting in [\d.]+ s$/), 120_000);
  // The supervisor's own lines in the service log: the real time from each exit to the next start.
  const log = await node.sh('sudo cat /var/log/cairn/k3s.log');
  const events = [...log.matchAll(/^--- (\S+) (starting|exited)/gm)].map((m) => ({ at: Date.parse(m[1]!), what: m[2]! }));
  const gaps: number[] = [];
  for (let i = 1; i < events.length; i++) if (events[i - 1]!.what === 'exited' && events[i]!.what === 'starting') gaps.push((events[i]!.at - events[i - 1]!.at) / 1000);
  const measured = gaps.slice(-3);
  tt.equal(measured.length, 3, `three restarts measured (${gaps.join(', ')} s)`);
  for (const [i, want] of announced.entries()) tt.ok(Math.abs((measured[i] ?? 0) - want) < 0.5, `restart ${i + 1} came ${measured[i]} s after the exit (announced ${want} s)`);
  await node.sh('sudo rm /var/lib/rancher/k3s/double/crash');
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
  await bootComplete(tt, node.vm, 60_000);
  await node.vm.reset();
  await node.vm.waitFor(L(/cairn: boot_cmd\[0\]: damaged the datastore$/), BOOT_TIMEOUT);
  const restored = await node.vm.waitFor(L(/cairn: datastore: state\.db was damaged .*restored state-\S+\.db$/), 120_000);
  tt.pass(restored.match);
  await bootComplete(tt, node.vm);
  await node.waitSsh();
  tt.equal((await node.sh('sudo sqlite3 /var/lib/rancher/k3s/server/db/state.db "PRAGMA quick_check"')).trim(), 'ok', 'the restored datastore is sound');
  // The snapshot's rows came back: a fresh datastore would get new random values.
  const rows = (db: string) => node.sh(`sudo sqlite3 ${db} "SELECT name || ' ' || hex(value) FROM kine WHERE name NOT LIKE '%/start' ORDER BY id"`);
  const snapshots = (await node.sh('sudo ls -1 /var/lib/cairn/db-snapshots')).trim().split('\n').filter((n) => n.endsWith('.db'));
  const newest = snapshots.sort().at(-1);
  tt.ok(newest, `a snapshot is there (${snapshots.join(', ')})`);
  const restoredRows = await rows('/var/lib/rancher/k3s/server/db/state.db');
  tt.equal(restoredRows.trim().split('\n').length, 300, 'the restored datastore holds the snapshot\'s 300 rows');
  tt.equal(restoredRows, await rows(`/var/lib/cairn/db-snapshots/${newest}`), 'the same rows as the snapshot');
  tt.equal((await node.sh('sudo stat -c %a /var/lib/cairn/db-snapshots')).trim(), '700', 'the snapshot folder is 0700');
  tt.same((await node.sh('sudo find /var/lib/cairn/db-snapshots -type f -printf "%m\\n"')).trim().split('\n').filter((m) => m !== '600'), [], 'every snapshot is 0600');
  tt.match(await node.sh('sudo ls /var/lib/rancher/k3s/server/db/'), /state\.db\.damaged-/, 'the damaged file kept aside');
});

t.test('raw disk under OVMF (UEFI): the default image boots from the state partition', async (tt) => {
  const config = `hostname: uefi-node\nssh_authorized_keys: ["${key.publicKey.trim()}"]\ninit_cmd: ["for i in $(seq 180); do test -e /tmp/init-cmd-may-end && exit 0; sleep 1; done"]\nk3os: {password: uefi-pass}\n`;
  const node = await bootNode(tt, { kind: 'raw', path: image.raw }, config, 'raw-uefi', { firmware: 'uefi' });
  // A slow init_cmd does not keep the console locked: the configured password logs in while it runs.
  await node.vm.waitFor(L(/cairn: console ok .*$/), BOOT_TIMEOUT);
  await node.consoleLogin('cairn', 'uefi-pass', 'uefi-node');
  tt.equal((await node.consoleRun('echo early shell')).trim(), 'early shell', 'a console shell during init_cmd');
  tt.notMatch(node.vm.output, /cairn: init-cmd ok/, 'init_cmd was still running');
  await node.consoleRun('touch /tmp/init-cmd-may-end');
  await bootsThrough(tt, node.vm, [], { from: 'start' });
  await node.waitSsh();
  tt.equal((await node.sh('test -d /sys/firmware/efi && echo uefi')).trim(), 'uefi', 'booted through UEFI');
  tt.equal((JSON.parse(await node.sh('cairn status --json')) as { bootMode: string }).bootMode, 'state', 'from the state partition');
  tt.match(await node.sh('findmnt -n -o FSTYPE /var'), /ext4/, '/var is on the state partition');
});

t.test('PXE: the folder cairn build writes, over TFTP and HTTP, to a complete boot', async (tt) => {
  const config = `hostname: pxe-node\nssh_authorized_keys: ["${key.publicKey.trim()}"]\n`;
  const node = await bootNode(tt, { kind: 'pxe', dir: image.pxe }, config, 'pxe');
  await bootsThrough(tt, node.vm);
  await node.waitSsh();
  const status = JSON.parse(await node.sh('cairn status --json')) as { version: string; bootMode: string };
  tt.same([status.version, status.bootMode], ['0.1.0', 'net'], 'a net boot of version 0.1.0');
  tt.ok(node.vm.http?.requests.some((r) => r.path.endsWith('/rootfs.squashfs') && r.status === 200), 'the first stage fetched the squashfs over HTTP');
});

t.test('a first boot at 1970 without a reachable key source: the clock, the way in, files owned by cairn', async (tt) => {
  // No RTC time to speak of and no internet: the github: key cannot be fetched.
  const config = [
    'hostname: clockless',
    'ssh_authorized_keys: ["github:cairn-test-no-such-user"]',
    'write_files:',
    '- path: /home/cairn/notes.txt',
    '  owner: cairn:cairn',
    '  permissions: "0600"',
    '  content: written for cairn on the first boot',
    '',
  ].join('\n');
  const node = await bootNode(tt, { kind: 'iso', path: image.iso }, config, 'clockless', { extraArgs: ['-rtc', 'base=1970-01-01'] });
  const clock = await node.vm.waitFor(/^cairn-initramfs: clock set to (\S+), the image's build time \(it read 1970-01-01T\S+\)$/m, BOOT_TIMEOUT);
  tt.equal(Date.parse(clock.groups[0]!) / 1000, image.sourceDateEpoch, `the first stage set the clock: ${clock.match}`);
  // The clock cannot be synchronised (no NTP server answers here): the time phase says so after its bounded wait.
  await bootComplete(tt, node.vm, BOOT_TIMEOUT, ['time']);
  // No key could be installed and no password is set: the console logs in by itself.
  node.vm.sendLine('');
  await node.vm.waitFor(/@clockless:[^\n]*\$ $/m, 60_000);
  const now = Number((await node.consoleRun('date +%s')).trim());
  tt.ok(now >= image.sourceDateEpoch, `the clock (${now}) is not before the image's build time (${image.sourceDateEpoch})`);
  tt.equal((await node.consoleRun('stat -c %U:%G:%a /home/cairn/notes.txt')).trim(), 'cairn:cairn:600', 'the file is cairn\'s on the first boot');
  tt.equal((await node.consoleRun('cat /home/cairn/notes.txt; echo')).trim(), 'written for cairn on the first boot');
  tt.equal((await node.consoleRun('stat -c %s .ssh/authorized_keys')).trim(), '0', 'no key was installed from a failed fetch');
});
