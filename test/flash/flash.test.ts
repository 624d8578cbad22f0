// cairn flash: onto files and onto a real block device (a loop device),
// with every refusal checked to write nothing, and the per-site config
// found in CAIRN_STATE afterwards by debugfs and e2fsck.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, readSync, statSync, writeSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { blockDeviceProblems, flash, imageLayout, parseDdProgress, type FlashProgress } from '../../src/flash/flash.js';

const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

/** A small cairn-shaped card: MBR, FAT32 CAIRN_BOOT, ext4 CAIRN_STATE with cairn/system/ (12 MB that does not compress away). */
async function makeImage(dir: string): Promise<string> {
  const img = path.join(dir, 'card.img');
  const tree = path.join(dir, 'tree');
  await mkdir(path.join(tree, 'cairn/system/0.1.0'), { recursive: true });
  await writeFile(path.join(tree, 'cairn/system/0.1.0/kernel'), randomBytes(12 * 1024 * 1024));
  await execa('truncate', ['-s', `${110592 * 512}`, img]);
  await execa('sh', ['-c', 'printf "label: dos\\nstart=2048, size=67584, type=c, bootable\\nstart=69632, size=40960, type=83\\n" | sfdisk -q "$1"', 'sh', img]);
  const boot = path.join(dir, 'boot.fat');
  await execa('mkfs.vfat', ['-F', '32', '-n', 'CAIRN_BOOT', '-C', boot, String(67584 / 2)]);
  const state = path.join(dir, 'state.ext4');
  await execa('mke2fs', ['-q', '-t', 'ext4', '-L', 'CAIRN_STATE', '-d', tree, state, '20M']);
  await execa('dd', [`if=${boot}`, `of=${img}`, 'bs=512', 'seek=2048', 'conv=notrunc', 'status=none']);
  await execa('dd', [`if=${state}`, `of=${img}`, 'bs=512', 'seek=69632', 'conv=notrunc', 'status=none']);
  if (statSync(img).size !== 110592 * 512) throw new Error('the test image grew past its partition table');
  return img;
}

const STATE_OFFSET = 69632 * 512;
const debugfs = (target: string, cmd: string) => execa('debugfs', ['-R', cmd, `${target}?offset=${STATE_OFFSET}`], { reject: false, stripFinalNewline: false });

let dir = '';
let image = '';
t.before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'cairn-flash-'));
  image = await makeImage(dir);
});
t.teardown(() => rm(dir, { recursive: true, force: true }));

t.test('dd progress lines are read', async (t) => {
  t.equal(parseDdProgress('123456789 bytes (123 MB, 118 MiB) copied, 2 s, 61.7 MB/s'), 123456789);
  t.equal(parseDdProgress('10+0 records in'), undefined);
});

t.test('the image is found to be a cairn disk', async (t) => {
  const l = await imageLayout(image);
  t.equal(l.state.start, 69632);
  const other = path.join(dir, 'other.img');
  await writeFile(other, Buffer.alloc(1 << 20));
  await t.rejects(imageLayout(other), { name: 'UserError', message: /has no partition table: it is not a cairn disk image/ });
});

t.test('onto a file, with a site config: the same bytes, then the config in CAIRN_STATE as root 0600', async (t) => {
  const target = path.join(dir, 'card-a.img');
  const config = path.join(dir, 'site.yaml');
  const text = 'hostname: site-17\nk3os:\n  token: s3cret-token\n  labels:\n    site: "17"\n';
  await writeFile(config, text);
  const events: FlashProgress[] = [];
  const r = await flash({ image, device: target, progress: (p) => events.push(p) });
  t.equal(r.bytes, statSync(image).size);
  t.equal(sha(target), sha(image), 'byte for byte');
  t.equal(r.sha256, sha(image));
  t.ok(events.some((e) => e.phase === 'write' && e.done === e.total), 'write progress reaches the end');
  t.ok(events.some((e) => e.phase === 'verify'), 'the read-back reports progress');

  const logs: string[] = [];
  await flash({ image, device: target, config, log: (l) => logs.push(l) });
  t.equal((await debugfs(target, 'cat /cairn/system/config.yaml')).stdout, text, 'the node reads it as its own config');
  const st = (await debugfs(target, 'stat /cairn/system/config.yaml')).stdout;
  t.match(st, /Mode:\s+0600/, 'readable by root only (it holds the token)');
  t.match(st, /User:\s+0\s+Group:\s+0/);
  t.equal((await execa('e2fsck', ['-fn', `${target}?offset=${STATE_OFFSET}`], { reject: false })).exitCode, 0, 'e2fsck: clean');
  t.notOk(logs.join('\n').includes('s3cret-token'), 'the token is not logged');
  t.equal((await debugfs(target, 'ls /cairn/system/0.1.0')).exitCode, 0, 'the system is still there');
});

