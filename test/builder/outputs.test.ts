// The output writers: pure parts (disk plan, GRUB menus and environment,
// iPXE script, BIOS boot sectors), then every format written from a real
// trixie kernel and checked by the tools that consume it, then firmware
// boots under QEMU (TCG): SeaBIOS and OVMF on amd64, AAVMF on arm64, and a
// real iPXE network boot.
import t, { type Test } from 'tap';
import { createServer } from 'node:http';
import { copyFileSync, createReadStream, existsSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { buildInitramfs } from '../../src/builder/initramfs/index.js';
import { artifactStem, sha256File, stableUuid } from '../../src/builder/outputs/common.js';
import { GPT_TYPES, planDisk, sfdiskScript, stateFsBytes, MIB } from '../../src/boot/disk.js';
import { biosBootSectors, grubModuleDir, parseGrubEnv, renderDiskGrubCfg, renderGrubEnv, renderLiveGrubCfg } from '../../src/builder/outputs/grub.js';
import { renderIpxe } from '../../src/builder/outputs/pxe.js';
import { COMPONENTS, openPayload } from '../../src/upgrade/payload.js';
import { FORMATS, FORMAT_TABLE, formatWriters, parseFormats } from '../../src/builder/formats.js';
import { type Arch, type OutputContext, type SystemArtifacts } from '../../src/builder/types.js';
import { NETWORK_ERROR, SOURCE_DATE_EPOCH, fixtureSquashfs, fixtureSystem, qemuBoot, unreachableReason } from '../fixtures/outputs/fixture.js';
import { withTempCache } from './support.js';

// Boots under TCG on a busy 2-core machine: allow more than the per-file default.
t.setTimeout(1_800_000);

const sys = { name: 'default', version: '1.2.3', arch: 'amd64' as Arch, cmdline: 'quiet' };

const outputs = formatWriters();

t.test('the table: every format has a writer, and only formats that make an artifact are listed', async (t) => {
  t.same(Object.keys(outputs).sort(), [...FORMATS].sort());
  for (const f of FORMATS) t.equal(outputs[f], FORMAT_TABLE[f].writer, `${f}: the table's writer`);
  t.same([...FORMATS].sort(), ['iso', 'oci', 'pxe', 'qcow2', 'raw']);
  t.throws(() => parseFormats('raw,rpi4'), { name: 'UserError', message: 'unknown format "rpi4"' });
  const ctx: OutputContext = { outDir: '/nonexistent', workDir: '/nonexistent', log: () => undefined };
  await t.rejects(outputs.iso({ ...sys, arch: 'armv7' } as SystemArtifacts, ctx), { name: 'UserError', message: /not made for armv7/ });
});

t.test('disk plan: aligned GPT, BIOS boot only on amd64, state last, stable ids', async (t) => {
  const a = planDisk({ arch: 'amd64', efiBytes: 10 * MIB, stateBytes: 300 * MIB + 5, seed: 'x' });
  t.same(a.partitions.map((p) => p.name), ['BIOS', 'CAIRN_EFI', 'CAIRN_STATE']);
  t.same(a.partitions.map((p) => p.type), [GPT_TYPES.bios, GPT_TYPES.efi, GPT_TYPES.linux]);
  for (const p of a.partitions) t.equal(p.start % 2048, 0, `${p.name} on a MiB boundary`);
  t.equal(a.partitions[1]!.size, 64 * 2048, 'EFI at least 64 MiB (FAT32)');
  t.equal(a.partitions[2]!.size, 301 * 2048, 'state rounded up to whole MiB');
  t.equal(a.bytes, (a.partitions[2]!.start + a.partitions[2]!.size + 2048) * 512, 'one MiB left for the backup GPT');
  t.same(planDisk({ arch: 'amd64', efiBytes: 10 * MIB, stateBytes: 300 * MIB + 5, seed: 'x' }), a, 'same inputs, same plan');
  t.not(planDisk({ arch: 'amd64', efiBytes: 1, stateBytes: 1, seed: 'y' }).labelId, a.labelId);
  const arm = planDisk({ arch: 'arm64', efiBytes: 100 * MIB, stateBytes: MIB, seed: 'x' });
  t.same(arm.partitions.map((p) => p.name), ['CAIRN_EFI', 'CAIRN_STATE']);
  t.equal(arm.partitions[0]!.size, 100 * 2048);
  const script = sfdiskScript(a);
  t.match(script, /^label: gpt$/m);
  t.match(script, /name="CAIRN_STATE"/);
  t.match(stableUuid('a'), /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  t.ok(stateFsBytes(200 * MIB, 10) >= 200 * MIB * 1.08 + 128 * MIB, 'room for metadata and the first boot');
});

t.test('GRUB: live and disk menus, the environment block', async (t) => {
  const live = renderLiveGrubCfg(sys);
  t.match(live, /linux \/cairn\/vmlinuz cairn\.mode=live panic=10 console=ttyS0,115200 console=tty0 quiet/);
  t.match(live, /cairn\.rescue cairn\.debug/);
  t.match(renderLiveGrubCfg({ ...sys, arch: 'arm64' }), /console=ttyAMA0/);
  t.notMatch(renderLiveGrubCfg({ ...sys, arch: 'arm64' }), /serial --unit/);
  const disk = renderDiskGrubCfg(sys);
  t.match(disk, /set cairn_env=\/cairn\/grub\/grubenv\nfunction cairn_bootable/);
  t.match(disk, /load_env -f "\$cairn_env" cairn_active cairn_fallback cairn_trial cairn_tries/);
  t.match(disk, /set cairn_cmdline="cairn\.mode=state panic=10 console=ttyS0,115200 console=tty0 quiet"/, "the build's arguments stand in for a version without its bootenv");
  t.match(disk, /load_env -f "\$cairn_sys\/\$boot_version\/bootenv" cairn_cmdline/);
  t.match(disk, /linux \/cairn\/system\/\$\{boot_version\}\/kernel \$\{cairn_cmdline\} cairn\.version=\$\{boot_version\}/);
  t.match(disk, /save_env -f "\$cairn_env" cairn_tries/);
  t.match(disk, /export boot_version boot_note alt_version cairn_cmdline alt_cmdline/);
  t.match(disk, /if \[ -n "\$alt_version" \]; then set fallback=1; fi/, "GRUB's fallback entry when the first does not load");
  const env = renderGrubEnv({ cairn_active: '1.2.3', cairn_next: '1.3.0', cairn_next_tries: '3' });
  t.equal(env.length, 1024);
  t.match(env.toString(), /^# GRUB Environment Block\n/);
  t.same(parseGrubEnv(env), { cairn_active: '1.2.3', cairn_next: '1.3.0', cairn_next_tries: '3' });
  t.throws(() => renderGrubEnv({ 'bad key': 'x' }));
  t.throws(() => renderGrubEnv({ k: 'x'.repeat(2000) }));
  for (const f of ['live', 'disk'] as const) {
    const dir = await mkdtemp(path.join(tmpdir(), 'cairn-grubcfg-'));
    await writeFile(path.join(dir, 'grub.cfg'), f === 'live' ? live : disk);
    const r = await execa('grub-script-check', [path.join(dir, 'grub.cfg')], { reject: false });
    t.equal(r.exitCode, 0, `grub-script-check accepts the ${f} menu ${r.stderr}`);
    await rm(dir, { recursive: true, force: true });
  }
});

t.test('iPXE script: kernel and initrd from cairn-base, squashfs URL and sha256 for the first stage', async (t) => {
  const s = renderIpxe(sys, 'default-1.2.3-amd64-pxe', 'ab'.repeat(32));
  t.match(s, /^#!ipxe\n/);
  t.match(s, /isset \$\{cairn-base\} \|\| set cairn-base http:\/\/\$\{next-server\}\/default-1\.2\.3-amd64-pxe/);
  t.match(s, /kernel \$\{cairn-base\}\/vmlinuz initrd=initrd panic=10 cairn\.mode=net cairn\.root_url=\$\{cairn-base\}\/rootfs\.squashfs cairn\.root_sha256=(ab){32} cairn\.version=1\.2\.3 console=ttyS0/);
  t.match(s, /initrd --name initrd \$\{cairn-base\}\/initrd/);
});

t.test('BIOS boot sectors: boot.img points at core.img, core.img at its own rest', async (t) => {
  if (!existsSync('/usr/lib/grub/i386-pc/boot.img')) return t.plan(0, 'no grub-pc-bin on this machine');
  const dir = await mkdtemp(path.join(tmpdir(), 'cairn-bios-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const core = path.join(dir, 'core.img');
  await execa('grub-mkimage', ['-O', 'i386-pc', '-p', '/cairn/grub', '-o', core, 'biosdisk', 'part_gpt', 'ext2']);
  const { mbrCode, core: patched } = await biosBootSectors('/usr/lib/grub/i386-pc/boot.img', core, 2048);
  t.equal(mbrCode.length, 440, 'only the code area: the partition table stays');
  t.equal(Buffer.from(mbrCode.buffer, mbrCode.byteOffset, 512).readBigUInt64LE(0x5c), 2048n);
  t.equal(patched.readBigUInt64LE(500), 2049n);
  t.equal(patched.readUInt16LE(508), Math.ceil(patched.length / 512) - 1);
});

// ----- real artifacts -------------------------------------------------------

interface Built {
  system: SystemArtifacts;
  outDir: string;
  files: string[];
}
const built: Partial<Record<Arch, Promise<Built | undefined>>> = {};
/** Why an arch's artifacts could not be made (only: Debian unreachable for its fixture root). */
const unbuilt: Partial<Record<Arch, string>> = {};
let top = '';

/** The arch's artifacts, made once; undefined only when Debian cannot be reached, any other failure fails the test. */
function build(arch: Arch): Promise<Built | undefined> {
  return (built[arch] ??= makeArtifacts(arch));
}

async function makeArtifacts(arch: Arch): Promise<Built | undefined> {
  const dir = path.join(top, arch);
  await mkdir(dir, { recursive: true });
  let system: SystemArtifacts;
  try {
    system = await fixtureSystem(arch, path.join(dir, 'system'), path.join(dir, 'system/initrd'));
  } catch (err) {
    unbuilt[arch] = unreachableReason(err);
    return undefined;
  }
  {
    await buildInitramfs({ rootfs: system.rootfs, kernelRelease: system.kernelRelease, arch, out: system.initramfs, sourceDateEpoch: SOURCE_DATE_EPOCH });
    const outDir = path.join(dir, 'out');
    await mkdir(outDir, { recursive: true });
    const files: string[] = [];
    for (const f of FORMATS) {
      if (f === 'iso' && arch === 'armv7') continue;
      const workDir = path.join(dir, `work-${f}`);
      await mkdir(workDir, { recursive: true });
      const started = Date.now();
      const arts = await outputs[f](system, { outDir, workDir, log: () => undefined });
      t.comment(`${arch} ${f}: ${Date.now() - started} ms, ${arts.map((a) => `${a.file} ${(statSync(path.join(outDir, a.file)).size / MIB).toFixed(1)} MiB`).join(', ')}`);
      for (const a of arts) {
        if (a.format !== f || a.arch !== arch) throw new Error(`${f} returned a wrong artifact record`);
        files.push(a.file);
      }
    }
    return { system, outDir, files };
  }
}

t.before(async () => {
  top = await mkdtemp(path.join(tmpdir(), 'cairn-outputs-'));
});
t.teardown(() => (top ? rm(top, { recursive: true, force: true }) : undefined));

async function partition(img: string, name: string, dir: string): Promise<string> {
  const dump = JSON.parse((await execa('sfdisk', ['--json', img])).stdout) as { partitiontable: { partitions: { start: number; size: number; name?: string }[] } };
  const p = dump.partitiontable.partitions.find((x) => x.name === name);
  if (!p) throw new Error(`no ${name} partition in ${img}`);
  const out = path.join(dir, `${name}.img`);
  await execa('dd', [`if=${img}`, `of=${out}`, 'bs=512', `skip=${p.start}`, `count=${p.size}`, 'status=none']);
  return out;
}

async function putPartition(img: string, name: string, file: string): Promise<void> {
  const dump = JSON.parse((await execa('sfdisk', ['--json', img])).stdout) as { partitiontable: { partitions: { start: number; name?: string }[] } };
  const p = dump.partitiontable.partitions.find((x) => x.name === name)!;
  await execa('dd', [`if=${file}`, `of=${img}`, 'bs=512', `seek=${p.start}`, 'conv=notrunc', 'status=none']);
}

async function checkIso(t: Test, iso: string, arch: Arch): Promise<void> {
  const el = (await execa('xorriso', ['-indev', iso, '-report_el_torito', 'plain'], { stdin: 'ignore' })).stdout;
  if (arch === 'amd64') t.match(el, /El Torito boot img :\s+\d+\s+BIOS\s+y/, 'BIOS boot image');
  t.match(el, /El Torito boot img :\s+\d+\s+UEFI\s+y/, 'UEFI boot image');
  const pvd = (await execa('xorriso', ['-indev', iso, '-pvd_info'], { stdin: 'ignore' })).stdout;
  t.match(pvd, /Volume Id\s+:\s+CAIRN_LIVE/);
  const isoLs = (await execa('xorriso', ['-indev', iso, '-find', '/cairn', '-type', 'f'], { stdin: 'ignore' })).stdout;
  for (const f of ['vmlinuz', 'initrd', 'rootfs.squashfs', 'version', 'release.json']) t.match(isoLs, new RegExp(`/cairn/${f.replace('.', '\\.')}'?$`, 'm'), `iso has /cairn/${f}`);
}

for (const arch of ['amd64', 'arm64', 'armv7'] as const) {
  t.test(`${arch}: every format, checked by the tools that read it`, async (t) => {
    const b = await build(arch);
    if (!b) return t.plan(0, unbuilt[arch]);
    const stem = artifactStem(b.system);
    const at = (f: string) => path.join(b.outDir, f);
    t.same(b.files.sort(), [
      `${stem}-pxe/boot.ipxe`, `${stem}-pxe/initrd`, `${stem}-pxe/release.json`, `${stem}-pxe/rootfs.squashfs`, `${stem}-pxe/vmlinuz`,
      ...(arch === 'armv7' ? [] : [`${stem}.iso`]), `${stem}.oci.tar`, `${stem}.qcow2`, `${stem}.raw`,
    ].sort());

    // iso
    if (arch !== 'armv7') await checkIso(t, at(`${stem}.iso`), arch);

    // pxe
    const sq = await execa('unsquashfs', ['-s', at(`${stem}-pxe/rootfs.squashfs`)]);
    t.match(sq.stdout, /Found a valid SQUASHFS 4:0 superblock/);
    const ipxe = await readFile(at(`${stem}-pxe/boot.ipxe`), 'utf8');
    const sha = (await execa('sha256sum', [at(`${stem}-pxe/rootfs.squashfs`)])).stdout.split(' ')[0];
    t.ok(ipxe.includes(`cairn.root_sha256=${sha}`), 'the script carries the squashfs checksum');

    // raw
    const raw = at(`${stem}.raw`);
    const table = (await execa('sfdisk', ['-d', raw])).stdout;
    t.match(table, /label: gpt/);
    t.match(table, /name="CAIRN_EFI"/);
    t.match(table, /name="CAIRN_STATE"/);
    t.equal(/name="BIOS"/.test(table), arch === 'amd64', 'BIOS boot partition on amd64 only');
    const dir = await mkdtemp(path.join(tmpdir(), 'cairn-parts-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const efi = await partition(raw, 'CAIRN_EFI', dir);
    const fsckVfat = await execa('fsck.vfat', ['-n', efi], { reject: false });
    t.equal(fsckVfat.exitCode, 0, `fsck.vfat -n passes ${fsckVfat.stdout}`);
    const mdir = (await execa('mdir', ['-i', efi, '-b', '::/EFI/BOOT'], { env: { MTOOLS_SKIP_CHECK: '1' } })).stdout;
    t.match(mdir, { amd64: /BOOTX64\.EFI/, arm64: /BOOTAA64\.EFI/, armv7: /BOOTARM\.EFI/ }[arch]);
    if (arch === 'armv7') {
      const ext = (await execa('mtype', ['-i', efi, '::/extlinux/extlinux.conf'], { env: { MTOOLS_SKIP_CHECK: '1' } })).stdout;
      t.match(ext, /kernel \/cairn\/vmlinuz/, 'extlinux.conf for U-Boot');
      t.match((await execa('mdir', ['-i', efi, '-b', '::/cairn'], { env: { MTOOLS_SKIP_CHECK: '1' } })).stdout, /vmlinuz/);
    }
    const label = (await execa('fatlabel', [efi], { reject: false })).stdout.trim();
    t.equal(label, 'CAIRN_EFI');
    // the FAT serial is the partition's (input-derived) uuid, not mkfs.vfat --invariant's constant 1234-ABCD
    const parts = JSON.parse((await execa('sfdisk', ['--json', raw])).stdout) as { partitiontable: { partitions: { name?: string; uuid: string }[] } };
    const efiUuid = parts.partitiontable.partitions.find((p) => p.name === 'CAIRN_EFI')!.uuid.replace(/-/g, '').toUpperCase();
    const serial = /Volume Serial Number is (\S+)/.exec((await execa('mdir', ['-i', efi, '::/'], { env: { MTOOLS_SKIP_CHECK: '1' } })).stdout)?.[1];
    t.equal(serial, `${efiUuid.slice(0, 4)}-${efiUuid.slice(4, 8)}`, 'FAT serial derived from the partition uuid');
    t.not(serial, '1234-ABCD');
    const state = await partition(raw, 'CAIRN_STATE', dir);
    const e2 = await execa('e2fsck', ['-fn', state], { reject: false });
    t.equal(e2.exitCode, 0, `e2fsck -fn passes ${e2.stdout}`);
    t.match((await execa('e2label', [state])).stdout, /CAIRN_STATE/);
    const cat = async (f: string) => (await execa('debugfs', ['-R', `cat ${f}`, state], { reject: false })).stdout;
    t.same(parseGrubEnv(await cat('/cairn/grub/grubenv')), { cairn_active: b.system.version });
    t.match(parseGrubEnv(await cat(`/cairn/system/${b.system.version}/bootenv`)).cairn_cmdline, /^cairn\.mode=state panic=10 console=/, "the version's kernel command line");
    t.match(await cat(`/cairn/system/${b.system.version}/SHA256SUMS`), new RegExp(`^${await sha256File(b.system.squashfs)}  rootfs\\.squashfs$`, 'm'), 'its sums');
    t.match(await cat('/cairn/grub/grub.cfg'), /load_env/);
    const ls = (await execa('debugfs', ['-R', `ls -l /cairn/system/${b.system.version}`, state])).stdout;
    for (const f of ['kernel', 'initrd', 'rootfs.squashfs', 'release.json']) t.match(ls, new RegExp(` ${f.replace('.', '\\.')}\\s*$`, 'm'), `state holds ${f}`);
    t.match((await execa('debugfs', ['-R', 'ls /cairn', state])).stdout, /data/);

    // qcow2
    const check = await execa('qemu-img', ['check', at(`${stem}.qcow2`)], { reject: false });
    t.equal(check.exitCode, 0, 'qemu-img check passes');
    const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', at(`${stem}.qcow2`)])).stdout) as { 'virtual-size': number; format: string };
    t.equal(info.format, 'qcow2');
    t.equal(info['virtual-size'], statSync(raw).size, 'same size as the raw disk');

    // oci
    const inspect = await execa('skopeo', ['inspect', `oci-archive:${at(`${stem}.oci.tar`)}`], { reject: false });
    t.equal(inspect.exitCode, 0, `skopeo inspect reads it ${inspect.stderr}`);
    const meta = JSON.parse(inspect.stdout || '{}') as { Architecture?: string; Os?: string; Labels?: Record<string, string>; Layers?: string[] };
    t.equal(meta.Architecture, arch === 'armv7' ? 'arm' : arch);
    t.equal(meta.Os, 'linux');
    t.equal(meta.Labels?.['org.opencontainers.image.version'], b.system.version);
    t.equal(meta.Layers?.length, 5, 'the runner, a layer per component and one for the record');
    const tagged = await execa('skopeo', ['inspect', `oci-archive:${at(`${stem}.oci.tar`)}:${b.system.version}`], { reject: false });
    t.equal(tagged.exitCode, 0, 'the image is named by its version');
    const again = path.join(dir, 'again.oci.tar');
    const workDir = path.join(dir, 'work');
    await mkdir(workDir);
    await outputs.oci(b.system, { outDir: dir, workDir, log: () => undefined });
    await execa('mv', [path.join(dir, `${stem}.oci.tar`), again]);
    t.ok((await readFile(again)).equals(await readFile(at(`${stem}.oci.tar`))), 'the OCI archive is byte-identical when built again');
    // the payload in its layers, unpacked as a container runtime lays them out, and read back as the node does
    const layout = path.join(dir, 'layout');
    await mkdir(layout);
    await execa('tar', ['-xf', at(`${stem}.oci.tar`), '-C', layout]);
    const index = JSON.parse(await readFile(path.join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
    const manifest = JSON.parse(await readFile(path.join(layout, 'blobs/sha256', index.manifests[0]!.digest.slice(7)), 'utf8')) as { layers: { digest: string; annotations?: Record<string, string> }[] };
    t.same(manifest.layers.map((l) => l.annotations?.['io.cairn.component']), ['runner', 'kernel', 'initrd', 'rootfs.squashfs', 'payload']);
    const payload = path.join(dir, 'payload');
    await mkdir(payload);
    for (const l of manifest.layers) {
      const blob = path.join(layout, 'blobs/sha256', l.digest.slice(7));
      const files = (await execa('tar', ['-tvf', blob])).stdout.split('\n').filter((x) => !x.endsWith('/'));
      const runner = l.annotations?.['io.cairn.component'] === 'runner';
      for (const f of files) t.match(f, runner ? /^(-rwxr-xr-x|lrwxrwxrwx) 0\/0 / : /^-rw-r--r-- 0\/0 /, `${l.annotations?.['io.cairn.component']}: ${f.split(' ').pop()} is root's`);
      await execa('tar', ['-xf', blob, '-C', payload]);
    }
    t.same((await readdir(path.join(payload, 'cairn'))).sort(), ['initrd', 'kernel', 'payload.json', 'release.json', 'rootfs.squashfs']);
    t.equal((await execa('file', ['-b', path.join(payload, 'bin/busybox')])).stdout.includes('statically linked'), true, "the image's /bin/sh is the root's static busybox");
    t.equal(await sha256File(path.join(payload, 'bin/busybox')), await sha256File(path.join(b.system.rootfs, 'usr/bin/busybox')));
    const opened = await openPayload(at(`${stem}.oci.tar`), { arch, workDir: path.join(dir, 'read') });
    const sources = { kernel: b.system.kernel, initrd: b.system.initramfs, 'rootfs.squashfs': b.system.squashfs, 'release.json': b.system.release };
    for (const c of COMPONENTS) {
      t.same(opened.record.components[c], { sha256: await sha256File(sources[c]), size: statSync(sources[c]).size }, `payload.json records ${c}`);
      t.equal(await sha256File(path.join(payload, 'cairn', c)), opened.record.components[c].sha256, `the unpacked ${c} matches payload.json`);
    }
    t.same({ name: opened.record.name, version: opened.record.version, arch: opened.record.arch }, { name: b.system.name, version: b.system.version, arch });
    await opened.close();
  });
}

// ----- firmware boots -------------------------------------------------------

const haveX86 = existsSync('/usr/bin/qemu-system-x86_64');
const haveArm = existsSync('/usr/bin/qemu-system-aarch64') && existsSync('/usr/share/qemu-efi-aarch64/QEMU_EFI.fd');
const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';

function ovmf(dir: string): string[] {
  const vars = path.join(dir, `vars-${Date.now()}.fd`);
  copyFileSync('/usr/share/OVMF/OVMF_VARS_4M.fd', vars);
  return ['-M', 'q35', '-drive', `if=pflash,format=raw,readonly=on,file=${OVMF_CODE}`, '-drive', `if=pflash,format=raw,file=${vars}`];
}

t.test('boot amd64 ISO: SeaBIOS (El Torito) and OVMF (UEFI), the live first stage', async (t) => {
  const b = await build('amd64');
  if (!b || !haveX86) return t.plan(0, unbuilt.amd64 ?? 'needs qemu-system-x86_64');
  const iso = path.join(b.outDir, `${artifactStem(b.system)}.iso`);
  const bios = await qemuBoot(['-cdrom', iso]);
  t.comment(`ISO, SeaBIOS: ${bios.ms} ms`);
  if (!t.ok(bios.ok, 'BIOS: GRUB → kernel → first stage → switch_root')) console.error(bios.output);
  t.match(bios.output, /cairn-initramfs: live system 0\.0\.1 on \/dev\/sr0/);
  t.match(bios.output, /CAIRN_BOOT_MODE=live/);
  t.match(bios.output, /mount cairn-rw \/var tmpfs/, '/var in RAM on a live boot');
  if (!existsSync(OVMF_CODE)) return;
  const uefi = await qemuBoot([...ovmf(top), '-cdrom', iso]);
  t.comment(`ISO, OVMF: ${uefi.ms} ms`);
  if (!t.ok(uefi.ok, 'UEFI: GRUB → kernel → first stage → switch_root')) console.error(uefi.output);
});

t.test('boot amd64 raw (OVMF): GRUB counts the trial boots of a new version, then falls back', async (t) => {
  const b = await build('amd64');
  if (!b || !haveX86 || !existsSync(OVMF_CODE)) return t.plan(0, unbuilt.amd64 ?? 'needs qemu-system-x86_64 and OVMF');
  const dir = await mkdtemp(path.join(tmpdir(), 'cairn-trial-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const disk = path.join(dir, 'disk.raw');
  await execa('cp', ['--sparse=always', path.join(b.outDir, `${artifactStem(b.system)}.raw`), disk]);
  // install 0.0.2 beside 0.0.1 and put it on trial with one try left
  const state = await partition(disk, 'CAIRN_STATE', dir);
  const sq2 = await fixtureSquashfs(b.system.rootfs, path.join(dir, 'rootfs2.squashfs'), { version: '0.0.2' });
  const env = path.join(dir, 'grubenv');
  await writeFile(env, renderGrubEnv({ cairn_active: '0.0.1', cairn_trial: '0.0.2', cairn_tries: '1' }));
  const cmds = [
    'mkdir /cairn/system/0.0.2',
    `write ${b.system.kernel} /cairn/system/0.0.2/kernel`,
    `write ${b.system.initramfs} /cairn/system/0.0.2/initrd`,
    `write ${sq2} /cairn/system/0.0.2/rootfs.squashfs`,
    'rm /cairn/grub/grubenv',
    `write ${env} /cairn/grub/grubenv`,
  ];
  await writeFile(path.join(dir, 'cmds'), cmds.join('\n') + '\n');
  await execa('debugfs', ['-w', '-f', path.join(dir, 'cmds'), state]);
  await putPartition(disk, 'CAIRN_STATE', state);

  const first = await qemuBoot([...ovmf(dir), '-drive', `file=${disk},format=raw,if=virtio`]);
  t.comment(`raw, OVMF, trial boot: ${first.ms} ms`);
  if (!t.ok(first.ok, 'UEFI raw boot came up')) console.error(first.output);
  t.match(first.output, /cairn-initramfs: system 0\.0\.2 on \/dev\/vda3/, 'GRUB booted the version on trial');
  const after = await partition(disk, 'CAIRN_STATE', dir);
  const envAfter = parseGrubEnv((await execa('debugfs', ['-R', 'cat /cairn/grub/grubenv', after])).stdout);
  t.equal(envAfter.cairn_tries, '0', 'GRUB saved the lowered try count (save_env on ext4)');
  t.equal((await execa('e2fsck', ['-fn', after], { reject: false })).exitCode, 0, 'state still clean');

  const second = await qemuBoot([...ovmf(dir), '-drive', `file=${disk},format=raw,if=virtio`]);
  t.comment(`raw, OVMF, after the trial: ${second.ms} ms`);
  if (!t.ok(second.ok, 'came up again')) console.error(second.output);
  t.match(second.output, /cairn-initramfs: system 0\.0\.1 on \/dev\/vda3/, 'no tries left: the active version boots');
});

t.test('boot amd64 qcow2 (SeaBIOS): GRUB core.img in the BIOS boot partition', async (t) => {
  const b = await build('amd64');
  if (!b || !haveX86) return t.plan(0, unbuilt.amd64 ?? 'needs qemu-system-x86_64');
  const r = await qemuBoot(['-drive', `file=${path.join(b.outDir, `${artifactStem(b.system)}.qcow2`)},format=qcow2,if=virtio,snapshot=on`]);
  t.comment(`qcow2, SeaBIOS: ${r.ms} ms`);
  if (!t.ok(r.ok, 'BIOS disk boot came up')) console.error(r.output);
  t.match(r.output, /cairn-initramfs: system 0\.0\.1 on \/dev\/vda3/);
  t.match(r.output, /CAIRN_BOOT_MODE=state/);
  t.match(r.output, /mount \/dev\/vda3 \/var ext4/, '/var persistent on the state partition');
});

t.test('boot amd64 pxe: QEMU\'s iPXE fetches boot.ipxe, kernel and initrd over HTTP; the first stage the squashfs', async (t) => {
  const b = await build('amd64');
  if (!b || !haveX86) return t.plan(0, unbuilt.amd64 ?? 'needs qemu-system-x86_64');
  // the guest reaches the host's port 80 as http://10.0.2.2/ (the DHCP next-server)
  const server = createServer((req, res) => {
    const file = path.join(b.outDir, decodeURIComponent((req.url ?? '/').split('?')[0]!));
    if (!file.startsWith(b.outDir) || !existsSync(file) || statSync(file).isDirectory()) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-length': statSync(file).size });
    createReadStream(file).pipe(res);
  });
  const listening = await new Promise<boolean>((resolve) => {
    server.once('error', () => resolve(false));
    server.listen(80, '127.0.0.1', () => resolve(true));
  });
  if (!listening) return t.plan(0, 'port 80 is taken on this machine');
  t.teardown(() => server.close());
  const folder = `${artifactStem(b.system)}-pxe`;
  const r = await qemuBoot(['-netdev', `user,id=n0,bootfile=http://10.0.2.2/${folder}/boot.ipxe`, '-device', 'virtio-net-pci,netdev=n0', '-boot', 'n'], { timeoutMs: 180_000 });
  t.comment(`pxe (iPXE, HTTP): ${r.ms} ms`);
  if (!t.ok(r.ok, 'network boot came up')) console.error(r.output);
  t.match(r.output, /cairn: booting fixture 0\.0\.1/);
  t.match(r.output, /CAIRN_BOOT_MODE=net/);
});

// The arm64 and armv7 raw disks are booted from the real default image in
// test/boot/arm.test.ts; the arm64 ISO is booted here.
t.test('boot arm64 iso (UEFI, TCG)', async (t) => {
  const b = await build('arm64');
  if (!b || !haveArm) return t.plan(0, unbuilt.arm64 ?? 'needs qemu-system-aarch64 and qemu-efi-aarch64');
  const file = path.join(b.outDir, `${artifactStem(b.system)}.iso`);
  const media = ['-drive', `file=${file},if=none,id=cd,media=cdrom,readonly=on`, '-device', 'virtio-scsi-pci', '-device', 'scsi-cd,drive=cd'];
  const r = await qemuBoot(['-bios', '/usr/share/qemu-efi-aarch64/QEMU_EFI.fd', '-smp', '2', ...media], { arch: 'arm64', timeoutMs: 200_000 });
  t.comment(`arm64 iso, UEFI: ${r.ms} ms`);
  if (!t.ok(r.ok, 'arm64 iso came up')) console.error(r.output);
  t.match(r.output, /live system 0\.0\.1 on \/dev\/sr0/);
});

t.test('GRUB modules for a foreign arch: fetched from Debian once, then from the cache', async (t) => {
  if (!existsSync('/usr/bin/mmdebstrap')) return t.plan(0, 'no mmdebstrap');
  const cache = await withTempCache(t, 'cairn-grubcache-');
  const lines: string[] = [];
  let dir: string;
  try {
    dir = await grubModuleDir('arm64-efi', { rootfs: path.join(cache, 'no-root') }, { log: (l) => lines.push(l) });
  } catch (err) {
    const why = (err as Error).message.split('\n').find((l) => NETWORK_ERROR.test(l));
    if (why) return t.plan(0, `Debian cannot be reached: ${why}`);
    throw err;
  }
  t.ok(dir.startsWith(cache), 'unpacked into the cache');
  t.ok(existsSync(path.join(dir, 'kernel.img')) && existsSync(path.join(dir, 'linux.mod')));
  t.match(lines.join('\n'), /fetching grub-efi-arm64-bin \(arm64\)/);
  const again: string[] = [];
  t.equal(await grubModuleDir('arm64-efi', { rootfs: path.join(cache, 'no-root') }, { log: (l) => again.push(l) }), dir);
  t.same(again, [], 'no second download');
});
