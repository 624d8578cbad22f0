// cairn install over a folder as the node's root: the checks (every one
// before anything is written), the layout, the files, the boot code; with a
// recording exec standing in for lsblk, sfdisk, mkfs and mount.
import t from 'tap';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { GPT_TYPES, SECTOR } from '../../src/boot/disk.js';
import { parseGrubEnv } from '../../src/boot/grubenv.js';
import { UserError } from '../../src/errors.js';
import type { Exec } from '../../src/init/exec.js';
import { install, type InstallOptions } from '../../src/install/install.js';
import { checkTarget, contentsOf, installDiskPlan, parseLsblk, partitionPath } from '../../src/install/plan.js';
import { configFromAnswers } from '../../src/install/prompt.js';
import { optionsFromConfig } from '../../src/install/phase.js';
import { readCmdline } from '../../src/config/cmdline.js';
import { readConfig } from '../../src/config/read.js';
import { kernelArgs } from '../../src/builder/outputs/common.js';

const GIB = 1024 ** 3;

/** lsblk -J -b -o NAME,PATH,SIZE,MODEL,TYPE,RO,RM,PTTYPE,PARTTYPE,FSTYPE,LABEL,MOUNTPOINTS as util-linux 2.41 prints it on a live boot. */
function lsblkJson(opts: { vdb?: object; vdbSize?: number; vdcSize?: number } = {}): string {
  const dev = (name: string, size: number, more: object = {}) => ({ name, path: `/dev/${name}`, size, model: null, type: 'disk', ro: false, rm: false, pttype: null, parttype: null, fstype: null, label: null, mountpoints: [null], ...more });
  return JSON.stringify({
    blockdevices: [
      { ...dev('sr0', 300 * 1024 * 1024, { type: 'rom', ro: true, rm: true, model: 'QEMU DVD-ROM', fstype: 'iso9660', label: 'CAIRN_LIVE', mountpoints: ['/run/cairn/live'] }) },
      dev('vda', 366 * 1024, { fstype: 'iso9660', label: 'cidata' }),
      { ...dev('vdb', opts.vdbSize ?? 8 * GIB), ...(opts.vdb ?? {}) },
      dev('vdc', opts.vdcSize ?? 256 * 1024 * 1024),
      dev('loop0', 200 * 1024 * 1024, { type: 'loop', mountpoints: ['/usr'] }),
    ],
  });
}

const used = {
  pttype: 'gpt',
  children: [
    { name: 'vdb1', path: '/dev/vdb1', size: 100 * 1024 * 1024, type: 'part', ro: false, rm: false, pttype: 'gpt', parttype: 'c12a7328-f81f-11d2-ba4b-00a0c93ec93b', fstype: 'vfat', label: 'EFI', mountpoints: [null] },
    { name: 'vdb2', path: '/dev/vdb2', size: 4 * GIB, type: 'part', ro: false, rm: false, pttype: 'gpt', parttype: '0fc63daf-8483-4772-8e79-3d69d8477de4', fstype: 'ext4', label: 'data', mountpoints: [null] },
  ],
};

const sizes = { arch: 'amd64' as const, versionBytes: 200 * 1024 * 1024, efiBytes: 2 * 1024 * 1024 };
const plan = installDiskPlan(sizes, 'seed');

function refusal(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof UserError) return `${e.message} | ${e.hint ?? ''}`;
    throw e;
  }
  throw new Error('not refused');
}

t.test('lsblk: parsed as util-linux prints it, old string flags too', async (t) => {
  const devs = parseLsblk(lsblkJson({ vdb: used }));
  t.same(devs.map((d) => [d.path, d.type, d.size]), [['/dev/sr0', 'rom', 300 * 1024 * 1024], ['/dev/vda', 'disk', 366 * 1024], ['/dev/vdb', 'disk', 8 * GIB], ['/dev/vdc', 'disk', 256 * 1024 * 1024], ['/dev/loop0', 'loop', 200 * 1024 * 1024]]);
  t.same(devs[0]!.mountpoints, ['/run/cairn/live']);
  t.same(devs[2]!.mountpoints, [], 'a null mount point is none');
  t.equal(devs[2]!.children[1]!.parttype, GPT_TYPES.linux, 'partition types compare in upper case');
  const old = parseLsblk(JSON.stringify({ blockdevices: [{ name: 'sda', size: '1000', type: 'disk', ro: '1', rm: '0', mountpoint: null }] }));
  t.same([old[0]!.path, old[0]!.size, old[0]!.ro, old[0]!.rm], ['/dev/sda', 1000, true, false]);
  t.throws(() => parseLsblk('lsblk: unknown column'), /lsblk printed no JSON/);
  t.equal(contentsOf(devs[2]!), 'a GPT partition table with /dev/vdb1 "EFI" (vfat), /dev/vdb2 "data" (ext4)');
  t.equal(partitionPath('/dev/nvme0n1', 3), '/dev/nvme0n1p3');
  t.equal(partitionPath('/dev/mmcblk0', 2), '/dev/mmcblk0p2');
  t.equal(partitionPath('/dev/sda', 2), '/dev/sda2');
});

