// Boards: the table and its checks, the Raspberry Pi 4 boot files as pure
// text, then the rpi4 card image written from the real trixie arm64 and
// armhf kernels of the fixture roots and checked with the tools that read
// it (sfdisk, fsck.vfat, e2fsck, mtools, debugfs, blkid), and booted under
// QEMU virt with the card as its disk.
import t from 'tap';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { ACTIVE_FILE_BYTES, renderActiveFile, renderCmdlineTxt, renderConfigTxt } from '../../boards/rpi4/index.js';
import { BOARDS, boardProfile, checkBoard, parseBoard } from '../../src/builder/boards.js';
import { parseFormats } from '../../src/builder/formats.js';
import { buildInitramfs } from '../../src/builder/initramfs/index.js';
import { sha256File } from '../../src/builder/outputs/common.js';
import { MIB, planDisk, sfdiskScript } from '../../src/boot/disk.js';
import { parseGrubEnv } from '../../src/builder/outputs/grub.js';
import { raw } from '../../src/builder/outputs/raw.js';
import type { Arch, SystemArtifacts } from '../../src/builder/types.js';
import { renderState, renderVersionEnv } from '../../src/boot/state.js';
import { SOURCE_DATE_EPOCH, fixtureSquashfs, fixtureSystem, qemuBoot, unreachableReason } from '../fixtures/outputs/fixture.js';
import { withTempCache } from './support.js';

t.setTimeout(1_200_000);

const rpi4 = boardProfile('rpi4');

t.test('the board table and its checks', async (t) => {
  t.same(BOARDS, ['jetson', 'rpi4']);
  t.equal(parseBoard('rpi4'), 'rpi4');
  t.throws(() => parseBoard('rpi5'), { name: 'UserError', message: 'unknown board "rpi5"' });
  t.throws(() => parseBoard('raw'), { name: 'UserError', message: '"raw" is a format, not a board' });
  t.throws(() => parseFormats('rpi4'), { name: 'UserError', message: 'unknown format "rpi4"' });
  t.throws(() => checkBoard('rpi4', ['amd64'], ['raw']), { name: 'UserError', message: 'the rpi4 board does not run amd64' });
  t.throws(() => checkBoard('rpi4', ['arm64'], ['raw', 'iso']), { name: 'UserError', message: 'a build for the rpi4 board cannot make iso' });
  t.doesNotThrow(() => checkBoard('rpi4', ['arm64', 'armv7'], ['raw', 'oci']));
  t.same(rpi4.defaultFormats, ['raw']);
});

t.test('config.txt, cmdline.txt and cairn-active.txt', async (t) => {
  const c64 = renderConfigTxt({ arch: 'arm64' });
  const c32 = renderConfigTxt({ arch: 'armv7' });
  for (const line of ['enable_uart=1', 'upstream_kernel=1', 'kernel=vmlinuz', 'initramfs initrd followkernel', 'include cairn-active.txt']) {
    t.ok(c64.split('\n').includes(line), `arm64: ${line}`);
    t.ok(c32.split('\n').includes(line), `armv7: ${line}`);
  }
  t.ok(c64.split('\n').includes('arm_64bit=1'), 'arm64 boots the 64-bit kernel');
  t.notOk(c32.includes('arm_64bit'), 'armv7 boots the 32-bit kernel');
  // the spec's PC consoles are dropped; the Pi's are the board's
  t.equal(
    renderCmdlineTxt({ version: '0.2.0', cmdline: 'console=tty1 console=ttyS0,115200 quiet' }),
    'cairn.mode=state cairn.version=0.2.0 panic=10 watchdog.stop_on_reboot=0 console=ttyS1,115200 console=tty1 quiet cairn.loader=fixed\n',
  );
  const active = renderActiveFile('0.2.0');
  t.equal(active.length, ACTIVE_FILE_BYTES, 'one sector');
  t.equal(active.toString('ascii').split('\n')[0], 'os_prefix=cairn/0.2.0/');
  t.throws(() => renderActiveFile('v'.repeat(600)), /too long/);
});

