// cloud-init's modules on a node, from a typical cloud-init seed's
// user-data (test/fixtures/cloud-init/user-data, the file a cloud-localds
// seed holds; test/boot/install.test.ts boots one): read through the
// schema, then applied over a folder with a recording exec.
import t from 'tap';
import { lstatSync, mkdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readConfig } from '../../src/config/read.js';
import { formatDiagnostic } from '../../src/config/diagnostics.js';
import { applyChpasswd, applyCloudUsers, applySshPwauth, applyTimezone, CLOUD_SUDOERS, SSH_PWAUTH_CONF } from '../../src/init/apply/cloudinit.js';
import { applyWriteFiles } from '../../src/init/apply/files.js';
import { renderChronyConf, renderHosts } from '../../src/init/apply/system.js';
import { cairnKeyEntries, loginConfigured } from '../../src/init/apply/users.js';
import { growState } from '../../src/init/grow.js';
import { REPO } from '../boot/image.js';
import { nodeRoot, put, testContext } from './support.js';

const USER_DATA = readFileSync(join(REPO, 'test/fixtures/cloud-init/user-data'), 'utf8');

t.test("a cloud-init seed's user-data: read as cloud-init reads it, what cannot apply warned about", async (t) => {
  const r = readConfig(USER_DATA, 'user-data');
  t.same(r.diagnostics.map(formatDiagnostic), [
    "user-data:47:1: warning: packages: not applied: cairn's root is an image, read-only, without a package manager: list the packages in the image spec's packages: and build the image again (cairn build)",
    "user-data:48:1: warning: package_upgrade: not applied: cairn's root is an image without a package manager: build a new image (cairn build) and upgrade the node to it (cairn upgrade)",
  ]);
  const c = r.config;
  t.same(c.users?.map((u) => u.name), ['default', 'ops', 'relay'], 'a bare name is a user');
  t.same(c.users?.[1]?.groups, ['adm', 'systemd-journal', 'ops-extra'], "groups' comma-separated string split");
  t.same(c.users?.[1]?.sudo, ['ALL=(ALL) NOPASSWD:ALL'], 'one sudo rule as a list');
  t.same(c.users?.[2]?.sudo, [], 'sudo: false is no rule');
  t.equal(c.users?.[1]?.lock_passwd, false);
  t.same(c.chpasswd?.list, ['relay:Relay-Pass-1'], "chpasswd.list's lines");
  t.same(c.boot_cmd, ['echo bootcmd ran > /run/cloud-init-bootcmd'], 'bootcmd is boot_cmd');
  t.same(c.run_cmd, [`sh -c 'echo runcmd '\\''ran'\\'' > /run/cloud-init-runcmd'`, 'touch /run/cloud-init-runcmd-2'], 'a runcmd word list is one shell command, quoted');
  t.same([c.timezone, c.ssh_pwauth, c.manage_etc_hosts, c.growpart?.mode], ['Europe/Berlin', true, 'localhost', 'off']);
  t.same(c.write_files?.map((f) => [f.path, f.append ?? false, f.defer ?? false]), [['/etc/motd', true, false], ['/home/ops/notes.txt', false, true]]);
});

t.test('bad cloud-init values are located errors', async (t) => {
  const bad = ['users:', '  - name: Bad User', '    uid: lots', 'timezone: "Europe/../../etc/passwd"', 'chpasswd:', '  users:', '    - {name: ops, password: x, type: RANDOM}', 'manage_etc_hosts: sometimes', ''].join('\n');
  const msgs = readConfig(bad, 'ud').diagnostics.map(formatDiagnostic);
  t.match(msgs.join('\n'), /ud:2:11: error: users\[0\]\.name: expected a user name/);
  t.match(msgs.join('\n'), /ud:3:10: error: users\[0\]\.uid: expected an integer/);
  t.match(msgs.join('\n'), /ud:4:11: error: timezone: expected a time zone such as Europe\/Berlin or UTC/);
  t.match(msgs.join('\n'), /ud:7:38: error: chpasswd\.users\[0\]\.type: expected text or hash/);
  t.match(msgs.join('\n'), /ud:8:19: error: manage_etc_hosts: expected true, false, template or localhost/);
  t.notMatch(msgs.join('\n'), /password: x|"x"/, 'no password in a message');
});

