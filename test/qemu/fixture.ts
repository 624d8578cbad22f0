/**
 * The small bootable fixture of the QEMU harness tests, built once per arch
 * into a cache folder (CAIRN_QEMU_FIXTURE_DIR, default /var/tmp/cairn-qemu-fixture):
 * a real Debian trixie kernel and a busybox initramfs whose /init prints what
 * it sees (the seed, the network), prints a marker, and then powers off or
 * gives a shell on the console. From those: a hybrid BIOS+UEFI ISO made with
 * grub-mkrescue (amd64), the same image as raw and qcow2 disks, and a PXE
 * folder with an iPXE script.
 *
 * The kernel comes from the output tests' fixture root (test/fixtures/outputs,
 * /var/tmp/cairn-fixture) when that is built, else from an unpacked
 * linux-image package (mmdebstrap --variant=extract, about 20 s).
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { chmod, copyFile, mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';

export const FIXTURE_CACHE = process.env.CAIRN_QEMU_FIXTURE_DIR ?? '/var/tmp/cairn-qemu-fixture';
const OUTPUTS_FIXTURE = process.env.CAIRN_FIXTURE_DIR ?? '/var/tmp/cairn-fixture';
export const MARKER = 'CAIRN-QEMU-FIXTURE-OK';
export const PROMPT = 'fixture# ';

export type FixtureArch = 'amd64' | 'arm64' | 'armv7';

export interface Fixture {
  arch: FixtureArch;
  dir: string;
  /** The kernel as Debian ships it (bzImage, Image, zImage). */
  kernel: string;
  initrd: string;
  /** amd64: hybrid BIOS+UEFI ISO; arm64: UEFI ISO. Its GRUB boots with fixture=poweroff. */
  iso?: string;
  raw?: string;
  qcow2?: string;
  /** kernel, initrd.gz and boot.ipxe (fetching both over HTTP). */
  pxe?: string;
}

/** Modules the init loads when the kernel has them as modules, in dependency order. */
const MODULES = ['cdrom', 'isofs', 'virtio_blk', 'failover', 'net_failover', 'virtio_net', 'button', 'evdev'];

const INIT = `#!/bin/busybox sh
/bin/busybox mkdir -p /usr/bin /sbin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# /dev/console is the last console= (tty0 when a command line ends with it): talk on the serial port.
for c in $(cat /sys/class/tty/console/active); do case $c in ttyS*|ttyAMA*) exec </dev/$c >/dev/$c 2>&1; break ;; esac; done
mode=poweroff
fetch=
for a in $(cat /proc/cmdline); do case $a in fixture=*) mode=\${a#fixture=} ;; fixture.fetch=*) fetch=\${a#fixture.fetch=} ;; esac; done
for m in $(cat /lib/modules/order); do [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko 2>/dev/null; done
echo "fixture: up after $(cut -d' ' -f1 /proc/uptime) s, mode $mode"
echo "fixture: cmdline $(cat /proc/cmdline)"
sleep 0.2
seed=$(findfs LABEL=cidata 2>/dev/null) && mkdir -p /seed && mount -t iso9660 -o ro "$seed" /seed && {
  echo "fixture: seed on $seed: $(tr '\\n' ' ' </seed/meta-data)"
  sed 's/^/fixture: user-data: /' /seed/user-data
}
if ip link show eth0 >/dev/null 2>&1; then
  ip link set lo up
  ip addr add 10.0.2.15/24 dev eth0
  ip link set eth0 up
  ip route add default via 10.0.2.2
  (while true; do nc -l -p 22 -e echo SSH-2.0-cairn-fixture; done) >/dev/null 2>&1 &
  echo "fixture: network up, port 22 answers"
  [ -n "$fetch" ] && echo "fixture: fetched $(wget -q -O - "$fetch" 2>&1)"
fi
for e in /sys/class/input/event*; do
  if grep -q 'Power Button' "$e/device/name" 2>/dev/null; then
    # evdev reads whole events only (24 bytes on 64-bit, 16 on 32-bit): read 96 bytes.
    (dev=/dev/input/\${e##*/}; n=0
     while [ ! -c $dev ] && [ $n -lt 20 ]; do sleep 0.1; n=$((n+1)); done
     if [ "$(dd if=$dev bs=96 count=1 2>/dev/null | wc -c)" -gt 0 ]; then
       echo "fixture: power button pressed"; sync; poweroff -f
     fi) &
  fi
done
echo ${MARKER}
if [ "$mode" = shell ]; then
  export PS1='${PROMPT}'
  exec setsid cttyhack sh -i
fi
poweroff -f
`;