t.test('disk plan for a board: MBR, its FAT32 boot partition first, the state last', async (t) => {
  const plan = planDisk({ arch: 'arm64', efiBytes: 80 * MIB, stateBytes: 300 * MIB, seed: 's', board: rpi4.disk });
  t.equal(plan.table, 'dos');
  t.same(plan.partitions.map((p) => [p.name, p.type]), [['CAIRN_BOOT', 'c'], ['CAIRN_STATE', '83']]);
  t.equal(plan.partitions[0]!.start, 2048, 'first partition at 1 MiB');
  t.equal(plan.partitions[0]!.size, 512 * 2048, 'the board\'s 512 MiB');
  t.equal(plan.bytes, (2048 + 512 * 2048 + 300 * 2048) * 512, 'no room for a backup GPT: the state partition ends the disk');
  t.match(plan.labelId, /^0x[0-9a-f]{8}$/);
  const script = sfdiskScript(plan);
  t.match(script, /^label: dos$/m);
  t.match(script, /start=2048, size=1048576, type=c, bootable$/m);
  t.notMatch(script, /name=|uuid=/, 'MBR has no partition names');
  const big = planDisk({ arch: 'arm64', efiBytes: 700 * MIB, stateBytes: 300 * MIB, seed: 's', board: rpi4.disk });
  t.equal(big.partitions[0]!.size, 700 * 2048, 'the boot partition grows with what it holds');
});

interface Part {
  start: number;
  size: number;
  type: string;
  bootable?: boolean;
}

async function partitions(img: string): Promise<{ label: string; id: string; partitions: Part[] }> {
  const { stdout } = await execa('sfdisk', ['--json', img]);
  return (JSON.parse(stdout) as { partitiontable: { label: string; id: string; partitions: Part[] } }).partitiontable;
}

async function extract(img: string, p: Part, out: string): Promise<string> {
  await execa('dd', [`if=${img}`, `of=${out}`, 'bs=512', `skip=${p.start}`, `count=${p.size}`, 'status=none']);
  return out;
}

const mtools = { env: { MTOOLS_SKIP_CHECK: '1' } };

