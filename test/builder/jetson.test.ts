// The NVIDIA Jetson Orin board: the --bsp checks (each bad input a located
// error, nothing written), the extlinux.conf L4TLauncher reads, a Jetson
// image built through the pipeline from a small synthetic BSP tarball with
// the real tarball's layout and checked with the tools that read it (sfdisk,
// fsck.vfat, e2fsck, dumpe2fs, blkid, mtools, debugfs, unsquashfs), and
// the real initramfs builder taking the BSP's modules in place of Debian's.
import t from 'tap';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { EXTLINUX_CONF, jetsonCmdline, renderExtlinuxConf } from '../../boards/jetson/index.js';
import { boardProfile, checkBoard, checkBoardBsp } from '../../src/builder/boards.js';
import { bspRelease, openBsp, parseBspVersion, sha256Of } from '../../src/builder/bsp.js';
import { linkTree } from '../../src/builder/fsutil.js';
import { buildInitramfs } from '../../src/builder/initramfs/index.js';
import { MIB, planDisk, sfdiskScript } from '../../src/boot/disk.js';
import { parseGrubEnv } from '../../src/builder/outputs/grub.js';
import { raw } from '../../src/builder/outputs/raw.js';
import { build } from '../../src/builder/pipeline.js';
import { replaceKernel } from '../../src/builder/stages/system.js';
import type { BuildRecord } from '../../src/builder/record.js';
import { fixtureRoot, kernelOf, unreachableReason, SOURCE_DATE_EPOCH } from '../fixtures/outputs/fixture.js';
import { plantRootfs, quickBuild, tempDir, writeSpec } from './support.js';

t.setTimeout(600_000);

const jetson = boardProfile('jetson');
const KREL = '5.15.148-tegra';
const DTBS = ['tegra234-p3737-0000+p3701-0000-nv.dtb', 'tegra234-p3737-0000+p3701-0005-nv.dtb', 'tegra234-p3768-0000+p3767-0000-nv.dtb', 'tegra234-p3768-0000+p3767-0005-nv.dtb'];

/** An arm64 Image header: "ARM\x64" at byte 56, as the kernel's boot protocol puts it. */
function fakeImage(tag: string): Buffer {
  const b = Buffer.alloc(4096, 0);
  b.write('ARM\x64', 56, 'latin1');
  b.write(`fake tegra kernel ${tag}`, 64, 'latin1');
  return b;
}

interface BspShape {
  branch?: string;
  major?: string;
  minor?: string;
  omit?: ('version' | 'kernel' | 'dtb' | 'supplements' | 'launcher' | 'modules')[];
  notArm64?: boolean;
}

/**
 * A synthetic Jetson Linux BSP: the real tarball's paths (Linux_for_Tegra/
 * nv_tegra/bsp_version, kernel/Image, kernel/dtb/, kernel/kernel_supplements.tbz2
 * holding lib/modules/<release>/ and lib/firmware/, bootloader/BOOTAA64.efi),
 * bzip2-compressed like the real one, with tiny files.
 */
