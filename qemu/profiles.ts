/**
 * QEMU machine profiles: a pure function from what to boot (arch, artifact,
 * options) to the QEMU command line. Nothing here touches the disk or starts
 * a process; the harness (qemu/harness.ts) prepares the files (overlays,
 * firmware variable stores, seeds) and passes their paths in.
 *
 *   amd64  q35 (or pc), SeaBIOS or OVMF, or a direct kernel (PVH vmlinux or bzImage)
 *   arm64  virt, cortex-a57, UEFI (AAVMF) or a direct kernel (Image)
 *   armv7  virt, cortex-a15, UEFI (AAVMF32) or a direct kernel (zImage)
 *
 * KVM is used only when the caller says the host really has it (see
 * hostAccel in qemu/host.ts); everything else runs under TCG.
 */
import type { Arch } from '../src/builder/types.js';

export type { Arch };
export type Accel = 'kvm' | 'tcg';
/** Firmware for artifacts with a bootloader: SeaBIOS (amd64 only) or UEFI. */
export type Firmware = 'bios' | 'uefi';

/** What the machine boots. raw and qcow2 images arrive here as the harness' throwaway overlay. */
export type BootMedium =
  | { kind: 'iso'; file: string }
  | { kind: 'disk'; file: string; format: 'raw' | 'qcow2' }
  | { kind: 'pxe'; tftpDir: string; bootfile: string }
  | { kind: 'kernel'; kernel: string; initrd?: string; append: string };

/** UEFI firmware files: the read-only code and this VM's own copy of the variable store. */
export interface FirmwareFiles {
  code: string;
  vars: string;
}

/** A forward from the guest's slirp network to a host TCP service (guestfwd). */
export interface GuestForward {
  /** Address the guest connects to, e.g. 10.0.2.100. */
  guestAddr: string;
  guestPort: number;
  hostPort: number;
  /**
   * A QEMU chardev behind a guestfwd connects once, when QEMU starts, and
   * serves one connection. With this set each guest connection gets its own
   * (a relay per connection, `cmd:`), as an HTTP service needs.
   */
  relay?: string;
}

export interface MachineSpec {
  arch: Arch;
  boot: BootMedium;
  accel: Accel;
  /** Firmware for iso, disk and pxe boots; ignored for a direct kernel. */
  firmware: Firmware;
  /** Needed when firmware is 'uefi'. */
  firmwareFiles?: FirmwareFiles;
  memMb: number;
  cpus: number;
  /** amd64 machine type; q35 by default. */
  machine?: 'q35' | 'pc';
  /** A NoCloud seed (ISO9660 labelled cidata), attached read-only as a virtio disk. */
  seed?: string;
  /** More disks, virtio, after the boot disk and the seed (a bare path: qcow2 or raw by its extension). */
  disks?: (string | { file: string; format: 'raw' | 'qcow2'; bootFirst?: boolean })[];
  /** Host port forwarded (on 127.0.0.1) to the guest's port 22. */
  sshPort?: number;
  /** More host forwards: host port → guest port. */
  hostForwards?: { hostPort: number; guestPort: number }[];
  guestForwards?: GuestForward[];
  /** The user network's subnet (net=), when not QEMU's 10.0.2.0/24. */
  network?: string;
  /**
   * A second NIC on a network shared by several VMs on this host (a cluster):
   * a UDP multicast group on the loopback interface (QEMU's socket netdev),
   * which every VM given the same group joins. No root needed.
   */
  privateNet?: { mcast: string; mac: string };
  /**
   * 'terminal': serial and monitor multiplexed on stdio (Ctrl-A X quits, Ctrl-A C
   * toggles the monitor), as `cairn run` wants. 'serial': only the serial port
   * on stdio, for the harness (driven through a pty, controlled over QMP).
   */
  console: 'terminal' | 'serial';
  /** A unix socket for QMP (clean power-down, quit). */
  qmpSocket?: string;
  /** Stop instead of rebooting (-no-reboot). */
  noReboot?: boolean;
  /** Appended verbatim. */
  extraArgs?: string[];
}

/** The emulator binary of each arch, and the Debian package that has it. */
export const qemuBinaries: Record<Arch, { binary: string; package: string }> = {
  amd64: { binary: 'qemu-system-x86_64', package: 'qemu-system-x86' },
  arm64: { binary: 'qemu-system-aarch64', package: 'qemu-system-arm' },
  armv7: { binary: 'qemu-system-arm', package: 'qemu-system-arm' },
};

