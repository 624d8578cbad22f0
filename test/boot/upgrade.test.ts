// Upgrades in QEMU: the default image's raw disk (0.1.0, signed builds that
// trust the test key) upgraded by hand to 0.2.0 over HTTP, then to a 0.3.0
// whose k3s never becomes healthy: the node comes back to 0.2.0 by itself
// within its tries, records the rollback and labels the node.
import t from 'tap';
import { copyFileSync, mkdirSync } from 'node:fs';
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
  payloads['0.3.0'] = buildUpgradeVersion('0.3.0', { overlays: ['test/fixtures/overlays/never-ready'] });
  for (const p of Object.values(payloads)) copyFileSync(p, join(serve, basename(p)));
});
t.teardown(() => key?.remove());

const exact = (version: string) => new RegExp(`^(?:.*?)cairn: boot complete ${version.replace(/\./g, '\\.')}$`, 'm');

interface Status {
  version: string;
  boot?: { kind: string; state?: { active: string; fallback?: string; trial?: string; tries?: number; failed?: string } };
  upgrade?: { version: string; from: string; outcome: string; reason?: string };
  k3s?: { args: string[] };
}

t.test('upgrades: 0.1.0 → 0.2.0 by hand, then a 0.3.0 that never becomes healthy is rolled back without anyone', async (tt) => {
  const config = `hostname: upgrade-node\nssh_authorized_keys: ["${key.publicKey.trim()}"]\n`;
  const vm = await bootForTest(tt, { artifact: { kind: 'raw', path: raw }, configText: config, sshPort: 'auto', memMb: 2048, cpus: 2, name: 'upgrade', timeoutMs: BOOT_TIMEOUT, serveDir: serve, extraArgs: ['-device', 'i6300esb'] });
  const node = new Node(vm, key);
  await vm.waitFor(exact('0.1.0'), BOOT_TIMEOUT);
  await node.waitSsh();
  const url = (v: string) => `${vm.http!.guestUrl}/${basename(payloads[v]!)}`;

  // 0.1.0 → 0.2.0
  // the session ends as the node goes down: its exit status is not the upgrade's
  const staged = await node.sh(`sudo cairn upgrade --source ${url('0.2.0')} --tries 2 --reboot`, { ok: false });
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

  // 0.2.0 → 0.3.0, whose k3s never becomes healthy: two tries of 60 s, then back on 0.2.0
  const s3 = await node.sh(`sudo cairn upgrade --source ${url('0.3.0')} --tries 2 --deadline 60 --reboot`, { ok: false });
  tt.match(s3, /^version 0\.3\.0 is installed and on trial \(2 tries, healthy within 60 s\); the fallback is 0\.2\.0$/m);
  await vm.waitFor(/^cairn-initramfs: system 0\.3\.0 on \/dev\/vda3 \(trial boot, 1 tries left\)$/m, BOOT_TIMEOUT);
  await vm.waitFor(/cairn: trial: version 0\.3\.0 is not healthy after 60 s of its trial: rebooting \(1 tries left\)$/m, BOOT_TIMEOUT);
  await vm.waitFor(/^cairn-initramfs: system 0\.3\.0 on \/dev\/vda3 \(trial boot, 0 tries left\)$/m, BOOT_TIMEOUT);
  await vm.waitFor(/cairn: trial: version 0\.3\.0 is not healthy after 60 s of its trial: rebooting \(0 tries left\)$/m, BOOT_TIMEOUT);
  await vm.waitFor(/^cairn-initramfs: system 0\.2\.0 on \/dev\/vda3$/m, BOOT_TIMEOUT);
  await vm.waitFor(/cairn: upgrade: version 0\.3\.0 did not come up within its tries; back on 0\.2\.0$/m, BOOT_TIMEOUT);
  await vm.waitFor(exact('0.2.0'), BOOT_TIMEOUT);
  await node.waitSsh();
  const s4 = JSON.parse(await node.sh('cairn status --json')) as Status;
  tt.equal(s4.version, '0.2.0', 'back on 0.2.0');
  tt.same(s4.boot?.state, { active: '0.2.0', fallback: '0.1.0', failed: '0.3.0' }, 'the trial is over, its failure kept');
  tt.same([s4.upgrade?.version, s4.upgrade?.outcome], ['0.3.0', 'rolled-back'], 'the rollback is recorded');
  tt.ok(s4.k3s?.args.join(' ').includes('--node-label cairn.io/rollback=0.3.0'), 'k3s labels the node cairn.io/rollback=0.3.0');
  // the job again: refused, so that a fleet's rollout stops here
  const again = await node.sh(`sudo cairn upgrade --source ${url('0.3.0')} 2>&1; echo "exit=$?"`, { ok: false });
  tt.match(again, /version 0\.3\.0 was rolled back on this node/, 'a rolled-back version is refused');
  tt.match(again, /^exit=1$/m, 'with a non-zero exit');
  tt.match(await node.sh('sudo cairn upgrade --help'), /--force/);
});
