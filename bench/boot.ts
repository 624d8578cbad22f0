// Boot time and memory of the default amd64 image (k3s test double), against
// a baseline measured in the same run: the same kernel, booted the same way
// (directly, through PVH), with a busybox initramfs that prints a marker and
// powers off. Under TCG on machines without real KVM. Prints figures;
// asserts nothing.
//
//   npx tsx bench/boot.ts            (BENCH_RUNS=2 for more runs)
import { execa } from 'execa';
import { chmod, copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { boot } from '../qemu/harness.js';
import { hostAccel } from '../qemu/host.js';
import { buildTestImage } from '../test/boot/image.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 1);
const MARKER = 'CAIRN-BENCH-BASELINE';

/** A busybox initramfs whose /init prints the marker and powers off. */
async function baselineInitrd(dir: string): Promise<string> {
  const root = join(dir, 'root');
  await mkdir(join(root, 'bin'), { recursive: true });
  await copyFile('/bin/busybox', join(root, 'bin/busybox'));
  await symlink('busybox', join(root, 'bin/sh'));
  await writeFile(join(root, 'init'), `#!/bin/sh\n/bin/busybox echo ${MARKER}\n/bin/busybox poweroff -f\n`);
  await chmod(join(root, 'init'), 0o755);
  const out = join(dir, 'baseline.cpio.gz');
  await execa('sh', ['-c', `cd ${root} && find . | sort | cpio -o -H newc --quiet | gzip -1 > ${out}`]);
  return out;
}

async function extract(iso: string, dir: string): Promise<{ kernel: string; initrd: string; cmdline: string }> {
  const kernel = join(dir, 'vmlinuz');
  const initrd = join(dir, 'initrd');
  await execa('xorriso', ['-osirrox', 'on', '-indev', iso, '-extract', '/cairn/vmlinuz', kernel, '-extract', '/cairn/initrd', initrd], { stderr: 'ignore' });
  await chmod(kernel, 0o644);
  await chmod(initrd, 0o644);
  return { kernel, initrd, cmdline: 'console=ttyS0,115200' };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function main(): Promise<void> {
  const image = buildTestImage();
  const dir = await mkdtemp(join(tmpdir(), 'cairn-bench-boot-'));
  try {
    const k = await extract(image.iso, dir);
    const initrd = await baselineInitrd(dir);
    const base: number[] = [];
    const toK3s: number[] = [];
    const toComplete: number[] = [];
    const rss: number[] = [];
    const used: number[] = [];
    const usedNoK3s: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const b = await boot({ artifact: { kind: 'kernel', kernel: k.kernel, initrd, append: `${k.cmdline} quiet` }, memMb: 2048, cpus: 2, name: 'bench-baseline', noReboot: true });
      base.push((await b.waitFor(MARKER, 120_000)).elapsedMs / 1000);
      await b.close();

      // The same kernel and boot path; the system from the ISO in a CD drive (the first stage finds CAIRN_LIVE).
      const vm = await boot({
        artifact: { kind: 'kernel', kernel: k.kernel, initrd: k.initrd, append: `cairn.mode=live ${k.cmdline}` },
        extraArgs: ['-drive', `file=${image.iso},media=cdrom,readonly=on,format=raw`],
        memMb: 2048,
        cpus: 2,
        name: 'bench-cairn',
        timeoutMs: 600_000,
      });
      toK3s.push((await vm.waitFor(/^cairn: runtime ok/m)).elapsedMs / 1000);
      toComplete.push((await vm.waitFor(/^cairn: boot complete/m)).elapsedMs / 1000);
      // No config: the console logs in as cairn without a password.
      vm.sendLine('');
      await vm.waitFor(/login: cairn \(automatic login\)|\$ $/m, 120_000);
      await vm.waitFor(/\$ $/m, 60_000);
      await new Promise((r) => setTimeout(r, 5000));
      vm.sendLine(
        'echo "RSS $(ps -o rss= -p $(cat /run/cairn/init.pid))"; echo "K3S $(ps -eo rss=,args= | awk \'/[k]3s (server|agent)/ {s+=$1} END {print s+0}\')"; awk \'/MemTotal/ {t=$2} /MemAvailable/ {a=$2} END {print "USED " t-a}\' /proc/meminfo',
      );
      const m = await vm.waitFor(/^USED (\d+)$/m, 60_000);
      const out = vm.output;
      const rssKb = Number(/^RSS\s+(\d+)$/m.exec(out)?.[1]);
      const k3sKb = Number(/^K3S (\d+)$/m.exec(out)?.[1]);
      rss.push(rssKb / 1024);
      used.push(Number(m.groups[0]) / 1024);
      usedNoK3s.push((Number(m.groups[0]) - k3sKb) / 1024);
      await vm.close();
    }
    const accel = hostAccel('amd64');
    const mb = (x: number) => `${x.toFixed(0)} MiB`;
    console.log(`boot of the default amd64 image (${accel}, ${RUNS} run${RUNS > 1 ? 's' : ''}, medians; k3s is the test double)`);
    console.log(`baseline: same kernel, busybox initramfs to a marker   ${median(base).toFixed(1)} s`);
    console.log(`QEMU start to k3s start                              ${median(toK3s).toFixed(1)} s   ${(median(toK3s) / median(base)).toFixed(2)}x baseline (goal <= 3x)`);
    console.log(`QEMU start to "boot complete"                        ${median(toComplete).toFixed(1)} s   ${(median(toComplete) / median(base)).toFixed(2)}x baseline`);
    console.log(`init RSS after boot                                  ${mb(median(rss))}   (goal <= 45 MiB)`);
    console.log(`memory used after boot                               ${mb(median(used))}`);
    console.log(`memory used without k3s (used minus k3s' RSS)        ${mb(median(usedNoK3s))}   (goal <= 120 MiB)`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
