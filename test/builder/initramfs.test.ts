// The initramfs: the cpio writer and module selection as pure functions,
// then real archives from a real trixie root, then real boots under QEMU
// (TCG) of a real kernel with the first stage finding the system on a
// state partition, over the network, and not at all.
import { parseState, renderState } from '../../src/boot/state.js';
import t, { type Test } from 'tap';
import { createServer } from 'node:http';
import { createReadStream, existsSync, statSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { execa } from 'execa';
import { writeCpio } from '../../src/builder/initramfs/cpio.js';
import { MDEV_CONF, buildInitramfs, elfIsDynamic, initramfsModules } from '../../src/builder/initramfs/index.js';
import { FIRST_STAGE_FUNCTIONS, renderInitScript } from '../../src/builder/initramfs/init-script.js';
import { alwaysLoaded, depmodOrder, dropMissing, makeIndex, modinfoDepends, moduleName, renderModulesAlias, renderModulesDep, selectModules } from '../../src/builder/initramfs/modules.js';
import { SOURCE_DATE_EPOCH, fixtureRoot, fixtureSquashfs, kernelOf, qemuBoot, unreachableReason } from '../fixtures/outputs/fixture.js';

const haveQemu = existsSync('/usr/bin/qemu-system-x86_64');

t.test('cpio: newc records that cpio(1) reads back, parents first, deterministic', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cairn-cpio-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const entries = [
    { path: 'bin/sh', type: 'symlink' as const, target: 'busybox' },
    { path: '/init', type: 'file' as const, mode: 0o755, data: Buffer.from('#!/bin/sh\necho hi\n') },
    { path: 'bin', type: 'dir' as const, mode: 0o755 },
    { path: 'dev', type: 'dir' as const, mode: 0o755 },
    { path: 'dev/console', type: 'char' as const, mode: 0o600, major: 5, minor: 1 },
    { path: 'bin/busybox', type: 'file' as const, mode: 0o755, data: Buffer.alloc(5, 1) },
  ];
  const a = writeCpio(entries, { mtime: SOURCE_DATE_EPOCH });
  const b = writeCpio([...entries].reverse(), { mtime: SOURCE_DATE_EPOCH });
  t.ok(a.equals(b), 'input order does not matter');
  t.equal(a.length % 4, 0);
  t.equal(a.subarray(0, 6).toString(), '070701');
  await writeFile(path.join(dir, 'a.cpio'), a);
  const list = await execa('cpio', ['-itv', '-F', path.join(dir, 'a.cpio')], { reject: false, stdin: 'ignore', env: { TZ: 'UTC', LC_ALL: 'C' } });
  t.equal(list.exitCode, 0, list.stderr);
  const names = (await execa('cpio', ['-t', '-F', path.join(dir, 'a.cpio')], { stdin: 'ignore' })).stdout.split('\n');
  t.same(names, ['bin', 'bin/busybox', 'bin/sh', 'dev', 'dev/console', 'init']);
  t.match(list.stdout, /bin\/sh -> busybox/);
  t.match(list.stdout, /crw------- .* 5,\s+1 /);
  const extract = await execa('cpio', ['-i', '--to-stdout', '-F', path.join(dir, 'a.cpio'), 'init'], { reject: false, stdin: 'ignore' });
  t.equal(extract.stdout, '#!/bin/sh\necho hi');
  t.throws(() => writeCpio([{ path: 'a/b', type: 'dir', mode: 0o755 }], { mtime: 0 }), /without its folder/);
  t.throws(() => writeCpio([{ path: 'a', type: 'dir', mode: 0o755 }, { path: 'a/', type: 'dir', mode: 0o755 }], { mtime: 0 }), /duplicate/);
  t.throws(() => writeCpio([{ path: '../x', type: 'dir', mode: 0o755 }], { mtime: 0 }), /leaves the archive/);
});

const DEP = `kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz
kernel/lib/crc16.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/fs/jbd2/jbd2.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
kernel/fs/squashfs/squashfs.ko.xz:
kernel/drivers/usb/storage/usb-storage.ko.xz: kernel/drivers/scsi/scsi_mod.ko.xz
kernel/drivers/scsi/scsi_mod.ko.xz:
`;

t.test('modules: dependencies, soft dependencies, aliases, built-ins, absent ones', async (t) => {
  const index = makeIndex({
    dep: DEP,
    alias: 'alias crypto-crc32c crc32c_generic\nalias pci:v00008086d* e1000\n',
    softdep: 'softdep ext4 pre: crypto-crc32c\n',
    builtin: 'kernel/fs/overlayfs/overlay.ko\n',
  });
  const sel = selectModules(['ext4', 'overlay', 'usb-storage', 'e1000', 'squashfs'], index);
  t.same(sel.load, ['crc32c_generic', 'ext4', 'usb_storage', 'squashfs'], 'soft dependency first; - and _ are the same');
  t.same(sel.builtin, ['overlay']);
  t.same(sel.absent, ['e1000']);
  t.ok(sel.files.includes('kernel/fs/jbd2/jbd2.ko.xz'));
  t.ok(sel.files.includes('kernel/drivers/scsi/scsi_mod.ko.xz'));
  const dep = renderModulesDep(sel, index);
  t.match(dep, /^kernel\/fs\/ext4\/ext4\.ko: kernel\/lib\/crc16\.ko kernel\/fs\/mbcache\.ko kernel\/fs\/jbd2\/jbd2\.ko$/m);
  t.notMatch(dep, /\.xz/);
  t.equal(moduleName('kernel/fs/nls/nls_iso8859-1.ko.zst'), 'nls_iso8859_1');
});

