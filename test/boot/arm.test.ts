// The default image for arm64 and armv7, built in this run (the foreign root
// filesystems under qemu-user) and booted from its raw disk under UEFI on
// QEMU virt (TCG): AAVMF for arm64, AAVMF32 for armv7, GRUB from the disk's
// EFI partition, the first stage, then every phase of the init to
// `cairn: boot complete`, with the state partition grown to the disk's end.
// Then, with CAIRN_TEST_RASPI4B=1, the arm64 Raspberry Pi 4 card: its own
// kernel, Pi 4 device tree and initramfs under QEMU's raspi4b machine
// (Debian trixie's QEMU, from a root made once in the cache), the card as
// the SD card. It costs about 3 minutes more, past the suite's time budget.
import t from 'tap';
import { join } from 'node:path';
import { bootForTest, overlay } from '../../qemu/harness.js';
import { Raspi4b, raspi4bArgs, raspi4bDtb, trixieQemu, type TrixieQemu } from '../../qemu/raspi4b.js';
import { cardFile, cardPartitions, cardText } from '../support/card.js';
import { buildArmImages, buildRpi4Card, type ArmArch } from './image.js';
import { BOOT_TIMEOUT, L, PHASES, bootsThrough } from './node.js';

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