t.test('target checks: each bad target refused with what to do', async (t) => {
  const devs = parseLsblk(lsblkJson({ vdb: used }));
  t.match(refusal(() => checkTarget(devs, { device: '/dev/sdz' }, plan)), /^there is no disk \/dev\/sdz \(the disks here: \/dev\/vda {2}366 KiB; \/dev\/vdb {2}8\.0 GiB; \/dev\/vdc {2}256 MiB\) \| give one of the disks above/);
  t.match(refusal(() => checkTarget(devs, { device: '/dev/sr0' }, plan)), /^\/dev\/sr0 is a CD\/DVD drive/);
  t.match(refusal(() => checkTarget(devs, { device: '/dev/vdb2', force: true }, plan)), /^\/dev\/vdb2 is a partition, not a whole disk \| install to the disk itself, \/dev\/vdb:/);
  t.match(refusal(() => checkTarget(devs, { device: '/dev/loop0' }, plan)), /^\/dev\/loop0 is a loop, not a disk/);
  t.match(refusal(() => checkTarget(devs, { device: '/dev/vdc' }, plan)), /^\/dev\/vdc is too small: 256 MiB, and cairn needs at least [\d.]+ [MG]iB \| choose a larger disk$/);
  t.match(refusal(() => checkTarget(devs, { device: '/dev/vdb' }, plan)), /^\/dev\/vdb is not empty: it holds a GPT partition table with \/dev\/vdb1 "EFI" \(vfat\), \/dev\/vdb2 "data" \(ext4\); nothing was written \| to erase it and install, set install.force: true/);
  t.equal(checkTarget(devs, { device: '/dev/vdb', force: true }, plan).disk.path, '/dev/vdb', 'force: the disk with data is taken');
  const mounted = parseLsblk(lsblkJson({ vdb: { ...used, children: [{ ...used.children[0], mountpoints: ['/run/cairn/state'] }] } }));
  t.match(refusal(() => checkTarget(mounted, { device: '/dev/vdb', force: true }, plan)), /^\/dev\/vdb holds the running system: \/dev\/vdb1 is mounted at \/run\/cairn\/state \| install to another disk/);
  const usb = parseLsblk(JSON.stringify({ blockdevices: [{ name: 'sdb', size: 16 * GIB, type: 'disk', rm: true, fstype: 'iso9660', label: 'CAIRN_LIVE', mountpoints: [null] }] }));
  t.match(refusal(() => checkTarget(usb, { device: '/dev/sdb', force: true }, plan)), /^\/dev\/sdb holds the running system: \/dev\/sdb is the live medium \(CAIRN_LIVE\)/, 'the USB stick booted from, even when not mounted');
  const ro = parseLsblk(lsblkJson({ vdb: { ro: true } }));
  t.match(refusal(() => checkTarget(ro, { device: '/dev/vdb' }, plan)), /^\/dev\/vdb is read-only/);
  t.equal(checkTarget(parseLsblk(lsblkJson()), { device: '/dev/vdb' }, plan).disk.path, '/dev/vdb', 'a blank disk needs no force');
  t.ok(plan.bytes > 256 * 1024 * 1024 && plan.bytes < 8 * GIB, `the plan's minimum (${plan.bytes} bytes) sits between the two disks`);
});