// On PCs GRUB talks to the UART itself; on ARM it uses the UEFI console (which QEMU puts on the serial port).
const grubCfg = (console: string): string => `${console === 'ttyS0' ? 'serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\n' : ''}set timeout=0
menuentry 'fixture' {
  linux /boot/vmlinuz console=${console} quiet fixture=poweroff
  initrd /boot/initrd.gz
}
`;

const BOOT_IPXE = `#!ipxe
echo fixture: iPXE loading from \${cairn-http}
kernel \${cairn-http}/vmlinuz console=ttyS0 quiet fixture=poweroff
initrd \${cairn-http}/initrd.gz
boot
`;

const DEBIAN: Record<FixtureArch, { arch: string; kernelPkg: string }> = {
  amd64: { arch: 'amd64', kernelPkg: 'linux-image-amd64' },
  arm64: { arch: 'arm64', kernelPkg: 'linux-image-arm64,grub-efi-arm64-bin' },
  armv7: { arch: 'armhf', kernelPkg: 'linux-image-armmp-lpae' },
};

function newest(dir: string, prefix: string): string | undefined {
  if (!existsSync(dir)) return undefined;
  const names = readdirSync(dir).filter((n) => n.startsWith(prefix)).sort();
  const last = names[names.length - 1];
  return last ? path.join(dir, last) : undefined;
}

/** A root with a kernel and busybox-static: the output tests' one, else our own unpacked packages. */
async function sourceRoot(arch: FixtureArch): Promise<string> {
  if (arch !== 'armv7') {
    const shared = path.join(OUTPUTS_FIXTURE, arch, 'rootfs');
    if (existsSync(path.join(OUTPUTS_FIXTURE, arch, 'done')) && newest(path.join(shared, 'boot'), 'vmlinuz-')) return shared;
  }
  const root = path.join(FIXTURE_CACHE, `${arch}-root`);
  if (existsSync(path.join(root, 'done'))) return path.join(root, 'rootfs');
  const tmp = `${root}.${process.pid}.tmp`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  const d = DEBIAN[arch];
  await execa('mmdebstrap', [
    '--quiet', '--variant=extract', `--architectures=${d.arch}`, `--include=${d.kernelPkg},busybox-static`,
    '--dpkgopt=path-exclude=/usr/share/doc/*', '--dpkgopt=path-exclude=/usr/share/man/*', '--dpkgopt=path-exclude=/usr/share/locale/*',
    'trixie', path.join(tmp, 'rootfs'), process.env.CAIRN_FIXTURE_MIRROR ?? 'http://deb.debian.org/debian',
  ]);
  await writeFile(path.join(tmp, 'done'), '');
  await rm(root, { recursive: true, force: true });
  await rename(tmp, root).catch(async (e: unknown) => {
    if (!existsSync(path.join(root, 'done'))) throw e;
    await rm(tmp, { recursive: true, force: true });
  });
  return path.join(root, 'rootfs');
}

async function findModule(modulesDir: string, name: string): Promise<string | undefined> {
  const want = new Set([`${name}.ko`, `${name}.ko.xz`, `${name}.ko.zst`, `${name}.ko.gz`]);
  const walk = async (dir: string): Promise<string | undefined> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) {
        const r = await walk(p);
        if (r) return r;
      } else if (want.has(e.name) || want.has(e.name.replace(/-/g, '_'))) return p;
    }
    return undefined;
  };
  return await walk(modulesDir);
}

async function decompressTo(src: string, dst: string): Promise<void> {
  const tool = src.endsWith('.xz') ? ['xz', '-dc'] : src.endsWith('.zst') ? ['zstd', '-dcq'] : src.endsWith('.gz') ? ['gzip', '-dc'] : undefined;
  if (!tool) return await copyFile(src, dst);
  const [cmd, ...args] = tool as [string, ...string[]];
  await execa(cmd, [...args, src], { stdout: { file: dst } });
}