t.test("modules: the shipped modules' modalias patterns, and what loads whatever the machine", async (t) => {
  const index = makeIndex({
    dep: DEP,
    alias: 'alias crypto-crc32c crc32c_generic\nalias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* usb_storage\nalias pci:v00008086d* e1000\nalias fs-ext4 ext4\n',
  });
  const sel = selectModules(['ext4', 'usb-storage', 'squashfs'], index);
  const alias = renderModulesAlias(sel, index);
  t.equal(alias, 'alias fs-ext4 ext4\nalias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* usb_storage\n', "exact aliases, then the patterns, of shipped modules only (crc32c_generic's and e1000's are left out)");
  t.same(alwaysLoaded(sel, index), ['ext4', 'squashfs'], 'file systems load always, drivers by their devices');
  t.same(alwaysLoaded(sel, index, ['usb-storage']), ['ext4', 'usb_storage', 'squashfs'], "a board's own list loads always, in the selection's order");
  const noPatterns = makeIndex({ dep: DEP, alias: 'alias fs-ext4 ext4\n' });
  t.same(alwaysLoaded(selectModules(['ext4', 'usb-storage'], noPatterns), noPatterns), [], 'no pattern to match devices with: nothing apart, the whole list loads');
});

t.test('modules: a stale modules.dep (files pruned) leaves out what is gone and what needs it', async (t) => {
  const index = dropMissing(makeIndex({ dep: DEP }), (f) => f !== 'kernel/fs/jbd2/jbd2.ko.xz');
  const sel = selectModules(['ext4', 'squashfs'], index);
  t.same(sel.load, ['squashfs']);
  t.same(sel.absent, ['ext4']);
  t.notOk(sel.files.some((f) => f.includes('jbd2')));
});

t.test('modules: depends= from .modinfo, ordered as depmod orders it', async (t) => {
  const ko = Buffer.concat([Buffer.from('\x7fELF junk\0license=GPL\0depends=jbd2,mbcache,crc16\0name=ext4\0')]);
  t.same(modinfoDepends(ko), ['jbd2', 'mbcache', 'crc16']);
  t.same(modinfoDepends(Buffer.from('\0depends=\0')), []);
  const graph: Record<string, string[]> = { a: ['b', 'c'], b: ['c'], c: [] };
  // loading from the end must work: c before b before a
  t.same(depmodOrder('a', (n) => graph[n] ?? []), ['b', 'c']);
});

t.test('init script: plain POSIX sh that busybox and dash both parse', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cairn-init-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const script = renderInitScript();
  t.match(script, /^#!\/bin\/busybox sh\n/);
  await writeFile(path.join(dir, 'init'), script);
  for (const sh of [['sh', '-n'], ['busybox', 'sh', '-n']]) {
    const r = await execa(sh[0]!, [...sh.slice(1), path.join(dir, 'init')], { reject: false });
    t.equal(r.exitCode, 0, `${sh.join(' ')}: ${r.stderr}`);
  }
  for (const word of ['CAIRN_STATE', 'CAIRN_LIVE', 'cairn.root_url=', 'cairn.rescue', 'cairn.debug', 'switch_root', '/usr/bin/tini -- /usr/bin/node /usr/lib/cairn/init.js']) {
    t.ok(script.includes(word), word);
  }
  t.ok(script.includes(FIRST_STAGE_FUNCTIONS), 'the tested functions are the script\'s own');
  // the order that matters: clock before the check, check before the mount, seeding through seed_dir
  const at = (s: string) => script.indexOf(s, script.indexOf(FIRST_STAGE_FUNCTIONS) + FIRST_STAGE_FUNCTIONS.length);
  t.ok(at(`clock_not_before "$(sed -n 's/^SOURCE_DATE_EPOCH=//p' /etc/cairn-initramfs/release`) > 0, 'the clock is set from the release file');
  t.ok(at('clock_not_before') < at('try_state() {'), 'the clock before the state is checked');
  t.ok(at('check_state "$dev"') > 0 && at('check_state "$dev"') < at('mount -t ext4 -o rw,noatime "$dev" /mnt/state'), 'checked before it is mounted');
  t.ok(at('if seed_dir $NEWROOT/$d $RW $d; then') > 0, 'seeding goes through seed_dir');
  t.match(script, /CAIRN_STATE_READONLY=\$STATE_RO/);
});

// ----- the first stage's functions, run on their own under busybox sh ----