t.test('refusals write nothing', async (t) => {
  const target = path.join(dir, 'card-b.img');
  await writeFile(target, 'previous contents');
  const bad = path.join(dir, 'bad.yaml');
  await writeFile(bad, 'hostname: site-1\nk3os:\n  labels: notamap\n  colour: blue\n');
  await t.rejects(flash({ image, device: target, config: bad }), { name: 'UserError', message: /bad\.yaml has errors; nothing was written:\n {2}.*bad\.yaml:3:11: error: k3os\.labels: expected a map/ });
  await t.rejects(flash({ image, device: target, config: path.join(dir, 'missing.yaml') }), { name: 'UserError', message: /cannot read the config .*missing\.yaml: ENOENT/ });
  await t.rejects(flash({ image: path.join(dir, 'nope.img'), device: target }), { name: 'UserError', message: /nope\.img: no such image file/ });
  await t.rejects(flash({ image, device: path.join(dir, 'no/such/dir/card') }), { name: 'UserError', message: /its folder does not exist/ });
  await t.rejects(flash({ image, device: image }), { name: 'UserError', message: 'the image and the device are the same file' });
  t.ok(readFileSync(target).equals(Buffer.from('previous contents')), 'the target is untouched');
});

t.test('a read-back that differs is an error', async (t) => {
  const target = path.join(dir, 'card-c.img');
  // the "card" loses a byte 40 MB in while the first bytes are read back
  let lost = false;
  const corrupt = (p: FlashProgress) => {
    if (p.phase === 'verify' && !lost) {
      lost = true;
      const fd = openSync(target, 'r+');
      const at = 40 * 1024 * 1024;
      const b = Buffer.alloc(1);
      readSync(fd, b, 0, 1, at);
      b[0] = b[0]! ^ 0xff;
      writeSync(fd, b, 0, 1, at);
      closeSync(fd);
    }
  };
  await t.rejects(flash({ image, device: target, progress: corrupt }), { name: 'UserError', message: /does not read back as written .*the card or its reader is failing/ });
});