t.test('no_format: the existing partitions, or a clear refusal', async (t) => {
  const devs = parseLsblk(lsblkJson({ vdb: used }));
  t.match(refusal(() => checkTarget(devs, { device: '/dev/vdb', noFormat: true }, plan)), /^no_format is set but \/dev\/vdb has no CAIRN_EFI and CAIRN_STATE partition/);
  const cairn = { pttype: 'gpt', children: [
    { name: 'vdb1', path: '/dev/vdb1', size: 1048576, type: 'part', parttype: GPT_TYPES.bios.toLowerCase(), mountpoints: [null] },
    { name: 'vdb2', path: '/dev/vdb2', size: 64 * 1048576, type: 'part', fstype: 'vfat', label: 'CAIRN_EFI', mountpoints: [null] },
    { name: 'vdb3', path: '/dev/vdb3', size: 2 * GIB, type: 'part', fstype: 'xfs', label: 'CAIRN_STATE', mountpoints: [null] },
  ] };
  t.match(refusal(() => checkTarget(parseLsblk(lsblkJson({ vdb: cairn })), { device: '/dev/vdb', noFormat: true }, plan)), /^no_format: \/dev\/vdb3 \(CAIRN_STATE\) holds xfs, not ext4/);
  cairn.children[2]!.fstype = 'ext4';
  const target = checkTarget(parseLsblk(lsblkJson({ vdb: cairn })), { device: '/dev/vdb', noFormat: true }, plan);
  t.same([target.existing?.efi.path, target.existing?.state.path, target.existing?.bios?.path], ['/dev/vdb2', '/dev/vdb3', '/dev/vdb1']);
});

t.test('the install keys: from the config and the kernel command line', async (t) => {
  const r = readCmdline('cairn.install.device=/dev/vdb k3os.install.config_url=http://10.0.2.2:8080/c.yaml k3os.install.silent cairn.install.tty=ttyS1 cairn.install.force=true k3os.install.power_off=true');
  t.same(r.diagnostics, []);
  const inst = r.config.cairn?.install;
  t.same(inst, { device: '/dev/vdb', config_url: 'http://10.0.2.2:8080/c.yaml', silent: true, tty: 'ttyS1', force: true, power_off: true });
  t.same(optionsFromConfig({ ...inst!, device: '/dev/vdb' }), { device: '/dev/vdb', configUrl: 'http://10.0.2.2:8080/c.yaml', force: true, tty: 'ttyS1' });
  t.match(readCmdline('cairn.install.force=perhaps').diagnostics[0]?.message ?? '', /expected a boolean/);
});

t.test('the interactive answers as a config', async (t) => {
  for (const password of ['pa:ss "x"', ": # x'\"", '0755', 'yes', '- a', '$6$salt$hash']) {
    const text = configFromAnswers({ password })!;
    const back = readConfig(text, 'answers');
    t.same([back.config.cairn?.password, back.diagnostics], [password, []], `the password ${JSON.stringify(password)} reads back as typed`);
  }
  t.equal(configFromAnswers({ sshKey: 'ssh-ed25519 AAAA me' }), 'ssh_authorized_keys:\n  - ssh-ed25519 AAAA me\n');
  t.equal(configFromAnswers({}), undefined);
});

// ----- the steps over a folder ----------------------------------------------

function put(file: string, content: string | Buffer): void {
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, content);
}

/** A live medium at <root>/run/cairn/live with a version's files and the disk's GRUB (a core.img of 3 sectors). */
function liveMedium(root: string): { boot: Buffer; core: Buffer } {
  const m = join(root, 'run/cairn/live/cairn');
  put(join(m, 'vmlinuz'), 'kernel bytes');
  put(join(m, 'initrd'), 'initrd bytes');
  put(join(m, 'rootfs.squashfs'), Buffer.alloc(4096, 7));
  put(join(m, 'release.json'), JSON.stringify({ version: '0.1.0', arch: 'amd64', inputs: { cmdline: 'console=tty1 console=ttyS0,115200' } }));
  const boot = Buffer.alloc(512, 0xb0);
  const core = Buffer.alloc(3 * 512, 0xc0);
  core.writeUInt16LE(2, 512 - 12 + 8);
  put(join(m, 'install/boot.img'), boot);
  put(join(m, 'install/core.img'), core);
  put(join(m, 'install/BOOTX64.EFI'), 'efi binary');
  put(join(m, 'install/grub.cfg'), '# the disk menu\n');
  return { boot, core };
}

