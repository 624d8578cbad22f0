/**
 * The system people would pick instead of cairn, as bench/boot boots it:
 * stock Debian with systemd, built here with mmdebstrap from the same
 * mirror and kernel package as the image, on an ext4 disk. DHCP through
 * systemd-networkd, sshd and chrony enabled, and a k3s.service as k3s'
 * install script writes it (After/Wants network-online.target), whose
 * ExecStart prints a marker on the serial console with the time since the
 * kernel started. Kept in the stage cache (`cairn cache` lists it as
 * bench-debian) and made once per package list and archive state.
 */
import { mkdir, readdir, writeFile, chmod, copyFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import type { StageCache } from '../src/builder/cache.js';
import { archiveState, kernelPackage } from '../src/builder/debian.js';
import { hashValue } from '../src/builder/hash.js';
import type { ImageSpec } from '../src/builder/spec.js';
import { ARCH_TABLE } from '../src/builder/arches.js';
import { enableForeignArch, hostArch } from '../src/builder/binfmt.js';
import type { Arch } from '../src/builder/types.js';

export const K3S_MARKER = 'CAIRN-BENCH-K3S-START';

/** k3s.service as get.k3s.io writes it for a server. */
export const K3S_UNIT = `[Unit]
Description=Lightweight Kubernetes
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-/etc/systemd/system/k3s.service.env
KillMode=process
Delegate=yes
User=root
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=/bin/sh -xc '! /usr/bin/systemctl is-enabled --quiet nm-cloud-setup.service 2>/dev/null'
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/k3s server
`;

/** Stands in for k3s: says when it started on the console (ttyS0, ttyAMA0: the kernel's console=), then waits. */
const K3S_STAND_IN = `#!/bin/sh
read up _ </proc/uptime
echo "${K3S_MARKER} $up" >/dev/console
exec sleep infinity
`;

const NETWORK = `[Match]
Name=en* eth*

[Network]
DHCP=yes
`;

export const PACKAGES = ['systemd', 'systemd-sysv', 'udev', 'dbus', 'initramfs-tools', 'openssh-server', 'chrony', 'iproute2', 'kmod', 'procps'];

export interface DebianSystemd {
  kernel: string;
  initrd: string;
  disk: string;
  kernelRelease: string;
}

export async function debianSystemd(cache: StageCache, spec: ImageSpec, log: (l: string) => void, arch: Arch = 'amd64'): Promise<DebianSystemd> {
  const archive = await archiveState(spec, cache.stateDir(), log);
  const packages = [kernelPackage[arch], ...PACKAGES].sort();
  const inputs = { stage: 1, arch, suite: spec.debian.suite, mirror: spec.debian.mirror, archive, packages, unit: K3S_UNIT, standIn: K3S_STAND_IN, network: NETWORK };
  const entry = await cache.get<{ kernelRelease: string }>('bench-debian', hashValue(inputs), inputs, async (dir) => {
    const root = path.join(dir, 'root');
    log(`bench: building stock Debian ${spec.debian.suite} ${arch} with systemd (mmdebstrap, ${packages.length} packages; once)`);
    const debs = cache.debsDir(arch);
    await mkdir(debs, { recursive: true });
    // a foreign arch's maintainer scripts (and systemctl below) run under qemu-user, as the rootfs stage's do
    const undo = arch === hostArch() ? async () => undefined : await enableForeignArch(arch, log);
    try {
      await execa(
        'mmdebstrap',
        [
          '--mode=root',
          `--architectures=${ARCH_TABLE[arch].debian}`,
          '--variant=essential',
          `--include=${packages.join(',')}`,
          '--aptopt=APT::Install-Recommends "false"',
          `--setup-hook=mkdir -p "$1/var/cache/apt/archives" && find '${debs}' -maxdepth 1 -name '*.deb' -exec cp -l -t "$1/var/cache/apt/archives/" {} +`,
          `--customize-hook=find "$1/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -exec cp -ln -t '${debs}' {} +`,
          spec.debian.suite,
          root,
          spec.debian.mirror,
        ],
        { env: { DEBIAN_FRONTEND: 'noninteractive' } },
      );
      const put = async (rel: string, text: string, mode = 0o644) => {
        await mkdir(path.join(root, path.dirname(rel)), { recursive: true });
        await writeFile(path.join(root, rel), text);
        await chmod(path.join(root, rel), mode);
      };
      await put('etc/systemd/system/k3s.service', K3S_UNIT);
      await put('usr/local/bin/k3s', K3S_STAND_IN, 0o755);
      await put('etc/systemd/network/20-wired.network', NETWORK);
      await put('etc/fstab', '/dev/vda / ext4 rw,errors=remount-ro 0 1\n');
      await put('etc/hostname', 'debian\n');
      await execa('chroot', [root, 'systemctl', 'enable', 'systemd-networkd', 'systemd-networkd-wait-online', 'ssh', 'chrony', 'k3s']);
      // an installed machine's boots after its first: it has its machine id
      await execa('chroot', [root, 'systemd-machine-id-setup']);
    } finally {
      await undo();
    }
    const boot = await readdir(path.join(root, 'boot'));
    const kernel = boot.find((n) => n.startsWith('vmlinuz-'));
    const initrd = boot.find((n) => n.startsWith('initrd.img-'));
    if (!kernel || !initrd) throw new Error(`the Debian root has no kernel or initrd in /boot (${boot.join(', ')})`);
    await copyFile(path.join(root, 'boot', kernel), path.join(dir, 'vmlinuz'));
    await copyFile(path.join(root, 'boot', initrd), path.join(dir, 'initrd.img'));
    await rm(path.join(root, 'var/cache/apt/archives'), { recursive: true, force: true });
    await execa('mke2fs', ['-q', '-t', 'ext4', '-L', 'debian', '-d', root, path.join(dir, 'disk.img'), '2G']);
    await rm(root, { recursive: true, force: true });
    return { kernelRelease: kernel.slice('vmlinuz-'.length) };
  });
  return { kernel: path.join(entry.dir, 'vmlinuz'), initrd: path.join(entry.dir, 'initrd.img'), disk: path.join(entry.dir, 'disk.img'), kernelRelease: entry.meta.data.kernelRelease };
}
