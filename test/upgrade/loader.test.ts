// Boards whose loader does not count tries (src/boot/loader.ts): the
// command lines, the board record, and pointing the loader at a version
// after a good boot: the Pi's boot partition (a folder per version, the one
// sector of cairn-active.txt rewritten in place, old folders removed) and
// Jetson's extlinux.conf.
import t from 'tap';
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ACTIVE_FILE } from '../../boards/rpi4/boot.js';
import { LOADER_PATH, readLoader, syncExtlinux, syncLoader, syncPiBoot } from '../../src/boot/loader.js';
import { boardCmdline, loaderCmdline, loaderRecord, parseLoaderRecord } from '../../src/boot/loader-args.js';
import { renderState, renderVersionEnv, type BootState } from '../../src/boot/state.js';
import type { Exec } from '../../src/init/exec.js';

const DTBS = ['bcm2711-rpi-4-b.dtb', 'bcm2711-rpi-400.dtb', 'bcm2711-rpi-cm4-io.dtb'];

/** cairn/system with versions (kernel, initrd, squashfs, bootenv of the Pi), and the running kernel's device trees. */
function stateTree(dir: string, versions: string[]): { system: string; dtbDir: string } {
  const system = join(dir, 'state/cairn/system');
  for (const v of versions) {
    mkdirSync(join(system, v), { recursive: true });
    for (const f of ['kernel', 'initrd', 'rootfs.squashfs']) writeFileSync(join(system, v, f), `${v} ${f}\n`.repeat(f === 'kernel' ? 1000 : 10));
    writeFileSync(join(system, v, 'bootenv'), renderVersionEnv(boardCmdline('console=ttyS1,115200 console=tty1', v, 'quiet')));
  }
  const dtbDir = join(dir, 'dtb');
  mkdirSync(dtbDir, { recursive: true });
  for (const d of DTBS) writeFileSync(join(dtbDir, d), `dtb ${d}`);
  return { system, dtbDir };
}

t.test('command lines: the version\'s own (its bootenv, what kexec passes) and the loader\'s', async (t) => {
  const own = boardCmdline('console=ttyS1,115200 console=tty1', '0.2.0', 'console=ttyS0,115200 quiet');
  t.equal(own, 'cairn.mode=state cairn.version=0.2.0 panic=10 watchdog.stop_on_reboot=0 console=ttyS1,115200 console=tty1 quiet', "the board's consoles replace the spec's");
  t.equal(loaderCmdline(own), `${own} cairn.loader=fixed`);
  t.same(loaderRecord({ board: 'rpi4', console: 'console=ttyS1,115200' }), { dest: 'cairn/loader.json', content: '{\n  "board": "rpi4",\n  "console": "console=ttyS1,115200"\n}\n' });
  t.throws(() => parseLoaderRecord('{"board": "pc", "console": ""}', 'x.json'), { message: 'x.json must be {"board": "rpi4" or "jetson", "console": "console=..."}' });
  t.throws(() => parseLoaderRecord('{', 'x.json'), { message: /^x\.json is not JSON: / });
  const dir = t.testdir();
  writeFileSync(join(dir, 'loader.json'), '{"board": "rpi5"}');
  t.throws(() => readLoader(join(dir, 'loader.json')), { name: 'UserError', message: /loader\.json must be/ });
  t.equal(readLoader(join(dir, 'none.json')), undefined, 'no record: a GRUB disk');
});

t.test('the Pi: the firmware pointed at the version that booted well', async (t) => {
  const dir = t.testdir();
  const { system, dtbDir } = stateTree(dir, ['0.1.0', '0.2.0']);
  const boot = join(dir, 'boot');
  // the card as built: 0.1.0's folder and the pointer; a folder of a version long gone; a write cut short
  mkdirSync(join(boot, 'cairn/0.1.0'), { recursive: true });
  mkdirSync(join(boot, 'cairn/0.0.9'), { recursive: true });
  mkdirSync(join(boot, 'cairn/.incoming-0.2.0'), { recursive: true });
  writeFileSync(join(boot, 'cairn/.incoming-0.2.0/vmlinuz'), 'half');
  const { renderActiveFile } = await import('../../boards/rpi4/boot.js');
  writeFileSync(join(boot, ACTIVE_FILE), renderActiveFile('0.1.0'));
  const inode = statSync(join(boot, ACTIVE_FILE)).ino;
  const state: BootState = { active: '0.2.0', fallback: '0.1.0' };

  const done = syncPiBoot({ bootDir: boot, systemDir: system, version: '0.2.0', state, dtbDir });
  t.same(done, ['wrote cairn/0.2.0/ on CAIRN_BOOT', 'cairn-active.txt names 0.2.0 (was 0.1.0)', 'removed cairn/0.0.9/']);
  const v = join(boot, 'cairn/0.2.0');
  t.same(readdirSync(v).sort(), ['bcm2711-rpi-4-b.dtb', 'bcm2711-rpi-400.dtb', 'bcm2711-rpi-cm4-io.dtb', 'cmdline.txt', 'initrd', 'vmlinuz']);
  t.equal(readFileSync(join(v, 'vmlinuz'), 'utf8'), readFileSync(join(system, '0.2.0/kernel'), 'utf8'), "the version's kernel");
  t.equal(readFileSync(join(v, 'initrd'), 'utf8'), readFileSync(join(system, '0.2.0/initrd'), 'utf8'), "the version's initramfs");
  t.equal(readFileSync(join(v, 'bcm2711-rpi-4-b.dtb'), 'utf8'), 'dtb bcm2711-rpi-4-b.dtb', "the running kernel's device tree");
  t.equal(readFileSync(join(v, 'cmdline.txt'), 'utf8'), 'cairn.mode=state cairn.version=0.2.0 panic=10 watchdog.stop_on_reboot=0 console=ttyS1,115200 console=tty1 quiet cairn.loader=fixed\n');
  const active = readFileSync(join(boot, ACTIVE_FILE));
  t.equal(active.length, 512, 'still one sector');
  t.equal(active.toString().split('\n')[0], 'os_prefix=cairn/0.2.0/');
  t.equal(statSync(join(boot, ACTIVE_FILE)).ino, inode, 'rewritten in place: a power cut leaves the old sector or the new one');
  t.same(readdirSync(join(boot, 'cairn')).sort(), ['0.1.0', '0.2.0'], 'the fallback kept; the old version and the cut-short write gone');

  t.same(syncPiBoot({ bootDir: boot, systemDir: system, version: '0.2.0', state, dtbDir }), [], 'every good boot after: nothing to do');

  // a version folder that lost a file (a card written elsewhere): written again
  writeFileSync(join(v, 'initrd'), 'x');
  t.same(syncPiBoot({ bootDir: boot, systemDir: system, version: '0.2.0', state, dtbDir }), ['wrote cairn/0.2.0/ on CAIRN_BOOT']);
  t.equal(readFileSync(join(v, 'initrd'), 'utf8'), readFileSync(join(system, '0.2.0/initrd'), 'utf8'));
});