function fakeNode(root: string, lsblk = lsblkJson(), probes: Record<string, string> = {}) {
  const medium = liveMedium(root);
  const disk = join(root, 'dev/vdb');
  put(disk, Buffer.alloc(2 * 1024 * 1024, 0xee));
  const calls: { file: string; args: string[]; input?: string }[] = [];
  const exec: Exec = async (file, args, o = {}) => {
    calls.push({ file, args, input: o.input });
    if (file === 'lsblk') return { code: 0, stdout: lsblk, stderr: '', timedOut: false };
    if (file === 'blkid') return probes[args.at(-1)!] === undefined ? { code: 2, stdout: '', stderr: '', timedOut: false } : { code: 0, stdout: probes[args.at(-1)!]!, stderr: '', timedOut: false };
    if (file === 'sfdisk') for (const n of [1, 2, 3]) put(join(root, `dev/vdb${n}`), '');
    return { code: 0, stdout: '', stderr: '', timedOut: false };
  };
  const lines: string[] = [];
  const fetched: string[] = [];
  const configs: Record<string, string> = { 'http://10.0.2.2/node.yaml': 'hostname: installed\nssh_authorized_keys: [ssh-ed25519 AAAA test]\n', 'http://10.0.2.2/bad.yaml': 'hostname: [not, a, name]\nbogus_key: 1\n' };
  const env = {
    root,
    exec,
    log: (l: string) => lines.push(l),
    fetchText: async (url: string) => {
      fetched.push(url);
      const c = configs[url.replace(/\?.*$/, '')];
      if (c === undefined) throw new Error(`${url}: HTTP 404`);
      return c;
    },
  };
  return { root, disk, medium, calls, lines, fetched, env };
}

const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const writes = ['wipefs', 'sfdisk', 'mkfs.vfat', 'mke2fs', 'mount'];

