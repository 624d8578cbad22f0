// The default image for arm64 and armv7, built in this run (the foreign root
// filesystems under qemu-user) and booted from its raw disk under UEFI on
// QEMU virt (TCG): AAVMF for arm64, AAVMF32 for armv7, GRUB from the disk's
// EFI partition, the first stage, then every phase of the init to
// `cairn: boot complete`, with the state partition grown to the disk's end.
// Then, with CAIRN_TEST_RASPI4B=1, the arm64 Raspberry Pi 4 card: its own
// kernel, Pi 4 device tree and initramfs under QEMU's raspi4b machine
// (Debian trixie's QEMU, from a root made once in the cache), the card as
// the SD card. It costs about 3 minutes more, past the suite's time budget.
// And with CAIRN_TEST_RPI4_UPGRADE=1, an upgrade of that card on QEMU virt,
// the harness playing the Pi's firmware (it starts the kernel, initramfs
// and cmdline.txt of the folder cairn-active.txt names, on every reset):
// 0.1.0's first stage starts the 0.2.0 trial with kexec, the good trial
// points the card at 0.2.0, and the next power-on starts 0.2.0 itself.
import t from 'tap';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { execa } from 'execa';
import { bootForTest, makeSshKey, overlay } from '../../qemu/harness.js';
import { Raspi4b, raspi4bArgs, raspi4bDtb, trixieQemu, type TrixieQemu } from '../../qemu/raspi4b.js';
import { cardFile, cardPartitions, cardText } from '../support/card.js';
import { REPO, buildArmImages, buildRpi4Card, buildVariant, type ArmArch } from './image.js';
import { BOOT_TIMEOUT, L, Node, PHASES, bootsThrough } from './node.js';

t.setTimeout(75 * 60_000);

let images: Record<ArmArch, string>;
let trixie: TrixieQemu | undefined;
const times: string[] = [];
const raspi4b = process.env.CAIRN_TEST_RASPI4B === '1';

t.before(async () => {
  const started = Date.now();
  // The QEMU root is mostly a download: made beside the two builds.
  [images, trixie] = await Promise.all([buildArmImages(), raspi4b ? trixieQemu({ log: (l) => void t.comment(l) }) : undefined]);
  times.push(`both images built in ${((Date.now() - started) / 1000).toFixed(0)} s`);
});
t.teardown(() => void t.comment(times.join(', ')));

/** What the kernel's release ends with on each arch (Debian's kernel flavour). */
const FLAVOUR: Record<ArmArch, string> = { arm64: 'arm64', armv7: 'armmp-lpae' };
/** virt's PL011 UART, the arch profile's serial console on both arches. */
const CONSOLE = 'ttyAMA0';

for (const arch of ['arm64', 'armv7'] as const) {
  t.test(`${arch}: the default image's raw disk under UEFI boots every phase to boot complete`, async (tt) => {
    const disk = `${images[arch]}.boot.qcow2`;
    await overlay(images[arch], disk, '4G');
    const started = Date.now();
    const vm = await bootForTest(tt, {
      name: `arm-${arch}`,
      arch,
      artifact: { kind: 'qcow2', path: disk, writable: true },
      firmware: 'uefi',
      configText: `hostname: ${arch}-node\n`,
      memMb: 2048,
      cpus: 2,
      timeoutMs: BOOT_TIMEOUT,
    });
    const kernel = await vm.waitFor(/^\[\s*[\d.]+\] Linux version (\S+) /m, BOOT_TIMEOUT);
    tt.match(kernel.groups[0], new RegExp(`^6\\.\\d+\\.\\d+\\S*-${FLAVOUR[arch]}$`), `Debian's ${FLAVOUR[arch]} kernel: ${kernel.groups[0]}`);
    const args = await vm.waitFor(/^\[\s*[\d.]+\] Kernel command line: (.*)$/m, BOOT_TIMEOUT);
    tt.match(args.groups[0], new RegExp(`(^| )console=${CONSOLE},115200( |$)`), `the console is ${CONSOLE}`);
    tt.match(args.groups[0], /(^| )cairn\.mode=state( |$)/, 'a boot from the state partition');
    await vm.waitFor(/^cairn-initramfs: system 0\.1\.0 on \/dev\/vda2$/m, BOOT_TIMEOUT);
    const grow = await vm.waitFor(L(/cairn: grow ok \(\d+ ms\): .*$/), BOOT_TIMEOUT, { from: 'start' });
    tt.match(grow.match, /CAIRN_STATE grown from \d+\.\d to 3\.9 GiB \(the end of \/dev\/vda\)$/, 'the state partition grew to the 4 GiB disk');
    await bootsThrough(tt, vm, [], { from: 'start' });
    times.push(`${arch} to boot complete ${((Date.now() - started) / 1000).toFixed(0)} s`);
    // The seed's hostname on the console's prompt (no password or key: it logs in by itself).
    await vm.waitFor(new RegExp(`${arch}-node login: cairn \\(automatic login\\)`), 60_000, { from: 'start' });
    tt.pass(`the seed's hostname is on the console's login prompt`);
  });
}

