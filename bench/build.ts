/**
 * bench/build: how long `cairn build` of the default amd64 ISO takes, cold
 * (no cached stage), warm (nothing changed) and after a one-file overlay
 * change, against baselines measured in the same run: plain mmdebstrap of
 * the same package list from the same .deb pool, and the mmdebstrap stage
 * of the cold build itself. Also the sizes of the squashfs and the ISO
 * without k3s (the k3s test double stands in for it, a few hundred bytes),
 * and what the prune step removed.
 *
 *   npx tsx bench/build.ts [--cache DIR] [--format iso] [--level N]
 *
 * Prints figures and ratios; writes them to bench/results/build-<time>.json.
 * Goals: a rebuild with nothing changed <= 0.1x the cold build's mmdebstrap
 * stage (issue 11); after an overlay change only the system, its squashfs
 * and the outputs run; squashfs <= 64 MiB (issue 11); ISO <= 250 MB (issue 3).
 */
import { copyFile, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { defaultCacheDir } from '../src/builder/cache.js';
import { packageList } from '../src/builder/debian.js';
import { build, resolveSourceDateEpoch } from '../src/builder/pipeline.js';
import { createReporter } from '../src/builder/progress.js';
import { repoRoot } from '../src/builder/paths.js';
import { loadSpec } from '../src/builder/spec.js';
import { defaultOutputs } from '../src/builder/writers.js';
import type { Format, OutputWriter } from '../src/builder/types.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const root = repoRoot();
const specFile = path.join(root, 'images/default.yaml');
const loaded = loadSpec(specFile);
const sharedCache = path.resolve(arg('cache') ?? defaultCacheDir());
const level = arg('level') ? Number(arg('level')) : undefined;
const writers: Partial<Record<Format, OutputWriter>> = await defaultOutputs();
const format = (arg('format') ?? (writers.iso ? 'iso' : 'pxe')) as Format;
if (!writers[format]) {
  // Until the output writers land: kernel, initramfs and squashfs copied out, as pxe would.
  process.stderr.write(`bench: no ${format} writer in this checkout; measuring with kernel, initrd and squashfs copied out\n`);
  writers[format] = async (sys, ctx) => {
    const out = [];
    for (const [src, name] of [[sys.kernel, 'vmlinuz'], [sys.initramfs, 'initrd'], [sys.squashfs, 'rootfs.squashfs']] as const) {
      await copyFile(src, path.join(ctx.outDir, name));
      out.push({ file: name, format, arch: sys.arch });
    }
    return out;
  };
}
const k3sDouble = path.join(root, 'test/fixtures/k3s-double');
const debs = path.join(sharedCache, 'debs', 'amd64');
await mkdir(debs, { recursive: true });
// One time stamp for both builds: the warm build has exactly the cold one's inputs.
const sourceDateEpoch = await resolveSourceDateEpoch();
const work = await mkdtemp(path.join(tmpdir(), 'cairn-bench-'));
const mib = (b: number) => `${(b / 1048576).toFixed(1)} MiB`;
const secs = async (fn: () => Promise<unknown>) => {
  const t = performance.now();
  await fn();
  return (performance.now() - t) / 1000;
};

try {
  // A fresh stage cache that shares the .deb pool (hard links): a cold build
  // downloads nothing more than the baseline does.
  const cacheDir = path.join(work, 'cache');
  await mkdir(path.join(cacheDir, 'debs'), { recursive: true });
  await execa('cp', ['-al', debs, path.join(cacheDir, 'debs', 'amd64')]);

  // Baseline: plain mmdebstrap, same packages, same pool. Run once first to
  // fill the pool (not timed), then timed.
  // The default spec with one overlay folder of one file, which the third build changes.
  const site = path.join(work, 'site');
  await mkdir(path.join(site, 'etc'), { recursive: true });
  await writeFile(path.join(site, 'etc/motd'), 'site 1\n');
  const spec = { ...loaded, overlays: [...loaded.overlays, site] };
  const pkgs = packageList(spec, 'amd64');
  const baseline = async () => {
    const target = path.join(work, `baseline-${Date.now()}`);
    await execa(
      'mmdebstrap',
      [
        '--mode=root',
        '--variant=essential',
        '--architectures=amd64',
        `--include=${pkgs.join(',')}`,
        '--skip=essential/unlink',
        `--setup-hook=mkdir -p "$1/var/cache/apt/archives" && find '${debs}' -maxdepth 1 -name '*.deb' -exec cp -l -t "$1/var/cache/apt/archives/" {} +`,
        `--customize-hook=find "$1/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -exec cp -ln -t '${debs}' {} +`,
        spec.debian.suite,
        target,
        spec.debian.mirror,
      ],
      { env: { INITRD: 'No' } },
    );
    await rm(target, { recursive: true, force: true });
  };
  process.stderr.write('bench: filling the .deb pool (not timed)\n');
  await baseline();
  await execa('cp', ['-alf', `${debs}/.`, path.join(cacheDir, 'debs', 'amd64')]);
  const baselineSeconds = await secs(baseline);
  process.stderr.write(`bench: baseline mmdebstrap ${baselineSeconds.toFixed(1)}s\n`);

  const run = async (out: string) => {
    let record: Awaited<ReturnType<typeof build>> | undefined;
    const seconds = await secs(async () => {
      record = await build({
        spec,
        arches: ['amd64'],
        formats: [format],
        cacheDir,
        outDir: path.join(work, out),
        k3s: k3sDouble,
        sourceDateEpoch,
        squashfs: level ? { level } : undefined,
        reporter: createReporter({ tty: false }),
        outputs: writers,
        cacheMaxBytes: null,
      });
    });
    return { seconds, record: record! };
  };
  const cold = await run('cold');
  const warm = await run('warm');
  await writeFile(path.join(site, 'etc/motd'), 'site 2\n');
  const overlay = await run('overlay');
  const sys = cold.record.systems[0]!;
  const image = cold.record.artifacts.find((a) => (format === 'iso' ? a.file.endsWith('.iso') : a.file.endsWith('squashfs')));
  const mmdebstrapStage = sys.stages.find((s) => s.name === 'rootfs')!.seconds;
  const ran = (r: typeof cold) => r.record.systems[0]!.stages.filter((s) => !s.cached && !['copy', 'overlay', 'runtime', 'init', 'prune'].includes(s.name)).map((s) => s.name);
  const figures = {
    format,
    squashfsLevel: level ?? spec.squashfs.level,
    baselineSeconds,
    coldSeconds: cold.seconds,
    coldMmdebstrapStageSeconds: mmdebstrapStage,
    warmSeconds: warm.seconds,
    overlaySeconds: overlay.seconds,
    coldRatio: cold.seconds / baselineSeconds,
    warmRatio: warm.seconds / mmdebstrapStage,
    warmRatioBaseline: warm.seconds / baselineSeconds,
    overlayRatio: overlay.seconds / mmdebstrapStage,
    warmRan: ran(warm),
    overlayRan: ran(overlay),
    squashfsBytes: sys.sizes.squashfs!,
    imageFile: image?.file,
    imageBytes: image?.bytes,
    sizes: sys.sizes,
    pruned: sys.pruned,
    packages: Object.keys(sys.packages).length,
    coldStages: sys.stages,
    warmStages: warm.record.systems[0]!.stages,
    overlayStages: overlay.record.systems[0]!.stages,
  };
  const lines = [
    `baseline (plain mmdebstrap, same packages, same pool): ${baselineSeconds.toFixed(1)} s`,
    `cold build (${format}):  ${cold.seconds.toFixed(1)} s  = ${figures.coldRatio.toFixed(2)}x baseline; its mmdebstrap stage ${mmdebstrapStage.toFixed(1)} s`,
    `rebuild, nothing changed:  ${warm.seconds.toFixed(2)} s  = ${figures.warmRatio.toFixed(3)}x the cold build's mmdebstrap stage (goal <= 0.1x), ${figures.warmRatioBaseline.toFixed(3)}x baseline; stages run: ${figures.warmRan.join(', ') || 'none'}`,
    `rebuild, one overlay file changed:  ${overlay.seconds.toFixed(1)} s  = ${figures.overlayRatio.toFixed(2)}x the mmdebstrap stage; stages run: ${figures.overlayRan.join(', ')} (goal: system, squashfs and the outputs only)`,
    `squashfs without k3s: ${mib(figures.squashfsBytes)} (goal <= 64 MiB), zstd level ${figures.squashfsLevel}`,
    image ? `${image.file} without k3s: ${mib(image.bytes)}${format === 'iso' ? ` (goal <= 250 MB = ${mib(250e6)})` : ''}` : `no ${format} image`,
    `root filesystem: ${Object.entries(sys.sizes).map(([k, v]) => `${k} ${mib(v)}`).join(', ')}`,
    `pruned: ${Object.entries(sys.pruned).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${mib(v)}`).join(', ')}; ${figures.packages} packages listed in place of the dpkg database`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  const results = path.join(root, 'bench/results');
  await mkdir(results, { recursive: true });
  const file = path.join(results, `build-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  await writeFile(file, `${JSON.stringify(figures, null, 2)}\n`);
  process.stdout.write(`figures: ${path.relative(process.cwd(), file)}\n`);
} finally {
  for (const name of await readdir(work).catch(() => [] as string[])) {
    await rm(path.join(work, name), { recursive: true, force: true }).catch(() => {});
  }
  await rm(work, { recursive: true, force: true });
}