t.test('an install: partitions, file systems, the version, GRUB for UEFI and BIOS, the config 0600', async (t) => {
  const n = fakeNode(t.testdir());
  const opts: InstallOptions = { device: '/dev/vdb', configUrl: 'http://10.0.2.2/node.yaml', tty: 'ttyS1' };
  const done = await install(opts, n.env);
  t.same([done.version, done.device], ['0.1.0', '/dev/vdb']);
  t.same(n.calls.filter((c) => c.file === 'blkid').map((c) => c.args.at(-1)), ['/dev/sr0', '/dev/vda', '/dev/vdb', '/dev/vdc'], 'each disk and CD probed (not the loop device)');
  t.same(n.calls.map((c) => c.file).filter((f) => f !== 'blkid'), ['lsblk', 'wipefs', 'sfdisk', 'partx', 'mkfs.vfat', 'mke2fs', 'mount', 'modprobe', 'mount', 'sync', 'umount', 'umount'], 'the commands, in order: lsblk first, nothing written before the checks');
  const sfdisk = n.calls.find((c) => c.file === 'sfdisk')!;
  t.same(sfdisk.args, ['--quiet', '--wipe', 'always', '--wipe-partitions', 'always', '/dev/vdb']);
  t.match(sfdisk.input ?? '', /^label: gpt\n/);
  t.same([...(sfdisk.input ?? '').matchAll(/name="(\w+)"/g)].map((m) => m[1]), ['BIOS', 'CAIRN_EFI', 'CAIRN_STATE'], 'GPT: BIOS boot, CAIRN_EFI, CAIRN_STATE');
  t.same(n.calls.find((c) => c.file === 'mkfs.vfat')!.args, ['-F', '32', '-n', 'CAIRN_EFI', '/dev/vdb2']);
  t.match(n.calls.find((c) => c.file === 'mke2fs')!.args.join(' '), /^-q -F -t ext4 -L CAIRN_STATE -U [0-9a-f-]{36} \/dev\/vdb3$/);
  t.same(n.calls.filter((c) => c.file === 'mount').map((c) => c.args), [['-t', 'ext4', '/dev/vdb3', '/run/cairn/install/state'], ['-t', 'vfat', '-o', 'iocharset=iso8859-1', '/dev/vdb2', '/run/cairn/install/efi']]);
  t.same(n.calls.filter((c) => c.file === 'umount').map((c) => c.args[0]), ['/run/cairn/install/efi', '/run/cairn/install/state'], 'unmounted, the last mount first');
  const state = join(n.root, 'run/cairn/install/state/cairn');
  const v = join(state, 'system/0.1.0');
  t.equal(readFileSync(join(v, 'kernel'), 'utf8'), 'kernel bytes', 'vmlinuz became the version\'s kernel');
  const sums = readFileSync(join(v, 'SHA256SUMS'), 'utf8');
  t.equal(sums, [`${sha('initrd bytes')}  initrd`, `${sha('kernel bytes')}  kernel`, `${sha(readFileSync(join(n.root, 'run/cairn/live/cairn/release.json')))}  release.json`, `${sha(Buffer.alloc(4096, 7))}  rootfs.squashfs`].join('\n') + '\n');
  t.equal(parseGrubEnv(readFileSync(join(v, 'bootenv'))).cairn_cmdline, `${kernelArgs('state', 'amd64', 'console=tty1 console=ttyS0,115200')} console=ttyS1`, 'the state command line, the image\'s arguments and the tty');
  t.equal(parseGrubEnv(readFileSync(join(state, 'grub/grubenv'))).cairn_active, '0.1.0');
  t.equal(readFileSync(join(state, 'grub/grub.cfg'), 'utf8'), '# the disk menu\n');
  t.ok(existsSync(join(state, 'data')), 'cairn/data made');
  const cfg = join(state, 'system/config.yaml');
  t.equal(readFileSync(cfg, 'utf8'), 'hostname: installed\nssh_authorized_keys: [ssh-ed25519 AAAA test]\n');
  t.equal(statSync(cfg).mode & 0o777, 0o600, 'the config is 0600');
  t.equal(readFileSync(join(n.root, 'run/cairn/install/efi/EFI/BOOT/BOOTX64.EFI'), 'utf8'), 'efi binary');
  const disk = readFileSync(n.disk);
  const bios = installDiskPlan(sizes, 'x').partitions.find((p) => p.name === 'BIOS')!;
  t.equal(disk.readBigUInt64LE(0x5c), BigInt(bios.start), 'the MBR code points at core.img in the BIOS boot partition');
  t.equal(disk[0], 0xb0);
  t.equal(disk.subarray(440, 512).every((b) => b === 0xee), true, 'the partition table area after the 440 bytes of code is left alone');
  t.equal(disk.readBigUInt64LE(bios.start * SECTOR + SECTOR - 12), BigInt(bios.start + 1), "core.img's block list points at its second sector");
  t.equal(disk[bios.start * SECTOR + 2 * SECTOR], 0xc0, 'core.img written whole');
  t.match(n.lines.join('\n'), /install: bootloader: UEFI \(EFI\/BOOT\/BOOTX64\.EFI\), BIOS/);
});