for (const arch of ['arm64', 'armv7'] as Arch[]) {
  t.test(`rpi4 card image for ${arch}: checked by the tools that read it, booted under QEMU virt`, async (t) => {
    const dir = await mkdtemp(path.join(tmpdir(), `cairn-rpi4-${arch}-`));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    let system: SystemArtifacts;
    try {
      system = { ...(await fixtureSystem(arch, path.join(dir, 'system'), path.join(dir, 'system/initrd'))), board: 'rpi4' };
    } catch (err) {
      return t.plan(0, unreachableReason(err));
    }
    await buildInitramfs({ rootfs: system.rootfs, kernelRelease: system.kernelRelease, arch, out: system.initramfs, sourceDateEpoch: SOURCE_DATE_EPOCH, extraModules: rpi4.initramfsModules });
    const out = path.join(dir, 'out');
    await mkdir(out);
    const arts = await raw(system, { outDir: out, workDir: path.join(dir, 'work'), log: () => undefined });
    t.same(arts, [{ file: `fixture-0.0.1-${arch}-rpi4.img`, format: 'raw', arch }]);
    const img = path.join(out, arts[0]!.file);

    const table = await partitions(img);
    t.equal(table.label, 'dos', 'MBR');
    t.same(table.partitions.map((p) => p.type), ['c', '83']);
    t.equal(table.partitions[0]!.bootable, true, 'the boot partition is marked active');
    const boot = await extract(img, table.partitions[0]!, path.join(dir, 'boot.img'));
    const state = await extract(img, table.partitions[1]!, path.join(dir, 'state.img'));
    t.equal((await execa('fsck.vfat', ['-n', boot], { reject: false })).exitCode, 0, 'fsck.vfat -n: clean');
    t.equal((await execa('e2fsck', ['-fn', state], { reject: false })).exitCode, 0, 'e2fsck -fn: clean');
    t.match((await execa('blkid', ['-o', 'export', boot])).stdout, /^LABEL=CAIRN_BOOT$/m);
    const bootSector = Buffer.alloc(90);
    await open(boot).then(async (fh) => (await fh.read(bootSector, 0, 90, 0), fh.close()));
    t.equal(bootSector.toString('ascii', 82, 90), 'FAT32   ', 'FAT32 (the Pi\'s firmware reads FAT16 and FAT32)');
    t.match((await execa('blkid', ['-o', 'export', state])).stdout, /^LABEL=CAIRN_STATE$/m);

    const files = (await execa('mdir', ['-/', '-b', '-i', boot, '::/'], mtools)).stdout.split('\n').map((l) => l.replace(/^::\//, '').trim()).filter(Boolean);
    for (const f of ['start4.elf', 'fixup4.dat', 'start4x.elf', 'fixup4cd.dat', 'config.txt', 'cairn-active.txt', 'cairn/0.0.1/vmlinuz', 'cairn/0.0.1/initrd', 'cairn/0.0.1/cmdline.txt']) {
      t.ok(files.includes(f), `boot partition has ${f}`);
    }
    const read = async (f: string) => (await execa('mtype', ['-i', boot, `::/${f}`], { ...mtools, stripFinalNewline: false })).stdout;
    const copy = async (f: string) => {
      const to = path.join(dir, path.basename(f));
      await execa('mcopy', ['-n', '-i', boot, `::/${f}`, to], mtools);
      return to;
    };
    t.equal(await read('config.txt'), renderConfigTxt({ arch }));
    t.equal((await read('config.txt')).includes('arm_64bit=1'), arch === 'arm64', 'arm_64bit=1 only on arm64');
    const active = await copy('cairn-active.txt');
    t.equal((await readFile(active)).length, 512, 'cairn-active.txt is one sector');
    t.equal((await readFile(active, 'ascii')).split('\n')[0], 'os_prefix=cairn/0.0.1/');
    const cmdline = (await read('cairn/0.0.1/cmdline.txt')).trim();
    t.equal(cmdline, 'cairn.mode=state cairn.version=0.0.1 panic=10 watchdog.stop_on_reboot=0 console=ttyS1,115200 console=tty1 quiet cairn.loader=fixed');
    t.equal(await sha256File(await copy('cairn/0.0.1/vmlinuz')), await sha256File(system.kernel), 'the image\'s kernel');
    t.equal(await sha256File(await copy('cairn/0.0.1/initrd')), await sha256File(system.initramfs), 'the image\'s initramfs');
    const dtDir = path.join(system.rootfs, 'usr/lib', `linux-image-${system.kernelRelease}`, arch === 'arm64' ? 'broadcom' : '');
    for (const dtb of ['bcm2711-rpi-4-b.dtb', 'bcm2711-rpi-400.dtb', 'bcm2711-rpi-cm4-io.dtb']) {
      t.equal(await sha256File(await copy(`cairn/0.0.1/${dtb}`)), await sha256File(path.join(dtDir, dtb)), `${dtb} from the kernel package`);
    }

    const ls = (await execa('debugfs', ['-R', 'ls -p /cairn/system/0.0.1', state], { stderr: 'ignore' })).stdout;
    for (const f of ['kernel', 'initrd', 'rootfs.squashfs', 'release.json', 'bootenv', 'SHA256SUMS']) t.match(ls, new RegExp(`/${f.replace('.', '\\.')}/`), `state has ${f}`);
    const debugfsCat = async (f: string) => Buffer.from((await execa('debugfs', ['-R', `cat ${f}`, state], { stderr: 'ignore', encoding: 'buffer' })).stdout);
    const env = parseGrubEnv(await debugfsCat('/cairn/grub/grubenv'));
    t.equal(env.cairn_active, '0.0.1', 'the boot state names the version');
    const bootenv = parseGrubEnv(await debugfsCat('/cairn/system/0.0.1/bootenv'));
    t.equal(`${bootenv.cairn_cmdline} cairn.loader=fixed`, cmdline, 'the version\'s bootenv holds the Pi\'s command line, without the loader\'s mark');
    t.same(JSON.parse((await debugfsCat('/cairn/loader.json')).toString()), { board: 'rpi4', console: 'console=ttyS1,115200 console=tty1' }, 'the state partition says which loader starts it');

    // The card's own kernel, initramfs and command line on QEMU's virt
    // machine (its UART is ttyAMA0, not the Pi's ttyS1), the card as its disk.
    const qemu = arch === 'arm64' ? '/usr/bin/qemu-system-aarch64' : '/usr/bin/qemu-system-arm';
    if (!existsSync(qemu)) return t.comment(`no ${qemu}: the boot is not tried`);
    const args = cmdline.replace('console=ttyS1,115200 console=tty1', 'console=ttyAMA0,115200');
    const r = await qemuBoot(['-kernel', await copy('cairn/0.0.1/vmlinuz'), '-initrd', await copy('cairn/0.0.1/initrd'), '-append', args, '-drive', `file=${img},format=raw,if=virtio,snapshot=on`], { arch, timeoutMs: 240_000 });
    t.comment(`${arch} rpi4 card on virt: ${r.ms} ms`);
    if (!t.ok(r.ok, 'the first stage found the system on the card and switched to it')) console.error(r.output);
    t.match(r.output, /system 0\.0\.1 on \/dev\/vda2/, 'CAIRN_STATE found on the MBR card');
    t.notMatch(r.output, /with kexec/, 'no trial: the version the loader started boots itself');

    // Trials on a loader that does not count: the firmware always starts
    // 0.0.1's kernel (the harness plays the firmware: the same kernel,
    // initramfs and command line on every reset); its first stage spends a
    // try and starts the trial with kexec.
    const kernel = await copy('cairn/0.0.1/vmlinuz');
    const initrd = await copy('cairn/0.0.1/initrd');
    const withTrial = async (name: string, version: string, versionCmdline: string): Promise<string> => {
      const card = path.join(dir, `${name}.img`);
      await execa('cp', ['--sparse=always', img, card]);
      const st = path.join(dir, `${name}-state.img`);
      await extract(card, table.partitions[1]!, st);
      const vdir = path.join(dir, `${name}-v`);
      await mkdir(vdir, { recursive: true });
      await fixtureSquashfs(system.rootfs, path.join(vdir, 'rootfs.squashfs'), { version });
      await writeFile(path.join(vdir, 'bootenv'), renderVersionEnv(versionCmdline));
      await writeFile(path.join(vdir, 'grubenv'), renderState({ active: '0.0.1', trial: version, tries: 1 }));
      const cmds = [
        `mkdir /cairn/system/${version}`,
        `write ${system.kernel} /cairn/system/${version}/kernel`,
        `write ${system.initramfs} /cairn/system/${version}/initrd`,
        `write ${path.join(vdir, 'rootfs.squashfs')} /cairn/system/${version}/rootfs.squashfs`,
        `write ${path.join(vdir, 'bootenv')} /cairn/system/${version}/bootenv`,
        'rm /cairn/grub/grubenv',
        `write ${path.join(vdir, 'grubenv')} /cairn/grub/grubenv`,
      ];
      await execa('debugfs', ['-w', '-f', '-', st], { input: cmds.join('\n') + '\n', stderr: 'ignore' });
      await execa('dd', [`if=${st}`, `of=${card}`, 'bs=512', `seek=${table.partitions[1]!.start}`, 'conv=notrunc,sparse', 'status=none']);
      return card;
    };
    const firmware = (card: string) => ['-kernel', kernel, '-initrd', initrd, '-append', args, '-drive', `file=${card},format=raw,if=virtio,snapshot=on`];
    // the trial's own command line, not quiet, with a mark the loader's has not
    const v2cmdline = rpi4.cmdline({ version: '0.0.2', cmdline: 'cairn.test=own-cmdline' });

    const good = await qemuBoot(firmware(await withTrial('good', '0.0.2', v2cmdline.replace('console=ttyS1,115200 console=tty1', 'console=ttyAMA0,115200'))), { arch, timeoutMs: 300_000 });
    t.comment(`${arch}: a trial on a loader that does not count: ${good.ms} ms`);
    if (!t.ok(good.ok, 'a system booted')) console.error(good.output);
    if (arch === 'armv7') {
      // no kexec on armv7 (KEXEC_ARCHES): the trial is given up at once, the loader's version boots
      t.match(good.output, /^cairn-initramfs: cannot start 0\.0\.2: this first stage has no kexec \(the arm64 image has it; the armv7 kernel cannot kexec\)\r?$/m, 'the trial cannot be started, saying why');
      t.match(good.output, /^cairn-initramfs: version 0\.0\.2 is given up: its trial cannot start from this loader\r?$/m, 'the trial is given up');
      t.match(good.output, /^cairn-fixture: boot\.env CAIRN_BOOT_MODE=state CAIRN_BOOT_VERSION=0\.0\.1 CAIRN_BOOT_TRIES_LEFT= CAIRN_BOOT_KIND=active /m, "the loader's version runs");
    } else {
      t.match(good.output, /^cairn-initramfs: starting 0\.0\.2 with kexec \(the loader started 0\.0\.1's kernel\)\r?$/m, "0.0.1's first stage starts the trial with kexec");
      t.match(good.output, /^cairn-initramfs: system 0\.0\.2 on \/dev\/vda2 \(trial boot, 0 tries left\)\r?$/m, 'the trial boots as a trial, its try spent before the kexec');
      t.match(good.output, /^(?:\[[ \d.]+\] )?Kernel command line: cairn\.mode=state cairn\.version=0\.0\.2 panic=10 watchdog\.stop_on_reboot=0 console=ttyAMA0,115200 cairn\.test=own-cmdline\r?$/m, "the trial's kernel has its own command line, without the loader's mark");
      t.match(good.output, /^cairn-fixture: boot\.env CAIRN_BOOT_MODE=state CAIRN_BOOT_VERSION=0\.0\.2 CAIRN_BOOT_TRIES_LEFT=0 CAIRN_BOOT_KIND=trial /m, "the trial's system runs");
      t.equal((good.output.match(/^cairn-initramfs: starting \(/gm) ?? []).length, 2, "two first stages in one boot: the loader's version's, then the trial's");
    }

    if (arch === 'arm64') {
      // a trial whose kernel panics: the reset brings the firmware's 0.0.1 back, whose first stage finds no try left
      const bad = await qemuBoot(firmware(await withTrial('panics', '0.0.3', 'cairn.mode=state cairn.version=0.0.3 console=ttyAMA0,115200 rdinit=/no-such-init panic=1')), { arch, timeoutMs: 300_000, reboot: true });
      t.comment(`${arch}: a trial that panics, then the loader's version: ${bad.ms} ms`);
      if (!t.ok(bad.ok, 'the proven version booted after the panic')) console.error(bad.output);
      const panicAt = bad.output.search(/Kernel panic - not syncing/);
      t.ok(panicAt > 0, "the trial's kernel panicked");
      const after = bad.output.slice(panicAt);
      t.match(after, /^cairn-initramfs: version 0\.0\.3 did not come up within its tries: falling back\r?$/m, 'after the reset: the trial is over');
      t.match(after, /^cairn-initramfs: system 0\.0\.1 on \/dev\/vda2\r?$/m, 'and 0.0.1 boots itself');
      t.notMatch(after, /with kexec/, 'without a kexec');
    }
  });
}

t.test('rpi4: a kernel without the Pi 4 device trees is refused, nothing written', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cairn-rpi4-nodtb-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  let system: SystemArtifacts;
  try {
    system = await fixtureSystem('arm64', path.join(dir, 'system'), path.join(dir, 'system/initrd'));
  } catch (err) {
    return t.plan(0, unreachableReason(err));
  }
  // a root whose kernel package ships no broadcom device trees
  const root = path.join(dir, 'root');
  await mkdir(path.join(root, 'usr/lib', `linux-image-${system.kernelRelease}`), { recursive: true });
  await writeFile(system.initramfs, 'initrd');
  const out = path.join(dir, 'out');
  await mkdir(out);
  await t.rejects(raw({ ...system, rootfs: root, board: 'rpi4' }, { outDir: out, workDir: path.join(dir, 'work'), log: () => undefined }), {
    name: 'UserError',
    message: new RegExp(`^the image's kernel ${system.kernelRelease.replace(/[.+]/g, '\\$&')} has no bcm2711-rpi-4-b\\.dtb, bcm2711-rpi-400\\.dtb, bcm2711-rpi-cm4-io\\.dtb`),
  });
  t.same(await readdir(out), [], 'no image written');
});

t.test('a board firmware package that cannot be fetched is a clear error, and nothing is left in the cache', async (t) => {
  const { fetchDeb } = await import('../../src/builder/debfetch.js');
  const cache = await withTempCache(t, 'cairn-debfetch-');
  await t.rejects(
    fetchDeb({ pkg: 'cairn-no-such-firmware', debArch: 'arm64', components: ['main', 'non-free-firmware'], expect: 'usr/lib/x', why: 'the test board' }),
    { name: 'UserError', message: /^the test board needs the Debian package cairn-no-such-firmware \(arm64, from main, non-free-firmware\) and it could not be fetched: / },
  );
  t.same(await readdir(path.join(cache, 'debs-unpacked')), [], 'no half-unpacked tree left behind');
});
