// What of /etc persists across an upgrade: a node boots v1 (the real boot
// code makes the cairn user, its password and keys), its owner changes a
// few things by hand, then v2's image brings a new system account, drops
// one and changes some default files; then back to v1, as a fallback does.
import t from 'tap';
import { chownSync, chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { ACCOUNTS_RECORD, mergeAccounts, nodeEntries, writeAccountFile } from '../../src/init/apply/accounts.js';
import { CONFIG_FILES, IMAGE_ETC, IMAGE_ETC_MANIFEST, IMAGE_ETC_RECORD, keepNodeEtc, keepNodeFiles, manifestOf, planFiles } from '../../src/init/apply/persist.js';
import { installedLogin } from '../../src/init/apply/users.js';
import { applyEarlyKeys, boot, usersPhase } from '../../src/init/phases.js';
import { renderInitScript } from '../../src/builder/initramfs/init-script.js';
import type { CairnConfig } from '../../src/config/types.js';
import { chpasswdWrites, put, sshKey, testContext } from './support.js';

const AS_ROOT = process.getuid?.() === 0;
const SHADOW_GID = 42;

// --- the images ---------------------------------------------------------------

const V1_PASSWD = [
  'root:x:0:0:root:/root:/bin/bash',
  'daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin',
  'irc:x:39:39:ircd:/run/ircd:/usr/sbin/nologin',
  'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin',
  '_chrony:x:100:102:Chrony daemon:/var/lib/chrony:/usr/sbin/nologin',
  'sshd:x:999:65534:sshd user:/run/sshd:/usr/sbin/nologin',
];
const V1_GROUP = ['root:x:0:', 'daemon:x:1:', 'adm:x:4:', 'sudo:x:27:', 'irc:x:39:', 'shadow:x:42:', 'users:x:100:', '_ssh:x:101:', '_chrony:x:102:', 'nogroup:x:65534:'];
const shadowOf = (passwd: string[], day: number) => passwd.map((l) => `${l.split(':')[0]}:${l.startsWith('_') || l.startsWith('sshd') ? '!' : '*'}:${day}:0:99999:7:::`);
const gshadowOf = (group: string[]) => group.map((l) => { const [n, , , m = ''] = l.split(':'); return `${n}:${n!.startsWith('_') ? '!' : '*'}::${m}`; });

interface Image {
  passwd: string[];
  group: string[];
  shadow: string[];
  gshadow: string[];
  files: Record<string, string>;
  links: Record<string, string>;
}

const v1: Image = {
  passwd: V1_PASSWD,
  group: V1_GROUP,
  shadow: shadowOf(V1_PASSWD, 19675),
  gshadow: gshadowOf(V1_GROUP),
  files: {
    'ssh/sshd_config': 'Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\n',
    'default/chrony': 'DAEMON_OPTS="-F 1"\n',
    'default/useradd': 'SHELL=/bin/sh\n',
    hostname: 'cairn\n',
    hosts: '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n',
    environment: '',
  },
  links: { localtime: '/usr/share/zoneinfo/Etc/UTC' },
};

// v2 adds _chrony2 (and _newd, whose ids the node took for its own account meanwhile), drops irc,
// adds _chrony2 to adm, was built on another day (every shadow entry changes), and changes default files.
const V2_PASSWD = [...V1_PASSWD.filter((l) => !l.startsWith('irc:')), '_newd:x:101:104:new daemon:/nonexistent:/usr/sbin/nologin', '_chrony2:x:102:103:Chrony 2:/var/lib/chrony2:/usr/sbin/nologin'];
const V2_GROUP = [...V1_GROUP.filter((l) => !l.startsWith('irc:')).map((l) => (l === 'adm:x:4:' ? 'adm:x:4:_chrony2' : l)), '_chrony2:x:103:', '_newd:x:104:'];
const v2: Image = {
  passwd: V2_PASSWD,
  group: V2_GROUP,
  shadow: shadowOf(V2_PASSWD, 19800),
  gshadow: gshadowOf(V2_GROUP),
  files: {
    ...v1.files,
    'ssh/sshd_config': 'Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nPerSourcePenalties yes\n',
    'default/chrony': 'DAEMON_OPTS="-F 2"\n',
    'default/useradd': 'SHELL=/bin/bash\n',
    hostname: 'cairn2\n',
  },
  links: v1.links,
};

/** An image's /etc as the squashfs has it: shadow and gshadow root:shadow 0640, as Debian makes them. */
function writeImage(dir: string, img: Image): string {
  const file = (rel: string, text: string, mode: number, gid = 0) => {
    put(dir, rel, text);
    chmodSync(join(dir, rel), mode);
    if (AS_ROOT) chownSync(join(dir, rel), 0, gid);
  };
  file('passwd', `${img.passwd.join('\n')}\n`, 0o644);
  file('group', `${img.group.join('\n')}\n`, 0o644);
  file('shadow', `${img.shadow.join('\n')}\n`, 0o640, SHADOW_GID);
  file('gshadow', `${img.gshadow.join('\n')}\n`, 0o640, SHADOW_GID);
  for (const [rel, text] of Object.entries(img.files)) file(rel, text, 0o644);
  for (const [rel, target] of Object.entries(img.links)) symlinkSync(target, join(dir, rel));
  return dir;
}

// --- the overlay ----------------------------------------------------------------

/** Copies a tree with modes, owners and links. */
function copyTree(from: string, to: string): void {
  mkdirSync(to, { recursive: true });
  for (const e of readdirSync(from, { withFileTypes: true })) {
    const a = join(from, e.name);
    const b = join(to, e.name);
    copyEntry(a, b, e.isDirectory());
  }
}
function copyEntry(a: string, b: string, folder = lstatSync(a).isDirectory()): void {
  const st = lstatSync(a);
  mkdirSync(dirname(b), { recursive: true });
  if (folder) return copyTree(a, b);
  rmSync(b, { force: true, recursive: true });
  if (st.isSymbolicLink()) symlinkSync(readlinkSync(a), b);
  else {
    copyFileSync(a, b);
    chmodSync(b, st.mode & 0o7777);
  }
  if (AS_ROOT && !st.isSymbolicLink()) chownSync(b, st.uid, st.gid);
}
function walk(dir: string, rel = ''): string[] {
  if (!existsSync(join(dir, rel))) return [];
  return readdirSync(join(dir, rel), { withFileTypes: true }).flatMap((e) => {
    const r = rel ? `${rel}/${e.name}` : e.name;
    return e.isDirectory() ? walk(dir, r) : [r];
  });
}

/**
 * The node's /etc as the first stage mounts it: the image's /etc below, the
 * node's changes above, here as folders. A boot lays out root/etc from both
 * (and the image's at /run/cairn/image-etc); a shutdown takes into the upper
 * layer every file that was written, replaced, chmod-ed or made since, as
 * overlayfs copies a file up, and notes removed ones (whiteouts).
 */
class OverlayNode {
  readonly upper: string;
  private whiteouts = new Set<string>();
  private stamps = new Map<string, string>();
  private fromUpper = new Set<string>();
  private lower = new Set<string>();

  constructor(readonly root: string) {
    this.upper = join(root, 'cairn/data/etc');
    mkdirSync(this.upper, { recursive: true });
    put(root, 'proc/sys/kernel/hostname', 'localhost\n');
    mkdirSync(join(root, 'sys/class/net'), { recursive: true });
  }

  private stamp(p: string): string {
    const st = lstatSync(join(this.root, 'etc', p), { bigint: true });
    return `${st.ino} ${st.ctimeNs}`;
  }

  boot(image: string): void {
    const etc = join(this.root, 'etc');
    rmSync(etc, { recursive: true, force: true });
    copyTree(image, etc);
    for (const p of this.whiteouts) rmSync(join(etc, p), { force: true });
    this.fromUpper = new Set(walk(this.upper));
    for (const p of this.fromUpper) copyEntry(join(this.upper, p), join(etc, p));
    this.stamps = new Map(walk(etc).map((p) => [p, this.stamp(p)]));
    const imageEtc = join(this.root, IMAGE_ETC);
    rmSync(imageEtc, { recursive: true, force: true });
    copyTree(image, imageEtc);
    this.lower = new Set(walk(image));
  }

  shutdown(): void {
    const now = new Set(walk(join(this.root, 'etc')));
    for (const p of now) {
      if (this.fromUpper.has(p) || this.stamps.get(p) !== this.stamp(p)) {
        copyEntry(join(this.root, 'etc', p), join(this.upper, p));
        this.whiteouts.delete(p);
      }
    }
    for (const p of this.stamps.keys()) {
      if (now.has(p)) continue;
      rmSync(join(this.upper, p), { force: true });
      if (this.lower.has(p)) this.whiteouts.add(p);
    }
  }

  /** Whether a file is in the upper layer (the node's copy). */
  inUpper(p: string): boolean {
    return existsSync(join(this.upper, p)) || (() => { try { return lstatSync(join(this.upper, p)).isSymbolicLink(); } catch { return false; } })();
  }
}

// --- the node ---------------------------------------------------------------------

const KEY = sshKey('admin');
const CONFIG: CairnConfig = { hostname: 'edge-1', ssh_authorized_keys: [KEY], cairn: { password: 'rancher' } };

/** The boot's own code for what this test is about: the etc phase, the early keys (the cairn user, its password), the users phase (keys). */
async function bootNode(node: OverlayNode, image: string, opts: { only?: 'etc' } = {}) {
  node.boot(image);
  const tc = testContext(node.root, CONFIG, { exec: chpasswdWrites(node.root) });
  const etc = await keepNodeEtc(tc.ctx);
  if (opts.only !== 'etc') {
    await applyEarlyKeys(tc.ctx);
    await usersPhase(tc.ctx);
  }
  return { ...tc, etc };
}

const read = (root: string, p: string) => readFileSync(join(root, 'etc', p), 'utf8');
const entries = (root: string, f: string) => read(root, f).split('\n').filter(Boolean);
const entry = (root: string, f: string, name: string) => entries(root, f).find((l) => l.split(':')[0] === name);
const names = (root: string, f: string) => entries(root, f).map((l) => l.split(':')[0]);

/** Edits an account file in place, as usermod, adduser and passwd do through their lock. */
function editAccounts(root: string, f: string, edit: (lines: string[]) => string[]): void {
  const path = join(root, 'etc', f);
  const st = statSync(path);
  const tmp = `${path}+`;
  writeFileSync(tmp, `${edit(entries(root, f)).join('\n')}\n`, { mode: st.mode & 0o7777 });
  if (AS_ROOT) chownSync(tmp, st.uid, st.gid);
  renameSync(tmp, path);
}

t.test('an upgrade: the node keeps its own accounts and files, everything else follows the new image', async (t) => {
  const base = t.testdir();
  const img1 = writeImage(join(base, 'v1'), v1);
  const img2 = writeImage(join(base, 'v2'), v2);
  const node = new OverlayNode(join(base, 'node'));
  const root = node.root;

  // v1, first boot: the init makes the cairn user, sets its password and installs its key.
  const first = await bootNode(node, img1);
  t.match(first.etc, /accounts: none of the node's own; files: the image's \/etc recorded \(\d+ files\)/);
  t.equal(entry(root, 'passwd', 'cairn'), 'cairn:x:1000:1000:cairn:/home/cairn:/bin/bash');
  t.equal(entry(root, 'gshadow', 'cairn'), 'cairn:!::', 'the cairn group has its gshadow entry, as groupadd makes it');
  t.match(entry(root, 'shadow', 'cairn'), /^cairn:\$6\$test\$hash:/);
  for (const f of ['shadow', 'gshadow']) {
    const st = statSync(join(root, 'etc', f));
    t.equal(st.mode & 0o777, 0o640, `${f} is 0640 after the first boot made the cairn user`);
    if (AS_ROOT) t.same([st.uid, st.gid], [0, SHADOW_GID], `${f} stays root:shadow after the first boot`);
  }
  // By hand: cairn into sudo and adm, a system account of the node's own, root's password, an sshd
  // setting, and a default file rewritten unchanged (a sed -i that matched nothing).
  editAccounts(root, 'group', (ls) => [...ls.map((l) => (l === 'sudo:x:27:' ? 'sudo:x:27:cairn' : l === 'adm:x:4:' ? 'adm:x:4:cairn' : l)), 'metrics:x:104:']);
  editAccounts(root, 'gshadow', (ls) => [...ls.map((l) => (l === 'sudo:*::' ? 'sudo:*::cairn' : l === 'adm:*::' ? 'adm:*::cairn' : l)), 'metrics:!::']);
  editAccounts(root, 'passwd', (ls) => [...ls, 'metrics:x:101:104::/home/metrics:/usr/sbin/nologin']);
  editAccounts(root, 'shadow', (ls) => [...ls.map((l) => (l.startsWith('root:') ? 'root:$y$j9T$byhand:19700:0:99999:7:::' : l)), 'metrics:!:19700:0:99999:7:::']);
  writeFileSync(join(root, 'etc/ssh/sshd_config'), `${v1.files['ssh/sshd_config']}PasswordAuthentication no\n`);
  writeFileSync(join(root, 'etc/default/.useradd.sed'), v1.files['default/useradd']!);
  renameSync(join(root, 'etc/default/.useradd.sed'), join(root, 'etc/default/useradd'));
  node.shutdown();
  t.ok(node.inUpper('default/useradd'), 'the unchanged rewrite is a copy in the upper layer');
  t.notOk(node.inUpper('default/chrony'), 'an untouched file is not');

  // v1 again: nothing to do, nothing written.
  node.boot(img1);
  const before = ['passwd', 'group', 'shadow', 'gshadow'].map((f) => statSync(join(root, 'etc', f)).ino);
  const again = testContext(root, CONFIG, { exec: chpasswdWrites(root) });
  t.equal(await keepNodeEtc(again.ctx), "accounts: the node's cairn, metrics; files: as the image and the node left them");
  t.same(['passwd', 'group', 'shadow', 'gshadow'].map((f) => statSync(join(root, 'etc', f)).ino), before, 'the same image again: no account file is written');
  t.same(again.lines.filter((l) => / etc: /.test(l)), [], 'and nothing to say');
  node.shutdown();

  // v2. The checks are made right after the etc phase, before the init sets the password again.
  const up = await bootNode(node, img2, { only: 'etc' });
  const log = up.lines.join('\n');
  t.match(up.etc, /accounts: the node's cairn, metrics; new from the image: _chrony2, group _chrony2; gone with the image: irc, group irc; left out: _newd, group _newd; files: 1 unchanged copy follows the image, 1 of the node's kept/);
  for (const f of ['passwd', 'group', 'shadow', 'gshadow'] as const) {
    const v2line = v2[f].find((l) => l.startsWith('_chrony2:'));
    t.equal(entry(root, f, '_chrony2'), v2line, `${f}: the account the new image adds is there`);
    t.notOk(names(root, f).includes('irc'), `${f}: the account the new image dropped is gone`);
  }
  t.equal(entry(root, 'shadow', 'daemon'), 'daemon:*:19800:0:99999:7:::', 'an entry the node never changed follows the image');
  t.equal(entry(root, 'passwd', 'cairn'), 'cairn:x:1000:1000:cairn:/home/cairn:/bin/bash', "the cairn user keeps its uid and gid");
  t.match(entry(root, 'shadow', 'cairn'), /^cairn:\$6\$test\$hash:/, 'and its password hash');
  t.equal(entry(root, 'group', 'cairn'), 'cairn:x:1000:');
  t.equal(entry(root, 'shadow', 'root'), 'root:$y$j9T$byhand:19700:0:99999:7:::', "a password set by hand on an image account stays");
  t.equal(entry(root, 'group', 'sudo'), 'sudo:x:27:cairn', 'the sudo membership stays');
  t.equal(entry(root, 'group', 'adm'), 'adm:x:4:_chrony2,cairn', "a group the node changed gets the member the image adds, and keeps the node's");
  t.equal(entry(root, 'gshadow', 'adm'), 'adm:*::_chrony2,cairn');
  t.equal(entry(root, 'passwd', 'metrics'), 'metrics:x:101:104::/home/metrics:/usr/sbin/nologin', "the node's own system account stays");
  for (const f of ['passwd', 'group', 'shadow', 'gshadow']) t.notOk(names(root, f).includes('_newd'), `${f}: the image's new account with the node's uid and gid is left out`);
  t.match(log, /etc: warning: passwd: the image's new account _newd has uid 101, which is the node's account metrics: _newd is left out.*usermod -u <uid> metrics/);
  t.match(log, /etc: warning: group: the image's new group _newd has gid 104, which is the node's group metrics: _newd is left out.*groupmod -g <gid> metrics/);
  for (const [f, mode] of [['passwd', 0o644], ['group', 0o644], ['shadow', 0o640], ['gshadow', 0o640]] as const) {
    const st = statSync(join(root, 'etc', f));
    t.equal(st.mode & 0o777, mode, `${f} is ${mode.toString(8)}`);
    if (AS_ROOT) t.same([st.uid, st.gid], [0, f.endsWith('shadow') ? SHADOW_GID : 0], `${f}'s owner is the image's`);
  }
  t.equal(statSync(join(root, ACCOUNTS_RECORD)).mode & 0o777, 0o600, 'the record of accounts (it holds hashes) is 0600');
  t.equal(read(root, 'ssh/sshd_config'), `${v1.files['ssh/sshd_config']}PasswordAuthentication no\n`, 'a file the node edited keeps its content');
  t.match(log, /etc: \/etc\/ssh\/sshd_config: the node's version is kept; the image changed it \(the image's is at \/run\/cairn\/image-etc\/ssh\/sshd_config\)/);
  t.equal(read(root, 'default/useradd'), v2.files['default/useradd'], 'an unchanged copy follows the new image');
  t.match(log, /etc: unchanged copies that follow the new image: \/etc\/default\/useradd/);
  t.equal(read(root, 'default/chrony'), v2.files['default/chrony'], 'an untouched default file follows the new image');
  t.equal(read(root, 'hostname'), 'edge-1\n', "the config's files are left to the init");
  t.notMatch(log, new RegExp(`/etc/(${CONFIG_FILES.join('|')})\\b`), "and the log says nothing of them");
  // The rest of the boot: the login is as it was.
  await applyEarlyKeys(up.ctx);
  await usersPhase(up.ctx);
  t.same(installedLogin(root), { keys: 1, password: true }, 'cairn keeps its password and its key');
  t.equal(read(root, '../home/cairn/.ssh/authorized_keys'), `${KEY}\n`);
  node.shutdown();

  // v2 again: _newd stays out (the record does not take it for an account the node had), nothing is written.
  node.boot(img2);
  const inodes = ['passwd', 'group', 'shadow', 'gshadow'].map((f) => statSync(join(root, 'etc', f)).ino);
  const second = testContext(root, CONFIG, { exec: chpasswdWrites(root) });
  t.match(await keepNodeEtc(second.ctx), /left out: _newd, group _newd; files: as the image and the node left them$/);
  t.notOk(names(root, 'passwd').includes('_newd'), 'still left out on the next boot');
  t.match(second.lines.join('\n'), /warning: passwd: the image's new account _newd has uid 101/, 'and said again');
  t.same(['passwd', 'group', 'shadow', 'gshadow'].map((f) => statSync(join(root, 'etc', f)).ino), inodes, 'nothing written');
  node.shutdown();

  // Back to v1 (a fallback): v1's accounts and files again, the node's stay.
  const back = await bootNode(node, img1, { only: 'etc' });
  t.notOk(names(root, 'passwd').includes('_chrony2'), "v2's account goes with it");
  t.equal(entry(root, 'passwd', 'irc'), V1_PASSWD[2], "v1's comes back");
  t.equal(entry(root, 'group', 'adm'), 'adm:x:4:cairn');
  t.match(entry(root, 'shadow', 'cairn'), /^cairn:\$6\$test\$hash:/);
  t.equal(entry(root, 'passwd', 'metrics'), 'metrics:x:101:104::/home/metrics:/usr/sbin/nologin');
  t.equal(read(root, 'default/useradd'), v1.files['default/useradd'], 'the copy that followed v2 follows v1 again');
  t.match(read(root, 'ssh/sshd_config'), /PasswordAuthentication no/);
  t.notMatch(back.lines.join('\n'), /warning/, 'v1 has no _newd: no clash');
});

t.test("the node's own entries, without a record and with one", async (t) => {
  const image = { passwd: ['root:x:0:0::/root:/bin/sh', 'www:x:33:33::/var/www:/bin/false'] };
  const live = { passwd: ['root:x:0:0::/root:/bin/bash', 'www:x:33:33::/var/www:/bin/false', 'cairn:x:1000:1000::/home/cairn:/bin/bash', 'cairn:x:1001:1001::/dup:/bin/sh'] };
  t.same(nodeEntries(live, image), { passwd: ['cairn:x:1000:1000::/home/cairn:/bin/bash'] }, 'no record: a line the image has a name for is the image\'s; the first of a name counts');
  t.same(nodeEntries(live, image, { passwd: ['root:x:0:0::/root:/bin/sh'] }), { passwd: ['root:x:0:0::/root:/bin/bash', 'cairn:x:1000:1000::/home/cairn:/bin/bash'] }, "with a record: root's changed shell is the node's");
  t.same(nodeEntries(live, image, { passwd: ['root:x:0:0::/root:/bin/bash'] }), { passwd: ['cairn:x:1000:1000::/home/cairn:/bin/bash'] }, "root's line as the last image had it is the image's");
});

t.test('ids shared by an image account and a node account', async (t) => {
  const image = { passwd: ['root:x:0:0::/root:/bin/sh', 'svc:x:500:500::/:/bin/false'] };
  const node = { passwd: ['toor:x:0:0::/root:/bin/sh', 'app:x:500:500::/home/app:/bin/sh'] };
  const noRecord = mergeAccounts(image, node);
  t.same(noRecord.files.passwd, [...image.passwd, ...node.passwd], 'no record: both kept');
  t.match(noRecord.warnings, [/root and the node's account toor share uid 0 .*both are kept/, /svc and the node's account app share uid 500/]);
  const had = mergeAccounts(image, node, image);
  t.same(had.files.passwd, [...image.passwd, ...node.passwd], 'both were there before (useradd -o): kept');
  t.same(had.warnings, [], 'and not warned about');
  const fresh = mergeAccounts(image, node, { passwd: ['root:x:0:0::/root:/bin/sh'] });
  t.same(fresh.files.passwd, ['root:x:0:0::/root:/bin/sh', ...node.passwd], 'svc is new and has app\'s uid: left out');
  t.same(fresh.taken.passwd, ['root:x:0:0::/root:/bin/sh'], 'and not recorded as taken');
  const same = mergeAccounts({ passwd: ['app:x:900:900::/:/bin/false'] }, { passwd: ['app:x:500:500::/home/app:/bin/sh'] }, { passwd: [] });
  t.same(same.files.passwd, ['app:x:500:500::/home/app:/bin/sh'], "an image's new account of the node's own name: the node's entry");
  t.match(same.warnings, [/the image's new account app \(uid 900\) is already one of the node's own here \(uid 500\): the node's entry is kept/]);
  const members = mergeAccounts({ group: ['adm:x:4:syslog,new'] }, { group: ['adm:x:4:cairn'] }, { group: ['adm:x:4:syslog,old'] });
  t.same(members.files.group, ['adm:x:4:new,cairn'], 'the node removed syslog and added cairn; the image dropped old and added new');
});

t.test('which files follow the image (pure)', async (t) => {
  const before = { a: 'file 644 0:0 A', b: 'file 644 0:0 B', c: 'file 644 0:0 C', d: 'file 644 0:0 D', e: 'file 644 0:0 E', gone: 'file 644 0:0 G', passwd: 'x', hostname: 'h1' };
  const image = { a: 'file 644 0:0 A', b: 'file 644 0:0 B2', c: 'file 644 0:0 C2', d: 'file 644 0:0 D2', e: 'file 644 0:0 E2', gone2: 'link x', passwd: 'y', hostname: 'h2' };
  const visible: Record<string, string> = { a: 'file 600 0:0 A', b: 'file 644 0:0 B', c: 'file 644 0:0 mine', d: 'file 644 0:0 D2', gone: 'file 644 0:0 G', hostname: 'mine', passwd: 'z' };
  const plan = planFiles(before, image, (p) => visible[p]);
  t.same(plan.follow, ['b', 'gone', 'gone2'], 'unchanged copies follow: a changed file, a removed one (and a new one nobody has)');
  t.same(plan.kept, ['c', 'e'], 'changed by the node (content; removed by the node) and changed by the image: kept');
  t.same(planFiles(undefined, image, (p) => visible[p]), { follow: [], kept: [] }, 'no record: nothing is changed');
});

t.test('the account files are never readable by others, whatever mode the image gives them', async (t) => {
  const dir = t.testdir();
  writeAccountFile(join(dir, 'shadow'), 'shadow', ['root:*:1:0:99999:7:::'], { mode: 0o644, uid: 0, gid: 0 });
  t.equal(statSync(join(dir, 'shadow')).mode & 0o777, 0o640);
  writeAccountFile(join(dir, 'passwd'), 'passwd', ['root:x:0:0::/root:/bin/sh'], { mode: 0o644, uid: 0, gid: 0 });
  t.equal(statSync(join(dir, 'passwd')).mode & 0o777, 0o644);
});

t.test('a removed account file is made again from the image, and the init adds the cairn entry back', async (t) => {
  const base = t.testdir();
  const node = new OverlayNode(join(base, 'node'));
  const img = writeImage(join(base, 'v1'), v1);
  await bootNode(node, img);
  rmSync(join(node.root, 'etc/gshadow'));
  node.shutdown();
  const r = await bootNode(node, img);
  t.same(entries(node.root, 'gshadow'), [...v1.gshadow, 'cairn:!::']);
  t.equal(statSync(join(node.root, 'etc/gshadow')).mode & 0o777, 0o640);
  t.notMatch(r.lines.join('\n'), /warning/);
});

t.test("without the image's /etc the phase fails, says why, and changes nothing", async (t) => {
  const root = t.testdir({ etc: { passwd: 'root:x:0:0::/root:/bin/sh\n' } });
  const { ctx } = testContext(root, {});
  await t.rejects(keepNodeEtc(ctx), /the image's \/etc is not at \/run\/cairn\/image-etc \(the first stage binds it there\)/);
  t.equal(readFileSync(join(root, 'etc/passwd'), 'utf8'), 'root:x:0:0::/root:/bin/sh\n');
  t.notOk(existsSync(join(root, ACCOUNTS_RECORD)) || existsSync(join(root, IMAGE_ETC_RECORD)));
});

t.test('the etc phase comes before anything reads an account or starts a service', async (t) => {
  const names = boot.map((p) => p.name);
  t.equal(names.indexOf('etc'), names.indexOf('mounts') + 1, 'right after /var is there (the records)');
  for (const later of ['config', 'initrd-keys', 'console', 'users', 'services']) t.ok(names.indexOf('etc') < names.indexOf(later), `before ${later}`);
});

t.test("the first stage binds the image's /etc read-only before the overlay hides it", async (t) => {
  const script = renderInitScript();
  const bind = script.indexOf(`mount --bind $NEWROOT/etc $NEWROOT${IMAGE_ETC}`);
  const overlay = script.indexOf('mount -t overlay cairn-etc');
  t.ok(bind > script.indexOf('cairn-run $NEWROOT/run'), 'on the new root\'s /run');
  t.ok(bind > 0 && bind < overlay, 'before the overlay is mounted on /etc');
  t.ok(script.indexOf(`mount -o remount,bind,ro $NEWROOT${IMAGE_ETC}`) > bind, 'read-only');
});

t.test("the image's /etc manifest made at build time stands in for hashing the image's /etc at boot", async (t) => {
  const root = t.testdir({ etc: { motd: 'hello\n' }, run: { cairn: { 'image-etc': { motd: 'hello\n', issue: 'cairn\n' } } }, usr: { lib: { cairn: {} } } });
  const imageEtc = join(root, IMAGE_ETC);
  const real = manifestOf(imageEtc);
  t.same(Object.keys(real).sort(), ['issue', 'motd']);
  // without one: the image's /etc is hashed, and that is the record
  keepNodeFiles(root, imageEtc);
  t.same((JSON.parse(readFileSync(join(root, IMAGE_ETC_RECORD), 'utf8')) as { files: unknown }).files, real);
  // with one: it is taken as it is (a stand-in value shows that no file was hashed)
  const shipped = { ...real, issue: 'file 644 0:0 0000000000000000000000000000000000000000000000000000000000000000' };
  writeFileSync(join(root, IMAGE_ETC_MANIFEST), JSON.stringify(shipped));
  const r = keepNodeFiles(root, imageEtc);
  t.equal(r.files, 2);
  t.same((JSON.parse(readFileSync(join(root, IMAGE_ETC_RECORD), 'utf8')) as { files: unknown }).files, shipped);
  // a manifest that is not a map is not used
  writeFileSync(join(root, IMAGE_ETC_MANIFEST), '[1, 2]');
  keepNodeFiles(root, imageEtc);
  t.same((JSON.parse(readFileSync(join(root, IMAGE_ETC_RECORD), 'utf8')) as { files: unknown }).files, real);
});