t.test('users: groups made, accounts made with their options, keys, sudo rules, passwords on standard input', async (t) => {
  const root = nodeRoot(t.testdir());
  put(root, 'etc/group', `${readFileSync(join(root, 'etc/group'), 'utf8')}systemd-journal:x:999:\ncairn:x:1000:\n`);
  put(root, 'etc/passwd', `${readFileSync(join(root, 'etc/passwd'), 'utf8')}cairn:x:1000:1000:cairn:/home/cairn:/bin/bash\n`);
  const config = readConfig(USER_DATA, 'user-data').config;
  // useradd as the shadow tools do it: the passwd line appears
  const { ctx, calls } = testContext(root, config, {
    exec: (file, args) => {
      if (file === 'useradd') {
        const name = args.at(-1)!;
        const uid = name === 'ops' ? 1001 : 1002;
        writeFileSync(join(root, 'etc/passwd'), `${readFileSync(join(root, 'etc/passwd'), 'utf8')}${name}:x:${uid}:${uid}::/home/${name}:/bin/sh\n`);
      }
      return undefined;
    },
  });
  const summary = await applyCloudUsers(ctx);
  t.equal(summary, 'users ops, relay (made ops, relay)');
  const cmds = calls.map((c) => [c.file, ...c.args].join(' '));
  t.same(cmds.filter((c) => c.startsWith('groupadd')), ['groupadd ops-extra'], 'only the missing group made (adm and systemd-journal exist)');
  t.notOk(cmds.some((c) => c.startsWith('usermod') && c.endsWith(' cairn')), "the default entry has no groups or shell: cairn's account is left as it is");
  t.ok(cmds.includes('useradd --shell /bin/sh --comment Site Operations --user-group --groups adm,systemd-journal,ops-extra --create-home ops'), cmds.join('\n'));
  t.ok(cmds.includes('useradd --shell /bin/bash --user-group --no-create-home relay'), 'no_create_home');
  const chpasswd = calls.find((c) => c.file === 'chpasswd')!;
  t.same(chpasswd.args, ['-e'], 'a hash through chpasswd -e');
  t.match(chpasswd.input ?? '', /^ops:\$6\$cairnsalt\$/, 'the hash on standard input');
  t.notOk(calls.some((c) => c.args.some((a) => a.includes('$6$'))), 'never in the arguments');
  t.ok(cmds.includes('usermod --unlock ops'), 'lock_passwd: false with a password unlocks it');
  t.ok(cmds.includes('usermod --lock relay'), 'lock_passwd is true by default');
  const keys = join(root, 'home/ops/.ssh/authorized_keys');
  t.match(readFileSync(keys, 'utf8'), /^ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFjH5xQ9.* ops@hq\n$/);
  t.equal(statSync(keys).mode & 0o777, 0o600);
  t.equal(readFileSync(join(root, CLOUD_SUDOERS), 'utf8'), "# written by cairn from the config's users (cloud-init)\nops ALL=(ALL) NOPASSWD:ALL\n");
  t.equal(statSync(join(root, CLOUD_SUDOERS)).mode & 0o777, 0o440, 'sudoers rules 0440');

  // the next boot: the accounts exist, so they are updated, not made again
  calls.length = 0;
  await applyCloudUsers(ctx);
  t.same(calls.filter((c) => c.file === 'useradd'), [], 'not made twice');
  t.ok(calls.some((c) => [c.file, ...c.args].join(' ') === 'usermod --shell /bin/sh --append --groups adm,systemd-journal,ops-extra ops'), 'the shell and groups kept as the config says');

  // users gone from the config: their sudo rules go too
  ctx.config = {};
  await applyCloudUsers(ctx);
  t.throws(() => statSync(join(root, CLOUD_SUDOERS)), 'no sudoers file without users');
});

t.test('a failing useradd is reported with the rest still applied', async (t) => {
  const root = nodeRoot(t.testdir());
  const { ctx } = testContext(root, { users: [{ name: 'a1' }, { name: 'b2', sudo: ['ALL=(ALL) ALL'] }] }, { exec: (file, args) => (file === 'useradd' && args.at(-1) === 'a1' ? { code: 9, stderr: 'useradd: UID 1000 is not unique' } : undefined) });
  await t.rejects(applyCloudUsers(ctx), /useradd --shell \/bin\/bash --user-group --create-home a1: useradd: UID 1000 is not unique \(users a1, b2 \(made b2\)\)/);
  t.match(readFileSync(join(root, CLOUD_SUDOERS), 'utf8'), /^b2 ALL=\(ALL\) ALL$/m, "b2's rule written anyway");
});

t.test("chpasswd: plain and hashed passwords, the default user is cairn's", async (t) => {
  const root = nodeRoot(t.testdir());
  const { ctx, calls, lines } = testContext(root, { chpasswd: { expire: true, users: [{ name: 'default', password: 'Plain-1' }, { name: 'ops', password: '$6$s$h', type: 'hash' }], list: ['relay:Plain-2'] } });
  t.equal(await applyChpasswd(ctx), 'passwords of cairn, ops, relay');
  const ch = calls.filter((c) => c.file === 'chpasswd');
  t.same(ch.map((c) => [c.args, c.input]), [[[], 'cairn:Plain-1\nrelay:Plain-2\n'], [['-e'], 'ops:$6$s$h\n']]);
  t.same(calls.filter((c) => c.file === 'usermod').map((c) => c.args), [['--unlock', 'ops'], ['--unlock', 'relay']]);
  t.match(lines.join('\n'), /chpasswd: expire is not applied/);
  t.notMatch(lines.join('\n'), /Plain-1|Plain-2/, 'no password in the log');
  t.ok(loginConfigured({ chpasswd: { users: [{ name: 'default', password: 'x' }] } }), "a password for the default user is a way in (no console autologin)");
  t.same(cairnKeyEntries({ ssh_authorized_keys: ['k1'], users: [{ name: 'default', ssh_authorized_keys: ['k2'] }, { name: 'ops', ssh_authorized_keys: ['k3'] }] }), ['k1', 'k2'], "users' default keys are cairn's");
});

