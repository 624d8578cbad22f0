// Real ARM boots under TCG: arm64 (virt, cortex-a57) with a direct kernel and
// from a UEFI ISO (AAVMF pflash), armv7 (virt, cortex-a15) with a direct kernel.
import t from 'tap';
import { statSync } from 'node:fs';
import { bootForTest } from '../../qemu/harness.js';
import { MARKER, PROMPT, qemuFixture } from './fixture.js';

const BOOT_MS = 90_000;
const times: string[] = [];

t.teardown(() => {
  if (times.length) t.comment(`boot to marker under TCG: ${times.join(', ')}`);
});

t.test('arm64: direct kernel (Image), the seed, the console both ways', async (t) => {
  const fx = await qemuFixture('arm64');
  const vm = await bootForTest(t, {
    name: 'arm64-kernel',
    arch: 'arm64',
    artifact: { kind: 'kernel', kernel: fx.kernel, initrd: fx.initrd, append: 'quiet fixture=shell' },
    configText: 'hostname: arm-node\n',
    noReboot: true,
  });
  t.equal(vm.binary.split('/').pop(), 'qemu-system-aarch64');
  t.match(vm.args.join(' '), /-machine virt -accel tcg -cpu cortex-a57/);
  t.match(vm.args[vm.args.indexOf('-append') + 1], /^console=ttyAMA0 /);
  const r = await vm.waitFor(MARKER, BOOT_MS);
  times.push(`arm64-kernel ${(r.elapsedMs / 1000).toFixed(1)} s`);
  t.match(vm.output, /fixture: seed on \/dev\/vd\w: instance-id: iid-cairn-[0-9a-f]{16} local-hostname: arm-node/);
  await vm.waitFor(PROMPT, 10_000);
  vm.sendLine('uname -m; poweroff -f');
  await vm.waitFor(/^aarch64$/m, 10_000);
  t.ok(await vm.waitExit(20_000), 'powered off');
});

t.test('arm64: UEFI (AAVMF) boots GRUB from an ISO on virtio-scsi', async (t) => {
  const fx = await qemuFixture('arm64');
  const vm = await bootForTest(t, { name: 'arm64-iso-uefi', arch: 'arm64', artifact: { kind: 'iso', path: fx.iso ?? '' }, noReboot: true });
  const pflash = vm.args.filter((a) => a.startsWith('if=pflash')).map((a) => /file=(.*)$/.exec(a)?.[1] ?? '');
  t.equal(pflash.length, 2);
  for (const f of pflash) t.equal(statSync(f).size, 64 * 1024 * 1024, `${f} is a 64 MiB pflash image`);
  const r = await vm.waitFor(MARKER, BOOT_MS);
  times.push(`arm64-iso-uefi ${(r.elapsedMs / 1000).toFixed(1)} s`);
  t.ok(await vm.waitExit(20_000));
});

t.test('armv7: direct kernel (zImage, armmp-lpae)', async (t) => {
  const fx = await qemuFixture('armv7');
  const vm = await bootForTest(t, {
    name: 'armv7-kernel',
    arch: 'armv7',
    artifact: { kind: 'kernel', kernel: fx.kernel, initrd: fx.initrd, append: 'quiet' },
    configText: 'hostname: armv7-node\n',
    noReboot: true,
  });
  t.equal(vm.binary.split('/').pop(), 'qemu-system-arm');
  t.match(vm.args.join(' '), /-machine virt -accel tcg -cpu cortex-a15/);
  const r = await vm.waitFor(MARKER, BOOT_MS);
  times.push(`armv7-kernel ${(r.elapsedMs / 1000).toFixed(1)} s`);
  t.match(vm.output, /local-hostname: armv7-node/);
  t.ok(await vm.waitExit(20_000));
});
