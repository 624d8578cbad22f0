// The QEMU argv builder: plain values in, argv out.
import t from 'tap';
import { checkFirmware, commandLine, defaultFirmware, machineArgv, optValue, serialConsole, type MachineSpec } from '../../qemu/profiles.js';

const base: MachineSpec = {
  arch: 'amd64',
  boot: { kind: 'kernel', kernel: '/k/vmlinux', initrd: '/k/initrd.gz', append: 'console=ttyS0 quiet' },
  accel: 'tcg',
  firmware: 'bios',
  memMb: 1024,
  cpus: 2,
  console: 'serial',
};

/** The value after each occurrence of a flag. */
function values(args: string[], flag: string): string[] {
  return args.flatMap((a, i) => (a === flag && args[i + 1] !== undefined ? [args[i + 1] as string] : []));
}

t.test('amd64 direct kernel under TCG: q35, no firmware, serial on stdio, no KVM', async (t) => {
  const { binary, args } = machineArgv(base);
  t.equal(binary, 'qemu-system-x86_64');
  t.same(args.slice(0, 4), ['-machine', 'q35', '-accel', 'tcg']);
  t.notOk(args.includes('-cpu'), 'TCG keeps the default CPU model');
  t.same(values(args, '-kernel'), ['/k/vmlinux']);
  t.same(values(args, '-initrd'), ['/k/initrd.gz']);
  t.same(values(args, '-append'), ['console=ttyS0 quiet']);
  t.same(values(args, '-m'), ['1024']);
  t.same(values(args, '-smp'), ['2']);
  t.notOk(args.some((a) => a.includes('pflash')), 'no UEFI');
  t.ok(args.includes('-nodefaults'));
  t.same(values(args, '-chardev'), ['stdio,id=console0,signal=off']);
  t.same(values(args, '-serial'), ['chardev:console0']);
  t.same(values(args, '-netdev'), ['user,id=net0']);
  t.notOk(args.includes('-no-reboot'));
});

t.test('KVM when asked: -accel kvm -cpu host', async (t) => {
  const { args } = machineArgv({ ...base, accel: 'kvm' });
  t.same(values(args, '-accel'), ['kvm']);
  t.same(values(args, '-cpu'), ['host']);
});

t.test('pc machine type', async (t) => {
  const { args } = machineArgv({ ...base, machine: 'pc', boot: { kind: 'iso', file: '/a.iso' } });
  t.same(values(args, '-machine'), ['pc']);
  t.ok(values(args, '-device').includes('ide-cd,drive=cd0,bootindex=0'), 'the CD on the built-in IDE bus');
});

t.test('amd64 ISO under SeaBIOS: a CD on the AHCI bus, first in the boot order', async (t) => {
  const { args } = machineArgv({ ...base, boot: { kind: 'iso', file: '/out/cairn-amd64.iso' } });
  t.same(values(args, '-drive'), ['file=/out/cairn-amd64.iso,format=raw,media=cdrom,readonly=on,if=none,id=cd0']);
  t.same(values(args, '-device').filter((d) => d.startsWith('ide-cd')), ['ide-cd,drive=cd0,bootindex=0,bus=ide.0']);
  t.notOk(args.includes('-kernel'));
});

t.test('an installer target boots before the CD: bootindex 0 on the disk, 1 on the CD', async (t) => {
  const { args } = machineArgv({ ...base, boot: { kind: 'iso', file: '/a.iso' }, disks: [{ file: '/tmp/small.qcow2', format: 'qcow2' }, { file: '/tmp/target.qcow2', format: 'qcow2', bootFirst: true }] });
  t.same(values(args, '-device').filter((d) => /^(ide-cd|virtio-blk)/.test(d)), ['ide-cd,drive=cd0,bootindex=1,bus=ide.0', 'virtio-blk-pci,drive=data0', 'virtio-blk-pci,drive=data1,bootindex=0']);
});