const raspi4bSkip = raspi4b ? false : 'set CAIRN_TEST_RASPI4B=1 (builds the arm64 card and a Debian trixie QEMU root, then a 2-minute boot)';
t.test("the arm64 Raspberry Pi 4 card under QEMU raspi4b: the card's kernel, device tree and initramfs, the card on the SD controller, to boot complete", { skip: raspi4bSkip }, async (tt) => {
  const q = trixie!;
  const card = await buildRpi4Card();
  const [bootPart] = await cardPartitions(card);
  const dir = join(card, '..');
  const file = (f: string) => cardFile(card, bootPart!, `cairn/0.1.0/${f}`, join(dir, f));
  const [kernel, initrd, dtb] = [await file('vmlinuz'), await file('initrd'), await file('bcm2711-rpi-4-b.dtb')];
  const cmdline = (await cardText(card, bootPart!, 'cairn/0.1.0/cmdline.txt')).trim();
  tt.match(cmdline, /^cairn\.mode=state cairn\.version=0\.1\.0 .*console=ttyS1,115200 console=tty1/, "the card's command line: this version, the Pi's consoles");
  const qemuDtb = join(dir, 'raspi4b.dtb');
  await raspi4bDtb(q, dtb, qemuDtb);
  // QEMU wants an SD card whose size is a power of two: a 2 GiB overlay, which the first boot grows into
  const sd = join(dir, 'sd.qcow2');
  await overlay(card, sd, '2G');
  // raspi4b's console is the PL011 (ttyAMA0); the card's ttyS1 is the mini UART, switched off in QEMU's device tree
  const append = `${cmdline.replace(/ ?console=\S+/g, '')} console=ttyAMA0,115200`;
  const vm = new Raspi4b(q, raspi4bArgs({ kernel, initrd, dtb: qemuDtb, card: sd, cardFormat: 'qcow2', append }));
  tt.teardown(() => vm.stop());
  tt.ok((await vm.waitFor(/^\[\s*[\d.]+\] Machine model: Raspberry Pi 4 Model B/m, 120_000)).match, "the kernel runs on the Pi 4's device tree");
  const found = await vm.waitFor(/^cairn-initramfs: system 0\.1\.0 on \/dev\/mmcblk0p2$/m, BOOT_TIMEOUT);
  tt.pass(`the first stage found CAIRN_STATE on the SD card (${(found.elapsedMs / 1000).toFixed(0)} s)`);
  const grow = await vm.waitFor(L(/cairn: grow ok \(\d+ ms\): .*$/), BOOT_TIMEOUT);
  tt.match(grow.match[0], /CAIRN_STATE grown from \d+\.\d to 1\.5 GiB \(the end of \/dev\/mmcblk0\)$/, 'the state partition grew to the end of the card');
  const done = await vm.waitFor(L(/cairn: boot complete .*$/), BOOT_TIMEOUT);
  tt.equal(done.match[0].slice(done.match[0].indexOf('cairn: ')), 'cairn: boot complete 0.1.0', 'every phase ok');
  for (const p of PHASES) tt.match(vm.output, L(new RegExp(`cairn: ${p} ok \\(`)), `${p} ok`);
  times.push(`rpi4 card on raspi4b to boot complete ${(done.elapsedMs / 1000).toFixed(0)} s (QEMU ${q.version})`);
});