/** Runs FIRST_STAGE_FUNCTIONS with log, dbg and rescue_shell recording, then `body`. */
async function firstStage(body: string, env: Record<string, string> = {}) {
  const harness = [
    'log() { echo "cairn-initramfs: $*"; }',
    'dbg() { :; }',
    'rescue_shell() { echo "RESCUE-SHELL $1"; }',
    'reboot() { echo "REBOOT $*"; }',
    FIRST_STAGE_FUNCTIONS,
    body,
  ].join('\n');
  const r = await execa('busybox', ['sh', '-c', harness], { reject: false, env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', ...env }, extendEnv: false });
  return { code: r.exitCode, out: r.stdout, err: r.stderr };
}

// date stubbed: the clock reads $FAKE_NOW; -s sets it (and is recorded)
const FAKE_DATE = `
date() {
  if [ "$1" = +%s ]; then echo "$FAKE_NOW"; return 0; fi
  if [ "$1 $2" = "-u -s" ]; then [ -n "$CANNOT_SET" ] && return 1; FAKE_NOW=$(echo "$3" | cut -c2-); SET_TO=$3; return 0; fi
  if [ "$1 $2" = "-u -d" ]; then busybox date -u -d "$3" "$4"; return; fi
  if [ "$1" = -u ]; then busybox date -u -d "@$FAKE_NOW" "$2"; return; fi
  return 1
}
`;

t.test('first stage: a clock earlier than the build time is set to it, a later one left alone', async (t) => {
  const early = await firstStage(`${FAKE_DATE}\nFAKE_NOW=5\nclock_not_before 1750000000\necho "SET $SET_TO"\necho "now $FAKE_NOW"`);
  t.equal(early.code, 0, early.err);
  t.match(early.out, /^SET @1750000000$/m, 'date -u -s @<build time>');
  t.match(early.out, /cairn-initramfs: clock set to 2025-06-15T15:06:40Z, the image's build time \(it read 1970-01-01T00:00:05Z\)/);
  t.match(early.out, /now 1750000000/);
  const later = await firstStage(`${FAKE_DATE}\nFAKE_NOW=1800000000\nclock_not_before 1750000000`);
  t.equal(later.out, '', 'a clock after the build time is not touched');
  const none = await firstStage(`${FAKE_DATE}\nFAKE_NOW=5\nclock_not_before ''\nclock_not_before junk`);
  t.equal(none.out, '', 'no build time known: nothing done');
  const stuck = await firstStage(`${FAKE_DATE}\nFAKE_NOW=5\nCANNOT_SET=1\nclock_not_before 1750000000; echo "rc $?"`);
  t.match(stuck.out, /warning: the clock reads 1970-01-01T00:00:05Z, before the image's build time, and cannot be set/);
  t.match(stuck.out, /rc 0/, 'the boot goes on');
});

t.test('first stage: e2fsck -p on CAIRN_STATE, exit codes 0, 1, 2 and 4 (stubbed), with and without cairn.rescue', async (t) => {
  const stub = (codes: string) => `CODES="${codes}"\ne2fsck() { set -- $CODES; rc=$1; shift; CODES="$*"; echo "e2fsck: /dev/vda3: some problem"; return $rc; }\nsync() { :; }\nsleep() { :; }\n`;
  const run = (codes: string, rescue = '') => firstStage(`${stub(codes)}RESCUE=${rescue}\ncheck_state /dev/vda3\necho "rc $? STATE_RO=$STATE_RO"`);
  const clean = await run('0');
  t.equal(clean.out, 'rc 0 STATE_RO=', 'clean: mounted read-write, nothing said');
  const fixed = await run('1');
  t.match(fixed.out, /cairn-initramfs: CAIRN_STATE \(\/dev\/vda3\): e2fsck repaired the file system\nrc 0 STATE_RO=$/);
  const reboot = await run('2');
  t.match(reboot.out, /asks for a reboot: rebooting\nREBOOT -f/);
  const broken = await run('4');
  t.match(broken.out, /CAIRN_STATE \(\/dev\/vda3\) has errors e2fsck -p cannot repair \(exit 4\):\ncairn-initramfs: {3}e2fsck: \/dev\/vda3: some problem/);
  t.match(broken.out, /booting with CAIRN_STATE read-only/);
  t.match(broken.out, /to repair it, boot with cairn.rescue and run: e2fsck -f \/dev\/vda3/);
  t.match(broken.out, /rc 0 STATE_RO=1$/);
  t.notMatch(broken.out, /RESCUE-SHELL/);
  const rescued = await run('4 0', '1');
  t.match(rescued.out, /RESCUE-SHELL repair it with: e2fsck -f \/dev\/vda3/, 'with cairn.rescue: a shell first');
  t.match(rescued.out, /rc 0 STATE_RO=$/, 'repaired in the shell: checked again and mounted read-write');
  const missing = await firstStage('PATH=/nonexistent\ncheck_state /dev/vda3; echo "rc $? STATE_RO=$STATE_RO"');
  t.match(missing.out, /warning: no e2fsck in the initramfs: CAIRN_STATE \(\/dev\/vda3\) is mounted unchecked\nrc 0 STATE_RO=$/);
});

t.test('first stage: the real e2fsck -p on a clean and on a damaged ext4 image', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cairn-fsck-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await mkdir(path.join(dir, 'tree/cairn/data'), { recursive: true });
  await writeFile(path.join(dir, 'tree/cairn/data/a'), 'a'.repeat(10000));
  await writeFile(path.join(dir, 'tree/cairn/data/b'), 'b'.repeat(10000));
  const img = path.join(dir, 'state.img');
  // block maps rather than extents, so that one block can be given to two files
  await execa('mke2fs', ['-q', '-F', '-t', 'ext4', '-O', '^extent,^64bit,^flex_bg', '-L', 'CAIRN_STATE', '-d', path.join(dir, 'tree'), img, '16M']);
  const clean = await firstStage(`check_state ${img}; echo "STATE_RO=$STATE_RO"`);
  t.equal(clean.out.trim(), 'STATE_RO=', `clean ${clean.err}`);
  // b's first block claimed by a too, and the file system marked not clean: preen mode will not choose
  const block = (await execa('debugfs', ['-R', 'bmap /cairn/data/b 0', img])).stdout.trim();
  await execa('debugfs', ['-w', '-R', `sif /cairn/data/a block[0] ${block}`, img]);
  await execa('debugfs', ['-w', '-R', 'ssv state 0', img]);
  const broken = await firstStage(`check_state ${img}; echo "STATE_RO=$STATE_RO"`);
  t.match(broken.out, /has errors e2fsck -p cannot repair \(exit 4\)/);
  t.match(broken.out, /RUN fsck MANUALLY/, "e2fsck's own words are shown");
  t.match(broken.out, /STATE_RO=1$/);
});

async function seedTree(dir: string): Promise<string> {
  const src = path.join(dir, 'image/var');
  await mkdir(path.join(src, 'lib/dpkg'), { recursive: true });
  await mkdir(path.join(src, 'cache/private'), { recursive: true });
  await chmod(path.join(src, 'cache/private'), 0o700);
  await writeFile(path.join(src, 'lib/dpkg/status'), 'Package: tini\n');
  await writeFile(path.join(src, 'big'), Buffer.alloc(300_000, 7));
  await writeFile(path.join(src, 'secret'), 'k');
  await chmod(path.join(src, 'secret'), 0o600);
  await symlink('../run/lock', path.join(src, 'lock'));
  return src;
}

const treeList = async (src: string) => (await firstStage(`tree_list ${src}`)).out;

t.test('first stage: seeding /var into the state: copied, checked, renamed; an interrupted seed is made again', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cairn-seed-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const src = await seedTree(dir);
  const rw = path.join(dir, 'state/cairn/data');
  await mkdir(rw, { recursive: true });
  const want = await treeList(src);
  t.match(want, /^regular file 300000 644 \S+ \.\/big$/m);
  t.match(want, /^symbolic link 11 777 \S+ \.\/lock$/m);
  t.match(want, /^directory 700 \S+ \.\/cache\/private$/m);

  const first = await firstStage(`seed_dir ${src} ${rw} var; echo "rc $?"`);
  t.match(first.out, /rc 0$/, first.err);
  t.equal(await treeList(path.join(rw, 'var')), want, 'the seed holds what the image has');
  t.same((await readdir(rw)).sort(), ['var'], 'no temporary folder left');

  // seeded already: left as it is
  await writeFile(path.join(rw, 'var/written-on-the-node'), 'keep me');
  await writeFile(path.join(src, 'new-in-image'), 'x');
  const again = await firstStage(`seed_dir ${src} ${rw} var; echo "rc $?"`);
  t.match(again.out, /^rc 0$/);
  t.ok(existsSync(path.join(rw, 'var/written-on-the-node')), 'the node\'s own files stay');
  t.notOk(existsSync(path.join(rw, 'var/new-in-image')), 'a seeded folder is not seeded again');
  await rm(path.join(src, 'new-in-image'));

  // a power cut during the copy left a half seed: it is removed, the copy made again
  await mkdir(path.join(rw, '.seed-home/lib'), { recursive: true });
  await writeFile(path.join(rw, '.seed-home/lib/half'), 'half a file');
  await writeFile(path.join(rw, '.seed-home/big'), Buffer.alloc(1000, 7));
  const redone = await firstStage(`seed_dir ${src} ${rw} home; echo "rc $?"`);
  t.match(redone.out, /cairn-initramfs: \/home: a seed was interrupted \(power cut\?\); making it again\nrc 0$/);
  t.equal(await treeList(path.join(rw, 'home')), want, 'the redone seed is whole');
  t.notOk(existsSync(path.join(rw, 'home/lib/half')), 'nothing of the half seed is kept');
  t.notOk(existsSync(path.join(rw, '.seed-home')));
});

t.test('first stage: a seed copy that is not whole, or that fails, is never put in place', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cairn-seed-bad-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const src = await seedTree(dir);
  const rw = path.join(dir, 'data');
  await mkdir(rw);
  // cp says it succeeded but one file did not make it (a full disk, a short write)
  const lossy = await firstStage(`cp() { command cp "$@" && rm -f "$3/big"; }\nseed_dir ${src} ${rw} opt; echo "rc $?"`);
  t.match(lossy.out, new RegExp(`warning: the copy of the image's /opt in ${rw} is not whole\\nrc 1$`));
  t.same(await readdir(rw), [], 'neither opt nor its temporary folder');
  // a truncated file: same names, other size
  const short = await firstStage(`cp() { command cp "$@" && : >"$3/big"; }\nseed_dir ${src} ${rw} opt; echo "rc $?"`);
  t.match(short.out, /is not whole\nrc 1$/);
  const failed = await firstStage(`cp() { command cp "$@"; return 1; }\nseed_dir ${src} ${rw} opt; echo "rc $?"`);
  t.match(failed.out, new RegExp(`warning: copying the image's /opt to ${rw} failed\\nrc 1$`));
  t.same(await readdir(rw), []);
});

t.test("first stage: without devtmpfs, mdev makes /dev/null and the like usable by everyone (mdev's own default is 0660 root:root)", { skip: process.getuid?.() === 0 ? false : 'needs root: mdev -s makes device nodes in a mount namespace of its own' }, async (t) => {
  const dir = t.testdir({ 'mdev.conf': MDEV_CONF });
  // a mount namespace with /dev and /etc of its own: mdev -s reads /etc/mdev.conf and /sys, and writes /dev
  const r = await execa('unshare', ['-m', 'sh', '-ec', `mount --make-rprivate /; mount -t tmpfs t /dev; mount -t tmpfs t /etc; cp ${dir}/mdev.conf /etc/; busybox mdev -s; stat -c '%n %a %u:%g' /dev/null /dev/zero /dev/urandom /dev/tty /dev/loop0`]);
  t.same(r.stdout.split('\n'), ['/dev/null 666 0:0', '/dev/zero 666 0:0', '/dev/urandom 666 0:0', '/dev/tty 666 0:5', '/dev/loop0 660 0:0']);
  t.match(renderInitScript(), /\[ -n "\$DEVTMPFS" \] \|\| mdev -s/, 'the first stage runs mdev only without devtmpfs');
});

t.test("first stage: the startup snapshot is used when the node made one on this CPU and the last start from it ran; tried once", async (t) => {
  const root = t.testdir({ run: { cairn: {} }, var: { lib: { cairn: { snapshot: {} } } } });
  const snap = path.join(root, 'var/lib/cairn/snapshot');
  const pick = async () => (await firstStage(`pick_snapshot ${root} 0.1.0; echo "rc $?"`)).out;
  t.equal(await pick(), 'rc 0', 'no blob: none picked');
  const cpu = await readFile(path.join(root, 'run/cairn/cpu-id'), 'utf8');
  t.match(cpu, process.arch === 'x64' ? /^flags\s*: .*\bsse2\b/m : /^(Features|flags)\s*:/m, "the CPU's feature lines, for the init");
  await writeFile(path.join(snap, '0.1.0.blob'), 'blob');
  await writeFile(path.join(snap, '0.1.0.cpu'), cpu);
  t.equal(await pick(), 'rc 0', 'no ok marker (the last start from it did not run): none picked');
  await writeFile(path.join(snap, '0.1.0.ok'), 'ok');
  t.equal(await pick(), '/var/lib/cairn/snapshot/0.1.0.blob\nrc 0', "the blob, as the path in the new root");
  t.notOk(existsSync(path.join(snap, '0.1.0.ok')), 'its ok marker is gone until the init writes it back');
  t.equal(await pick(), 'rc 0', 'not tried twice without the init saying it ran');
  await writeFile(path.join(snap, '0.1.0.ok'), 'ok');
  t.equal((await firstStage(`pick_snapshot ${root} 0.2.0; echo "rc $?"`)).out, 'rc 0', "another version's blob is not this one's");
  await writeFile(path.join(snap, '0.1.0.cpu'), `${cpu}extra line of another CPU\n`);
  t.equal(await pick(), 'rc 0', 'made on another CPU: none picked');
  t.ok(existsSync(path.join(snap, '0.1.0.ok')), 'and its marker is left as it was');
});

// modprobe stubbed: each call's arguments, one line; a fake /sys with the devices' modalias files
const FAKE_MODPROBE = 'modprobe() { echo "modprobe $*" >>"$CALLS"; return 0; }\n';

async function moduleStage(t: Test, opts: { always: boolean }) {
  const dir = t.testdir({
    etc: { modules: 'virtio_blk\nahci\nnvme\next4\nsquashfs\n', ...(opts.always ? { 'modules-always': 'ext4\nsquashfs\n' } : {}) },
    sys: { bus: { pci: { devices: { '0000:00:02.0': { modalias: 'pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n' }, '0000:00:1f.2': { modalias: 'pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01\n' } } } } },
  });
  const calls = path.join(dir, 'calls');
  const env = `${FAKE_MODPROBE}CALLS=${calls}\nMODDIR=${dir}/etc\nSYSFS=${dir}/sys\nDEVTMPFS=1\nWAIT=5\nMODE=state\n`;
  const run = async (body: string) => {
    await rm(calls, { force: true });
    const r = await firstStage(`${env}${body}`);
    return { ...r, calls: existsSync(calls) ? (await readFile(calls, 'utf8')).trim().split('\n') : [] };
  };
  return { dir, run };
}

t.test('first stage: the drivers the devices ask for and the file systems, then every driver only when the system is not found', async (t) => {
  const { dir, run } = await moduleStage(t, { always: true });
  const first = await run('load_modules; echo "rc $? ALL=$ALL_LOADED"');
  t.equal(first.out, 'rc 0 ALL=');
  t.same(first.calls.sort(), [
    'modprobe -a -q pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00 pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01',
    'modprobe -a ext4 squashfs',
  ], "each device's modalias once, beside modules-always; the rest of the list is not loaded");
  // a device that shows up after the first drivers (a disk behind the controller) gets its driver in the next round
  const later = await run(`load_modules; mkdir -p ${dir}/sys/bus/scsi/devices/0:0:0:0; echo scsi:t-0x00 >${dir}/sys/bus/scsi/devices/0:0:0:0/modalias; coldplug; echo "new $?"; coldplug; echo "again $?"`);
  t.match(later.out, /new 0\nagain 1$/, 'a new device: its driver loads; nothing new: nothing done');
  t.equal(later.calls.filter((c) => c.includes('scsi:t-0x00')).length, 1, 'the new modalias is asked for once');
  t.notOk(later.calls.some((c) => /-q .*scsi:t-0x00.*pci:|-q pci:.*scsi:/.test(c)), 'without the devices already seen');
  await rm(path.join(dir, 'sys/bus/scsi'), { recursive: true });
  // the system found on the third look: the first miss loads every driver, once; the second waits
  const found = await run('N=0\nfind_system() { N=$((N+1)); [ $N -ge 3 ]; }\nsleep() { echo "slept $1"; }\nload_modules; look_for_system; echo "rc $? looks $N ALL=$ALL_LOADED"');
  t.match(found.out, /slept 1\nrc 0 looks 3 ALL=1$/);
  t.match(found.out, /waiting up to 5 s for the system \(mode: state\)/);
  t.equal(found.calls.filter((c) => c === 'modprobe -a virtio_blk ahci nvme ext4 squashfs').length, 1, 'every driver of the list, once, after the first miss');
  t.ok(found.calls.indexOf('modprobe -a virtio_blk ahci nvme ext4 squashfs') > found.calls.findIndex((c) => c.startsWith('modprobe -a -q pci:')), 'after the drivers the devices asked for');
  const never = await run('find_system() { return 1; }\nsleep() { :; }\nWAIT=0\nload_modules; look_for_system; echo "rc $? ALL=$ALL_LOADED"');
  t.match(never.out, /rc 1 ALL=1$/, 'not found in time: 1, with every driver tried');
});

t.test('first stage: without modules-always (no modalias patterns), the whole list at once; one each when that fails', async (t) => {
  const { run } = await moduleStage(t, { always: false });
  const r = await run('load_modules; echo "rc $? ALL=$ALL_LOADED"; coldplug; echo "coldplug $?"');
  t.equal(r.out, 'rc 0 ALL=1\ncoldplug 1', 'no device matching without the patterns');
  t.same(r.calls, ['modprobe -a virtio_blk ahci nvme ext4 squashfs']);
  const failing = await run('modprobe() { echo "modprobe $*" >>"$CALLS"; [ "$1" != -a ] && [ "$1" != nvme ]; }\ndbg() { echo "dbg $*"; }\nload_modules');
  t.same(failing.calls, ['modprobe -a virtio_blk ahci nvme ext4 squashfs', 'modprobe virtio_blk', 'modprobe ahci', 'modprobe nvme', 'modprobe ext4', 'modprobe squashfs']);
  t.equal(failing.out, 'dbg module nvme did not load', 'the one that did not load is named');
});

t.test('ELF: static and dynamic executables told apart', async (t) => {
  t.equal(elfIsDynamic(await readFile('/bin/ls')), true);
  if (existsSync('/bin/busybox')) t.equal(elfIsDynamic(await readFile('/bin/busybox')), false, 'the host busybox is busybox-static');
  t.throws(() => elfIsDynamic(Buffer.from('#!/bin/sh\n' + ' '.repeat(60))));
});

// ----- from here on: a real trixie root ---------------------------------

let rootfs = '';
let release = '';
let kernel = '';
/** Why there is no fixture root: Debian cannot be reached (any other failure fails the file). */
let noRoot = '';
t.before(async () => {
  try {
    rootfs = await fixtureRoot('amd64');
  } catch (err) {
    noRoot = unreachableReason(err);
    return;
  }
  ({ release, kernel } = await kernelOf(rootfs));
});

t.test('a real initramfs: byte-identical twice, cpio lists /init, modules and modules.dep', async (t) => {
  if (!rootfs) { t.plan(0, noRoot); return; }
  const dir = await mkdtemp(path.join(tmpdir(), 'cairn-initramfs-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const started = Date.now();
  const opts = { rootfs, kernelRelease: release, arch: 'amd64' as const, sourceDateEpoch: SOURCE_DATE_EPOCH };
  await buildInitramfs({ ...opts, out: path.join(dir, 'a') });
  const ms = Date.now() - started;
  await buildInitramfs({ ...opts, out: path.join(dir, 'b') });
  const [a, b] = [await readFile(path.join(dir, 'a')), await readFile(path.join(dir, 'b'))];
  t.ok(a.equals(b), 'two builds are byte-identical');
  t.comment(`initramfs ${(a.length / 1048576).toFixed(2)} MiB (zstd) in ${ms} ms`);
  t.ok(a.length < 8 * 1048576, 'smaller than 8 MiB');
  t.equal(a.readUInt32LE(0), 0xfd2fb528, 'zstd frame');
  const cpio = await execa('zstd', ['-dc'], { input: a, encoding: 'buffer' });
  await writeFile(path.join(dir, 'a.cpio'), cpio.stdout);
  const list = (await execa('cpio', ['-t', '-F', path.join(dir, 'a.cpio')], { stdin: 'ignore' })).stdout.split('\n');
  t.ok(list.includes('init'), 'cpio -t lists init');
  for (const f of ['bin/busybox', 'bin/sh', 'bin/date', 'sbin/modprobe', 'sbin/switch_root', 'sbin/e2fsck', 'etc/e2fsck.conf', 'dev/console', 'etc/cairn-initramfs/modules', 'etc/cairn-initramfs/release']) t.ok(list.includes(f), f);
  // e2fsck runs from the initramfs alone: its loader and libraries are in it
  const unpacked = path.join(dir, 'unpacked');
  await mkdir(unpacked);
  await execa('cpio', ['-id', '--quiet', '-F', path.join(dir, 'a.cpio')], { cwd: unpacked, stdin: 'ignore' });
  t.match(await readFile(path.join(unpacked, 'etc/cairn-initramfs/release'), 'utf8'), `SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}\n`, 'the build time the clock is held to');
  if (process.getuid?.() === 0) {
    const v = await execa('chroot', [unpacked, '/sbin/e2fsck', '-V'], { reject: false });
    t.equal(v.exitCode, 0, `chroot initramfs /sbin/e2fsck -V: ${v.stderr.split('\n')[0]}`);
    t.match(v.stderr, /e2fsck 1\.\d+/);
  }
  for (const m of ['squashfs.ko', 'overlay.ko', 'loop.ko', 'ext4.ko', 'isofs.ko', 'sr_mod.ko', 'virtio_blk.ko', 'virtio_net.ko', 'e1000.ko', 'nvme.ko', 'usb-storage.ko', 'vfat.ko', 'ahci.ko', 'jbd2.ko']) {
    t.ok(list.some((f) => f.endsWith(`/${m}`)), m);
  }
  const always = (await readFile(path.join(unpacked, 'etc/cairn-initramfs/modules-always'), 'utf8')).trim().split('\n');
  t.ok(['ext4', 'squashfs', 'isofs', 'loop'].every((m) => always.includes(m)), `the file systems load on every boot: ${always.join(' ')}`);
  t.same(always.filter((m) => ['ahci', 'nvme', 'virtio_blk', 'usb_storage', 'sr_mod', 'e1000'].includes(m)), [], 'the drivers do not: they load for their devices');
  const aliases = await readFile(path.join(unpacked, `lib/modules/${release}/modules.alias`), 'utf8');
  t.match(aliases, /^alias virtio:d00000002v\* virtio_blk$/m, "virtio_blk's pattern, which a virtio disk's modalias matches");
  t.match(aliases, /^alias pci:v\*d\*sv\*sd\*bc01sc08i02\* nvme$/m, "nvme's, by the PCI class of any NVMe controller");
  t.notMatch(aliases, / (iwlwifi|snd_hda_intel|i915)$/m, 'no pattern of a module the first stage does not ship');
  const sel = await initramfsModules(rootfs, release, 'amd64');
  t.ok(sel.builtin.includes('virtio_pci'), 'trixie amd64 builds virtio_pci in');
  const dep = (await execa('cpio', ['-i', '--to-stdout', '-F', path.join(dir, 'a.cpio'), `lib/modules/${release}/modules.dep`], { stdin: 'ignore' })).stdout;
  // every module shipped has a line, and every dependency named is shipped
  const shipped = new Set(list.filter((f) => f.endsWith('.ko')).map((f) => f.slice(`lib/modules/${release}/`.length)));
  const lines = dep.split('\n').filter(Boolean);
  t.equal(lines.length, shipped.size, 'one modules.dep line per shipped module');
  const unshipped: string[] = [];
  for (const line of lines) {
    const [mod, deps] = line.split(':');
    for (const m of [mod!, ...(deps ?? '').trim().split(/\s+/).filter(Boolean)]) if (!shipped.has(m)) unshipped.push(m);
  }
  t.same(unshipped, [], 'every module modules.dep names is shipped');

  const gz = path.join(dir, 'g');
  await buildInitramfs({ ...opts, out: gz, compression: 'gzip' });
  t.ok(gunzipSync(await readFile(gz)).equals(cpio.stdout), 'gzip holds the same archive');
});

t.test('bad input: no busybox, a dynamic busybox, no modules for the release, no e2fsck', async (t) => {
  if (!rootfs) { t.plan(0, noRoot); return; }
  const dir = await mkdtemp(path.join(tmpdir(), 'cairn-initramfs-bad-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const fake = path.join(dir, 'root');
  await mkdir(path.join(fake, 'usr/bin'), { recursive: true });
  const opts = { rootfs: fake, kernelRelease: release, arch: 'amd64' as const, out: path.join(dir, 'x'), sourceDateEpoch: 1 };
  await t.rejects(buildInitramfs(opts), { name: 'UserError', message: /has no busybox/, hint: /add busybox-static/ });
  await execa('cp', ['/bin/ls', path.join(fake, 'usr/bin/busybox')]);
  await t.rejects(buildInitramfs(opts), { name: 'UserError', message: /dynamically linked busybox/, hint: /busybox-static/ });
  await execa('cp', [path.join(rootfs, 'usr/bin/busybox'), path.join(fake, 'usr/bin/busybox')]);
  await t.rejects(buildInitramfs(opts), { name: 'UserError', message: /no modules for kernel/ });
  await mkdir(path.join(fake, 'usr/lib'), { recursive: true });
  await execa('cp', ['-al', path.join(rootfs, 'usr/lib/modules'), path.join(fake, 'usr/lib/')]);
  await t.rejects(buildInitramfs(opts), { name: 'UserError', message: /checks CAIRN_STATE with e2fsck, .*usr\/sbin\/e2fsck not found/, hint: /add e2fsprogs/ });
  await t.rejects(buildInitramfs({ ...opts, rootfs, sourceDateEpoch: -1 }), /SOURCE_DATE_EPOCH/);
  t.notOk(existsSync(opts.out), 'nothing written');
});

// ----- boots --------------------------------------------------------------

let initrd = '';
let work = '';
t.before(async () => {
  if (!rootfs) return;
  work = await mkdtemp(path.join(tmpdir(), 'cairn-boot-'));
  initrd = path.join(work, 'initrd');
  await buildInitramfs({ rootfs, kernelRelease: release, arch: 'amd64', out: initrd, sourceDateEpoch: SOURCE_DATE_EPOCH });
});
t.teardown(() => (work ? rm(work, { recursive: true, force: true }) : undefined));

async function debugfsCat(img: string, file: string): Promise<string> {
  return (await execa('debugfs', ['-R', `cat ${file}`, img], { reject: false })).stdout;
}

t.test('boot (TCG): state partition, an upgrade on trial, /etc and /var written to the state', async (t) => {
  if (!rootfs || !haveQemu) { t.plan(0, noRoot || 'needs qemu-system-x86_64'); return; }
  const tree = path.join(work, 'state');
  for (const v of ['0.0.1', '0.0.2']) {
    await mkdir(path.join(tree, 'cairn/system', v), { recursive: true });
    await fixtureSquashfs(rootfs, path.join(tree, 'cairn/system', v, 'rootfs.squashfs'), { version: v });
    // booted with -kernel: the first stage only looks for the version's kernel and initrd
    for (const f of ['kernel', 'initrd']) await writeFile(path.join(tree, 'cairn/system', v, f), '');
  }
  await mkdir(path.join(tree, 'cairn/grub'), { recursive: true });
  await writeFile(path.join(tree, 'cairn/grub/grubenv'), renderState({ active: '0.0.1', trial: '0.0.2', tries: 2 }));
  const img = path.join(work, 'state.img');
  await execa('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', 'CAIRN_STATE', '-d', tree, img, '96M']);
  // as after a power cut: not cleanly unmounted, so the first stage's e2fsck -p checks it whole
  await execa('debugfs', ['-w', '-R', 'ssv state 0', img]);
  const r = await qemuBoot(['-kernel', kernel, '-initrd', initrd, '-append', 'console=ttyS0 quiet', '-drive', `file=${img},if=virtio,format=raw`]);
  t.comment(`state boot: ${r.ms} ms`);
  if (!t.ok(r.ok, 'the system came up as PID 1 after switch_root')) console.error(r.output);
  t.match(r.output, /cairn-initramfs: CAIRN_STATE \(\/dev\/vda\): e2fsck repaired the file system/, "e2fsck ran from the initramfs and marked it clean");
  t.notMatch(r.output, /no e2fsck in the initramfs|cannot repair/);
  t.match(r.output, /cairn-initramfs: system 0\.0\.2 on \/dev\/vda \(trial boot, 1 tries left\)/);
  t.match(r.output, /CAIRN_STATE_READONLY= /, 'mounted read-write');
  t.match(r.output, /argv \/usr\/bin\/tini -- \/usr\/bin\/node \/usr\/lib\/cairn\/init\.js/);
  t.match(r.output, /CAIRN_BOOT_MODE=state CAIRN_BOOT_VERSION=0\.0\.2 CAIRN_BOOT_TRIES_LEFT=1/);
  t.match(r.output, /etc writable/);
  t.match(r.output, /var seeded/);
  t.match(r.output, /mount \/dev\/loop0 \/ squashfs ro/);
  t.match(r.output, /mount \S+ \/cairn ext4 rw/);
  t.match(r.output, /mount \S+ \/run\/cairn\/image-etc squashfs ro/, "the image's /etc bound read-only for the init");
  const loaded = (/cairn-fixture: modules (.*)/.exec(r.output)?.[1] ?? '').trim().split(/\s+/);
  t.ok(['virtio_blk', 'ext4', 'squashfs', 'loop'].every((m) => loaded.includes(m)), `the disk's driver and the file systems loaded: ${loaded.join(' ')}`);
  t.same(loaded.filter((m) => ['nvme', 'xhci_pci', 'usb_storage', 'ahci', 'sdhci_pci'].includes(m)), [], 'no driver of a device this machine does not have');
  t.match(r.output, /image etc apart/, "it is the image's, without the writes to /etc");
  t.same(parseState(await debugfsCat(img, '/cairn/grub/grubenv')), { active: '0.0.1', trial: '0.0.2', tries: 1 }, 'the try was counted on disk');
  t.equal(await debugfsCat(img, '/cairn/data/etc/cairn-fixture-write'), '', '/etc upper layer is on the state partition');
  t.match((await execa('debugfs', ['-R', 'ls /cairn/data/var', img])).stdout, /cairn-fixture-write/, '/var is on the state partition');
  const fsck = await execa('e2fsck', ['-fn', img], { reject: false });
  t.equal(fsck.exitCode, 0, 'state partition clean after the boot');
});

t.test('boot (TCG): a state partition e2fsck -p cannot repair is mounted read-only, the writable parts in RAM', async (t) => {
  if (!rootfs || !haveQemu) { t.plan(0, noRoot || 'needs qemu-system-x86_64'); return; }
  const tree = path.join(work, 'state-broken');
  await mkdir(path.join(tree, 'cairn/system/0.0.1'), { recursive: true });
  await mkdir(path.join(tree, 'cairn/data'), { recursive: true });
  await fixtureSquashfs(rootfs, path.join(tree, 'cairn/system/0.0.1/rootfs.squashfs'));
  for (const f of ['kernel', 'initrd']) await writeFile(path.join(tree, 'cairn/system/0.0.1', f), '');
  await mkdir(path.join(tree, 'cairn/grub'), { recursive: true });
  await writeFile(path.join(tree, 'cairn/grub/grubenv'), renderState({ active: '0.0.1' }));
  await writeFile(path.join(tree, 'cairn/data/a'), 'a'.repeat(10000));
  await writeFile(path.join(tree, 'cairn/data/b'), 'b'.repeat(10000));
  const img = path.join(work, 'state-broken.img');
  await execa('mke2fs', ['-q', '-F', '-t', 'ext4', '-O', '^extent,^64bit,^flex_bg', '-L', 'CAIRN_STATE', '-d', tree, img, '96M']);
  // two files claim one block: preen mode does not choose
  const block = (await execa('debugfs', ['-R', 'bmap /cairn/data/b 0', img])).stdout.trim();
  await execa('debugfs', ['-w', '-R', `sif /cairn/data/a block[0] ${block}`, img]);
  await execa('debugfs', ['-w', '-R', 'ssv state 0', img]);
  const r = await qemuBoot(['-kernel', kernel, '-initrd', initrd, '-append', 'console=ttyS0 quiet', '-drive', `file=${img},if=virtio,format=raw`]);
  t.comment(`read-only state boot: ${r.ms} ms`);
  if (!t.ok(r.ok, 'the system still came up')) console.error(r.output);
  t.match(r.output, /cairn-initramfs: CAIRN_STATE \(\/dev\/vda\) has errors e2fsck -p cannot repair \(exit 4\)/);
  t.match(r.output, /UNEXPECTED INCONSISTENCY/, "e2fsck's words on the console");
  t.match(r.output, /to repair it, boot with cairn.rescue and run: e2fsck -f \/dev\/vda/);
  t.match(r.output, /CAIRN_STATE_READONLY=1/);
  t.match(r.output, /mount cairn-rw \/var tmpfs/, '/var in RAM');
  t.match(r.output, /mount \S+ \/cairn ext4 ro/, 'the state read-only');
  t.equal((await execa('e2fsck', ['-fn', img], { reject: false })).exitCode, 4, 'nothing written to it: the damage is still there for a manual repair');
});

t.test('boot (TCG): the state on a USB stick, which shows up after the first look (later coldplug rounds, or every driver, find it)', async (t) => {
  if (!rootfs || !haveQemu) { t.plan(0, noRoot || 'needs qemu-system-x86_64'); return; }
  const tree = path.join(work, 'state-usb');
  await mkdir(path.join(tree, 'cairn/system/0.0.1'), { recursive: true });
  await fixtureSquashfs(rootfs, path.join(tree, 'cairn/system/0.0.1/rootfs.squashfs'));
  for (const f of ['kernel', 'initrd']) await writeFile(path.join(tree, 'cairn/system/0.0.1', f), '');
  await mkdir(path.join(tree, 'cairn/grub'), { recursive: true });
  await writeFile(path.join(tree, 'cairn/grub/grubenv'), renderState({ active: '0.0.1' }));
  const img = path.join(work, 'state-usb.img');
  await execa('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', 'CAIRN_STATE', '-d', tree, img, '64M']);
  const r = await qemuBoot(['-kernel', kernel, '-initrd', initrd, '-append', 'console=ttyS0 quiet', '-device', 'qemu-xhci', '-drive', `file=${img},if=none,id=stick,format=raw`, '-device', 'usb-storage,drive=stick']);
  t.comment(`USB state boot: ${r.ms} ms`);
  if (!t.ok(r.ok, 'the system came up from the stick')) console.error(r.output);
  t.match(r.output, /cairn-initramfs: system 0\.0\.1 on \/dev\/sda\b/);
  const loaded = (/cairn-fixture: modules (.*)/.exec(r.output)?.[1] ?? '').trim().split(/\s+/);
  t.ok(['xhci_pci', 'usb_storage', 'sd_mod'].every((m) => loaded.includes(m)), `the controller's, the stick's and the disk's drivers: ${loaded.join(' ')}`);
});

t.test('boot (TCG): net boot fetches the squashfs over HTTP (cairn.root_url=)', async (t) => {
  if (!rootfs || !haveQemu) { t.plan(0, noRoot || 'needs qemu-system-x86_64'); return; }
  const sq = await fixtureSquashfs(rootfs, path.join(work, 'net.squashfs'));
  let fetched = 0;
  const server = createServer((req, res) => {
    if (req.url !== '/cairn/rootfs.squashfs') {
      res.writeHead(404).end();
      return;
    }
    fetched++;
    res.writeHead(200, { 'content-length': statSync(sq).size });
    createReadStream(sq).pipe(res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const sha = (await execa('sha256sum', [sq])).stdout.split(' ')[0];
  const r = await qemuBoot([
    '-kernel', kernel, '-initrd', initrd,
    '-append', `console=ttyS0 quiet cairn.root_url=http://10.0.2.2:${port}/cairn/rootfs.squashfs cairn.root_sha256=${sha}`,
    '-netdev', 'user,id=n0', '-device', 'virtio-net-pci,netdev=n0',
  ]);
  t.comment(`net boot: ${r.ms} ms`);
  if (!t.ok(r.ok, 'came up from the fetched squashfs')) console.error(r.output);
  t.equal(fetched, 1);
  t.match(r.output, /cairn-initramfs: DHCP on eth0/);
  t.match(r.output, /CAIRN_BOOT_MODE=net/);
  t.match(r.output, /var seeded/);
});

t.test('boot (TCG): no system anywhere: says why, then a shell with cairn.rescue', async (t) => {
  if (!rootfs || !haveQemu) { t.plan(0, noRoot || 'needs qemu-system-x86_64'); return; }
  const r = await qemuBoot(['-kernel', kernel, '-initrd', initrd, '-append', 'console=ttyS0 quiet cairn.wait=2 cairn.rescue'], {
    marker: 'starting a shell on the console',
    stopOnMarker: true,
    timeoutMs: 90_000,
  });
  if (!t.ok(r.ok, 'rescue shell offered')) console.error(r.output);
  t.match(r.output, /cannot boot: the system was not found: no partition labelled CAIRN_STATE; no medium labelled CAIRN_LIVE/);
  const r2 = await qemuBoot(['-kernel', kernel, '-initrd', initrd, '-append', 'console=ttyS0 quiet cairn.wait=1'], {
    marker: 'rebooting in 10 s',
    timeoutMs: 90_000,
  });
  if (!t.ok(r2.ok, 'without cairn.rescue: reboots')) console.error(r2.output);
  t.match(r2.output, /add cairn.rescue to the kernel command line/);
  t.match(r2.output, /reboot: Restarting system/, 'the machine really restarts');
  t.ok(r2.ms < 85_000, 'QEMU stopped on the reboot (-no-reboot)');
});