t.test('bad input: refused before anything is written, the disk unchanged', async (t) => {
  const cases: { what: string; opts: InstallOptions; lsblk?: string; probes?: Record<string, string>; error: RegExp }[] = [
    { what: 'config_url 404', opts: { device: '/dev/vdb', configUrl: 'http://10.0.2.2/missing.yaml?token=s3cret' }, error: /^config_url http:\/\/10\.0\.2\.2\/missing\.yaml\?\.\.\. cannot be fetched: http:\/\/10\.0\.2\.2\/missing\.yaml\?\.\.\.: HTTP 404; nothing was written$/ },
    { what: 'an invalid config', opts: { device: '/dev/vdb', configUrl: 'http://10.0.2.2/bad.yaml' }, error: /^the config from http:\/\/10\.0\.2\.2\/bad\.yaml is not valid; nothing was written:\n {2}http:\/\/10\.0\.2\.2\/bad\.yaml:1:11: error: hostname/ },
    { what: 'a config file that is not there', opts: { device: '/dev/vdb', configUrl: '/home/cairn/none.yaml' }, error: /^config_url \/home\/cairn\/none\.yaml cannot be read: ENOENT; nothing was written$/ },
    { what: 'a disk with data', opts: { device: '/dev/vdb' }, lsblk: lsblkJson({ vdb: used }), error: /^\/dev\/vdb is not empty/ },
    // lsblk without udev's database knows no tables or file systems: blkid's probe tells
    { what: 'a disk with a table only blkid sees', opts: { device: '/dev/vdb' }, probes: { '/dev/vdb': 'DEVNAME=/dev/vdb\nPTUUID=0b4c\nPTTYPE=dos\n' }, error: /^\/dev\/vdb is not empty: it holds an MBR partition table; nothing was written/ },
    { what: 'a live USB stick only blkid sees', opts: { device: '/dev/vdb', force: true }, probes: { '/dev/vdb': 'LABEL=CAIRN_LIVE\nTYPE=iso9660\nPTTYPE=dos\n' }, error: /^\/dev\/vdb holds the running system: \/dev\/vdb is the live medium \(CAIRN_LIVE\)/ },
    { what: 'a disk too small', opts: { device: '/dev/vdb' }, lsblk: lsblkJson({ vdbSize: 100 * 1024 * 1024 }), error: /^\/dev\/vdb is too small: 100 MiB/ },
    { what: 'the CD drive', opts: { device: '/dev/sr0', force: true }, error: /^\/dev\/sr0 is a CD\/DVD drive/ },
    { what: 'an ISO file that is not there', opts: { device: '/dev/vdb', isoUrl: '/tmp/none.iso' }, error: /^iso_url \/tmp\/none\.iso: no such file$/ },
  ];
  for (const [i, c] of cases.entries()) {
    const n = fakeNode(join(t.testdir(), String(i)), c.lsblk, c.probes);
    const before = sha(readFileSync(n.disk));
    const err = await install(c.opts, n.env).then(() => undefined, (e: Error) => e);
    t.ok(err instanceof UserError, `${c.what}: a UserError`);
    t.match(err?.message ?? '', c.error, `${c.what}: ${err?.message.split('\n')[0]}`);
    t.notOk(err?.message.includes('s3cret'), `${c.what}: no query string in the message`);
    t.same(n.calls.filter((x) => writes.includes(x.file)).map((x) => x.file), [], `${c.what}: nothing partitioned, formatted or mounted`);
    t.equal(sha(readFileSync(n.disk)), before, `${c.what}: the disk is unchanged`);
  }
});

t.test('not booted from a medium: the installer asks for iso_url', async (t) => {
  const n = fakeNode(t.testdir());
  writeFileSync(join(n.root, 'run/cairn/live/cairn/release.json'), '{');
  const err = await install({ device: '/dev/vdb' }, n.env).then(() => undefined, (e: Error) => e);
  t.match(err?.message, /^the live medium: cairn\/release\.json is not JSON/);
  const bare = fakeNode(join(t.testdir(), 'bare'));
  const { rmSync } = await import('node:fs');
  rmSync(join(bare.root, 'run/cairn/live'), { recursive: true });
  const err2 = await install({ device: '/dev/vdb' }, bare.env).then(() => undefined, (e: Error) => e);
  t.match(err2?.message, /^this system was not booted from a cairn ISO/);
  t.match((err2 as UserError).hint, /install\.iso_url/);
});

t.test('a config URL that does not answer: refused after the timeout, nothing written', async (t) => {
  const { createServer } = await import('node:http');
  const { httpFetch } = await import('../../src/init/context.js');
  const held: import('node:http').ServerResponse[] = [];
  const server = createServer((_req, res) => void held.push(res));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => {
    for (const res of held) res.destroy();
    server.close(() => r());
  }));
  const port = (server.address() as import('node:net').AddressInfo).port;
  const n = fakeNode(t.testdir());
  const started = Date.now();
  const err = await install({ device: '/dev/vdb', configUrl: `http://127.0.0.1:${port}/slow.yaml` }, { ...n.env, fetchText: (url) => httpFetch(url, { timeoutMs: 300 }) }).then(() => undefined, (e: Error) => e);
  t.match(err?.message, /^config_url http:\/\/127\.0\.0\.1:\d+\/slow\.yaml cannot be fetched: .*timeout.*; nothing was written$/i);
  t.ok(Date.now() - started >= 300, 'it waited for the timeout');
  t.same(n.calls.map((c) => c.file), [], 'not even lsblk ran: the config is checked first');
});

