// Board images: the card image's size per board and arch, and its boot under
// TCG against a baseline measured in the same run: the card's own kernel
// booting a busybox initramfs (the image's own busybox-static) to a marker.
// The card boots on QEMU virt (no Pi firmware or SoC model here): its kernel,
// initramfs and command line, the console moved to virt's ttyAMA0, the card
// (on a 4 GiB overlay) as the disk, to `cairn: boot complete`. Builds with
// the k3s test double (the stage cache makes a second run fast). Prints
// figures; asserts nothing.
//
//   npx tsx bench/boards.ts          (BENCH_RUNS=2 for more runs; BENCH_ARCHES=arm64)
import { execa } from 'execa';
import { mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { boot, overlay } from '../qemu/harness.js';
import { hostAccel } from '../qemu/host.js';
import { BOARDS, boardProfile } from '../src/builder/boards.js';
import type { Arch } from '../src/builder/types.js';
import { K3S_DOUBLE, REPO } from '../test/boot/image.js';
import { cardFile, cardPartitions, cardText, type CardPartition } from '../test/support/card.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 1);
const ONLY = process.env.BENCH_ARCHES?.split(',');
const MARKER = 'CAIRN-BENCH-BASELINE';
const MIB = 1024 * 1024;

/** The image's own busybox-static, from the squashfs on the card's CAIRN_STATE. */
async function imageBusybox(img: string, state: CardPartition, version: string, dir: string): Promise<string> {
  const part = join(dir, 'state.ext4');
  await execa('dd', [`if=${img}`, `of=${part}`, 'bs=1M', `skip=${state.start}`, `count=${state.size}`, 'iflag=skip_bytes,count_bytes', 'status=none']);
  const squash = join(dir, 'rootfs.squashfs');
  await execa('debugfs', ['-R', `dump /cairn/system/${version}/rootfs.squashfs ${squash}`, part], { stderr: 'ignore' });
  await rm(part);
  const busybox = join(dir, 'busybox');
  const { stdout } = await execa('unsquashfs', ['-cat', squash, 'usr/bin/busybox'], { encoding: 'buffer' });
  await writeFile(busybox, stdout, { mode: 0o755 });
  await rm(squash);
  return busybox;
}

/** A busybox initramfs whose /init prints the marker and powers off. */
async function baselineInitrd(busybox: string, dir: string): Promise<string> {
  const root = join(dir, 'baseline-root');
  await mkdir(join(root, 'bin'), { recursive: true });
  await execa('cp', [busybox, join(root, 'bin/busybox')]);
  await symlink('busybox', join(root, 'bin/sh'));
  await writeFile(join(root, 'init'), `#!/bin/sh\n/bin/busybox echo ${MARKER}\n/bin/busybox poweroff -f\n`, { mode: 0o755 });
  const out = join(dir, 'baseline.cpio.gz');
  await execa('sh', ['-c', `cd ${root} && find . | sort | cpio -o -H newc --quiet | gzip -1 > ${out}`]);
  return out;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function benchBoard(board: (typeof BOARDS)[number], arch: Arch, dir: string): Promise<string[]> {
  const out = join(REPO, '.bench', 'boards', `${board}-${arch}`);
  const started = Date.now();
  await execa(join(REPO, 'bin/cairn'), ['build', join(REPO, 'images/default.yaml'), '--board', board, '--arch', arch, '--k3s', K3S_DOUBLE, '--level', '3', '--out', out, '--quiet'], { stdio: 'inherit' });
  const buildS = (Date.now() - started) / 1000;
  const record = JSON.parse(await readFile(join(out, 'build.json'), 'utf8')) as { version: string; artifacts: { file: string; bytes: number }[] };
  const card = record.artifacts.find((a) => a.file.endsWith(`-${board}.${boardProfile(board).imageExtension}`));
  if (!card) throw new Error(`the ${board} build wrote no card image`);
  const img = join(out, card.file);
  const st = await stat(img);
  const [bootPart, statePart] = await cardPartitions(img);
  const work = join(dir, `${board}-${arch}`);
  await mkdir(work, { recursive: true });
  const v = record.version;
  const kernel = await cardFile(img, bootPart!, `cairn/${v}/vmlinuz`, join(work, 'vmlinuz'));
  const initrd = await cardFile(img, bootPart!, `cairn/${v}/initrd`, join(work, 'initrd'));
  const cmdline = (await cardText(img, bootPart!, `cairn/${v}/cmdline.txt`)).trim();
  const append = cmdline.replace(/console=\S+/g, '').replace(/\s+/g, ' ').trim() + ' console=ttyAMA0,115200';
  const baseInitrd = await baselineInitrd(await imageBusybox(img, statePart!, v, work), work);

  const base: number[] = [];
  const cairn: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const b = await boot({ arch, artifact: { kind: 'kernel', kernel, initrd: baseInitrd, append: 'console=ttyAMA0,115200 quiet' }, memMb: 2048, cpus: 2, name: `bench-${arch}-baseline`, noReboot: true });
    base.push((await b.waitFor(MARKER, 180_000)).elapsedMs / 1000);
    await b.close();
    const disk = join(work, 'card.qcow2');
    await overlay(img, disk, '4G');
    const vm = await boot({
      arch,
      artifact: { kind: 'kernel', kernel, initrd, append },
      extraArgs: ['-drive', `file=${disk},format=qcow2,if=virtio`],
      memMb: 2048,
      cpus: 2,
      name: `bench-${arch}-card`,
      timeoutMs: 900_000,
    });
    cairn.push((await vm.waitFor(/^cairn: boot complete/m, 900_000)).elapsedMs / 1000);
    await vm.close();
    await rm(disk, { force: true });
  }
  const b = median(base);
  const c = median(cairn);
  return [
    `${board} ${arch}: ${card.file}`,
    `  card image                                   ${(st.size / MIB).toFixed(0)} MiB (${((st.blocks * 512) / MIB).toFixed(0)} MiB allocated, sparse)`,
    `  build (warm stages are cached)               ${buildS.toFixed(0)} s`,
    `  baseline: its kernel, busybox initramfs      ${b.toFixed(1)} s`,
    `  QEMU start to "boot complete" (virt, TCG)    ${c.toFixed(1)} s   ${(c / b).toFixed(2)}x baseline`,
  ];
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-bench-boards-'));
  const lines: string[] = [];
  try {
    for (const board of BOARDS) {
      // A board whose kernel comes from a vendor BSP (jetson) needs that tarball, and QEMU has no model of its SoC.
      if (boardProfile(board).bsp) {
        lines.push(`${board}: not measured (its kernel comes from the vendor's BSP, which QEMU cannot boot)`);
        continue;
      }
      for (const arch of boardProfile(board).arches) {
        if (ONLY && !ONLY.includes(arch)) continue;
        lines.push(...(await benchBoard(board, arch, dir)));
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  console.log(`board images (${hostAccel('arm64')}, ${RUNS} run${RUNS > 1 ? 's' : ''}, medians; k3s is the test double)`);
  for (const l of lines) console.log(l);
}

await main();
