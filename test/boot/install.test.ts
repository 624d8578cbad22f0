// cairn install in QEMU: the live ISO installs onto a blank virtio disk and
// the machine reboots into it (the disk is first in the boot order; blank,
// the firmware passed it over for the CD). Under SeaBIOS unattended, from
// the config's install keys (with iso_url and config_url served by this
// test); under OVMF through the interactive installer on the console, after
// the bad targets and a config URL that 404s were refused with the disks
// left as they were, then `cairn install --silent` onto a second disk,
// which the machine reboots into.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { bootForTest, makeSshKey, type SshKey } from '../../qemu/harness.js';
import { REPO, buildTestImage, type TestImage } from './image.js';
import { BOOT_TIMEOUT, L, Node, bootComplete, bootsThrough } from './node.js';
import { checkSampleApplied, sampleConfig } from './sample.js';

t.setTimeout(60 * 60_000);

let image: TestImage;
let key: SshKey;

t.before(async () => {
  image = buildTestImage();
  key = await makeSshKey('cairn-install-test');
});
t.teardown(() => key?.remove());

/** Serves configs and the ISO to the guest (http://10.0.2.2:PORT); every request is logged with its status. */
async function files(routes: Record<string, string | { file: string }>) {
  const log: { path: string; status: number }[] = [];
  const server = createServer((req, res) => {
    const route = routes[req.url ?? ''];
    if (route === undefined) {
      log.push({ path: req.url ?? '', status: 404 });
      return res.writeHead(404).end('not found\n');
    }
    log.push({ path: req.url ?? '', status: 200 });
    if (typeof route === 'string') return res.end(route);
    res.writeHead(200, { 'content-length': statSync(route.file).size });
    createReadStream(route.file).pipe(res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return { url: `http://10.0.2.2:${port}`, log, close: () => new Promise<void>((r) => server.close(() => r())) };
}

function blankDisk(file: string, size: string): string {
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', file, size]);
  return file;
}

t.test("BIOS: unattended from the install keys, the ISO from iso_url, k3OS' sample config from config_url; reboot into the disk", async (tt) => {
  const nodeConfig = sampleConfig(key);
  const srv = await files({ '/node.yaml': nodeConfig, '/cairn.iso': { file: image.iso } });
  tt.teardown(srv.close);
  const seed = `k3os:\n  install:\n    device: /dev/vdb\n    silent: true\n    iso_url: ${srv.url}/cairn.iso\n    config_url: ${srv.url}/node.yaml\n`;
  const target = blankDisk(join(tt.testdir(), 'target.qcow2'), '4G');
  const vm = await bootForTest(tt, { artifact: { kind: 'iso', path: image.iso }, configText: seed, extraDisks: [{ path: target, writable: true, bootFirst: true }], sshPort: 'auto', memMb: 2048, cpus: 2, name: 'install-bios', timeoutMs: BOOT_TIMEOUT });
  const node = new Node(vm, key);
  await vm.waitFor(L(/cairn: install: source: version 0\.1\.0 \(amd64\) from http:\/\/10\.0\.2\.2:\d+\/cairn\.iso$/), BOOT_TIMEOUT);
  await vm.waitFor(L(/cairn: install: disk: \/dev\/vdb \(4\.0 GiB\)$/), 120_000);
  const installed = await vm.waitForAny([L(/cairn: install: bootloader: UEFI \(EFI\/BOOT\/BOOTX64\.EFI\), BIOS \(GRUB in the MBR and the BIOS boot partition\)$/), L(/cairn: install FAILED: .*$/)], 600_000);
  tt.equal(installed.which, 0, `the boot loader installed: ${installed.match}`);
  const took = await vm.waitFor(L(/cairn: install: 0\.1\.0 is on \/dev\/vdb \(in (\d+) s\); rebooting into it$/), 120_000);
  tt.comment(`the unattended install (the ISO downloaded and loop-mounted, then the disk written) took ${took.groups[0]} s under TCG`);
  await vm.waitFor(L(/cairn: rebooting$/), 120_000);
  tt.same(srv.log.map((r) => `${r.path} ${r.status}`), ['/cairn.iso 200', '/node.yaml 200'], 'the ISO and the config, fetched once each');

  // the disk's first boot, every phase, with the sample's config
  await vm.waitFor(L(/cairn: starting 0\.1\.0 \(from init\.js\)$/), BOOT_TIMEOUT);
  await bootsThrough(tt, vm);
  tt.match(vm.output, L(/cairn: mounts ok \(\d+ ms\): state boot of 0\.1\.0.*$/), 'a boot from the state partition');
  tt.match(vm.output, L(/cairn: grow ok \(\d+ ms\): CAIRN_STATE grown from [\d.]+ to 3\.9 GiB \(the end of \/dev\/vdb\)$/), 'CAIRN_STATE grew to the end of the disk');
  tt.match(vm.output, L(/cairn: install ok \(\d+ ms\): install\.device \/dev\/vdb is set, but this system already runs from a disk: nothing to do$/), 'the installed system does not install again');
  await checkSampleApplied(tt, node);
  const status = JSON.parse(await node.sh('cairn status --json')) as { version: string; bootMode: string };
  tt.same([status.version, status.bootMode], ['0.1.0', 'state'], 'version 0.1.0 from the state partition');
  tt.equal((await node.sh('test -d /sys/firmware/efi && echo uefi || echo bios')).trim(), 'bios', 'booted through BIOS');
  tt.equal((await node.sh('findmnt -n -o SOURCE /run/cairn/state')).trim(), '/dev/vdb3', 'CAIRN_STATE is the third partition of the target');
  tt.equal((await node.sh('sudo stat -c "%a %U" /cairn/system/config.yaml')).trim(), '600 root', 'the config is 0600, root');
  tt.equal((await node.sh('sudo sha256sum /cairn/system/config.yaml | cut -c1-64')).trim(), createHash('sha256').update(nodeConfig).digest('hex'), "config_url's config, byte for byte");
  tt.equal((await node.sh('sudo blkid -p -s LABEL -o value /dev/vdb2 /dev/vdb3 | tr "\\n" " "')).trim(), 'CAIRN_EFI CAIRN_STATE', 'the labels');
  tt.match(await node.sh('sudo sfdisk --dump /dev/vdb'), /^label: gpt$/m, 'a GPT');
  // The sample's password is cairn's on the console (no autologin once a password is set).
  await node.consoleLogin('cairn', 'rancher', 'myhost');
  tt.equal((await node.consoleRun('id -un')).trim(), 'cairn', "logged in on the console with the sample's password");
  tt.ok(await vm.shutdown(90_000), 'clean poweroff on the ACPI power button');
  tt.match(vm.output, L(/cairn: power button pressed$/));
  tt.match(vm.output, L(/cairn: powering off$/), 'the init stopped the services and powered off');
});

t.test("UEFI: the interactive installer on the console with a config URL, after bad targets were refused; cloud-init's modules from a cloud-localds seed", async (tt) => {
  // the interactive install's config, and the unattended one's (the disk that boots)
  const answered = `hostname: answered\nssh_authorized_keys: ["${key.publicKey.trim()}"]\n`;
  const nodeConfig = `hostname: installed-uefi\nssh_authorized_keys: ["${key.publicKey.trim()}"]\nk3os: {labels: {installed: unattended}}\n`;
  const srv = await files({ '/uefi.yaml': answered, '/unattended.yaml': nodeConfig });
  tt.teardown(srv.close);
  const dir = tt.testdir();
  const target = blankDisk(join(dir, 'target.qcow2'), '4G');
  const small = blankDisk(join(dir, 'small.qcow2'), '512M');
  const second = blankDisk(join(dir, 'second.qcow2'), '4G');
  // a disk with data: a GPT with one partition
  const used = join(dir, 'used.raw');
  writeFileSync(used, '');
  execFileSync('truncate', ['-s', '2G', used]);
  execFileSync('sfdisk', ['--quiet', used], { input: 'label: gpt\n,100M,L\n' });
  // cloud-init's own seed of a typical user-data (no key and no password for cairn: the live console logs in by itself);
  // it stays attached, so the installed node reads it too, over the installed config
  const seed = join(dir, 'seed.iso');
  execFileSync('cloud-localds', [seed, join(REPO, 'test/fixtures/cloud-init/user-data')]);
  const vm = await bootForTest(tt, {
    artifact: { kind: 'iso', path: image.iso },
    seed,
    sshPort: 'auto',
    firmware: 'uefi',
    // vdb: the interactive install's, vdc: too small, vdd: holds data, vde: the unattended install's, which boots first
    extraDisks: [{ path: target, writable: true }, small, used, { path: second, writable: true, bootFirst: true }],
    memMb: 2048,
    cpus: 2,
    name: 'install-uefi',
    timeoutMs: BOOT_TIMEOUT,
  });
  const node = new Node(vm, key);
  await bootsThrough(tt, vm);
  tt.match(vm.output, L(/cairn: install ok \(\d+ ms\): no install\.device$/));
  vm.sendLine('');
  await vm.waitFor(/@edge-ci:[^\n]*\$ $/m, 60_000);
  const heads = 'for d in vdb vdc vdd vde; do sudo head -c 1048576 /dev/$d | sha256sum | cut -c1-16; done | tr "\\n" " "; echo';
  const before = await node.consoleRun(heads);
  const refused: [string, RegExp][] = [
    ['--device /dev/vdc', /^cairn: \/dev\/vdc is too small: 512 MiB, and cairn needs at least [\d.]+ [MG]iB\nchoose a larger disk\nexit=1$/],
    ['--device /dev/sr0', /^cairn: \/dev\/sr0 is a CD\/DVD drive \(the disks here: .*\/dev\/vdb {2}4\.0 GiB.*\)\n.*\nexit=1$/],
    ['--device /dev/vdd', /^cairn: \/dev\/vdd is not empty: it holds a GPT partition table with \/dev\/vdd1; nothing was written\nto erase it and install, set install\.force: true .*\nexit=1$/],
    [`--device /dev/vdb --config ${srv.url}/missing.yaml`, /^cairn: config_url http:\/\/10\.0\.2\.2:\d+\/missing\.yaml cannot be fetched: http:\/\/10\.0\.2\.2:\d+\/missing\.yaml: HTTP 404; nothing was written\n.*\nexit=1$/],
  ];
  for (const [args, want] of refused) {
    const out = (await node.consoleRun(`sudo cairn install --silent --no-reboot ${args} 2>&1 | grep -v "^cairn: install: "; echo "exit=\${PIPESTATUS[0]}"`)).trim();
    tt.match(out, want, `cairn install ${args}: ${out.split('\n')[0]}`);
  }
  tt.equal(await node.consoleRun(heads), before, 'the first MiB of every disk is as it was');
  tt.same(srv.log.map((r) => `${r.path} ${r.status}`), ['/missing.yaml 404']);

  // the installer's questions (no reboot: an unattended install follows)
  vm.sendLine('sudo cairn install --no-reboot; echo "install-exit=$?"');
  const list = await vm.waitFor(/Install to which disk\? \[1-(\d)\] /, 60_000);
  const listing = vm.output.slice(vm.output.lastIndexOf('cairn installer: the disks you can install to'), list.index);
  tt.match(listing, /^ {2}\d\) \/dev\/vdb {2}4\.0 GiB {2}\(empty\)\r?$/m, 'the blank target, its size');
  tt.match(listing, /^ {2}\d\) \/dev\/vdd {2}2\.0 GiB {2}\(holds a GPT partition table with \/dev\/vdd1\)\r?$/m, 'the disk with data says so');
  tt.notMatch(listing, /sr0/, 'the CD drive is not offered');
  const choice = /^ {2}(\d)\) \/dev\/vdb /m.exec(listing)?.[1];
  vm.sendLine(choice ?? '1');
  await vm.waitFor('Config file or http(s) URL to install with (Enter for none): ', 30_000);
  vm.sendLine(`${srv.url}/uefi.yaml`);
  await vm.waitFor(/cairn will erase \/dev\/vdb {2}4\.0 GiB, and install onto it\.\r?\nContinue\? \[y\/N\] /, 30_000);
  tt.notMatch(vm.output.slice(vm.output.lastIndexOf('cairn installer:')), /Password for/, 'no password asked when a config is given');
  vm.sendLine('y');
  const exit = await vm.waitFor(/install-exit=(\d+)/, 900_000);
  tt.equal(exit.groups[0], '0', 'the interactive cairn install exited 0');
  const took = /cairn 0\.1\.0 is installed on \/dev\/vdb \(in (\d+) s\)\r?$/m.exec(vm.output);
  tt.ok(took, 'cairn install said so');
  tt.comment(`the interactive install (from the live medium, after the answers) took ${took?.[1]} s under TCG`);
  const check = 'sudo mkdir -p /run/check && sudo mount -o ro /dev/vdb3 /run/check && sudo sha256sum /run/check/cairn/system/config.yaml | cut -c1-64 && sudo ls /run/check/cairn/system/0.1.0 | LC_ALL=C sort | tr "\\n" " " && echo && sudo umount /run/check';
  // (the kernel's mount messages land on the console too)
  const checked = (await node.consoleRun(check)).split('\n').filter((l) => !/^\[\s*\d+\.\d+\] /.test(l)).join('\n');
  tt.equal(checked.trim(), `${createHash('sha256').update(answered).digest('hex')}\nSHA256SUMS bootenv initrd kernel release.json rootfs.squashfs`, "vdb: the answered URL's config and the version");

  // then unattended onto the second disk, which the machine boots from
  vm.sendLine(`sudo cairn install --device /dev/vde --config ${srv.url}/unattended.yaml --silent; echo "unattended-exit=$?"`);
  const exit2 = await vm.waitFor(/unattended-exit=(\d+)/, 900_000);
  tt.equal(exit2.groups[0], '0', 'the unattended cairn install exited 0');
  tt.match(vm.output, L(/cairn 0\.1\.0 is installed on \/dev\/vde \(in \d+ s\)\r?$/));
  await vm.waitFor(L(/cairn: rebooting$/), 120_000);
  tt.same(srv.log.map((r) => `${r.path} ${r.status}`), ['/missing.yaml 404', '/uefi.yaml 200', '/unattended.yaml 200'], 'each config fetched once');

  // the second disk's first boot, through OVMF, with the unattended install's config
  await vm.waitFor(L(/cairn: mounts ok \(\d+ ms\): state boot of 0\.1\.0.*$/), BOOT_TIMEOUT);
  await bootComplete(tt, vm);
  await node.waitSsh();
  tt.same((await node.sh('cat ~/.ssh/authorized_keys')).trim().split('\n'), [key.publicKey.trim()], "cairn's only key is the config URL's (the seed gives none)");
  tt.equal((await node.sh('hostname')).trim(), 'edge-ci', "the seed's hostname over the installed config's");
  tt.equal((await node.sh('test -d /sys/firmware/efi && echo uefi')).trim(), 'uefi', 'booted through UEFI');
  tt.equal((await node.sh('findmnt -n -o SOURCE /run/cairn/state')).trim(), '/dev/vde3', 'from the state partition of the unattended install');
  tt.match(await node.sh('sudo cat /var/log/cairn/k3s.log'), /--node-label installed=unattended/, "its config's label");
  tt.match(await node.sh('findmnt -n -o FSTYPE /var'), /ext4/, '/var is on the state partition');
  tt.equal((await node.sh('sudo stat -c "%a %U" /cairn/system/config.yaml')).trim(), '600 root', 'the config was stored 0600');
  tt.equal((await node.sh('sudo sha256sum /cairn/system/config.yaml | cut -c1-64')).trim(), createHash('sha256').update(nodeConfig).digest('hex'), "the config URL's config, byte for byte");

  // cloud-init's modules, from the cloud-localds seed
  tt.equal((await node.sh('getent passwd ops | cut -d: -f5-7')).trim(), 'Site Operations:/home/ops:/bin/sh', 'users: ops with its gecos, home and shell');
  tt.same((await node.sh('id -nG ops')).trim().split(' ').sort(), ['adm', 'ops', 'ops-extra', 'systemd-journal'], "users: ops' groups (ops-extra made)");
  tt.match(await node.sh('sudo -l -U ops'), /\(ALL\) NOPASSWD: ALL/, "users: ops' sudo rule");
  tt.equal((await node.sh('sudo stat -c "%U %a" /home/ops/.ssh/authorized_keys')).trim(), 'ops 600');
  tt.match(await node.sh('sudo cat /home/ops/.ssh/authorized_keys'), / ops@hq$/m, "users: ops' key");
  tt.match(await node.sh('sudo grep ^ops: /etc/shadow'), /^ops:\$6\$cairnsalt\$/, 'users: the hashed password, unlocked (lock_passwd: false)');
  tt.match(await node.sh('sudo grep ^relay: /etc/shadow'), /^relay:\$[^!*]/, "chpasswd: relay's password set (hashed), unlocked");
  tt.equal((await node.sh('test -e /home/relay && echo home || echo none')).trim(), 'none', 'no_create_home');
  tt.equal((await node.sh('readlink /etc/localtime; date +%Z')).trim(), '/usr/share/zoneinfo/Europe/Berlin\nCET', 'timezone');
  tt.same((await node.sh('grep -E "^(server|pool) " /etc/chrony/chrony.conf')).trim().split('\n'), ['server 0.debian.pool.ntp.org iburst', 'server 1.debian.pool.ntp.org iburst', 'server ntp1.example.net iburst', 'pool 0.europe.pool.ntp.org iburst', 'pool 1.europe.pool.ntp.org iburst'], "ntp: the image's servers, then ntp's servers and pools");
  tt.match(await node.sh('cat /etc/hosts'), /^127\.0\.1\.1\tedge-ci$/m, 'manage_etc_hosts: localhost');
  tt.match(await node.sh('sudo sshd -T | grep -i "^passwordauthentication"'), /^passwordauthentication yes$/m, 'ssh_pwauth: true');
  tt.equal((await node.sh('cat /run/cloud-init-bootcmd /run/cloud-init-runcmd; test -e /run/cloud-init-runcmd-2 && echo ran-2')).trim(), 'bootcmd ran\nruncmd ran\nran-2', 'bootcmd and runcmd (a word list and a string)');
  tt.equal((await node.sh('grep -c "managed by cloud-init user-data" /etc/motd')).trim(), '1', 'write_files append: once');
  tt.equal((await node.sh('sudo stat -c "%U %a" /home/ops/notes.txt')).trim(), 'ops 600', 'write_files defer: owned by the user made before it');
  tt.match(vm.output, L(/cairn: grow ok \(\d+ ms\): not grown: growpart's mode is off$/), 'growpart off: CAIRN_STATE kept its size');
  tt.match(vm.output, /packages: not applied: cairn's root is an image, read-only, without a package manager/, 'packages: warned about, with what to do');
});