t.test('the Pi: a kernel without its device trees changes nothing', async (t) => {
  const dir = t.testdir();
  const { system } = stateTree(dir, ['0.1.0', '0.2.0']);
  const boot = join(dir, 'boot');
  mkdirSync(join(boot, 'cairn/0.1.0'), { recursive: true });
  const { renderActiveFile } = await import('../../boards/rpi4/boot.js');
  writeFileSync(join(boot, ACTIVE_FILE), renderActiveFile('0.1.0'));
  const empty = join(dir, 'no-dtbs');
  mkdirSync(empty);
  t.throws(() => syncPiBoot({ bootDir: boot, systemDir: system, version: '0.2.0', state: { active: '0.2.0', fallback: '0.1.0' }, dtbDir: empty }), {
    message: `the running kernel has no bcm2711-rpi-4-b.dtb, bcm2711-rpi-400.dtb, bcm2711-rpi-cm4-io.dtb in ${empty}`,
  });
  t.equal(readFileSync(join(boot, ACTIVE_FILE)).toString().split('\n')[0], 'os_prefix=cairn/0.1.0/', 'the firmware still starts 0.1.0');
  t.same(readdirSync(join(boot, 'cairn')), ['0.1.0']);
});

t.test('Jetson: extlinux.conf follows the boot state', async (t) => {
  const dir = t.testdir();
  stateTree(dir, ['0.1.0', '0.2.0']);
  const root = join(dir, 'state');
  const done = syncExtlinux({ stateRoot: root, state: { active: '0.2.0', fallback: '0.1.0' } });
  t.same(done, ['boot/extlinux/extlinux.conf: DEFAULT is 0.2.0, then 0.1.0']);
  const conf = readFileSync(join(root, 'boot/extlinux/extlinux.conf'), 'utf8');
  t.match(conf, /^DEFAULT cairn-0\.2\.0$/m);
  t.match(conf, /^ {6}LINUX \/cairn\/system\/0\.2\.0\/kernel$/m);
  t.match(conf, /^ {6}APPEND \$\{cbootargs\} cairn\.mode=state cairn\.version=0\.2\.0 .* cairn\.loader=fixed$/m);
  t.match(conf, /^LABEL cairn-0\.1\.0$/m, 'the fallback is the second entry');
  t.same(syncExtlinux({ stateRoot: root, state: { active: '0.2.0', fallback: '0.1.0' } }), [], 'the same state: nothing written');
});

t.test('syncLoader: only a loader that does not count, only for the active version', async (t) => {
  const dir = t.testdir();
  const root = join(dir, 'node');
  const calls: string[] = [];
  const exec: Exec = async (file, args) => (calls.push(`${file} ${args.join(' ')}`), { code: 0, stdout: '', stderr: '', timedOut: false });
  mkdirSync(join(root, 'cairn/grub'), { recursive: true });
  writeFileSync(join(root, 'cairn/grub/grubenv'), renderState({ active: '0.2.0', fallback: '0.1.0' }));
  t.equal(await syncLoader({ root, exec, version: '0.2.0', kernelRelease: '6.12' }), undefined, 'GRUB counts: nothing to do');
  writeFileSync(join(root, LOADER_PATH), loaderRecord({ board: 'rpi4', console: 'console=ttyS1,115200' }).content);
  t.equal(await syncLoader({ root, exec, version: '0.1.0', kernelRelease: '6.12' }), undefined, 'a fallback boot leaves the loader alone');
  t.same(calls, []);
  const failing: Exec = async (file, args) => (calls.push(`${file} ${args.join(' ')}`), { code: 32, stdout: '', stderr: 'mount: /run/cairn/boot: can\'t find LABEL=CAIRN_BOOT.', timedOut: false });
  await t.rejects(syncLoader({ root, exec: failing, version: '0.2.0', kernelRelease: '6.12' }), { message: "cannot mount CAIRN_BOOT: mount: /run/cairn/boot: can't find LABEL=CAIRN_BOOT." });
  t.match(calls[0], /^mount -t vfat -o rw,noatime,codepage=437,iocharset=iso8859-1 LABEL=CAIRN_BOOT \S+\/run\/cairn\/boot$/);
});
