import t from 'tap';
import { existsSync, readFileSync, rmSync, statSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { applyWriteFiles, resolveOwner } from '../../src/init/apply/files.js';
import { applyDns, applyEnvironment, applyHostname, applyModules, applySysctls, chooseHostname, renderChronyConf, sysctlPath } from '../../src/init/apply/system.js';
import { applyUsers, consoleAutologin, isCryptHash, keySource } from '../../src/init/apply/users.js';
import { runCommands } from '../../src/init/apply/commands.js';
import { fetchDataSources, userdataName, worthRetrying } from '../../src/init/apply/datasources.js';
import { MetadataFormatError } from '../../src/init/apply/metadata.js';
import { chpasswdWrites, nodeRoot, put, sshKey, testContext } from './support.js';

t.test('write_files: every encoding, owner and mode, atomically', async (t) => {
  const root = nodeRoot(t.testdir());
  const text = '#!/bin/sh\necho hello\n';
  const problems = applyWriteFiles(root, [
    { path: '/etc/local.d/example.start', content: text, owner: 'root', permissions: '0755' },
    { path: '/opt/b64', content: Buffer.from(text).toString('base64'), encoding: 'b64', owner: 'www-data:adm', permissions: '0640' },
    { path: '/opt/gzb64', content: gzipSync(text).toString('base64'), encoding: 'gz+b64' },
    { path: '/opt/bad-owner', content: 'x', owner: 'nobody-here' },
  ]);
  t.same(problems, ['/opt/bad-owner: owner "nobody-here" is not a user on this node']);
  t.equal(readFileSync(join(root, 'etc/local.d/example.start'), 'utf8'), text);
  t.equal(statSync(join(root, 'etc/local.d/example.start')).mode & 0o777, 0o755);
  t.equal(readFileSync(join(root, 'opt/b64'), 'utf8'), text);
  const st = statSync(join(root, 'opt/b64'));
  t.equal(st.mode & 0o777, 0o640);
  if (process.getuid?.() === 0) t.same([st.uid, st.gid], [33, 4], 'owner www-data, group adm');
  t.equal(readFileSync(join(root, 'opt/gzb64'), 'utf8'), text);
  t.notOk(existsSync(join(root, 'opt/bad-owner')), 'nothing written for a bad owner');
  t.same(resolveOwner(root, '1000:1000'), { uid: 1000, gid: 1000 });
  t.throws(() => resolveOwner(root, 'root:nogroup'), /group "nogroup" is not a group/);
});

t.test('hostname: configured, else remembered, else generated; kept across reboots', async (t) => {
  t.equal(chooseHostname('a', 'b'), 'a');
  t.equal(chooseHostname(undefined, 'b'), 'b');
  t.equal(chooseHostname(undefined, undefined, () => 'abc123'), 'cairn-abc123');
  const root = nodeRoot(t.testdir());
  const first = testContext(root, {});
  const name = await applyHostname(first.ctx);
  t.match(name, /^cairn-[0-9a-f]{6}$/);
  const again = await applyHostname(testContext(root, {}).ctx);
  t.equal(again, name, 'the same name on the next boot');
  t.equal(await applyHostname(testContext(root, { hostname: 'myhost' }).ctx), 'myhost');
  t.equal(readFileSync(join(root, 'etc/hostname'), 'utf8'), 'myhost\n');
  t.equal(readFileSync(join(root, 'proc/sys/kernel/hostname'), 'utf8'), 'myhost');
  t.match(readFileSync(join(root, 'etc/hosts'), 'utf8'), /127\.0\.1\.1\tmyhost/);
});

t.test('sysctls are written under /proc/sys; a missing key is reported', async (t) => {
  t.equal(sysctlPath('kernel.printk'), '/proc/sys/kernel/printk');
  const root = nodeRoot(t.testdir());
  put(root, 'proc/sys/kernel/printk', '7 4 1 7\n');
  const { ctx } = testContext(root, { cairn: { sysctls: { 'kernel.printk': '4 4 1 7' } } });
  t.equal(await applySysctls(ctx), '1 set');
  t.equal(readFileSync(join(root, 'proc/sys/kernel/printk'), 'utf8'), '4 4 1 7');
  const bad = testContext(root, { cairn: { sysctls: { 'no.such.key': '1' } } });
  await t.rejects(applySysctls(bad.ctx), /sysctls not set: no\.such\.key \(ENOENT\)/);
});

t.test('modules are loaded with one modprobe; when it fails, each alone names the failures', async (t) => {
  const root = nodeRoot(t.testdir());
  const good = testContext(root, { cairn: { modules: ['kvm', 'nvme'] } });
  t.equal(await applyModules(good.ctx), 'loaded kvm, nvme');
  t.same(good.calls.map((c) => [c.file, ...c.args]), [['modprobe', '-a', '--', 'kvm', 'nvme']], 'one process for every module');
  const { ctx, calls } = testContext(root, { cairn: { modules: ['kvm', 'nvme', 'nosuch'] } }, { exec: (_f, a) => (a.includes('nosuch') ? { code: 1, stderr: "modprobe: FATAL: Module nosuch not found" } : undefined) });
  await t.rejects(applyModules(ctx), /modules not loaded: nosuch \(modprobe: FATAL: Module nosuch not found\)$/);
  t.same(calls.map((c) => [c.file, ...c.args]), [['modprobe', '-a', '--', 'kvm', 'nvme', 'nosuch'], ['modprobe', '--', 'kvm'], ['modprobe', '--', 'nvme'], ['modprobe', '--', 'nosuch']]);
  const none = testContext(root, {});
  await applyModules(none.ctx);
  t.same(none.calls, [], 'no modules, no modprobe');
});

t.test('environment, DNS and NTP files', async (t) => {
  const root = nodeRoot(t.testdir());
  const { ctx } = testContext(root, { cairn: { environment: { http_proxy: 'http://p:3128' }, dns_nameservers: ['8.8.8.8', '1.1.1.1'] } });
  await applyEnvironment(ctx);
  t.equal(ctx.env.http_proxy, 'http://p:3128');
  t.equal(readFileSync(join(root, 'etc/environment'), 'utf8'), 'http_proxy="http://p:3128"\n');
  await applyDns(ctx);
  t.equal(readFileSync(join(root, 'etc/resolv.conf'), 'utf8'), 'nameserver 8.8.8.8\nnameserver 1.1.1.1\n');
  t.match(renderChronyConf(['0.us.pool.ntp.org']), /^server 0\.us\.pool\.ntp\.org iburst$/m);
  t.match(renderChronyConf([]), /^pool 2\.debian\.pool\.ntp\.org iburst$/m);
});

t.test('users: the cairn user, keys (fetched, cached, used offline), password', async (t) => {
  t.same(keySource('github:octo'), { url: 'https://github.com/octo.keys', cacheName: 'github-octo.keys' });
  t.same(keySource('ssh-ed25519 AAAA x'), { literal: 'ssh-ed25519 AAAA x' });
  t.ok(isCryptHash('$6$salt$abcdef'));
  t.notOk(isCryptHash('rancher'));
  const root = nodeRoot(t.testdir());
  const literal = sshKey('literal');
  const fetched = sshKey('fetched', 'fetched one');
  const config = { ssh_authorized_keys: [literal, 'github:ibuildthecloud'], cairn: { password: 'rancher' } };
  const online = testContext(root, config, { exec: chpasswdWrites(root), fetch: (url) => (url === 'https://github.com/ibuildthecloud.keys' ? `${fetched}\n` : '') });
  t.match(await applyUsers(online.ctx), /cairn: 2 SSH keys, password set/);
  t.match(readFileSync(join(root, 'etc/passwd'), 'utf8'), /^cairn:x:1000:1000:cairn:\/home\/cairn:\/bin\/bash$/m);
  t.match(readFileSync(join(root, 'etc/group'), 'utf8'), /^cairn:x:1000:$/m);
  const ak = join(root, 'home/cairn/.ssh/authorized_keys');
  t.equal(readFileSync(ak, 'utf8'), `${literal}\n${fetched}\n`);
  t.equal(statSync(ak).mode & 0o777, 0o600);
  t.same(online.calls.find((c) => c.file === 'chpasswd'), { file: 'chpasswd', args: [], input: 'cairn:rancher\n' });
  t.notOk(online.lines.some((l) => l.includes('rancher')), 'the password is not logged');
  const offline = testContext(root, config);
  await applyUsers(offline.ctx);
  t.equal(readFileSync(ak, 'utf8'), `${literal}\n${fetched}\n`, 'offline: the cached keys');
  t.ok(offline.lines.some((l) => /github:ibuildthecloud: using 1 cached key \(network unreachable\)/.test(l)));
  const hashed = testContext(root, { cairn: { password: '$6$x$y' } });
  await applyUsers(hashed.ctx);
  t.same(hashed.calls.find((c) => c.file === 'chpasswd')?.args, ['-e']);
  t.equal(readFileSync(join(root, 'etc/passwd'), 'utf8').match(/^cairn:/gm)?.length, 1, 'the user is added once');
  const refused = testContext(root, { cairn: { password: 'hunter2!' } }, { exec: (f) => (f === 'chpasswd' ? { code: 1, stderr: 'chpasswd: (user cairn) pam_chauthtok() failed' } : undefined) });
  const why = await applyUsers(refused.ctx).then(() => '', (e: Error) => e.message);
  t.match(why, /cannot set the password of cairn: chpasswd: \(user cairn\) pam_chauthtok\(\) failed/);
  t.notMatch(why, /hunter2/, 'the password is not in the error');
});

t.test('users: without a password or keys, the console logs in and the log says so', async (t) => {
  const root = nodeRoot(t.testdir());
  const { ctx } = testContext(root, {});
  t.match(await applyUsers(ctx), /no password and no SSH keys: log in on the console/);
  t.ok(consoleAutologin(root));
  t.match(readFileSync(join(root, 'etc/shadow'), 'utf8'), /^cairn:\*:/m);
});

t.test('commands run in order through /bin/sh, with output, failures and timeouts reported', async (t) => {
  const root = nodeRoot(t.testdir());
  const out = join(root, 'order');
  const { ctx, lines } = testContext(root, { run_cmd: [`echo one >> ${out}`, 'echo to-the-log; exit 3', `echo two >> ${out}`, 'sleep 5'] }, { realExec: true });
  await t.rejects(runCommands(ctx, 'run_cmd', 1000), /run_cmd\[1\] exited 3; run_cmd\[3\] timed out after 1 s/);
  t.equal(readFileSync(out, 'utf8'), 'one\ntwo\n');
  t.ok(lines.includes('cairn: run_cmd[1]: to-the-log'));
  t.match(readFileSync(join(root, 'var/log/cairn/commands.log'), 'utf8'), /run_cmd\[1\]: echo to-the-log; exit 3\nto-the-log\n--- exit 3/);
  t.equal(await runCommands(testContext(root, {}).ctx, 'init_cmd'), undefined, 'nothing to run');
});

t.test('data sources: a URL and a metadata service write user-data for the loader', async (t) => {
  const root = nodeRoot(t.testdir());
  const { ctx } = testContext(root, { cairn: { data_sources: ['aws', 'gcp', 'https://cfg.example/node.yaml'] } }, {
    fetch: (url, req) => {
      // IMDSv2: a token first, then every request with it
      if (url === 'http://169.254.169.254/latest/api/token' && req.method === 'PUT') return 'tok-1';
      if (url.startsWith('http://169.254.169.254/latest/') && req.headers['X-aws-ec2-metadata-token'] !== 'tok-1') throw new Error(`${url}: HTTP 401`);
      if (url === 'http://169.254.169.254/latest/meta-data/local-hostname') return 'ip-10-0-0-5.eu-west-1.compute.internal';
      if (url === 'http://169.254.169.254/latest/meta-data/public-keys/') throw new Error(`${url}: HTTP 404`);
      if (url === 'http://169.254.169.254/latest/user-data') return '#cloud-config\nrun_cmd: [from-aws]\n';
      if (url === 'https://cfg.example/node.yaml') return 'run_cmd: [hi]\n';
      throw new Error('timeout');
    },
  });
  t.same(await fetchDataSources(ctx), ['aws', 'https://cfg.example/node.yaml'], 'gcp does not answer');
  t.equal(readFileSync(join(root, 'var/lib/cairn/userdata/00-aws'), 'utf8'), '# from the metadata service\nhostname: "ip-10-0-0-5"\n', "the metadata's hostname, read first");
  t.equal(readFileSync(join(root, 'var/lib/cairn/userdata/00-aws.user-data'), 'utf8'), '#cloud-config\nrun_cmd: [from-aws]\n', 'the user-data as it came, read after it');
  t.equal(readFileSync(join(root, `var/lib/cairn/userdata/${userdataName(2, 'https://cfg.example/node.yaml')}`), 'utf8'), 'run_cmd: [hi]\n');
  for (const f of ['00-aws', '00-aws.user-data']) t.equal(statSync(join(root, 'var/lib/cairn/userdata', f)).mode & 0o777, 0o600, `${f}: user-data may hold secrets: root only`);
  const { loadNodeConfig } = await import('../../src/init/phases.js');
  await loadNodeConfig(ctx);
  t.equal(ctx.config.hostname, 'ip-10-0-0-5', 'the loader takes the hostname from the metadata');
  t.same(ctx.config.run_cmd, ['hi'], 'the URL after the metadata service');
});

t.test('data sources: NoCloud volumes are found by label and mounted read-only; their meta-data gives hostname and keys', async (t) => {
  const root = nodeRoot(t.testdir());
  mkdirSync(join(root, 'run/cairn'), { recursive: true });
  const { ctx, calls } = testContext(root, { cairn: { data_sources: ['nocloud'] } }, {
    exec: (file, args) => {
      if (file === 'blkid') return { stdout: 'DEVNAME=/dev/vda1\nLABEL=CAIRN_EFI\n\nDEVNAME=/dev/vda2\n\nDEVNAME=/dev/sr1\nLABEL=cidata\n\nDEVNAME=/dev/sr2\nLABEL=cidata\n' };
      if (file === 'mount') {
        writeFileSync(join(args[3]!, 'user-data'), '#cloud-config\nhostname: seeded\n');
        writeFileSync(join(args[3]!, 'meta-data'), 'instance-id: iid-1\nlocal-hostname: meta-host\npublic-keys:\n  - ssh-ed25519 AAAAC3Nza meta@key\n');
      }
      return undefined;
    },
  });
  t.same(await fetchDataSources(ctx), ['nocloud']);
  t.equal(readFileSync(join(root, 'var/lib/cairn/userdata/00-nocloud'), 'utf8'), '# from the metadata service\nhostname: "meta-host"\nssh_authorized_keys:\n  - "ssh-ed25519 AAAAC3Nza meta@key"\n');
  t.equal(readFileSync(join(root, 'var/lib/cairn/userdata/00-nocloud.user-data'), 'utf8'), '#cloud-config\nhostname: seeded\n');
  t.same(calls.filter((c) => c.file === 'mount').map((c) => c.args.slice(0, 3)), [['-o', 'ro', '/dev/sr1']], 'the first device labelled cidata');
  t.same(calls.filter((c) => c.file === 'blkid').map((c) => c.args), [['-c', '/dev/null', '-o', 'export', '-s', 'LABEL']], 'one blkid for all the labels, without its cache');
  t.ok(calls.some((c) => c.file === 'umount'));
  const { loadNodeConfig } = await import('../../src/init/phases.js');
  await loadNodeConfig(ctx);
  t.equal(ctx.config.hostname, 'seeded', "the user-data's hostname wins over the meta-data's, as in cloud-init");
  t.same(ctx.config.ssh_authorized_keys, ['ssh-ed25519 AAAAC3Nza meta@key'], "the meta-data's key");
});

t.test("the image's own modules-load.d and sysctl.d are applied (nothing else reads them without systemd)", async (t) => {
  const { applyImageModules, applyImageSysctls } = await import('../../src/init/apply/system.js');
  const root = nodeRoot(t.testdir());
  put(root, 'etc/modules-load.d/k3s.conf', '# k3s\noverlay\nbr_netfilter\n');
  put(root, 'etc/sysctl.d/90-k3s.conf', 'net.ipv4.ip_forward = 1\n-net.no.such = 1\n');
  put(root, 'proc/sys/net/ipv4/ip_forward', '0');
  const { ctx, calls } = testContext(root, {});
  await applyImageModules(ctx);
  t.same(calls.map((c) => [c.file, ...c.args]), [['modprobe', '-a', '--', 'overlay', 'br_netfilter']]);
  await applyImageSysctls(ctx);
  t.equal(readFileSync(join(root, 'proc/sys/net/ipv4/ip_forward'), 'utf8'), '1');
  put(root, 'etc/sysctl.d/99-bad.conf', 'net.missing.key = 1\n');
  await t.rejects(applyImageSysctls(ctx), /not set: net\.missing\.key/);
});

t.test("the image's modules load beside the phases after etc: one modprobe, started before initrd-keys waits for it", async (t) => {
  const { applyImageModules, startImageModules } = await import('../../src/init/apply/system.js');
  const root = nodeRoot(t.testdir());
  put(root, 'etc/modules-load.d/k3s.conf', 'overlay\nbr_netfilter\n');
  let release: () => void = () => undefined;
  const held = new Promise<void>((r) => (release = r));
  const { ctx, calls } = testContext(root, {}, { exec: (file, args) => (file === 'modprobe' && args.includes('br_netfilter') ? { code: 1, stderr: 'modprobe: FATAL: Module br_netfilter not found' } : undefined) });
  const exec = ctx.exec;
  let started = 0;
  ctx.exec = async (file, args, o) => {
    started++;
    await held;
    return exec(file, args, o);
  };
  startImageModules(ctx);
  await new Promise((r) => setTimeout(r, 20));
  t.equal(started, 1, 'modprobe is running before anything waits for it');
  release();
  await t.rejects(applyImageModules(ctx), /^not loaded: br_netfilter$/, 'the one that did not load, named when initrd-keys waits');
  t.same(calls.map((c) => [c.file, ...c.args]), [['modprobe', '-a', '--', 'overlay', 'br_netfilter'], ['modprobe', '--', 'overlay'], ['modprobe', '--', 'br_netfilter']], 'one load, then one each to name the failure; none again when waited for');
  t.equal(ctx.imageModules, undefined, 'waited for once');
  await applyImageModules(ctx).catch(() => undefined);
  t.equal(calls.length, 6, 'without a start, initrd-keys loads them itself');
  // modprobe that cannot run at all: the boot goes on, initrd-keys says why
  ctx.exec = async () => {
    throw new Error('spawn modprobe ENOENT');
  };
  startImageModules(ctx);
  await t.rejects(applyImageModules(ctx), /^not loaded: modprobe \(spawn modprobe ENOENT\)$/);
});

t.test("the memory reserve drops to the kernel's base without THP's boost; the image's sysctl.d and a low value win", async (t) => {
  const { applyImageSysctls, baseMinFreeKbytes } = await import('../../src/init/apply/system.js');
  t.equal(baseMinFreeKbytes(2020964), 5686, '4 x sqrt(KiB), as the kernel computes it');
  t.equal(baseMinFreeKbytes(1000), 128, 'never under 128 KiB');
  t.equal(baseMinFreeKbytes(2 ** 42), 262144, 'never over 256 MiB');
  const root = nodeRoot(t.testdir());
  const reserve = join(root, 'proc/sys/vm/min_free_kbytes');
  const { ctx, lines } = testContext(root, {});
  await applyImageSysctls(ctx);
  t.equal(readFileSync(reserve, 'utf8'), '5686');
  t.ok(lines.includes('cairn: vm.min_free_kbytes 45056 -> 5686'), 'the change is logged');
  // a kernel that already keeps less is left alone
  put(root, 'proc/sys/vm/min_free_kbytes', '4000\n');
  await applyImageSysctls(ctx);
  t.equal(readFileSync(reserve, 'utf8'), '4000\n');
  // an image that asks for its own reserve gets it
  put(root, 'proc/sys/vm/min_free_kbytes', '45056\n');
  put(root, 'etc/sysctl.d/95-reserve.conf', 'vm.min_free_kbytes = 16384\n');
  await applyImageSysctls(ctx);
  t.equal(readFileSync(reserve, 'utf8'), '16384');
  put(root, 'proc/sys/vm/min_free_kbytes', 'garbage\n');
  await t.rejects(applyImageSysctls(ctx), /not set: vm\.min_free_kbytes \(vm\.min_free_kbytes or MemTotal unreadable\)/);
  t.equal(readFileSync(reserve, 'utf8'), '16384', 'the image sysctls still apply when the reserve cannot be read');
  rmSync(join(root, 'proc/meminfo'));
  put(root, 'proc/sys/vm/min_free_kbytes', '45056\n');
  rmSync(join(root, 'etc/sysctl.d/95-reserve.conf'));
  await applyImageSysctls(ctx);
  t.equal(readFileSync(reserve, 'utf8'), '45056\n', 'no /proc/meminfo (no /proc mounted): left alone');
});

t.test('the config phase reads a NoCloud seed before the network is up, so its config applies to the whole boot', async (t) => {
  const { configPhase, dataSources } = await import('../../src/init/phases.js');
  const root = nodeRoot(t.testdir());
  mkdirSync(join(root, 'run/cairn'), { recursive: true });
  put(root, 'usr/lib/cairn/config.yaml', 'hostname: image\nk3os:\n  data_sources: [cdrom, https://cfg.example/x]\n');
  const { ctx } = testContext(root, {}, {
    exec: (file, args) => {
      if (file === 'blkid') return { stdout: 'DEVNAME=/dev/sr0\nLABEL=cidata\n' };
      if (file === 'mount') writeFileSync(join(args[3]!, 'user-data'), '#cloud-config\nhostname: seeded\ninit_cmd: [echo early]\n');
      return undefined;
    },
    fetch: () => {
      throw new Error('no network yet');
    },
  });
  t.match(await configPhase(ctx), /user-data from cdrom/);
  t.equal(ctx.config.hostname, 'seeded');
  t.same(ctx.config.init_cmd, ['echo early']);
  t.equal(await dataSources(ctx), 'no user-data found; https://cfg.example/x did not answer: asked again in the background', 'the URL source is tried later, after the network, and again in the background');
});

t.test('a source that does not answer at boot: asked again in the background, applied when it answers', async (t) => {
  const { configPhase, dataSources, retryDataSources } = await import('../../src/init/phases.js');
  const root = nodeRoot(t.testdir());
  put(root, 'usr/lib/cairn/config.yaml', 'k3os:\n  data_sources: [https://cfg.example/slow.yaml, https://cfg.example/gone.yaml, aws]\n');
  let asked = 0;
  const { ctx, lines } = testContext(root, {}, {
    fetch: (url) => {
      if (url.includes('gone.yaml')) throw new Error(`${url}: HTTP 404`);
      if (url.includes('169.254.169.254')) throw new Error('fetch failed (connect ECONNREFUSED)');
      if (++asked < 3) throw new Error('fetch failed (connect EHOSTUNREACH)');
      return '#cloud-config\nhostname: late-node\nssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ4Yl6kVvKUqvWGcd1FzIeHcgGx4bS1a6xXoQn9dW0cP late"]\n';
    },
  });
  await configPhase(ctx);
  t.equal(await dataSources(ctx), 'no user-data found; https://cfg.example/slow.yaml, aws did not answer: asked again in the background', 'the 404 is an answer: not asked again');
  t.equal(asked, 1);
  const answered = await retryDataSources(ctx, ['https://cfg.example/slow.yaml', 'aws'], { delays: [5], tries: 4 });
  t.same(answered, ['https://cfg.example/slow.yaml'], 'the URL answered on its third try; aws never did');
  t.equal(asked, 3);
  t.equal(ctx.config.hostname, 'late-node', 'its config applies');
  t.equal(readFileSync(join(root, 'proc/sys/kernel/hostname'), 'utf8'), 'late-node', 'the hostname set');
  t.match(readFileSync(join(root, 'home/cairn/.ssh/authorized_keys'), 'utf8'), / late$/m, 'its key installed');
  t.match(lines.join('\n'), /data-sources: https:\/\/cfg\.example\/slow\.yaml answered after the boot; its user-data is applied \(aws still asked\)/);

  // a source taken out of data_sources is no longer asked
  put(root, 'usr/lib/cairn/config.yaml', 'k3os:\n  data_sources: []\n');
  await configPhase(ctx);
  const before = asked;
  t.same(await retryDataSources(ctx, ['https://cfg.example/slow.yaml'], { delays: [5], tries: 3 }), []);
  t.equal(asked, before, 'not fetched');
});

t.test('which failures are asked again', async (t) => {
  t.ok(worthRetrying(new Error('fetch failed')), 'no answer');
  t.ok(worthRetrying(new Error('The operation was aborted due to timeout')), 'a timeout');
  t.ok(worthRetrying(new Error('http://x/y: HTTP 503')), 'a server error');
  t.notOk(worthRetrying(new Error('http://x/y: HTTP 404')), 'not there');
  t.notOk(worthRetrying(new MetadataFormatError('digitalocean metadata is not JSON')), 'an answer in another format');
});