async function makeBsp(dir: string, name: string, shape: BspShape = {}): Promise<string> {
  const omit = new Set(shape.omit ?? []);
  const top = path.join(dir, `${name}.tree`, 'Linux_for_Tegra');
  const put = async (rel: string, content: string | Buffer) => {
    await mkdir(path.dirname(path.join(top, rel)), { recursive: true });
    await writeFile(path.join(top, rel), content);
  };
  if (!omit.has('version')) {
    await put('nv_tegra/bsp_version', `# R${shape.branch ?? '36'} , REVISION: ${shape.major ?? '4'}.${shape.minor ?? '3'}\nBSP_BRANCH=${shape.branch ?? '36'}\nBSP_MAJOR=${shape.major ?? '4'}\nBSP_MINOR=${shape.minor ?? '3'}\n`);
  }
  if (!omit.has('kernel')) await put('kernel/Image', shape.notArm64 ? Buffer.from('MZ not an arm64 image at all, padded'.padEnd(200, '.')) : fakeImage(name));
  if (!omit.has('dtb')) for (const d of DTBS) await put(`kernel/dtb/${d}`, `dtb ${d}`);
  await put('kernel/dtb/tegra234-p3767-camera-p3768-imx219-dual.dtbo', 'an overlay, not a dtb');
  await put('kernel/dtc', 'host tool');
  if (!omit.has('launcher')) await put('bootloader/BOOTAA64.efi', `MZ L4TLauncher ${name}`);
  await put('bootloader/uefi_jetson.bin', 'QSPI firmware, not cairn\'s');
  await put('nv_tegra/nvidia_drivers.tbz2', 'user space, not read');
  if (!omit.has('supplements')) {
    const sup = path.join(dir, `${name}.sup`);

    const files: Record<string, string> = omit.has('modules')
      ? { 'lib/firmware/README': 'no modules here' }
      : {
          [`lib/modules/${KREL}/kernel/drivers/nvme/host/nvme.ko`]: 'nvme module',
          [`lib/modules/${KREL}/kernel/drivers/nvme/host/nvme-core.ko`]: 'nvme-core module',
          [`lib/modules/${KREL}/kernel/sound/core/snd.ko`]: 'sound module',
          [`lib/modules/${KREL}/updates/drivers/gpu/nvgpu/nvgpu.ko`]: 'nvgpu module',
          [`lib/modules/${KREL}/modules.dep`]: 'kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko\nkernel/drivers/nvme/host/nvme-core.ko:\nkernel/sound/core/snd.ko:\nupdates/drivers/gpu/nvgpu/nvgpu.ko:\n',
          [`lib/modules/${KREL}/modules.builtin`]: 'kernel/fs/squashfs/squashfs.ko\nkernel/fs/overlayfs/overlay.ko\nkernel/drivers/block/loop.ko\nkernel/drivers/phy/tegra/phy-tegra194-p2u.ko\n',
          'lib/firmware/nvidia/tegra234/xusb.bin': 'xusb firmware',
        };
    for (const [rel, content] of Object.entries(files)) {
      await mkdir(path.dirname(path.join(sup, rel)), { recursive: true });
      await writeFile(path.join(sup, rel), content);
    }
    await mkdir(path.join(top, 'kernel'), { recursive: true });
    await execa('tar', ['-cjf', path.join(top, 'kernel/kernel_supplements.tbz2'), '-C', sup, '--owner=root', '--group=root', 'lib']);
    // the display driver's modules come in a tarball of their own
    const disp = path.join(dir, `${name}.disp`);
    await mkdir(path.join(disp, 'lib/modules', KREL, 'extra/opensrc-disp'), { recursive: true });
    await writeFile(path.join(disp, 'lib/modules', KREL, 'extra/opensrc-disp/nvidia-drm.ko'), 'nvidia-drm module');
    await execa('tar', ['-cjf', path.join(top, 'kernel/kernel_display_supplements.tbz2'), '-C', disp, '--owner=root', '--group=root', 'lib']);
  }
  const tarball = path.join(dir, `${name}.tbz2`);
  await execa('tar', ['-cjf', tarball, '-C', path.join(dir, `${name}.tree`), '--owner=root', '--group=root', 'Linux_for_Tegra']);
  return tarball;
}