t.test('ssh_pwauth, timezone', async (t) => {
  const root = nodeRoot(t.testdir());
  mkdirSync(join(root, 'usr/share/zoneinfo/Europe'), { recursive: true });
  writeFileSync(join(root, 'usr/share/zoneinfo/Europe/Berlin'), 'TZif');
  const { ctx } = testContext(root, { ssh_pwauth: false, timezone: 'Europe/Berlin' });
  t.equal(applySshPwauth(ctx), 'ssh passwords refused');
  t.equal(readFileSync(join(root, SSH_PWAUTH_CONF), 'utf8'), '# written by cairn from ssh_pwauth\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n');
  t.ok(SSH_PWAUTH_CONF.localeCompare('/etc/ssh/sshd_config.d/cairn.conf') < 0, "read before the image's cairn.conf (sshd keeps the first value)");
  t.equal(applyTimezone(ctx), 'timezone Europe/Berlin');
  t.equal(readlinkSync(join(root, 'etc/localtime')), '/usr/share/zoneinfo/Europe/Berlin');
  t.equal(readFileSync(join(root, 'etc/timezone'), 'utf8'), 'Europe/Berlin\n');
  ctx.config = { timezone: 'Mars/Olympus' };
  t.throws(() => applyTimezone(ctx), /timezone Mars\/Olympus: no such zone in the image/);
  t.ok(lstatSync(join(root, 'etc/localtime')).isSymbolicLink(), 'the old zone kept');
  ctx.config = {};
  applySshPwauth(ctx);
  t.throws(() => statSync(join(root, SSH_PWAUTH_CONF)), 'the drop-in goes when the key does');
});

t.test("ntp's servers and pools in chrony's config; manage_etc_hosts", async (t) => {
  t.equal(renderChronyConf(['a.example', 'b.example', 'a.example'], ['0.pool.example']).split('\n').filter((l) => /^(server|pool) /.test(l)).join('\n'), 'server a.example iburst\nserver b.example iburst\npool 0.pool.example iburst');
  t.match(renderChronyConf([]), /^pool 2\.debian\.pool\.ntp\.org iburst$/m, "Debian's pool without any");
  t.equal(renderHosts(undefined, 'n1', undefined), '127.0.0.1\tlocalhost\n127.0.1.1\tn1\n::1\tlocalhost ip6-localhost ip6-loopback\n');
  t.equal(renderHosts('false', 'n1', '10.0.0.5 db\n'), undefined, 'false: left alone');
  t.equal(renderHosts('localhost', 'n2', '127.0.0.1 localhost\n127.0.1.1 old-name\n10.0.0.5 db'), '127.0.0.1 localhost\n127.0.1.1\tn2\n10.0.0.5 db\n', "localhost: the hostname's line set, the rest kept");
});

t.test('write_files: append once, defer to the second pass', async (t) => {
  const root = nodeRoot(t.testdir());
  put(root, 'etc/motd', 'Debian\n');
  const files = readConfig(USER_DATA, 'user-data').config.write_files!;
  put(root, 'etc/passwd', `${readFileSync(join(root, 'etc/passwd'), 'utf8')}ops:x:${process.getuid?.() ?? 0}:${process.getgid?.() ?? 0}::/home/ops:/bin/sh\n`);
  put(root, 'etc/group', `${readFileSync(join(root, 'etc/group'), 'utf8')}ops:x:${process.getgid?.() ?? 0}:\n`);
  t.same(applyWriteFiles(root, files), []);
  t.equal(readFileSync(join(root, 'etc/motd'), 'utf8'), 'Debian\nedge-ci: managed by cloud-init user-data\n', 'appended');
  t.throws(() => statSync(join(root, 'home/ops/notes.txt')), 'the deferred file waits');
  t.same(applyWriteFiles(root, files), []);
  t.equal(readFileSync(join(root, 'etc/motd'), 'utf8'), 'Debian\nedge-ci: managed by cloud-init user-data\n', 'applied again (every boot, or user-data arriving): appended once');
  t.same(applyWriteFiles(root, files, { deferred: true }), []);
  t.equal(readFileSync(join(root, 'home/ops/notes.txt'), 'utf8'), 'for ops only');
  t.equal(statSync(join(root, 'home/ops/notes.txt')).mode & 0o777, 0o600);
});

t.test("growpart's mode off keeps the state partition's size", async (t) => {
  const root = nodeRoot(t.testdir());
  const { ctx, calls } = testContext(root, { growpart: { mode: 'off' } });
  ctx.boot = { mode: 'state', version: '0.1.0', stateDevice: '/dev/vda3' };
  t.equal(await growState(ctx, false), "not grown: growpart's mode is off");
  t.same(calls, [], 'no sfdisk, no resize2fs');
});