async function buildInitrd(root: string, release: string, out: string, work: string): Promise<void> {
  const tree = path.join(work, 'initrd');
  for (const d of ['bin', 'proc', 'sys', 'dev', 'lib/modules', 'etc', 'tmp']) await mkdir(path.join(tree, d), { recursive: true });
  const busybox = [path.join(root, 'usr/bin/busybox'), path.join(root, 'bin/busybox')].find((p) => existsSync(p));
  if (!busybox) throw new Error(`no busybox in ${root}`);
  await copyFile(busybox, path.join(tree, 'bin/busybox'));
  await chmod(path.join(tree, 'bin/busybox'), 0o755);
  const modulesDir = [path.join(root, 'lib/modules', release), path.join(root, 'usr/lib/modules', release)].find((p) => existsSync(p));
  const order: string[] = [];
  if (modulesDir) {
    for (const m of MODULES) {
      const file = await findModule(modulesDir, m);
      if (!file) continue;
      await decompressTo(file, path.join(tree, 'lib/modules', `${m}.ko`));
      order.push(m);
    }
  }
  await writeFile(path.join(tree, 'lib/modules/order'), `${order.join('\n')}\n`);
  await writeFile(path.join(tree, 'init'), INIT);
  await chmod(path.join(tree, 'init'), 0o755);
  const list = (await execa('find', ['.', '-print0'], { cwd: tree })).stdout;
  const cpio = await execa('cpio', ['--null', '-o', '-H', 'newc', '--quiet', '-R', '0:0'], { cwd: tree, input: list, encoding: 'buffer' });
  const gz = await execa('gzip', ['-1', '-n'], { input: Buffer.from(cpio.stdout), encoding: 'buffer' });
  await writeFile(out, Buffer.from(gz.stdout));
}

/**
 * Builds (once) and returns the fixture of an arch. Concurrent callers (tap
 * runs test files in parallel) build in their own temp folders; the first
 * rename wins.
 */
export async function qemuFixture(arch: FixtureArch): Promise<Fixture> {
  const root = await sourceRoot(arch);
  const kernelSrc = newest(path.join(root, 'boot'), 'vmlinuz-');
  if (!kernelSrc) throw new Error(`no kernel in ${root}/boot`);
  const release = path.basename(kernelSrc).slice('vmlinuz-'.length);
  const key = createHash('sha256').update(JSON.stringify([INIT, grubCfg('ttyS0'), grubCfg('ttyAMA0'), BOOT_IPXE, MODULES, kernelSrc, arch])).digest('hex').slice(0, 12);
  const dir = path.join(FIXTURE_CACHE, `${arch}-${key}`);
  const files = (d: string): Fixture => ({
    arch,
    dir: d,
    kernel: path.join(d, 'vmlinuz'),
    initrd: path.join(d, 'initrd.gz'),
    ...(arch === 'amd64' ? { iso: path.join(d, 'fixture.iso'), raw: path.join(d, 'fixture.img'), qcow2: path.join(d, 'fixture.qcow2'), pxe: path.join(d, 'pxe') } : {}),
    ...(arch === 'arm64' ? { iso: path.join(d, 'fixture.iso') } : {}),
  });
  if (existsSync(path.join(dir, 'done'))) return files(dir);
  const tmp = `${dir}.${process.pid}.tmp`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  const f = files(tmp);
  await copyFile(kernelSrc, f.kernel);
  await buildInitrd(root, release, f.initrd, tmp);
  if (f.iso) {
    const isoTree = path.join(tmp, 'iso');
    await mkdir(path.join(isoTree, 'boot/grub'), { recursive: true });
    await copyFile(f.kernel, path.join(isoTree, 'boot/vmlinuz'));
    await copyFile(f.initrd, path.join(isoTree, 'boot/initrd.gz'));
    await writeFile(path.join(isoTree, 'boot/grub/grub.cfg'), grubCfg(arch === 'amd64' ? 'ttyS0' : 'ttyAMA0'));
    // amd64: the host's GRUB (i386-pc and x86_64-efi); arm64: the arm64-efi modules of the fixture root.
    const platform = arch === 'arm64' ? ['-d', path.join(root, 'usr/lib/grub/arm64-efi')] : [];
    await execa('grub-mkrescue', [...platform, '-o', f.iso, isoTree], { env: { SOURCE_DATE_EPOCH: '1700000000' } });
    await rm(isoTree, { recursive: true, force: true });
  }
  if (f.raw && f.qcow2 && f.iso) {
    await copyFile(f.iso, f.raw);
    await execa('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', f.raw, f.qcow2]);
  }
  if (f.pxe) {
    await mkdir(f.pxe);
    await copyFile(f.kernel, path.join(f.pxe, 'vmlinuz'));
    await copyFile(f.initrd, path.join(f.pxe, 'initrd.gz'));
    await writeFile(path.join(f.pxe, 'boot.ipxe'), BOOT_IPXE);
  }
  await rm(path.join(tmp, 'initrd'), { recursive: true, force: true });
  await writeFile(path.join(tmp, 'done'), '');
  await rename(tmp, dir).catch(async (e: unknown) => {
    if (!existsSync(path.join(dir, 'done'))) throw e;
    await rm(tmp, { recursive: true, force: true });
  });
  return files(dir);
}
