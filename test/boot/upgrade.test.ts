// Upgrades in QEMU: the default image's raw disk (0.1.0, signed builds that
// trust the test key) upgraded by hand to 0.2.0 over HTTP; then trials
// that do not come up, each of which the node leaves by itself
// for 0.2.0, recording the rollback: a 0.3.0 whose k3s never becomes
// healthy (the trial's deadline) and leaves a database 0.2.0's k3s refuses
// (the snapshot from before the upgrade comes back), the same 0.3.0 with its
// init hung (the hardware watchdog), and a 0.4.0 whose kernel panics
// (panic=10, GRUB's try count).
import t from 'tap';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { bootForTest, makeSshKey, type SshKey } from '../../qemu/harness.js';
import { REPO, buildTestImage, buildUpgradeVersion } from './image.js';
import { BOOT_TIMEOUT, Node } from './node.js';

let key: SshKey;
let raw = '';
const serve = join(REPO, '.tap', 'upgrade-serve');
const payloads: Record<string, string> = {};

t.before(async () => {
  key = await makeSshKey('cairn-upgrade-test');
  raw = buildTestImage().raw;
  mkdirSync(serve, { recursive: true });
  payloads['0.2.0'] = buildUpgradeVersion('0.2.0');
  // a k3s that never becomes healthy, and leaves a database the older k3s refuses
  payloads['0.3.0'] = buildUpgradeVersion('0.3.0', { overlays: ['test/fixtures/overlays/never-ready', 'test/fixtures/overlays/newer-datastore'] });
  // no such init in the initramfs and no root= to fall back on: the kernel panics
  payloads['0.4.0'] = buildUpgradeVersion('0.4.0', { cmdline: 'rdinit=/no-such-init panic=1' });
  for (const p of Object.values(payloads)) copyFileSync(p, join(serve, basename(p)));
  // bad downloads: one byte changed in the middle (inside the squashfs), and the archive cut in half
  const good = readFileSync(payloads['0.2.0']!);
  const bad = Buffer.from(good);
  bad[Math.floor(bad.length / 2)] = bad[Math.floor(bad.length / 2)]! ^ 0x01;
  writeFileSync(join(serve, 'tampered.oci.tar'), bad);
  writeFileSync(join(serve, 'truncated.oci.tar'), good.subarray(0, Math.floor(good.length / 2)));
});
t.teardown(() => key?.remove());

const exact = (version: string) => new RegExp(`^(?:.*?)cairn: boot complete ${version.replace(/\./g, '\\.')}$`, 'm');

interface Status {
  version: string;
  boot?: { kind: string; state?: { active: string; fallback?: string; trial?: string; tries?: number; failed?: string } };
  upgrade?: { version: string; from: string; outcome: string; reason?: string };
  k3s?: { args: string[] };
}