t.test('no_format: the existing partitions are written into, nothing partitioned or formatted', async (t) => {
  const cairnDisk = { pttype: 'gpt', children: [
    { name: 'vdb1', path: '/dev/vdb1', size: 1048576, type: 'part', parttype: GPT_TYPES.bios.toLowerCase(), mountpoints: [null] },
    { name: 'vdb2', path: '/dev/vdb2', size: 64 * 1048576, type: 'part', fstype: 'vfat', label: 'CAIRN_EFI', mountpoints: [null] },
    { name: 'vdb3', path: '/dev/vdb3', size: 2 * GIB, type: 'part', fstype: 'ext4', label: 'CAIRN_STATE', mountpoints: [null] },
  ] };
  const n = fakeNode(t.testdir(), lsblkJson({ vdb: cairnDisk }));
  put(join(n.root, 'sys/class/block/vdb1/start'), '4096\n');
  // what the node kept on it
  put(join(n.root, 'run/cairn/install/state/cairn/data/var/lib/kept'), 'node data');
  const done = await install({ device: '/dev/vdb', noFormat: true }, n.env);
  t.equal(done.device, '/dev/vdb');
  t.same(n.calls.filter((c) => ['wipefs', 'sfdisk', 'mkfs.vfat', 'mke2fs'].includes(c.file)), [], 'no table written, nothing formatted');
  t.same(n.calls.filter((c) => c.file === 'mount').map((c) => c.args.at(-2)), ['/dev/vdb3', '/dev/vdb2'], 'the existing CAIRN_STATE and CAIRN_EFI');
  t.equal(readFileSync(join(n.root, 'run/cairn/install/state/cairn/data/var/lib/kept'), 'utf8'), 'node data', 'cairn/data kept');
  t.ok(existsSync(join(n.root, 'run/cairn/install/state/cairn/system/0.1.0/rootfs.squashfs')));
  t.equal(readFileSync(n.disk).readBigUInt64LE(0x5c), 4096n, "the MBR code points at the existing BIOS boot partition's start");
  t.equal(readFileSync(n.disk)[4096 * SECTOR + 2 * SECTOR], 0xc0, 'core.img there');
});

t.test('the boot phase: only a live boot with install.device and install.silent installs; a disk holding cairn is left alone', async (t) => {
  const { installPhase } = await import('../../src/install/phase.js');
  const phaseCtx = (n: ReturnType<typeof fakeNode>, install: object | undefined, mode: 'live' | 'state' = 'live') => {
    const actions: string[] = [];
    const infos: string[] = [];
    const ctx = {
      root: n.root,
      exec: n.env.exec,
      fetch: n.env.fetchText,
      boot: { mode, version: '0.1.0' },
      config: install ? { cairn: { install } } : {},
      log: { info: (l: string) => infos.push(l), debug: () => undefined },
      reboot: () => actions.push('reboot'),
      poweroff: () => actions.push('poweroff'),
    } as unknown as Parameters<typeof installPhase>[0];
    return { ctx, actions, infos };
  };
  const a = phaseCtx(fakeNode(join(t.testdir(), 'a')), undefined);
  t.equal(await installPhase(a.ctx), 'no install.device');
  const b = phaseCtx(fakeNode(join(t.testdir(), 'b')), { device: '/dev/vdb', silent: true }, 'state');
  t.match(await installPhase(b.ctx), /already runs from a disk: nothing to do$/);
  const c = phaseCtx(fakeNode(join(t.testdir(), 'c')), { device: '/dev/vdb' });
  t.equal(await installPhase(c.ctx), 'waiting for sudo cairn install (install.silent is not set)');
  t.match(c.infos.join('\n'), /run: sudo cairn install --device \/dev\/vdb$/m, 'it says what to run');
  const installed = { pttype: 'gpt', children: [{ name: 'vdb3', path: '/dev/vdb3', size: GIB, type: 'part', fstype: 'ext4', label: 'CAIRN_STATE', mountpoints: [null] }] };
  const dn = fakeNode(join(t.testdir(), 'd'), lsblkJson({ vdb: installed }));
  const d = phaseCtx(dn, { device: '/dev/vdb', silent: true, force: true });
  t.match(await installPhase(d.ctx), /^\/dev\/vdb already holds a cairn system \(CAIRN_STATE\): not installed again; /, 'a medium left in the drive does not install again, even with force');
  t.same(dn.calls.filter((x) => writes.includes(x.file)), [], 'nothing written');
  const en = fakeNode(join(t.testdir(), 'e'));
  const e = phaseCtx(en, { device: '/dev/vdb', silent: true, power_off: true, config_url: 'http://10.0.2.2/node.yaml' });
  t.equal(await installPhase(e.ctx), 'installed 0.1.0 on /dev/vdb');
  t.same([...a.actions, ...b.actions, ...c.actions, ...d.actions, ...e.actions], ['poweroff'], 'power_off: powered off, and only after an install');
  t.match(e.infos.join('\n'), /install: 0\.1\.0 is on \/dev\/vdb \(in \d+ s\); powering off$/m);
});