/**
 * Where Debian's firmware packages put UEFI for each arch. `vars` is the
 * template that is copied per VM. arm64's 2 MiB QEMU_EFI.fd must be padded
 * to the 64 MiB pflash size (the harness does that and caches the result);
 * AAVMF_CODE.fd from the same package is the padded file already.
 */
export const uefiFirmware: Record<Arch, { code: string[]; vars: string; package: string; pflashBytes?: number }> = {
  amd64: { code: ['/usr/share/OVMF/OVMF_CODE_4M.fd'], vars: '/usr/share/OVMF/OVMF_VARS_4M.fd', package: 'ovmf' },
  arm64: {
    code: ['/usr/share/AAVMF/AAVMF_CODE.fd', '/usr/share/qemu-efi-aarch64/QEMU_EFI.fd'],
    vars: '/usr/share/AAVMF/AAVMF_VARS.fd',
    package: 'qemu-efi-aarch64',
    pflashBytes: 64 * 1024 * 1024,
  },
  armv7: { code: ['/usr/share/AAVMF/AAVMF32_CODE.fd'], vars: '/usr/share/AAVMF/AAVMF32_VARS.fd', package: 'qemu-efi-arm', pflashBytes: 64 * 1024 * 1024 },
};

/** The kernel's name for the serial console QEMU wires to stdio. */
export function serialConsole(arch: Arch): string {
  return arch === 'amd64' ? 'ttyS0' : 'ttyAMA0';
}

/** Default firmware for an arch: SeaBIOS on amd64 (fastest), UEFI on ARM (the only choice). */
export function defaultFirmware(arch: Arch): Firmware {
  return arch === 'amd64' ? 'bios' : 'uefi';
}

/** Whether an arch can use a firmware at all. */
export function checkFirmware(arch: Arch, firmware: Firmware): string | undefined {
  if (firmware === 'bios' && arch !== 'amd64') return `${arch} has no BIOS firmware; use uefi (or boot a kernel directly)`;
  return undefined;
}

/** Escapes a value for QEMU's comma-separated option syntax (a comma is doubled). */
export function optValue(value: string): string {
  return value.replace(/,/g, ',,');
}

function machineArgs(spec: MachineSpec): string[] {
  switch (spec.arch) {
    case 'amd64': {
      const args = ['-machine', spec.machine ?? 'q35', '-accel', spec.accel];
      if (spec.accel === 'kvm') args.push('-cpu', 'host');
      return args;
    }
    case 'arm64':
      return spec.accel === 'kvm' ? ['-machine', 'virt', '-accel', 'kvm', '-cpu', 'host'] : ['-machine', 'virt', '-accel', 'tcg', '-cpu', 'cortex-a57'];
    case 'armv7':
      return ['-machine', 'virt', '-accel', 'tcg', '-cpu', 'cortex-a15'];
  }
}

function consoleArgs(spec: MachineSpec): string[] {
  if (spec.console === 'terminal') return ['-nographic'];
  // No default devices (VGA, parallel port, monitor); the serial port on stdio,
  // and signal=off so that a Ctrl-C typed into the console goes to the guest.
  return ['-nodefaults', '-display', 'none', '-chardev', 'stdio,id=console0,signal=off', '-serial', 'chardev:console0'];
}

function firmwareArgs(spec: MachineSpec): string[] {
  if (spec.boot.kind === 'kernel' || spec.firmware === 'bios') return [];
  const files = spec.firmwareFiles;
  if (!files) throw new Error(`uefi firmware for ${spec.arch} needs firmwareFiles (code and a per-VM vars copy)`);
  return [
    '-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${optValue(files.code)}`,
    '-drive', `if=pflash,format=raw,unit=1,file=${optValue(files.vars)}`,
  ];
}

function diskFormat(file: string): string {
  return /\.qcow2$/i.test(file) ? 'qcow2' : 'raw';
}

