// The initramfs: the cpio writer and module selection as pure functions,
// then real archives from a real trixie root, then real boots under QEMU
// (TCG) of a real kernel with the first stage finding the system on a
// state partition, over the network, and not at all.
import t from 'tap';
import { createServer } from 'node:http';
import { createReadStream, existsSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { execa } from 'execa';
import { writeCpio } from '../../src/builder/initramfs/cpio.js';
import { buildInitramfs, elfIsDynamic, initramfsModules } from '../../src/builder/initramfs/index.js';
import { renderInitScript } from '../../src/builder/initramfs/init-script.js';
import { depmodOrder, dropMissing, makeIndex, modinfoDepends, moduleName, renderModulesDep, selectModules } from '../../src/builder/initramfs/modules.js';
import { SOURCE_DATE_EPOCH, fixtureRoot, fixtureSquashfs, kernelOf, qemuBoot } from '../fixtures/outputs/fixture.js';

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
t.before(async () => {
  try {
    rootfs = await fixtureRoot('amd64');
    ({ release, kernel } = await kernelOf(rootfs));
  } catch (err) {
    rootfs = '';
    console.error(`# no fixture root: ${(err as Error).message}`);
  }
});

t.test('a real initramfs: byte-identical twice, cpio lists /init, modules and modules.dep', async (t) => {
  if (!rootfs) { t.plan(0, 'no fixture root (build-fixture.sh needs deb.debian.org)'); return; }
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
  for (const f of ['bin/busybox', 'bin/sh', 'sbin/modprobe', 'sbin/switch_root', 'dev/console', 'etc/cairn-initramfs/modules']) t.ok(list.includes(f), f);
  for (const m of ['squashfs.ko', 'overlay.ko', 'loop.ko', 'ext4.ko', 'isofs.ko', 'sr_mod.ko', 'virtio_blk.ko', 'virtio_net.ko', 'e1000.ko', 'nvme.ko', 'usb-storage.ko', 'vfat.ko', 'ahci.ko', 'jbd2.ko']) {
    t.ok(list.some((f) => f.endsWith(`/${m}`)), m);
  }
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

t.test('bad input: no busybox, a dynamic busybox, no modules for the release', async (t) => {
  if (!rootfs) { t.plan(0, 'no fixture root'); return; }
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
  if (!rootfs || !haveQemu) { t.plan(0, 'needs the fixture root and qemu-system-x86_64'); return; }
  const tree = path.join(work, 'state');
  for (const v of ['0.0.1', '0.0.2']) {
    await mkdir(path.join(tree, 'cairn/system', v), { recursive: true });
    await fixtureSquashfs(rootfs, path.join(tree, 'cairn/system', v, 'rootfs.squashfs'), { version: v });
  }
  await writeFile(path.join(tree, 'cairn/system/active'), '0.0.1\n');
  await writeFile(path.join(tree, 'cairn/system/next'), '0.0.2 2\n');
  const img = path.join(work, 'state.img');
  await execa('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', 'CAIRN_STATE', '-d', tree, img, '96M']);
  const r = await qemuBoot(['-kernel', kernel, '-initrd', initrd, '-append', 'console=ttyS0 quiet', '-drive', `file=${img},if=virtio,format=raw`]);
  t.comment(`state boot: ${r.ms} ms`);
  if (!t.ok(r.ok, 'the system came up as PID 1 after switch_root')) console.error(r.output);
  t.match(r.output, /cairn-initramfs: system 0\.0\.2 on \/dev\/vda \(trial boot, 1 tries left\)/);
  t.match(r.output, /argv \/usr\/bin\/tini -- \/usr\/bin\/node \/usr\/lib\/cairn\/init\.js/);
  t.match(r.output, /CAIRN_BOOT_MODE=state CAIRN_BOOT_VERSION=0\.0\.2 CAIRN_BOOT_TRIES_LEFT=1/);
  t.match(r.output, /etc writable/);
  t.match(r.output, /var seeded/);
  t.match(r.output, /mount \/dev\/loop0 \/ squashfs ro/);
  t.match(r.output, /mount \S+ \/cairn ext4 rw/);
  t.equal((await debugfsCat(img, '/cairn/system/next')).trim(), '0.0.2 1', 'the try was counted on disk');
  t.equal(await debugfsCat(img, '/cairn/data/etc/cairn-fixture-write'), '', '/etc upper layer is on the state partition');
  t.match((await execa('debugfs', ['-R', 'ls /cairn/data/var', img])).stdout, /cairn-fixture-write/, '/var is on the state partition');
  const fsck = await execa('e2fsck', ['-fn', img], { reject: false });
  t.equal(fsck.exitCode, 0, 'state partition clean after the boot');
});

t.test('boot (TCG): net boot fetches the squashfs over HTTP (cairn.root_url=)', async (t) => {
  if (!rootfs || !haveQemu) { t.plan(0, 'needs the fixture root and qemu-system-x86_64'); return; }
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
  if (!rootfs || !haveQemu) { t.plan(0, 'needs the fixture root and qemu-system-x86_64'); return; }
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