t.test('a stable device name (/dev/disk/by-id/...) is the disk it points at', async (t) => {
  const { mkdirSync: mk, symlinkSync } = await import('node:fs');
  const n = fakeNode(t.testdir());
  mk(join(n.root, 'dev/disk/by-id'), { recursive: true });
  symlinkSync('../../vdb', join(n.root, 'dev/disk/by-id/virtio-target'));
  const done = await install({ device: '/dev/disk/by-id/virtio-target' }, n.env);
  t.equal(done.device, '/dev/vdb');
  t.same(n.calls.find((c) => c.file === 'sfdisk')?.args.at(-1), '/dev/vdb', 'partitioned as /dev/vdb');
});

t.test('iso_url: an ISO that does not mount, is not cairn\'s, lacks the installer, or does not download: refused, nothing written', async (t) => {
  const { createServer } = await import('node:http');
  const server = createServer((_req, res) => res.writeHead(404).end());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const port = (server.address() as import('node:net').AddressInfo).port;
  const cases: { what: string; iso: string; onMount: (root: string) => number; error: RegExp }[] = [
    { what: 'a file that is no ISO', iso: '/tmp/broken.iso', onMount: () => 32, error: /^the ISO from \/tmp\/broken\.iso cannot be mounted \(mount .*failed: .*\)$/ },
    { what: 'an ISO without cairn', iso: '/tmp/other.iso', onMount: (root) => (put(join(root, 'run/cairn/install/iso/README'), 'other'), 0), error: /^the ISO from \/tmp\/other\.iso is not a cairn medium: it has no cairn\/vmlinuz, cairn\/initrd, cairn\/rootfs\.squashfs, cairn\/release\.json$/ },
    {
      what: 'a cairn ISO without the installer',
      iso: '/tmp/old.iso',
      onMount: (root) => {
        for (const f of ['vmlinuz', 'initrd', 'rootfs.squashfs']) put(join(root, 'run/cairn/install/iso/cairn', f), 'x');
        put(join(root, 'run/cairn/install/iso/cairn/release.json'), '{"version":"0.0.9","arch":"amd64"}');
        return 0;
      },
      error: /^the ISO from \/tmp\/old\.iso has no cairn\/install\/ \(the disk's boot loader\)/,
    },
    { what: 'a download that 404s', iso: `http://127.0.0.1:${port}/cairn.iso`, onMount: () => 0, error: /^cannot download http:\/\/127\.0\.0\.1:\d+\/cairn\.iso: the server answered HTTP 404/ },
  ];
  for (const [i, c] of cases.entries()) {
    const n = fakeNode(join(t.testdir(), String(i)));
    if (c.iso.startsWith('/')) put(join(n.root, c.iso), 'iso bytes');
    const before = sha(readFileSync(n.disk));
    const exec: Exec = async (file, args, o) => {
      if (file === 'mount' && args.includes('loop,ro')) {
        const code = c.onMount(n.root);
        n.calls.push({ file, args });
        return { code, stdout: '', stderr: code ? 'mount: wrong fs type, bad option, bad superblock' : '', timedOut: false };
      }
      return n.env.exec(file, args, o);
    };
    const err = await install({ device: '/dev/vdb', isoUrl: c.iso }, { ...n.env, exec }).then(() => undefined, (e: Error) => e);
    t.ok(err instanceof UserError, `${c.what}: a UserError`);
    t.match(err?.message ?? '', c.error, `${c.what}: ${err?.message}`);
    t.same(n.calls.filter((x) => ['wipefs', 'sfdisk', 'mkfs.vfat', 'mke2fs', 'lsblk'].includes(x.file)).map((x) => x.file), [], `${c.what}: the disk not even looked at`);
    t.equal(sha(readFileSync(n.disk)), before, `${c.what}: the disk unchanged`);
  }
});
