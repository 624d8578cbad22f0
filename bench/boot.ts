// Boot time and memory of the default amd64 image (k3s test double), against
// baselines measured in the same run, every one booted the same way (the
// same kernel, started directly by QEMU, console on ttyS0, `quiet`):
// - the floor: that kernel with a busybox initramfs that prints a marker;
// - the system users would pick instead: stock Debian with systemd to the
//   start of its k3s.service (bench/debian-systemd.ts, built once);
// - cairn from its live ISO in a CD drive, and from its raw disk's state
//   partition (the second boot of that disk: a node coming back after a
//   reboot or a power cut).
// Under TCG on machines without real KVM. Prints figures and their goals;
// asserts nothing.
//
// --arch arm64: the same on QEMU virt for the arm64 image (its raw disk:
// there is no arm64 ISO in the default formats), the Debian baseline built
// for arm64 under qemu-user, the console on ttyAMA0; memory is read after
// the raw disk's second boot.
//
//   npx tsx bench/boot.ts [--arch arm64] [--plot DIR]       (BENCH_RUNS=3 for more runs)
//
// --plot DIR: the boot timeline of each cairn boot as DIR/cairn-<boot>.svg
// (src/init/timeline.ts, as `cairn status --plot` draws it on a node).
import { execa } from 'execa';
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { boot, type Vm } from '../qemu/harness.js';
import { hostAccel } from '../qemu/host.js';
import { buildBenchImage } from '../test/boot/image.js';
import { StageCache, defaultCacheDir } from '../src/builder/cache.js';
import { loadSpec } from '../src/builder/spec.js';
import { repoRoot } from '../src/builder/paths.js';
import { renderBootSvg, timelineOf } from '../src/init/timeline.js';
import type { NodeStatus } from '../src/init/status.js';
import { K3S_MARKER, debianSystemd } from './debian-systemd.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 1);
const MARKER = 'CAIRN-BENCH-BASELINE';
const MEM_MB = 2048;
const plotIdx = process.argv.indexOf('--plot');
const plotDir = plotIdx >= 0 ? resolve(process.argv[plotIdx + 1] ?? '.') : undefined;
const archIdx = process.argv.indexOf('--arch');
const ARCH = (archIdx >= 0 ? process.argv[archIdx + 1] : 'amd64') as 'amd64' | 'arm64';
if (ARCH !== 'amd64' && ARCH !== 'arm64') throw new Error(`bench/boot: --arch takes amd64 or arm64, not ${String(ARCH)}`);
const CONSOLE = `console=${ARCH === 'amd64' ? 'ttyS0' : 'ttyAMA0'},115200 quiet`;

/** A busybox initramfs whose /init prints the marker and powers off (`busybox`: a static busybox of the arch booted). */
async function baselineInitrd(dir: string, busybox = '/bin/busybox'): Promise<string> {
  const root = join(dir, 'root');
  await mkdir(join(root, 'bin'), { recursive: true });
  await copyFile(busybox, join(root, 'bin/busybox'));
  await chmod(join(root, 'bin/busybox'), 0o755);
  await symlink('busybox', join(root, 'bin/sh'));
  await writeFile(join(root, 'init'), `#!/bin/sh\n/bin/busybox echo ${MARKER}\n/bin/busybox poweroff -f\n`);
  await chmod(join(root, 'init'), 0o755);
  const out = join(dir, 'baseline.cpio.gz');
  await execa('sh', ['-c', `cd ${root} && find . | sort | cpio -o -H newc --quiet | gzip -1 > ${out}`]);
  return out;
}

async function extract(iso: string, dir: string): Promise<{ kernel: string; initrd: string; version: string }> {
  const kernel = join(dir, 'vmlinuz');
  const initrd = join(dir, 'initrd');
  const version = join(dir, 'version');
  await execa('xorriso', ['-osirrox', 'on', '-indev', iso, '-extract', '/cairn/vmlinuz', kernel, '-extract', '/cairn/initrd', initrd, '-extract', '/cairn/version', version], { stderr: 'ignore' });
  await chmod(kernel, 0o644);
  await chmod(initrd, 0o644);
  return { kernel, initrd, version: (await readFile(version, 'utf8')).trim() };
}

