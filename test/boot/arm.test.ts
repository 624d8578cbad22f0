// The default image for arm64 and armv7, built in this run (the foreign root
// filesystems under qemu-user) and booted from its raw disk under UEFI on
// QEMU virt (TCG): AAVMF for arm64, AAVMF32 for armv7, GRUB from the disk's
// EFI partition, the first stage, then every phase of the init to
// `cairn: boot complete`, with the state partition grown to the disk's end.
import t from 'tap';
import { bootForTest, overlay } from '../../qemu/harness.js';
import { buildArmImages, type ArmArch } from './image.js';
import { BOOT_TIMEOUT, L, bootsThrough } from './node.js';

t.setTimeout(75 * 60_000);

let images: Record<ArmArch, string>;
const times: string[] = [];

t.before(async () => {
  const started = Date.now();
  images = await buildArmImages();
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