t.test('amd64 UEFI: OVMF code read-only, the per-VM vars writable', async (t) => {
  const { args } = machineArgv({ ...base, firmware: 'uefi', firmwareFiles: { code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars: '/tmp/vm/efivars.fd' }, boot: { kind: 'disk', file: '/tmp/vm/disk.qcow2', format: 'qcow2' } });
  t.same(values(args, '-drive').slice(0, 2), [
    'if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd',
    'if=pflash,format=raw,unit=1,file=/tmp/vm/efivars.fd',
  ]);
  t.ok(values(args, '-drive').includes('file=/tmp/vm/disk.qcow2,format=qcow2,if=none,id=disk0'));
  t.ok(values(args, '-device').includes('virtio-blk-pci,drive=disk0,bootindex=0'));
  t.throws(() => machineArgv({ ...base, firmware: 'uefi', boot: { kind: 'iso', file: '/a.iso' } }), /firmwareFiles/);
});

t.test('a direct kernel ignores the firmware', async (t) => {
  const { args } = machineArgv({ ...base, firmware: 'uefi' });
  t.notOk(args.some((a) => a.includes('pflash')));
});

t.test('pxe: TFTP folder and boot file on the user network, the NIC boots first', async (t) => {
  const { args } = machineArgv({ ...base, boot: { kind: 'pxe', tftpDir: '/out/pxe', bootfile: 'boot.ipxe' } });
  t.same(values(args, '-netdev'), ['user,id=net0,tftp=/out/pxe,bootfile=boot.ipxe']);
  t.ok(values(args, '-device').includes('virtio-net-pci,netdev=net0,bootindex=0'));
});

t.test('seed, extra disks, ssh and other forwards, QMP, -no-reboot, extra args', async (t) => {
  const { args } = machineArgv({
    ...base,
    seed: '/tmp/vm/seed.iso',
    disks: ['/tmp/vm/extra0.qcow2', '/data/blank.img'],
    sshPort: 2222,
    hostForwards: [{ hostPort: 16443, guestPort: 6443 }],
    guestForwards: [{ guestAddr: '10.0.2.100', guestPort: 80, hostPort: 8080 }],
    qmpSocket: '/tmp/vm/qmp.sock',
    noReboot: true,
    extraArgs: ['-d', 'guest_errors'],
  });
  const drives = values(args, '-drive');
  t.ok(drives.includes('file=/tmp/vm/seed.iso,format=raw,if=none,id=seed0,readonly=on'), 'the seed read-only');
  t.ok(drives.includes('file=/tmp/vm/extra0.qcow2,format=qcow2,if=none,id=data0'));
  t.ok(drives.includes('file=/data/blank.img,format=raw,if=none,id=data1'));
  t.same(values(args, '-netdev'), ['user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:16443-:6443,guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:8080']);
  t.same(values(args, '-qmp'), ['unix:/tmp/vm/qmp.sock,server=on,wait=off']);
  t.ok(args.includes('-no-reboot'));
  // a metadata service's network: the subnet first, then the forward into it
  const md = machineArgv({ arch: 'amd64', boot: { kind: 'disk', file: '/d.raw', format: 'raw' }, accel: 'tcg', firmware: 'bios', memMb: 512, cpus: 1, console: 'serial', network: '169.254.169.0/24', guestForwards: [{ guestAddr: '169.254.169.254', guestPort: 80, hostPort: 8081 }] }).args;
  t.same(values(md, '-netdev'), ['user,id=net0,net=169.254.169.0/24,guestfwd=tcp:169.254.169.254:80-tcp:127.0.0.1:8081']);
  const relayed = machineArgv({ arch: 'amd64', boot: { kind: 'disk', file: '/d.raw', format: 'raw' }, accel: 'tcg', firmware: 'bios', memMb: 512, cpus: 1, console: 'serial', guestForwards: [{ guestAddr: '10.0.2.100', guestPort: 80, hostPort: 8081, relay: '/usr/bin/node /r,elay.mjs' }] }).args;
  t.same(values(relayed, '-netdev'), ['user,id=net0,guestfwd=tcp:10.0.2.100:80-cmd:/usr/bin/node /r,,elay.mjs 8081'], 'a relay per connection, its commas escaped');
  const { hostAddress } = await import('../../qemu/machine.js');
  t.equal(hostAddress(), '10.0.2.2');
  t.equal(hostAddress('169.254.169.0/24'), '169.254.169.2', 'the host, as the guest reaches it, in that network');
  t.throws(() => hostAddress('10.0.0.0/8'), { message: 'the user network must be a /24 such as 10.0.2.0/24, not 10.0.0.0/8' });
  t.same(args.slice(-2), ['-d', 'guest_errors']);
});