/** The kernel, initrd and version from a raw disk's CAIRN_STATE (where the first stage and GRUB find them), and the initrd's busybox. */
async function extractRaw(raw: string, dir: string): Promise<{ kernel: string; initrd: string; version: string; busybox: string }> {
  const dump = JSON.parse((await execa('sfdisk', ['--json', raw])).stdout) as { partitiontable: { partitions: { start: number; size: number; name?: string }[] } };
  const p = dump.partitiontable.partitions.find((x) => x.name === 'CAIRN_STATE');
  if (!p) throw new Error(`${raw} has no CAIRN_STATE partition`);
  const state = join(dir, 'state.img');
  await execa('dd', [`if=${raw}`, `of=${state}`, 'bs=512', `skip=${p.start}`, `count=${p.size}`, 'conv=sparse', 'status=none']);
  const version = (await execa('debugfs', ['-R', 'ls /cairn/system', state])).stdout.split(/\s+/).find((w) => /^\d+\.\d+\.\d+/.test(w));
  if (!version) throw new Error(`no version under /cairn/system in ${raw}`);
  const kernel = join(dir, 'vmlinuz');
  const initrd = join(dir, 'initrd');
  await execa('debugfs', ['-R', `dump /cairn/system/${version}/kernel ${kernel}`, state]);
  await execa('debugfs', ['-R', `dump /cairn/system/${version}/initrd ${initrd}`, state]);
  await rm(state);
  const busybox = join(dir, 'busybox');
  await execa('sh', ['-c', `zstdcat '${initrd}' | cpio -i --quiet --to-stdout bin/busybox > '${busybox}'`]);
  return { kernel, initrd, version, busybox };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

interface CairnBoot {
  toK3s: number;
  toComplete: number;
  rssMb: number;
  usedMb: number;
  usedNoK3sMb: number;
  status?: NodeStatus;
}

/** The exact line of a boot with no failed phase (the console ends it with \r\n, the \n maybe not yet there). */
const completeLine = (version: string) => new RegExp(`^cairn: boot complete ${version.replace(/[.+]/g, '\\$&')}\r?$`, 'm');

/** Waits for k3s' start and boot complete (both waits set up at once: each time is when its line came), then reads memory and the status. */
async function measureCairn(vm: Vm, withMemory: boolean, version: string): Promise<CairnBoot> {
  const k3s = vm.waitFor(/^cairn: runtime ok/m);
  const complete = vm.waitFor(completeLine(version), 600_000, { from: 'start' });
  const toK3s = (await k3s).elapsedMs / 1000;
  const toComplete = (await complete).elapsedMs / 1000;
  // No config: the console logs in as cairn without a password; a new prompt answers an empty line.
  const prompt = vm.waitFor(/\$ $/m, 120_000, { from: 'end' });
  vm.sendLine('');
  await prompt;
  let rssMb = NaN;
  let usedMb = NaN;
  let usedNoK3sMb = NaN;
  if (withMemory) {
    await new Promise((r) => setTimeout(r, 5000));
    vm.sendLine(
      'echo "RSS $(ps -o rss= -p $(cat /run/cairn/init.pid))"; echo "K3S $(ps -eo rss=,args= | awk \'/[k]3s (server|agent)/ {s+=$1} END {print s+0}\')"; awk \'/MemTotal/ {t=$2} /MemAvailable/ {a=$2} END {print "USED " t-a}\' /proc/meminfo',
    );
    const m = await vm.waitFor(/^USED (\d+)$/m, 60_000);
    const out = vm.output;
    rssMb = Number(/^RSS\s+(\d+)$/m.exec(out)?.[1]) / 1024;
    const k3sKb = Number(/^K3S (\d+)$/m.exec(out)?.[1]);
    usedMb = Number(m.groups[0]) / 1024;
    usedNoK3sMb = (Number(m.groups[0]) - k3sKb) / 1024;
  }
  vm.sendLine('echo "STATUS $(base64 -w0 /run/cairn/status.json) END"');
  const s = await vm.waitFor(/^STATUS (\S+) END$/m, 60_000);
  const status = JSON.parse(Buffer.from(s.groups[0]!, 'base64').toString('utf8')) as NodeStatus;
  return { toK3s, toComplete, rssMb, usedMb, usedNoK3sMb, status };
}

async function main(): Promise<void> {
  const image = await buildBenchImage(ARCH);
  const dir = await mkdtemp(join(tmpdir(), 'cairn-bench-boot-'));
  const cache = new StageCache(defaultCacheDir(), { log: (l) => process.stderr.write(`${l}\n`) });
  await cache.open();
  try {
    const spec = loadSpec(join(repoRoot(), 'images/default.yaml'));
    const debian = await debianSystemd(cache, spec, (l) => process.stderr.write(`${l}\n`), ARCH);
    // QEMU's PVH boot unpacks a kernel beside its file: a copy, so that the cache entry stays as it was made
    const debianKernel = join(dir, 'debian-vmlinuz');
    await copyFile(debian.kernel, debianKernel);
    const k: { kernel: string; initrd: string; version: string; busybox?: string } = image.iso ? await extract(image.iso, dir) : await extractRaw(image.raw, dir);
    const initrd = await baselineInitrd(dir, k.busybox);
    const modules = (await execa('sh', ['-c', `zstdcat '${k.initrd}' | cpio -t --quiet | grep -m1 '^lib/modules/[^/]*$'`], { reject: false })).stdout.trim();
    const kernelRelease = modules.slice('lib/modules/'.length) || undefined;
    const vmArch = { arch: ARCH } as const;
    const base: number[] = [];
    const debianK3s: number[] = [];
    const live: CairnBoot[] = [];
    const raw: CairnBoot[] = [];
    for (let i = 0; i < RUNS; i++) {
      process.stderr.write(`bench: run ${i + 1} of ${RUNS}\n`);
      const b = await boot({ ...vmArch, artifact: { kind: 'kernel', kernel: k.kernel, initrd, append: CONSOLE }, memMb: MEM_MB, cpus: 2, name: 'bench-baseline', noReboot: true });
      base.push((await b.waitFor(MARKER, 120_000)).elapsedMs / 1000);
      await b.close();

      // Debian: its own initramfs (initramfs-tools), the same kernel package, its root on a virtio disk.
      const d = await boot({
        ...vmArch,
        artifact: { kind: 'kernel', kernel: debianKernel, initrd: debian.initrd, append: `root=/dev/vda rw ${CONSOLE}` },
        extraDisks: [debian.disk],
        memMb: MEM_MB,
        cpus: 2,
        name: 'bench-debian',
        timeoutMs: 600_000,
      });
      debianK3s.push((await d.waitFor(new RegExp(`^${K3S_MARKER} [\\d.]+`, 'm'))).elapsedMs / 1000);
      await d.close();

      // cairn live: the system from the ISO in a CD drive (the first stage finds CAIRN_LIVE).
      if (image.iso) {
        const vm = await boot({
          artifact: { kind: 'kernel', kernel: k.kernel, initrd: k.initrd, append: `cairn.mode=live ${CONSOLE}` },
          extraArgs: ['-drive', `file=${image.iso},media=cdrom,readonly=on,format=raw`],
          memMb: MEM_MB,
          cpus: 2,
          name: 'bench-cairn-live',
          timeoutMs: 600_000,
        });
        live.push(await measureCairn(vm, true, k.version));
        await vm.close();
      }

      // cairn from its raw disk: a first boot (it grows the state partition, makes host keys), then the boot measured.
      const disk = join(dir, 'disk.raw');
      await execa('cp', ['--sparse=always', image.raw, disk]);
      await execa('truncate', ['-s', '4G', disk]);
      const rawBoot = (name: string) =>
        boot({
          ...vmArch,
          artifact: { kind: 'kernel', kernel: k.kernel, initrd: k.initrd, append: `cairn.mode=state cairn.version=${k.version} ${CONSOLE}` },
          extraDisks: [{ path: disk, writable: true }],
          memMb: MEM_MB,
          cpus: 2,
          name,
          timeoutMs: 600_000,
        });
      const first = await rawBoot('bench-cairn-raw-first');
      await first.waitFor(completeLine(k.version), 600_000);
      // the init's startup snapshot, made beside the first boot, is what the second starts from
      const made = await first.waitFor(/^cairn: startup snapshot: .*$/m, 600_000);
      process.stderr.write(`bench: ${made.match.trim()}\n`);
      // a clean shutdown from the console (the cairn user logs in by itself without a config)
      const prompt = first.waitFor(/\$ $/m, 120_000, { from: 'end' });
      first.sendLine('');
      await prompt;
      first.sendLine('sudo cairn poweroff');
      if (!(await first.waitExit(120_000))) process.stderr.write('bench: the first raw boot did not power off within 2 minutes; killed\n');
      await first.close();
      const second = await rawBoot('bench-cairn-raw');
      // without a live boot (arm64), memory is read after this one
      raw.push(await measureCairn(second, !image.iso, k.version));
      await second.close();
      await rm(disk, { force: true });
    }
    const accel = hostAccel(ARCH);
    const floor = median(base);
    const deb = median(debianK3s);
    const m = (xs: CairnBoot[], f: (b: CairnBoot) => number) => median(xs.map(f));
    const liveK3s = m(live, (b) => b.toK3s);
    const rawK3s = m(raw, (b) => b.toK3s);
    const mb = (x: number) => `${x.toFixed(0)} MiB`;
    const s = (x: number) => `${x.toFixed(1)} s`;
    const mem = live.length ? live : raw;
    const memBoot = live.length ? 'live boot' : 'raw disk, 2nd boot';
    const record = JSON.parse(await readFile(image.record, 'utf8')) as { systems: { sizes: Record<string, number>; inputs: { squashfs?: { compression?: string; level?: number } } }[] };
    const squashfs = record.systems[0]?.sizes.squashfs;
    const sq = record.systems[0]?.inputs.squashfs;
    const lines = [
      `boot of the default ${ARCH} image (${accel}, ${RUNS} run${RUNS > 1 ? 's' : ''}, medians; QEMU start to the line; k3s is the test double)`,
      `kernel ${kernelRelease ?? '?'} for every boot; Debian's is ${debian.kernelRelease}${kernelRelease && debian.kernelRelease !== kernelRelease ? ' (NOT THE SAME: the archive changed between the builds)' : ''}`,
      `floor: the kernel, a busybox initramfs to a marker            ${s(floor)}`,
      `stock Debian with systemd to its k3s.service start            ${s(deb)}   ${(deb / floor).toFixed(2)}x the floor`,
      ...(live.length ? [`cairn live ISO to k3s start                                    ${s(liveK3s)}   ${(liveK3s / floor).toFixed(2)}x the floor (goal <= 3x), ${(liveK3s / deb).toFixed(2)}x Debian (goal < 1x)`] : []),
      `cairn raw disk (state partition, 2nd boot${raw[0]?.status?.initFrom === 'snapshot' ? ', init from its startup snapshot' : ', NOT from the startup snapshot'}) to k3s start ${s(rawK3s)}   ${(rawK3s / floor).toFixed(2)}x the floor (goal <= 3x), ${(rawK3s / deb).toFixed(2)}x Debian (goal < 1x)`,
      ...(live.length ? [`cairn live ISO to "boot complete"                              ${s(m(live, (b) => b.toComplete))}`] : []),
      `cairn raw disk to "boot complete"                              ${s(m(raw, (b) => b.toComplete))}`,
      `init RSS after a ${memBoot}                              ${mb(m(mem, (b) => b.rssMb))}   (goal <= 45 MiB)`,
      `memory used after a ${memBoot}                           ${mb(m(mem, (b) => b.usedMb))}`,
      `memory used without k3s (used minus k3s' RSS), ${memBoot} ${mb(m(mem, (b) => b.usedNoK3sMb))}   (goal <= 120 MiB)`,
      `squashfs without k3s (${sq?.compression ?? '?'} ${sq?.level ?? '?'}, build.json)                    ${squashfs ? `${(squashfs / 1048576).toFixed(1)} MiB` : '?'}   (goal <= 64 MiB)`,
    ];
    for (const [name, runs] of [['live', live], ['raw', raw]] as const) {
      const status = runs[runs.length - 1]?.status;
      if (!status?.times) continue;
      const t = status.times;
      const phases = status.phases.map((p) => `${p.name} ${(p.ms / 1000).toFixed(2)}`).join(', ');
      lines.push(`${name} boot, on the guest's clock: kernel to first stage ${s((t.stage1StartMs ?? 0) / 1000)}, first stage ${s(((t.stage1EndMs ?? 0) - (t.stage1StartMs ?? 0)) / 1000)}, node start to the init's first line ${s(((t.initReadyMs ?? 0) - (t.initStartMs ?? 0)) / 1000)} (${status.initFrom === 'snapshot' ? 'startup snapshot' : 'init.js'}); phases (s): ${phases}`);
    }
    process.stdout.write(`${lines.join('\n')}\n`);
    if (plotDir) {
      await mkdir(plotDir, { recursive: true });
      for (const [name, runs] of [['live', live], ['raw', raw]] as const) {
        const st = runs[runs.length - 1]?.status;
        if (!st) continue;
        const file = join(plotDir, `cairn-${name}.svg`);
        await writeFile(file, renderBootSvg(timelineOf(st), `cairn ${st.version}, ${name === 'live' ? 'live ISO' : 'raw disk, second boot'} (${accel})`));
        process.stdout.write(`timeline: ${file}\n`);
      }
    }
  } finally {
    await cache.close();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