t.test('a full disk is an error that says so', async (t) => {
  if (process.getuid?.() !== 0) return t.plan(0, 'mounting a small tmpfs needs root');
  const mnt = path.join(dir, 'small');
  await mkdir(mnt);
  await execa('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mnt]);
  t.teardown(() => execa('umount', [mnt]).catch(() => undefined));
  await t.rejects(flash({ image, device: path.join(mnt, 'card.img') }), { name: 'UserError', message: /card\.img is full: .*No space left on device/ });
});

/** A fake /sys and /proc for one disk, `sdz` or `mmcblk9`. */
async function fakeSys(opts: { name: string; sectors: number; removable: boolean; partitions?: string[]; mounts?: string; holders?: string[]; swaps?: string }): Promise<string> {
  const root = await mkdtemp(path.join(dir, 'sys-'));
  const devDir = path.join(root, 'sys/devices/platform', opts.name);
  await mkdir(devDir, { recursive: true });
  await writeFile(path.join(devDir, 'size'), `${opts.sectors}\n`);
  await writeFile(path.join(devDir, 'removable'), opts.removable ? '1\n' : '0\n');
  await mkdir(path.join(devDir, 'holders'));
  for (const h of opts.holders ?? []) await mkdir(path.join(devDir, 'holders', h));
  await mkdir(path.join(root, 'sys/class/block'), { recursive: true });
  await execa('ln', ['-s', devDir, path.join(root, 'sys/class/block', opts.name)]);
  for (const p of opts.partitions ?? []) {
    await mkdir(path.join(devDir, p));
    await writeFile(path.join(devDir, p, 'partition'), '1\n');
    await writeFile(path.join(devDir, p, 'size'), '2048\n');
    await writeFile(path.join(devDir, p, 'removable'), '0\n');
    await execa('ln', ['-s', path.join(devDir, p), path.join(root, 'sys/class/block', p)]);
  }
  await mkdir(path.join(root, 'proc/self'), { recursive: true });
  await writeFile(path.join(root, 'proc/self/mounts'), opts.mounts ?? '/dev/vda1 / ext4 rw 0 0\n');
  await writeFile(path.join(root, 'proc/swaps'), `Filename Type Size Used Priority\n${opts.swaps ?? ''}`);
  return root;
}

t.test('block device checks: mounted, the running system, swap, holders, not removable, too small, a partition', async (t) => {
  const need = 40 * 1024 * 1024;
  const ok = await fakeSys({ name: 'sdz', sectors: 1 << 21, removable: true, partitions: ['sdz1'] });
  t.same(blockDeviceProblems('/dev/sdz', { sysRoot: ok, imageBytes: need }).problems, [], 'a removable, unused, large enough disk');
  const mmc = await fakeSys({ name: 'mmcblk9', sectors: 1 << 21, removable: false });
  t.same(blockDeviceProblems('/dev/mmcblk9', { sysRoot: mmc, imageBytes: need }).problems, [], 'an SD card slot counts as removable');

  const cases: [string, Parameters<typeof fakeSys>[0], RegExp, boolean?][] = [
    ['mounted', { name: 'sdz', sectors: 1 << 21, removable: true, partitions: ['sdz1'], mounts: '/dev/sdz1 /media/card vfat rw 0 0\n' }, /^\/dev\/sdz is mounted \(\/dev\/sdz1 on \/media\/card\); unmount it first$/],
    ['the running system', { name: 'sdz', sectors: 1 << 21, removable: true, partitions: ['sdz2'], mounts: '/dev/sdz2 / ext4 rw 0 0\n' }, /^\/dev\/sdz holds the running system \(\/dev\/sdz2 on \/\)$/],
    ['swap', { name: 'sdz', sectors: 1 << 21, removable: true, partitions: ['sdz3'], swaps: '/dev/sdz3 partition 1000 0 -2\n' }, /^\/dev\/sdz is in use as swap/],
    ['holders', { name: 'sdz', sectors: 1 << 21, removable: true, holders: ['dm-0'] }, /^\/dev\/sdz is in use by dm-0/],
    ['not removable', { name: 'sdz', sectors: 1 << 21, removable: false }, /^\/dev\/sdz is not a removable disk .*pass --force/],
    ['too small', { name: 'sdz', sectors: 1000, removable: true }, /^\/dev\/sdz holds 512000 bytes, less than the image's 41943040$/],
  ];
  for (const [what, sys, re] of cases) {
    const root = await fakeSys(sys);
    const { problems } = blockDeviceProblems('/dev/sdz', { sysRoot: root, imageBytes: need });
    t.equal(problems.length, 1, `${what}: one problem`);
    t.match(problems[0] ?? '', re, what);
  }
  const fixed = await fakeSys({ name: 'sdz', sectors: 1 << 21, removable: false });
  t.same(blockDeviceProblems('/dev/sdz', { sysRoot: fixed, imageBytes: need, force: true }).problems, [], '--force allows a fixed disk');
  const part = await fakeSys({ name: 'sdz', sectors: 1 << 21, removable: true, partitions: ['sdz1'] });
  t.match(blockDeviceProblems('/dev/sdz1', { sysRoot: part, imageBytes: 1 }).problems[0], /^\/dev\/sdz1 is a partition; flash the whole disk \(\/dev\/sdz\)$/);
});

t.test('onto a real block device (a loop device): refused as not removable, then written with --force and direct I/O', async (t) => {
  if (process.getuid?.() !== 0) return t.plan(0, 'loop devices need root');
  const backing = path.join(dir, 'loop-backing.img');
  await execa('truncate', ['-s', '64M', backing]); // larger than the 54 MiB image
  const lo = await execa('losetup', ['--find', '--show', backing], { reject: false });
  if (lo.exitCode !== 0 && /cannot find an unused loop device|No such file or directory|Permission denied|Operation not permitted/.test(lo.stderr)) return t.plan(0, `no loop device on this machine: ${lo.stderr.trim()}`);
  t.equal(lo.exitCode, 0, lo.stderr);
  const dev = lo.stdout.trim();
  t.teardown(() => execa('losetup', ['-d', dev]).catch(() => undefined));
  t.ok(existsSync(dev));
  await t.rejects(flash({ image, device: dev }), { name: 'UserError', message: new RegExp(`will not write to ${dev}; nothing was written:\\n {2}${dev} is not a removable disk`) });
  t.equal(sha(backing), createHash('sha256').update(Buffer.alloc(64 * 1024 * 1024)).digest('hex'), 'nothing was written');
  const config = path.join(dir, 'site-loop.yaml');
  await writeFile(config, 'hostname: site-loop\n');
  const r = await flash({ image, device: dev, force: true, config });
  t.equal(r.sha256, sha(image));
  const onDisk = readFileSync(backing).subarray(0, STATE_OFFSET);
  t.ok(onDisk.equals(readFileSync(image).subarray(0, STATE_OFFSET)), 'the table and the boot partition are the image\'s');
  t.equal((await debugfs(dev, 'cat /cairn/system/config.yaml')).stdout, 'hostname: site-loop\n');
});