t.test('terminal console for cairn run: -nographic (Ctrl-A X quits)', async (t) => {
  const { args } = machineArgv({ ...base, console: 'terminal' });
  t.ok(args.includes('-nographic'));
  t.notOk(args.includes('-chardev'));
});

t.test('commas in paths are doubled', async (t) => {
  t.equal(optValue('/a,b/c.iso'), '/a,,b/c.iso');
  const { args } = machineArgv({ ...base, boot: { kind: 'iso', file: '/a,b/c.iso' } });
  t.match(values(args, '-drive')[0], /^file=\/a,,b\/c\.iso,/);
});

t.test('arm64: virt, cortex-a57, TCG, UEFI from pflash, the ISO on virtio-scsi', async (t) => {
  const { binary, args } = machineArgv({
    ...base,
    arch: 'arm64',
    firmware: 'uefi',
    firmwareFiles: { code: '/c/QEMU_EFI-pflash.fd', vars: '/tmp/vm/efivars.fd' },
    boot: { kind: 'iso', file: '/out/cairn-arm64.iso' },
  });
  t.equal(binary, 'qemu-system-aarch64');
  t.same(args.slice(0, 6), ['-machine', 'virt', '-accel', 'tcg', '-cpu', 'cortex-a57']);
  t.ok(values(args, '-device').includes('virtio-scsi-pci,id=scsi0'));
  t.ok(values(args, '-device').includes('scsi-cd,drive=cd0,bus=scsi0.0,bootindex=0'));
  t.same(values(args, '-drive').slice(0, 2), ['if=pflash,format=raw,unit=0,readonly=on,file=/c/QEMU_EFI-pflash.fd', 'if=pflash,format=raw,unit=1,file=/tmp/vm/efivars.fd']);
});

t.test('arm64 direct kernel and KVM on an arm64 host', async (t) => {
  const kernel = { kind: 'kernel' as const, kernel: '/k/Image', append: 'console=ttyAMA0' };
  t.notOk(machineArgv({ ...base, arch: 'arm64', boot: kernel }).args.some((a) => a.includes('pflash')));
  t.same(machineArgv({ ...base, arch: 'arm64', accel: 'kvm', boot: kernel }).args.slice(0, 6), ['-machine', 'virt', '-accel', 'kvm', '-cpu', 'host']);
});

t.test('armv7: qemu-system-arm, virt, cortex-a15, TCG only, no BIOS', async (t) => {
  const spec: MachineSpec = { ...base, arch: 'armv7', boot: { kind: 'kernel', kernel: '/k/zImage', append: 'console=ttyAMA0' } };
  const { binary, args } = machineArgv(spec);
  t.equal(binary, 'qemu-system-arm');
  t.same(args.slice(0, 6), ['-machine', 'virt', '-accel', 'tcg', '-cpu', 'cortex-a15']);
  t.throws(() => machineArgv({ ...spec, accel: 'kvm' }), /TCG only/);
  t.throws(() => machineArgv({ ...spec, boot: { kind: 'iso', file: '/a.iso' }, firmware: 'bios' }), /no BIOS/);
});

t.test('defaults and helpers', async (t) => {
  t.equal(defaultFirmware('amd64'), 'bios');
  t.equal(defaultFirmware('arm64'), 'uefi');
  t.equal(defaultFirmware('armv7'), 'uefi');
  t.equal(serialConsole('amd64'), 'ttyS0');
  t.equal(serialConsole('arm64'), 'ttyAMA0');
  t.equal(checkFirmware('amd64', 'bios'), undefined);
  t.match(checkFirmware('arm64', 'bios'), /use uefi/);
  t.equal(commandLine('qemu', ['-append', 'console=ttyS0 quiet', '-m', '1024']), "qemu -append 'console=ttyS0 quiet' -m 1024");
});

t.test('pure: the same spec gives the same argv', async (t) => {
  t.same(machineArgv(base), machineArgv(structuredClone(base)));
});