t.test('the jetson board in the table, its arch and --bsp checks', async (t) => {
  t.same(jetson.arches, ['arm64'], 'arm64 only');
  t.same(jetson.defaultFormats, ['raw']);
  t.throws(() => checkBoard('jetson', ['amd64'], ['raw']), { name: 'UserError', message: 'the jetson board does not run amd64' });
  t.throws(() => checkBoard('jetson', ['armv7'], ['raw']), { name: 'UserError', message: 'the jetson board does not run armv7' });
  t.throws(() => checkBoard('jetson', ['arm64'], ['iso']), { name: 'UserError', message: 'a build for the jetson board cannot make iso' });
  t.doesNotThrow(() => checkBoard('jetson', ['arm64'], ['raw', 'oci']));
  t.throws(() => checkBoardBsp('jetson', undefined), { name: 'UserError', message: /^the jetson board boots its vendor's kernel, and no --bsp was given/ });
  t.throws(() => checkBoardBsp('rpi4', 'x.tbz2'), { name: 'UserError', message: /^the rpi4 board takes no --bsp/ });
  t.throws(() => checkBoardBsp(undefined, 'x.tbz2'), { name: 'UserError', message: /^--bsp is the board support package of a board, and this build names no board/ });
  t.doesNotThrow(() => checkBoardBsp('jetson', 'x.tbz2'));
  t.doesNotThrow(() => checkBoardBsp('rpi4', undefined));
  t.doesNotThrow(() => checkBoardBsp(undefined, undefined));
});

t.test('bsp_version: the release, and R36 only', async (t) => {
  t.same(parseBspVersion('# R36 , REVISION: 4.3\nBSP_BRANCH=36\nBSP_MAJOR=4\nBSP_MINOR=3\n'), { branch: '36', major: '4', minor: '3' });
  t.same(bspRelease('BSP_BRANCH=36\nBSP_MAJOR=4\nBSP_MINOR=3\n'), { release: '36.4.3' });
  t.same(bspRelease('export BSP_BRANCH="36"\nBSP_MAJOR=3 # comment\nBSP_MINOR=0\n'), { release: '36.3.0' });
  t.match(bspRelease('BSP_BRANCH=35\nBSP_MAJOR=6\nBSP_MINOR=0\n'), { problem: /^it is Jetson Linux R35\.6\.0, and the jetson board takes R36\.x/ });
  t.match(bspRelease('BSP_BRANCH=38\nBSP_MAJOR=2\nBSP_MINOR=1\n'), { problem: /R38\.2\.1/ });
  t.match(bspRelease('hello\n'), { problem: /has no BSP_BRANCH/ });
});

t.test('extlinux.conf: the menu L4TLauncher reads', async (t) => {
  const a = { version: '0.2.0', cmdline: jetsonCmdline({ version: '0.2.0', cmdline: 'console=ttyS0,115200 quiet' }) };
  t.equal(a.cmdline, 'cairn.mode=state cairn.version=0.2.0 panic=10 watchdog.stop_on_reboot=0 console=ttyTCU0,115200 console=tty0 quiet', "Orin's consoles replace the spec's");
  const b = { version: '0.1.0', cmdline: jetsonCmdline({ version: '0.1.0', cmdline: 'quiet' }), fdt: DTBS[3] };
  const conf = renderExtlinuxConf({ active: '0.2.0', fallback: '0.1.0' }, [a, b]);
  const lines = conf.split('\n').map((l) => l.trim());
  t.ok(lines.includes('TIMEOUT 30'));
  t.ok(lines.includes('DEFAULT cairn-0.2.0'), 'the active version is DEFAULT');
  t.same(lines.filter((l) => l.startsWith('LABEL ')), ['LABEL cairn-0.2.0', 'LABEL cairn-0.1.0'], 'active first, then the fallback');
  t.ok(lines.includes('LINUX /cairn/system/0.2.0/kernel'));
  t.ok(lines.includes('INITRD /cairn/system/0.1.0/initrd'));
  t.ok(lines.includes(`FDT /cairn/system/0.1.0/dtb/${DTBS[3]}`), 'an FDT line only where one is asked for');
  t.equal(lines.filter((l) => l.startsWith('FDT ')).length, 1);
  t.ok(lines.includes('APPEND ${cbootargs} cairn.mode=state cairn.version=0.2.0 panic=10 watchdog.stop_on_reboot=0 console=ttyTCU0,115200 console=tty0 quiet cairn.loader=fixed'), 'L4TLauncher counts no tries: the first stage chooses');
  const alone = renderExtlinuxConf({ active: '0.1.0' }, [a, b]);
  t.same(alone.split('\n').filter((l) => l.startsWith('LABEL ')), ['LABEL cairn-0.1.0'], 'no fallback, one entry');
  t.throws(() => renderExtlinuxConf({ active: '9.9.9' }, [a]), /no entry for the active version 9\.9\.9/);
});

t.test('the jetson disk plan: GPT, the ESP named esp, CAIRN_STATE named APP for L4TLauncher', async (t) => {
  const plan = planDisk({ arch: 'arm64', efiBytes: 1 * MIB, stateBytes: 300 * MIB, seed: 's', board: jetson.disk });
  t.equal(plan.table, 'gpt');
  t.same(plan.partitions.map((p) => [p.name, p.partName, p.type]), [
    ['CAIRN_EFI', 'esp', 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B'],
    ['CAIRN_STATE', 'APP', '0FC63DAF-8483-4772-8E79-3D69D8477DE4'],
  ]);
  const script = sfdiskScript(plan);
  t.match(script, /type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=[0-9a-f-]+, name="esp"$/m);
  t.match(script, /name="APP"$/m);
  t.equal(plan.bytes, (2048 + 64 * 2048 + 300 * 2048 + 2048) * 512, 'room for the backup GPT at the end');
});

t.test('bad --bsp input: each a clear error, nothing written', async (t) => {
  const dir = await tempDir('cairn-jetson-bad-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const spec = await writeSpec(dir);
  const cases: { name: string; bsp?: string | (() => Promise<string>); board?: 'jetson' | 'rpi4'; arch?: 'amd64' | 'arm64'; message: RegExp }[] = [
    { name: 'an arch the board does not run', bsp: () => makeBsp(dir, 'ok-amd64'), arch: 'amd64', message: /^the jetson board does not run amd64$/ },
    { name: 'no --bsp', message: /^the jetson board boots its vendor's kernel, and no --bsp was given/ },
    { name: '--bsp for the rpi4', bsp: () => makeBsp(dir, 'ok-rpi4'), board: 'rpi4', message: /^the rpi4 board takes no --bsp/ },
    { name: 'no such file', bsp: path.join(dir, 'Jetson_Linux_R36.4.3_aarch64.tbz2'), message: /: no such file$/ },
    { name: 'a folder', bsp: async () => (await mkdir(path.join(dir, 'Linux_for_Tegra'), { recursive: true }), path.join(dir, 'Linux_for_Tegra')), message: /is not a file$/ },
    { name: 'not a tarball', bsp: async () => (await writeFile(path.join(dir, 'notes.tbz2'), 'plain text, not an archive\n'), path.join(dir, 'notes.tbz2')), message: /is not a readable tar archive/ },
    { name: 'R35', bsp: () => makeBsp(dir, 'r35', { branch: '35', major: '6', minor: '0' }), message: /: it is Jetson Linux R35\.6\.0, and the jetson board takes R36\.x/ },
    { name: 'no bsp_version', bsp: () => makeBsp(dir, 'nover', { omit: ['version'] }), message: /has no Linux_for_Tegra\/nv_tegra\/bsp_version, so its release cannot be checked/ },
    { name: 'no kernel Image', bsp: () => makeBsp(dir, 'noimage', { omit: ['kernel'] }), message: /\(Jetson Linux R36\.4\.3\) lacks Linux_for_Tegra\/kernel\/Image \(the kernel\)$/ },
    { name: 'no dtbs', bsp: () => makeBsp(dir, 'nodtb', { omit: ['dtb'] }), message: /lacks Linux_for_Tegra\/kernel\/dtb\/tegra234-\*\.dtb \(the Orin device trees\)$/ },
    { name: 'no kernel_supplements', bsp: () => makeBsp(dir, 'nosup', { omit: ['supplements'] }), message: /lacks Linux_for_Tegra\/kernel\/kernel_supplements\.tbz2 \(the kernel's modules\)$/ },
    { name: 'no L4TLauncher', bsp: () => makeBsp(dir, 'nolauncher', { omit: ['launcher'] }), message: /lacks Linux_for_Tegra\/bootloader\/BOOTAA64\.efi/ },
    { name: 'two things missing at once', bsp: () => makeBsp(dir, 'two', { omit: ['kernel', 'dtb'] }), message: /lacks Linux_for_Tegra\/kernel\/Image \(the kernel\), Linux_for_Tegra\/kernel\/dtb\/tegra234-\*\.dtb/ },
    { name: 'supplements without modules', bsp: () => makeBsp(dir, 'nomods', { omit: ['modules'] }), message: /kernel_supplements\.tbz2 holds no kernel modules; it must hold lib\/modules\/<release>\// },
    { name: 'an Image that is not arm64', bsp: () => makeBsp(dir, 'notarm', { notArm64: true }), message: /Linux_for_Tegra\/kernel\/Image is not an arm64 kernel Image$/ },
  ];
  for (const c of cases) {
    const bsp = typeof c.bsp === 'function' ? await c.bsp() : c.bsp;
    const out = path.join(dir, `out-${c.name.replace(/\W+/g, '-')}`);
    const cache = path.join(dir, `cache-${c.name.replace(/\W+/g, '-')}`);
    const q = quickBuild(spec, cache, out, { arches: [c.arch ?? 'arm64'], formats: ['raw'], board: c.board ?? 'jetson', bsp, outputs: { raw } });
    await t.rejects(build(q.opts), { name: 'UserError', message: c.message }, c.name);
    t.notOk(existsSync(out), `${c.name}: no output folder`);
    t.notOk(existsSync(cache), `${c.name}: no cache written`);
  }
  // every error says what to do
  const r = await build(quickBuild(spec, path.join(dir, 'c'), path.join(dir, 'o'), { arches: ['arm64'], formats: ['raw'], board: 'jetson', bsp: await makeBsp(dir, 'r35b', { branch: '35' }), outputs: { raw } }).opts).catch((e: unknown) => e);
  t.match((r as { hint?: string }).hint ?? String(r), /Jetson_Linux_R36\.<x>_aarch64\.tbz2/, 'the hint names the tarball to bring');
});

t.test('openBsp on a good synthetic BSP', async (t) => {
  const dir = await tempDir('cairn-jetson-open-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const tarball = await makeBsp(dir, 'Jetson_Linux_R36.4.3_aarch64');
  const b = await openBsp(tarball, path.join(dir, 'work'));
  t.equal(b.release, '36.4.3');
  t.equal(b.kernelRelease, KREL);
  t.equal(b.sha256, await sha256Of(tarball));
  t.match(b.sha256, /^[0-9a-f]{64}$/);
  t.same(b.dtbs.map((d) => path.basename(d)), [...DTBS].sort(), 'the Orin dtbs, not the overlays');
  t.equal(await readFile(b.launcher, 'utf8'), 'MZ L4TLauncher Jetson_Linux_R36.4.3_aarch64');
  t.ok(existsSync(path.join(b.supplements, 'lib/modules', KREL, 'updates/drivers/gpu/nvgpu/nvgpu.ko')));
  t.ok(existsSync(path.join(b.supplements, 'lib/modules', KREL, 'extra/opensrc-disp/nvidia-drm.ko')), 'the display supplements laid over them');
  t.notOk(existsSync(path.join(dir, 'work/Linux_for_Tegra/bootloader/uefi_jetson.bin')), 'only what the image needs is unpacked');
});

const mtools = { env: { MTOOLS_SKIP_CHECK: '1' } };
/** Incompat features edk2-platforms' Ext4Dxe (the ext4 driver in Orin's UEFI) refuses to mount. */
const EXT4DXE_REFUSES = ['meta_bg', 'inline_data', 'encrypt', 'casefold', 'ea_inode', 'journal_dev', 'compression'];

t.test('a Jetson image through the pipeline from a synthetic BSP, checked with real tools', async (t) => {
  const dir = await tempDir('cairn-jetson-build-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const spec = await writeSpec(dir);
  const cache = path.join(dir, 'cache');
  await plantRootfs(cache, spec, 'arm64');
  const tarball = await makeBsp(dir, 'Jetson_Linux_R36.4.3_aarch64');
  const out = path.join(dir, 'out');
  const q = quickBuild(spec, cache, out, { arches: ['arm64'], formats: ['raw'], board: 'jetson', bsp: tarball, outputs: { raw } });
  const record: BuildRecord = await build(q.opts);
  const sys = record.systems[0]!;
  t.equal(sys.board, 'jetson');
  t.equal(sys.kernelRelease, KREL, "the system's kernel is the BSP's");
  t.same(sys.inputs.bsp, { file: 'Jetson_Linux_R36.4.3_aarch64.tbz2', sha256: await sha256Of(tarball), release: '36.4.3', kernelRelease: KREL }, 'the BSP recorded by name, sha256 and release');
  const onDisk = JSON.parse(await readFile(path.join(out, 'build.json'), 'utf8')) as BuildRecord;
  t.same(onDisk.systems[0]!.inputs.bsp, sys.inputs.bsp, 'build.json has it too');
  t.same(record.artifacts.map((a) => a.file), ['test-0.0.1-arm64-jetson.img']);
  t.notOk(existsSync(path.join(out, 'Linux_for_Tegra')), 'no BSP file in the output folder');
  const img = path.join(out, 'test-0.0.1-arm64-jetson.img');

  const { stdout } = await execa('sfdisk', ['--json', img]);
  const table = (JSON.parse(stdout) as { partitiontable: { label: string; partitions: { start: number; size: number; type: string; name: string }[] } }).partitiontable;
  t.equal(table.label, 'gpt');
  t.same(table.partitions.map((p) => [p.name, p.type]), [['esp', 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B'], ['APP', '0FC63DAF-8483-4772-8E79-3D69D8477DE4']], 'an ESP, then the partition L4TLauncher looks up by the name APP');
  const cut = async (i: number, name: string) => {
    const p = table.partitions[i]!;
    const f = path.join(dir, name);
    await execa('dd', [`if=${img}`, `of=${f}`, 'bs=512', `skip=${p.start}`, `count=${p.size}`, 'status=none']);
    return f;
  };
  const esp = await cut(0, 'esp.img');
  const state = await cut(1, 'state.img');
  t.equal((await execa('fsck.vfat', ['-n', esp], { reject: false })).exitCode, 0, 'fsck.vfat -n: clean');
  t.equal((await execa('e2fsck', ['-fn', state], { reject: false })).exitCode, 0, 'e2fsck -fn: clean');
  t.match((await execa('blkid', ['-o', 'export', esp])).stdout, /^LABEL=CAIRN_EFI$/m);
  t.match((await execa('blkid', ['-o', 'export', esp])).stdout, /^TYPE=vfat$/m);
  t.match((await execa('blkid', ['-o', 'export', state])).stdout, /^LABEL=CAIRN_STATE$/m, 'the first stage still finds it by its label');
  const features = /^Filesystem features:\s+(.*)$/m.exec((await execa('dumpe2fs', ['-h', state], { stderr: 'ignore' })).stdout)![1]!.split(/\s+/);
  t.ok(features.includes('extent'), `ext4 features: ${features.join(' ')}`);
  t.same(features.filter((f) => EXT4DXE_REFUSES.includes(f)), [], "no ext4 feature that UEFI's Ext4Dxe refuses");

  const espFiles = (await execa('mdir', ['-/', '-b', '-i', esp, '::/'], mtools)).stdout.split('\n').map((l) => l.replace(/^::\//, '').trim()).filter(Boolean);
  t.ok(espFiles.includes('EFI/BOOT/BOOTAA64.efi'), 'L4TLauncher where UEFI looks for a removable disk\'s boot application');
  const launcher = path.join(dir, 'BOOTAA64.efi');
  await execa('mcopy', ['-n', '-i', esp, '::/EFI/BOOT/BOOTAA64.efi', launcher], mtools);
  t.equal(await readFile(launcher, 'utf8'), 'MZ L4TLauncher Jetson_Linux_R36.4.3_aarch64', "the BSP's L4TLauncher, byte for byte");

  const cat = async (f: string) => Buffer.from((await execa('debugfs', ['-R', `cat ${f}`, state], { stderr: 'ignore', encoding: 'buffer', stripFinalNewline: false })).stdout);
  const exists = async (f: string) => !/File not found/.test((await execa('debugfs', ['-R', `stat ${f}`, state], { all: true })).all ?? '');
  const conf = (await cat(`/${EXTLINUX_CONF}`)).toString('utf8');
  const cmdline = 'cairn.mode=state cairn.version=0.0.1 panic=10 watchdog.stop_on_reboot=0 console=ttyTCU0,115200 console=tty0';
  t.equal(conf, renderExtlinuxConf({ active: '0.0.1' }, [{ version: '0.0.1', cmdline }]), '/boot/extlinux/extlinux.conf on APP');
  t.match(conf, /^DEFAULT cairn-0\.0\.1$/m);
  t.match(conf, /^\s+APPEND \$\{cbootargs\} cairn\.mode=state cairn\.version=0\.0\.1 panic=10 watchdog\.stop_on_reboot=0 console=ttyTCU0,115200 console=tty0 cairn\.loader=fixed$/m, "the spec's console=ttyS0 gives way to Orin's");
  t.same(JSON.parse((await cat('/cairn/loader.json')).toString()), { board: 'jetson', console: 'console=ttyTCU0,115200 console=tty0' }, 'the state partition says which loader starts it');
  for (const m of conf.matchAll(/^\s+(LINUX|INITRD) (\S+)$/gm)) t.ok(await exists(m[2]!), `${m[1]} ${m[2]} is on the state partition`);
  t.equal((await cat('/cairn/system/0.0.1/extlinux.conf')).toString('utf8'), conf, "the version's own extlinux.conf");
  for (const d of DTBS) t.equal((await cat(`/cairn/system/0.0.1/dtb/${d}`)).toString('utf8'), `dtb ${d}`, `${d} in the version's dtb/`);
  t.equal((await cat('/cairn/system/0.0.1/kernel')).subarray(0, 4096).toString('latin1'), fakeImage('Jetson_Linux_R36.4.3_aarch64').toString('latin1'), "the kernel is the BSP's Image");
  t.equal((await cat('/cairn/system/0.0.1/initrd')).toString('utf8'), `initramfs arm64 ${KREL} 1700000000\n`, 'the initramfs was made for the BSP kernel');
  t.equal(parseGrubEnv(await cat('/cairn/grub/grubenv')).cairn_active, '0.0.1', 'the boot state names the version');
  t.equal(parseGrubEnv(await cat('/cairn/system/0.0.1/bootenv')).cairn_cmdline, cmdline);

  // the squashfs carries the BSP's modules and firmware, not Debian's
  const sq = path.join(dir, 'rootfs.squashfs');
  await writeFile(sq, await cat('/cairn/system/0.0.1/rootfs.squashfs'));
  const listing = (await execa('unsquashfs', ['-l', '-d', '', sq])).stdout.split('\n');
  const has = (p: string) => listing.includes(p);
  t.ok(has(`/usr/lib/modules/${KREL}/updates/drivers/gpu/nvgpu/nvgpu.ko`), "NVIDIA's own modules kept (the board's keepModules)");
  t.ok(has(`/usr/lib/modules/${KREL}/kernel/drivers/nvme/host/nvme.ko`));
  t.ok(has(`/usr/lib/modules/${KREL}/extra/opensrc-disp/nvidia-drm.ko`), "the display driver's modules (kernel_display_supplements.tbz2)");
  t.ok(has(`/usr/lib/modules/${KREL}/modules.dep`), 'depmod ran for the BSP kernel');
  t.notOk(has(`/usr/lib/modules/${KREL}/kernel/sound/core/snd.ko`), 'the module profile still prunes');
  t.notOk(listing.some((l) => l.startsWith('/usr/lib/modules/6.12.0-test-amd64')), "no Debian kernel's modules");
  t.notOk(listing.some((l) => l.startsWith('/boot/vmlinuz')), 'no kernel image in the root');
  t.ok(has('/usr/lib/firmware/nvidia/tegra234/xusb.bin'), "the BSP's firmware");

  // a second build from the cache gives the same image
  const again = await build(quickBuild(spec, cache, path.join(dir, 'out2'), { arches: ['arm64'], formats: ['raw'], board: 'jetson', bsp: tarball, outputs: { raw } }).opts);
  t.equal(again.artifacts[0]!.sha256, record.artifacts[0]!.sha256, 'byte-identical from the same inputs');
  const system = again.systems[0]!.stages.find((s) => s.name === 'system');
  t.equal(system?.cached, true, 'the system tree came from the cache, keyed by the BSP');

  // another BSP (another sha256) is another system tree
  const other = await makeBsp(dir, 'Jetson_Linux_R36.4.4_aarch64', { minor: '4' });
  const third = await build(quickBuild(spec, cache, path.join(dir, 'out3'), { arches: ['arm64'], formats: ['raw'], board: 'jetson', bsp: other, outputs: { raw } }).opts);
  t.equal(third.systems[0]!.stages.find((s) => s.name === 'system')?.cached, false, 'a changed BSP rebuilds the system tree');
  t.equal(third.systems[0]!.inputs.bsp?.release, '36.4.4');
});

t.test('the real initramfs builder takes the BSP kernel\'s modules, the Debian root stays as it was', async (t) => {
  let fixture: string;
  try {
    fixture = await fixtureRoot('arm64');
  } catch (err) {
    return t.plan(0, unreachableReason(err));
  }
  const dir = await tempDir('cairn-jetson-initrd-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const debian = (await kernelOf(fixture)).release;
  const bsp = await openBsp(await makeBsp(dir, 'Jetson_Linux_R36.4.3_aarch64'), path.join(dir, 'bsp'));
  const root = path.join(dir, 'root');
  await linkTree(fixture, root);
  await replaceKernel(root, debian, { kernel: bsp.kernel, kernelRelease: bsp.kernelRelease, supplements: bsp.supplements });
  t.notOk(existsSync(path.join(root, 'usr/lib/modules', debian)), "Debian's modules are gone from the copy");
  t.ok(existsSync(path.join(fixture, 'usr/lib/modules', debian)), '...and still in the fixture root it was linked from');
  t.ok(existsSync(path.join(fixture, 'boot', `vmlinuz-${debian}`)), "the fixture's kernel is untouched");
  const out = path.join(dir, 'initrd');
  await buildInitramfs({ rootfs: root, kernelRelease: KREL, arch: 'arm64', out, sourceDateEpoch: SOURCE_DATE_EPOCH, extraModules: jetson.initramfsModules });
  const cpio = (await execa('zstd', ['-dc', out], { encoding: 'buffer' })).stdout;
  const names = (await execa('cpio', ['-t', '--quiet'], { input: Buffer.from(cpio) })).stdout.split('\n');
  t.ok(names.includes(`lib/modules/${KREL}/kernel/drivers/nvme/host/nvme.ko`), 'the BSP kernel\'s nvme module');
  t.ok(names.includes(`lib/modules/${KREL}/kernel/drivers/nvme/host/nvme-core.ko`), '...and what it depends on');
  t.notOk(names.some((n) => n.startsWith(`lib/modules/${debian}`)), "no Debian kernel's modules");
  t.ok(names.includes('sbin/e2fsck') || names.some((n) => n.endsWith('/e2fsck')), 'e2fsck from the Debian root');
  const x = path.join(dir, 'x');
  await mkdir(x);
  await execa('cpio', ['-id', '--quiet', 'etc/cairn-initramfs/*', `lib/modules/${KREL}/modules.dep`], { input: Buffer.from(cpio), cwd: x });
  t.match(await readFile(path.join(x, 'etc/cairn-initramfs/release'), 'utf8'), new RegExp(`^KERNEL_RELEASE=${KREL.replace(/\./g, '\\.')}$`, 'm'));
  const load = (await readFile(path.join(x, 'etc/cairn-initramfs/modules'), 'utf8')).split('\n').filter(Boolean);
  t.ok(load.includes('nvme') && load.includes('nvme_core'), `loads ${load.join(' ')}`);
  t.match(await readFile(path.join(x, `lib/modules/${KREL}/modules.dep`), 'utf8'), /^kernel\/drivers\/nvme\/host\/nvme\.ko: kernel\/drivers\/nvme\/host\/nvme-core\.ko$/m, "modprobe finds nvme's dependency in the BSP kernel's modules.dep");
});