const upgradeSkip = process.env.CAIRN_TEST_RPI4_UPGRADE === '1' ? false : 'set CAIRN_TEST_RPI4_UPGRADE=1 (builds the arm64 card and an arm64 0.2.0, then three boots on virt: about 5 minutes once the ARM images are built)';
t.test('the arm64 Raspberry Pi 4 card upgraded on QEMU virt, the harness playing the firmware: a trial by kexec, then the card pointed at it', { skip: upgradeSkip }, async (tt) => {
  const card = await buildRpi4Card();
  const payload = join(buildVariant('0.2.0', { arch: 'arm64', tag: 'upgrade-0.2.0-arm64' }), 'default-0.2.0-arm64.oci.tar');
  const dir = join(REPO, '.tap', 'rpi4-upgrade');
  mkdirSync(dir, { recursive: true });
  const serve = join(dir, 'serve');
  mkdirSync(serve, { recursive: true });
  copyFileSync(payload, join(serve, basename(payload)));
  const key = await makeSshKey('cairn-rpi4-upgrade');
  tt.teardown(() => key.remove());
  // the card on a 4 GiB overlay; virt's UART is ttyAMA0, so the card's board record names it (as the Pi's names ttyS1)
  const disk = join(dir, 'card.qcow2');
  await overlay(card, disk, '4G');
  const [bootPart, statePart] = await cardPartitions(card);
  const rawCopy = join(dir, 'card.raw');
  const readCard = async () => execa('qemu-img', ['convert', '-O', 'raw', disk, rawCopy]);
  const record = join(dir, 'loader.json');
  writeFileSync(record, '{"board": "rpi4", "console": "console=ttyAMA0,115200"}\n');
  await readCard();
  const state = join(dir, 'state.img');
  await execa('dd', [`if=${rawCopy}`, `of=${state}`, 'bs=1M', `skip=${statePart!.start}`, `count=${statePart!.size}`, 'iflag=skip_bytes,count_bytes', 'status=none']);
  await execa('debugfs', ['-w', '-R', `rm /cairn/loader.json`, state]);
  await execa('debugfs', ['-w', '-R', `write ${record} /cairn/loader.json`, state]);
  await execa('dd', [`if=${state}`, `of=${rawCopy}`, 'bs=1M', `seek=${statePart!.start}`, 'oflag=seek_bytes', 'conv=notrunc', 'status=none']);
  await execa('qemu-img', ['convert', '-O', 'qcow2', rawCopy, disk]);
  await execa('qemu-img', ['resize', disk, '4G']);

  /** What the Pi's firmware starts: the folder cairn-active.txt names on the boot partition. */
  const firmware = async () => {
    await readCard();
    const active = await cardText(rawCopy, bootPart!, 'cairn-active.txt');
    const prefix = /^os_prefix=(cairn\/[^/]+\/)$/m.exec(active)?.[1];
    if (!prefix) throw new Error(`cairn-active.txt names no version: ${active.slice(0, 80)}`);
    const get = (f: string) => cardFile(rawCopy, bootPart!, `${prefix}${f}`, join(dir, f));
    const cmdline = (await cardText(rawCopy, bootPart!, `${prefix}cmdline.txt`)).trim();
    return { prefix, kernel: await get('vmlinuz'), initrd: await get('initrd'), cmdline, append: `${cmdline.replace(/ ?console=\S+/g, '')} console=ttyAMA0,115200` };
  };
  const boot = async (name: string, fw: { kernel: string; initrd: string; append: string }) =>
    bootForTest(tt, {
      name,
      arch: 'arm64',
      artifact: { kind: 'kernel', kernel: fw.kernel, initrd: fw.initrd, append: fw.append },
      extraArgs: ['-drive', `file=${disk},format=qcow2,if=virtio`],
      configText: `hostname: pi-node\nssh_authorized_keys: ["${key.publicKey.trim()}"]\n`,
      sshPort: 'auto',
      serveDir: serve,
      memMb: 2048,
      cpus: 2,
      timeoutMs: BOOT_TIMEOUT,
    });
  const exact = (v: string) => L(new RegExp(`cairn: boot complete ${v.replace(/\./g, '\\.')}$`));

  const fw1 = await firmware();
  tt.equal(fw1.prefix, 'cairn/0.1.0/', 'the card as built starts 0.1.0');
  tt.match(fw1.cmdline, / cairn\.loader=fixed$/, "its cmdline.txt says the loader does not count");
  const vm = await boot('rpi4-upgrade', fw1);
  const node = new Node(vm, key);
  await vm.waitFor(exact('0.1.0'), BOOT_TIMEOUT);
  await node.waitSsh();
  const staged = await node.sh(`sudo cairn upgrade --source ${vm.http!.guestUrl}/${basename(payload)} --tries 2 --reboot 2>&1`, { ok: false });
  tt.match(staged, /^version 0\.2\.0 is installed and on trial \(2 tries, healthy within 900 s\); the fallback is 0\.1\.0$/m, 'staged and on trial');
  // the reset starts 0.1.0's kernel again, as the Pi's firmware would: its first stage starts the trial
  await vm.waitFor(/^cairn-initramfs: starting 0\.2\.0 with kexec \(the loader started 0\.1\.0's kernel\)$/m, BOOT_TIMEOUT);
  // the card is the second disk here (the seed is the first)
  await vm.waitFor(/^cairn-initramfs: system 0\.2\.0 on \/dev\/vd[a-z]2 \(trial boot, 1 tries left\)$/m, BOOT_TIMEOUT);
  const good = await vm.waitFor(L(/cairn: mark-good ok \(\d+ ms\): (.*)$/), BOOT_TIMEOUT);
  tt.match(good.groups[0], /^version 0\.2\.0 is now the active one, datastore snapshot \S+; rpi4 loader: wrote cairn\/0\.2\.0\/ on CAIRN_BOOT; cairn-active\.txt names 0\.2\.0 \(was 0\.1\.0\)$/, 'the good trial points the card at 0.2.0');
  await vm.waitFor(exact('0.2.0'), BOOT_TIMEOUT);
  await node.waitSsh();
  const cmdline = await node.sh('cat /proc/cmdline');
  tt.match(cmdline, /(^| )cairn\.version=0\.2\.0( |$)/, "0.2.0's kernel runs");
  tt.notMatch(cmdline, /cairn\.loader=fixed/, "with 0.2.0's own command line, which kexec passed");
  tt.match(cmdline, /(^| )watchdog\.stop_on_reboot=0( |$)/, 'the watchdog counts through a kexec');
  await node.sh('sync');
  await vm.close();

  const fw2 = await firmware();
  tt.equal(fw2.prefix, 'cairn/0.2.0/', 'cairn-active.txt names 0.2.0');
  tt.equal(fw2.cmdline, `${cmdline.trim()} cairn.loader=fixed`, "0.2.0's cmdline.txt: the command line it booted with, and the loader's mark");
  tt.equal(await fsckBoot(rawCopy, bootPart!, dir), 0, 'fsck.vfat -n: the boot partition is clean after the node wrote it');
  const vm2 = await boot('rpi4-upgraded', fw2);
  await vm2.waitFor(/^cairn-initramfs: system 0\.2\.0 on \/dev\/vd[a-z]2$/m, BOOT_TIMEOUT);
  const good2 = await vm2.waitFor(L(/cairn: mark-good ok \(\d+ ms\): (.*)$/), BOOT_TIMEOUT);
  tt.match(good2.groups[0], /^boot marked good, datastore snapshot \S+; rpi4 loader starts 0\.2\.0 already$/);
  await vm2.waitFor(exact('0.2.0'), BOOT_TIMEOUT);
  tt.notMatch(vm2.output, /with kexec/, 'the firmware starts 0.2.0 itself: no kexec');
  await vm2.close();
});

/** fsck.vfat -n on the card's boot partition, copied out. */
async function fsckBoot(img: string, part: { start: number; size: number }, dir: string): Promise<number | undefined> {
  const out = join(dir, 'boot.img');
  await execa('dd', [`if=${img}`, `of=${out}`, 'bs=1M', `skip=${part.start}`, `count=${part.size}`, 'iflag=skip_bytes,count_bytes', 'status=none']);
  return (await execa('fsck.vfat', ['-n', out], { reject: false })).exitCode;
}