t.test('upgrades: 0.1.0 → 0.2.0 by hand; an unhealthy, a hung and a panicking version rolled back without anyone', async (tt) => {
  const config = `hostname: upgrade-node\nssh_authorized_keys: ["${key.publicKey.trim()}"]\n`;
  const vm = await bootForTest(tt, { artifact: { kind: 'raw', path: raw }, configText: config, sshPort: 'auto', memMb: 2048, cpus: 2, name: 'upgrade', timeoutMs: BOOT_TIMEOUT, serveDir: serve, extraArgs: ['-device', 'i6300esb'] });
  const node = new Node(vm, key);
  await vm.waitFor(exact('0.1.0'), BOOT_TIMEOUT);
  await node.waitSsh();
  const url = (v: string) => `${vm.http!.guestUrl}/${basename(payloads[v]!)}`;

  // refused, each with its reason, and nothing on the disk changed
  const disk = 'sudo sh -c "ls -a /cairn/system; sha256sum /cairn/grub/grubenv"';
  const before = await node.sh(disk);
  for (const [file, why] of [
    ['tampered.oci.tar', /rootfs\.squashfs|sha256|digest/],
    ['truncated.oci.tar', /truncated|short|ends|incomplete/i],
  ] as const) {
    const out = await node.sh(`sudo cairn upgrade --source ${vm.http!.guestUrl}/${file} 2>&1; echo "exit=$?"`);
    tt.match(out, why, `${file}: refused, saying why`);
    tt.match(out, /^exit=1$/m, `${file}: exit 1`);
    tt.equal(await node.sh(disk), before, `${file}: nothing changed on the disk`);
  }
  // too little space: CAIRN_STATE filled up, then freed
  await node.sh('sudo sh -c "fallocate -l $(( $(stat -f -c %a /cairn) * $(stat -f -c %S /cairn) - 100 * 1048576 )) /var/lib/cairn/filler"');
  const full = await node.sh(`sudo cairn upgrade --source ${url('0.2.0')} 2>&1; echo "exit=$?"`);
  tt.match(full, /not enough space to download \S+: it needs \d+ MiB in \/cairn\/system\/\.download, \d+ MiB are free/, 'too little space: refused, saying how much is needed');
  await node.sh('sudo rm /var/lib/cairn/filler');
  tt.equal(await node.sh(disk), before, 'too little space: nothing changed on the disk');

  // 0.1.0 → 0.2.0
  // the session ends as the node goes down: its exit status is not the upgrade's
  const staged = await node.sh(`sudo cairn upgrade --source ${url('0.2.0')} --tries 2 --reboot 2>&1`, { ok: false });
  tt.match(staged, /^version 0\.2\.0 is installed and on trial \(2 tries, healthy within 900 s\); the fallback is 0\.1\.0$/m, 'staged and on trial');
  await vm.waitFor(/^cairn-initramfs: system 0\.2\.0 on \/dev\/vda3 \(trial boot, 1 tries left\)$/m, BOOT_TIMEOUT);
  await vm.waitFor(/cairn: mounts ok \(\d+ ms\): state boot of 0\.2\.0; trial boot of 0\.2\.0 \(1 tries left\), healthy by 900 s, watchdog .+ armed$/m, BOOT_TIMEOUT);
  await vm.waitFor(/cairn: mark-good ok \(\d+ ms\): version 0\.2\.0 is now the active one/m, BOOT_TIMEOUT);
  await vm.waitFor(exact('0.2.0'), BOOT_TIMEOUT);
  await node.waitSsh();
  const s2 = JSON.parse(await node.sh('cairn status --json')) as Status;
  tt.equal(s2.version, '0.2.0', 'runs 0.2.0');
  tt.same(s2.boot?.state, { active: '0.2.0', fallback: '0.1.0' }, 'active 0.2.0, fallback 0.1.0');
  tt.same([s2.upgrade?.from, s2.upgrade?.version, s2.upgrade?.outcome], ['0.1.0', '0.2.0', 'good'], 'the upgrade is recorded as good');
  tt.match(await node.sh('cat /proc/cmdline'), /(^| )cairn\.version=0\.2\.0( |$)/, "GRUB booted 0.2.0's kernel");
  tt.match(await node.sh('cat /proc/cmdline'), /(^| )panic=10( |$)/, 'a kernel panic reboots');
  tt.equal(JSON.parse(await node.sh('cat /usr/lib/cairn/release.json')).version, '0.2.0', "0.2.0's root");
  tt.equal((await node.sh('ls /cairn/system')).trim().split('\n').sort().join(' '), '0.1.0 0.2.0', 'two versions installed');
  // the job retried after the reboot: nothing to do, exit 0
  tt.equal((await node.sh(`sudo cairn upgrade --source ${url('0.2.0')}`)).trim(), 'already on 0.2.0');

  // 0.2.0 → 0.3.0, whose k3s never becomes healthy: one try of 40 s (its k3s has started and written its database by then), then back on 0.2.0
  const s3 = await node.sh(`sudo cairn upgrade --source ${url('0.3.0')} --tries 1 --deadline 40 --reboot 2>&1`, { ok: false });
  tt.match(s3, /^version 0\.3\.0 is installed and on trial \(1 tries, healthy within 40 s\); the fallback is 0\.2\.0$/m);
  await vm.waitFor(/^cairn-initramfs: system 0\.3\.0 on \/dev\/vda3 \(trial boot, 0 tries left\)$/m, BOOT_TIMEOUT);
  await vm.waitFor(/cairn: trial: version 0\.3\.0 is not healthy after 40 s of its trial: rebooting \(0 tries left\)$/m, BOOT_TIMEOUT);
  await vm.waitFor(/^cairn-initramfs: system 0\.2\.0 on \/dev\/vda3$/m, BOOT_TIMEOUT);
  await vm.waitFor(/cairn: upgrade: version 0\.3\.0 did not come up within its tries; back on 0\.2\.0$/m, BOOT_TIMEOUT);
  // 0.2.0's k3s cannot use the database 0.3.0 left: the snapshot from before the upgrade comes back
  await vm.waitFor(/cairn: datastore: k3s is not healthy with the database 0\.3\.0 left; restored state-\d{8}T\d{6}Z-upgrade-0\.3\.0\.db, the snapshot taken before the upgrade to 0\.3\.0; the database 0\.3\.0 left is kept as state\.db\.from-0\.3\.0-\d{8}T\d{6}Z$/m, BOOT_TIMEOUT);
  await vm.waitFor(/cairn: mark-good ok \(\d+ ms\): boot marked good/m, BOOT_TIMEOUT);
  await vm.waitFor(exact('0.2.0'), BOOT_TIMEOUT);
  await node.waitSsh();
  tt.match(await node.sh('sudo cat /var/log/cairn/k3s.log'), /was written by a newer k3s \(table double_newer\): cannot use it/, "0.2.0's k3s refused 0.3.0's database first");
  const s4 = JSON.parse(await node.sh('cairn status --json')) as Status;
  tt.equal(s4.version, '0.2.0', 'back on 0.2.0');
  tt.same(s4.boot?.state, { active: '0.2.0', fallback: '0.1.0', failed: '0.3.0' }, 'the trial is over, its failure kept');
  tt.same([s4.upgrade?.version, s4.upgrade?.outcome], ['0.3.0', 'rolled-back'], 'the rollback is recorded');
  tt.ok(s4.k3s?.args.join(' ').includes('--node-label cairn.io/rollback=0.3.0'), 'k3s labels the node cairn.io/rollback=0.3.0');
  // the job again: refused, so that a fleet's rollout stops here
  const again = await node.sh(`sudo cairn upgrade --source ${url('0.3.0')} 2>&1; echo "exit=$?"`, { ok: false });
  tt.match(again, /version 0\.3\.0 was rolled back on this node/, 'a rolled-back version is refused');
  tt.match(again, /^exit=1$/m, 'with a non-zero exit');

  tt.match((await node.sh(`sudo cairn upgrade --source ${url('0.3.0')} --check`)).trim(), /^payload default 0\.3\.0 \(amd64, \d+ MiB\) verified, signed by \S+$/, '--check verifies and changes nothing');

  // 0.3.0 again (--force), one try, a long deadline: its init hangs, only the watchdog can end this trial
  const s5 = await node.sh(`sudo cairn upgrade --source ${url('0.3.0')} --force --tries 1 --deadline 900 --reboot 2>&1`, { ok: false });
  tt.match(s5, /^version 0\.3\.0 is installed and on trial \(1 tries, healthy within 900 s\)/m, '--force takes a rolled-back version again');
  await vm.waitFor(/^cairn-initramfs: system 0\.3\.0 on \/dev\/vda3 \(trial boot, 0 tries left\)$/m, BOOT_TIMEOUT);
  await vm.waitFor(/cairn: mounts ok \(\d+ ms\): state boot of 0\.3\.0; trial boot of 0\.3\.0 \(0 tries left\), healthy by 900 s, watchdog .+ armed$/m, BOOT_TIMEOUT);
  await node.waitSsh();
  await node.sh('sudo kill -STOP $(cat /run/cairn/init.pid)');
  const hungAt = vm.output.length;
  await vm.waitFor(/^cairn-initramfs: system 0\.2\.0 on \/dev\/vda3$/m, BOOT_TIMEOUT);
  tt.notMatch(vm.output.slice(hungAt), /cairn: (shutting down|rebooting)/, 'the hung init did not reboot: the watchdog reset the machine');
  await vm.waitFor(/cairn: upgrade: version 0\.3\.0 did not come up within its tries; back on 0\.2\.0$/m, BOOT_TIMEOUT);
  await vm.waitFor(exact('0.2.0'), BOOT_TIMEOUT);
  await node.waitSsh();

  // 0.4.0, whose kernel panics: panic=1 (on its command line, after the image's panic=10) reboots, GRUB spends its try, then 0.2.0
  await node.sh(`sudo cairn upgrade --source ${url('0.4.0')} --tries 1 --reboot 2>&1`, { ok: false });
  // GRUB's menu with the trial highlighted, then the kernel GRUB started: 0.4.0's
  await vm.waitFor(/\*cairn 0\.4\.0 \(trial, 0 tries left after this one\)/, BOOT_TIMEOUT);
  await vm.waitFor(/Kernel command line: BOOT_IMAGE=\/cairn\/system\/0\.4\.0\/kernel .*cairn\.version=0\.4\.0$/m, BOOT_TIMEOUT);
  await vm.waitFor(/Kernel panic - not syncing/, BOOT_TIMEOUT);
  await vm.waitFor(/^cairn-initramfs: system 0\.2\.0 on \/dev\/vda3$/m, BOOT_TIMEOUT);
  await vm.waitFor(/cairn: upgrade: version 0\.4\.0 did not come up within its tries; back on 0\.2\.0$/m, BOOT_TIMEOUT);
  await vm.waitFor(exact('0.2.0'), BOOT_TIMEOUT);
  await node.waitSsh();
  const s6 = JSON.parse(await node.sh('cairn status --json')) as Status;
  tt.same(s6.boot?.state, { active: '0.2.0', fallback: '0.1.0', failed: '0.4.0' }, 'the panicking version is given up');
  tt.same([s6.upgrade?.version, s6.upgrade?.outcome], ['0.4.0', 'rolled-back']);
  tt.equal((await node.sh('ls /cairn/system')).trim().split('\n').sort().join(' '), '0.1.0 0.2.0 0.4.0', 'the active and fallback versions are never removed');
});