function netArgs(spec: MachineSpec): string[] {
  const opts = ['user', 'id=net0'];
  if (spec.network) opts.push(`net=${spec.network}`);
  if (spec.sshPort !== undefined) opts.push(`hostfwd=tcp:127.0.0.1:${spec.sshPort}-:22`);
  for (const f of spec.hostForwards ?? []) opts.push(`hostfwd=tcp:127.0.0.1:${f.hostPort}-:${f.guestPort}`);
  for (const g of spec.guestForwards ?? []) opts.push(`guestfwd=tcp:${g.guestAddr}:${g.guestPort}-${g.relay ? `cmd:${optValue(g.relay)} ${g.hostPort}` : `tcp:127.0.0.1:${g.hostPort}`}`);
  if (spec.boot.kind === 'pxe') opts.push(`tftp=${optValue(spec.boot.tftpDir)}`, `bootfile=${optValue(spec.boot.bootfile)}`);
  const nic = ['virtio-net-pci', 'netdev=net0'];
  if (spec.boot.kind === 'pxe') nic.push('bootindex=0');
  const priv = spec.privateNet ? ['-netdev', `socket,id=net1,mcast=${spec.privateNet.mcast},localaddr=127.0.0.1`, '-device', `virtio-net-pci,netdev=net1,mac=${spec.privateNet.mac}`] : [];
  return ['-netdev', opts.join(','), '-device', nic.join(','), ...priv];
}

function bootArgs(spec: MachineSpec): string[] {
  const b = spec.boot;
  switch (b.kind) {
    case 'kernel': {
      const args = ['-kernel', b.kernel];
      if (b.initrd) args.push('-initrd', b.initrd);
      args.push('-append', b.append);
      return args;
    }
    case 'iso': {
      const drive = ['-drive', `file=${optValue(b.file)},format=raw,media=cdrom,readonly=on,if=none,id=cd0`];
      // q35 and pc have an IDE/AHCI bus (a CD drive as on real PCs); virt has none, so virtio-scsi.
      // after a disk that boots first (an installer's target: blank, the firmware goes on to the CD)
      const index = (spec.disks ?? []).some((d) => typeof d !== 'string' && d.bootFirst) ? 1 : 0;
      if (spec.arch === 'amd64') return [...drive, '-device', `ide-cd,drive=cd0,bootindex=${index}${spec.machine === 'pc' ? '' : ',bus=ide.0'}`];
      return ['-device', 'virtio-scsi-pci,id=scsi0', ...drive, '-device', `scsi-cd,drive=cd0,bus=scsi0.0,bootindex=${index}`];
    }
    case 'disk':
      return ['-drive', `file=${optValue(b.file)},format=${b.format},if=none,id=disk0`, '-device', 'virtio-blk-pci,drive=disk0,bootindex=0'];
    case 'pxe':
      return [];
  }
}

/** The emulator and its arguments for one machine. Pure: the same spec gives the same argv. */
export function machineArgv(spec: MachineSpec): { binary: string; args: string[] } {
  if (spec.boot.kind !== 'kernel') {
    const bad = checkFirmware(spec.arch, spec.firmware);
    if (bad) throw new Error(bad);
  }
  if (spec.arch === 'armv7' && spec.accel === 'kvm') throw new Error('armv7 runs under TCG only');
  const args = [
    ...machineArgs(spec),
    '-m', String(spec.memMb),
    '-smp', String(spec.cpus),
    ...firmwareArgs(spec),
    ...consoleArgs(spec),
    ...bootArgs(spec),
  ];
  if (spec.seed) args.push('-drive', `file=${optValue(spec.seed)},format=raw,if=none,id=seed0,readonly=on`, '-device', 'virtio-blk-pci,drive=seed0');
  (spec.disks ?? []).forEach((d, i) => {
    const { file, format, bootFirst } = typeof d === 'string' ? { file: d, format: diskFormat(d), bootFirst: false } : d;
    args.push('-drive', `file=${optValue(file)},format=${format},if=none,id=data${i}`, '-device', `virtio-blk-pci,drive=data${i}${bootFirst ? ',bootindex=0' : ''}`);
  });
  args.push(...netArgs(spec));
  args.push('-device', 'virtio-rng-pci');
  if (spec.qmpSocket) args.push('-qmp', `unix:${optValue(spec.qmpSocket)},server=on,wait=off`);
  if (spec.noReboot) args.push('-no-reboot');
  args.push(...(spec.extraArgs ?? []));
  return { binary: qemuBinaries[spec.arch].binary, args };
}

/** One shell-quoted line, for logs and `cairn run --dry-run`. */
export function commandLine(binary: string, args: readonly string[]): string {
  const q = (s: string): string => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);
  return [binary, ...args].map(q).join(' ');
}
