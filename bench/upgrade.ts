/**
 * bench/upgrade: what a release that changes one file of the default system
 * costs a node, the delta payload against the full one, both measured in
 * the same run:
 *
 *   - bytes moved: the delta archive against the full archive (goal: at
 *     most 2%), and in it the patch alone and the runner layer (busybox and
 *     its script, which the container needs to run); the components it
 *     leaves out (the base's kernel and initrd); and what a registry pull
 *     moves when the node still has the base image's layers (the layers that
 *     did not change are the same blobs);
 *   - time to apply on the node: openPayload + extract of every component
 *     of the delta (base checked, patch applied, the unchanged components
 *     copied from the base's folder, every sha256, as cairn upgrade does),
 *     and the patch with its sha256 alone, against copying the payload's
 *     files to the same disk (cp + sync);
 *   - zstd's window: the patch made with --long=27 (what cairn uses) and
 *     --long=31, and the decoder's peak memory.
 *
 * The two squashfs images: one built squashfs of the default system,
 * unpacked (unsquashfs), one file changed, packed again with the builder's
 * own mksquashfs options (src/builder/stages/squashfs.ts); the unchanged
 * tree is packed again too, and must give the built image byte for byte
 * (otherwise that repack is the base, and the run says so).
 *
 *   npm run bench:upgrade [-- --payload FILE|DIR] [--file /usr/lib/cairn/init.js] [--runs 3]
 *
 * --payload (or $CAIRN_BENCH_PAYLOAD): a built full upgrade payload (.oci.tar)
 * of the default system, or a build's output folder. Without one the bench
 * builds it: bin/cairn build images/default.yaml --arch amd64 --format oci
 * --k3s test/fixtures/k3s-double --level 3 --out <tmp> (1-2 min with the
 * stage cache). Runs as root (unsquashfs keeps owners only then).
 *
 * Prints figures and ratios; never passes or fails on them. Writes them to
 * bench/results/upgrade-<time>.json.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { appendFile, copyFile, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { buildOciArchive } from '../src/builder/outputs/oci.js';
import { repoRoot } from '../src/builder/paths.js';
import { mksquashfsArgs, squashfsInputs } from '../src/builder/stages/squashfs.js';
import type { SystemArtifacts } from '../src/builder/types.js';
import { DELTA_WINDOW_LOG, applyArgs, makePatch } from '../src/upgrade/delta.js';
import { COMPONENTS, openPayload } from '../src/upgrade/payload.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const root = repoRoot();
const RUNS = Number(arg('runs') ?? 3);
const CHANGED_FILE = arg('file') ?? '/usr/lib/cairn/init.js';
const log = (l: string) => process.stderr.write(`bench: ${l}\n`);
const kib = (b: number) => `${(b / 1024).toFixed(1)} KiB`;
const mib = (b: number) => `${(b / 1048576).toFixed(1)} MiB`;
const pct = (x: number) => `${(x * 100).toFixed(2)}%`;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const secs = async (fn: () => Promise<unknown>) => {
  const t = performance.now();
  await fn();
  return (performance.now() - t) / 1000;
};
const sha256 = async (file: string) => {
  const h = createHash('sha256');
  for await (const c of createReadStream(file, { highWaterMark: 1 << 20 })) h.update(c as Buffer);
  return h.digest('hex');
};
const size = async (file: string) => (await stat(file)).size;

/** The full payload of the default system: given, or built now. */
async function fullPayload(work: string): Promise<string> {
  const given = arg('payload') ?? process.env.CAIRN_BENCH_PAYLOAD;
  const pick = async (dir: string) => {
    const names = (await readdir(dir)).filter((n) => n.endsWith('.oci.tar') && !n.includes('.delta-from-'));
    if (names.length !== 1) throw new Error(`${dir} holds ${names.length} full .oci.tar payloads; give one with --payload FILE`);
    return path.join(dir, names[0]!);
  };
  if (given) return (await stat(given)).isDirectory() ? pick(given) : path.resolve(given);
  const out = path.join(work, 'build');
  log(`building the default system (bin/cairn build ... --out ${out})`);
  await execa(path.join(root, 'bin/cairn'), ['build', 'images/default.yaml', '--arch', 'amd64', '--format', 'oci', '--k3s', 'test/fixtures/k3s-double', '--level', '3', '--out', out], { cwd: root, stdout: 'inherit', stderr: 'inherit' });
  return pick(out);
}

/** The builder's mksquashfs, quiet, on a tree. */
async function mksquashfs(tree: string, out: string, settings: { compression: 'zstd' | 'xz'; level: number }, sde: number): Promise<void> {
  const args = mksquashfsArgs(tree, out, squashfsInputs('bench', settings.compression, settings.level, sde), Math.max(1, availableParallelism())).filter((a) => a !== '-progress');
  await execa('mksquashfs', [...args, '-quiet'], { env: Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'SOURCE_DATE_EPOCH')), extendEnv: false, stdout: 'ignore' });
}

/** Peak resident memory of a command, through GNU time when the machine has it. */
async function peakRss(cmd: string, args: string[]): Promise<number | undefined> {
  if (!existsSync('/usr/bin/time')) return undefined;
  const r = await execa('/usr/bin/time', ['-f', '%M', cmd, ...args], { stdout: 'ignore' });
  const kb = Number(String(r.stderr).trim().split('\n').pop());
  return Number.isFinite(kb) ? kb * 1024 : undefined;
}

const work = await mkdtemp(path.join(tmpdir(), 'cairn-bench-upgrade-'));
try {
  if (process.getuid?.() !== 0) log('not root: unsquashfs cannot keep owners, so the repacked images will not be the built one');
  const source = await fullPayload(work);
  log(`payload ${source}`);

  // the base version's files, out of its payload (checked on the way)
  const oldDir = path.join(work, 'old');
  await mkdir(oldDir);
  const opened = await openPayload(source, { workDir: path.join(work, 'scratch') });
  for (const c of COMPONENTS) await opened.extract(c, path.join(oldDir, c));
  const rec = opened.record;
  await opened.close();
  const release = JSON.parse(await readFile(path.join(oldDir, 'release.json'), 'utf8')) as { inputs: { squashfs: { compression: 'zstd' | 'xz'; level: number } } };
  const settings = release.inputs.squashfs;
  log(`${rec.name} ${rec.version} ${rec.arch}: squashfs ${mib(rec.components['rootfs.squashfs'].size)}, ${settings.compression} level ${settings.level}`);

  // two squashfs images that differ in one file
  const tree = path.join(work, 'tree');
  await execa('unsquashfs', ['-q', '-no-progress', '-d', tree, path.join(oldDir, 'rootfs.squashfs')], { stdout: 'ignore' });
  const repack = path.join(work, 'repack.squashfs');
  await mksquashfs(tree, repack, settings, rec.sourceDateEpoch);
  const identical = (await sha256(repack)) === rec.components['rootfs.squashfs'].sha256;
  const baseSquashfs = identical ? path.join(oldDir, 'rootfs.squashfs') : repack;
  log(identical ? 'the unchanged tree packs to the built squashfs, byte for byte' : 'the unchanged tree does NOT pack to the built squashfs: the repack is the base');
  const changed = path.join(tree, CHANGED_FILE);
  const changedBefore = await size(changed);
  await appendFile(changed, `\n// ${rec.version}-bench: one changed file\n`);
  const newSquashfs = path.join(work, 'new.squashfs');
  await mksquashfs(tree, newSquashfs, settings, rec.sourceDateEpoch);

  // the base and the next release as the builder hands them to the oci writer
  const sysOf = async (version: string, squashfs: string, dir: string): Promise<SystemArtifacts> => {
    await mkdir(dir, { recursive: true });
    const releaseFile = path.join(dir, 'release.json');
    await writeFile(releaseFile, `${JSON.stringify({ ...release, version }, null, 2)}\n`);
    return {
      name: rec.name, version, arch: rec.arch, kernelRelease: 'bench', kernel: path.join(oldDir, 'kernel'), initramfs: path.join(oldDir, 'initrd'), squashfs,
      cmdline: '', release: releaseFile, rootfs: tree, sourceDateEpoch: rec.sourceDateEpoch,
    };
  };
  const nextVersion = `${rec.version}-bench`;
  const baseSys = await sysOf(rec.version, baseSquashfs, path.join(work, 'base-sys'));
  const nextSys = await sysOf(nextVersion, newSquashfs, path.join(work, 'next-sys'));
  const ociWork = path.join(work, 'oci');
  await mkdir(ociWork);
  const baseArchive = path.join(work, 'base.oci.tar');
  const baseResult = await buildOciArchive(baseSys, ociWork, baseArchive);
  const fullArchive = path.join(work, 'full.oci.tar');
  let fullResult!: Awaited<ReturnType<typeof buildOciArchive>>;
  const fullSeconds = await secs(async () => (fullResult = await buildOciArchive(nextSys, ociWork, fullArchive)));
  const deltaArchive = path.join(work, 'delta.oci.tar');
  log(`making the delta (zstd -19 --long=${DELTA_WINDOW_LOG} --patch-from)`);
  let deltaResult!: Awaited<ReturnType<typeof buildOciArchive>>;
  const deltaSeconds = await secs(async () => (deltaResult = await buildOciArchive(nextSys, ociWork, deltaArchive, { delta: { version: rec.version, squashfs: baseSquashfs, components: baseResult.record.components } })));
  const patch = deltaResult.delta!.patch;
  const unchanged = deltaResult.delta!.unchanged;

  // the window: --long=31 against cairn's --long=27
  log('making the same patch with --long=31');
  const patch31 = path.join(work, 'patch31');
  const p31 = await makePatch(baseSquashfs, newSquashfs, patch31, { windowLog: 31 });
  const patch27 = path.join(work, 'patch27');
  await makePatch(baseSquashfs, newSquashfs, patch27);

  // bytes
  const fullBytes = await size(fullArchive);
  const deltaBytes = await size(deltaArchive);
  const baseDigests = new Set(baseResult.layers.map((l) => l.digest));
  const pulled = deltaResult.layers.filter((l) => !baseDigests.has(l.digest));
  const registryBytes = pulled.reduce((n, l) => n + l.size, 0);
  const layerBytes = (c: string) => deltaResult.layers.find((l) => l.component === c)?.size ?? 0;
  const runnerBytes = layerBytes('runner');
  const leftOut = unchanged.map((c) => ({ component: c, bytes: fullResult.layers.find((l) => l.component === c)?.size ?? 0 }));

  // the node: the base installed (its folder as cairn upgrade keeps it); the delta applied, against cp + sync of the payload's files, on the same disk
  const node = path.join(work, 'node');
  const installed = path.join(node, 'cairn/system', rec.version, 'rootfs.squashfs');
  await mkdir(path.dirname(installed), { recursive: true });
  await copyFile(baseSquashfs, installed);
  for (const c of ['kernel', 'initrd'] as const) await copyFile(path.join(oldDir, c), path.join(path.dirname(installed), c));
  await copyFile(baseSys.release, path.join(path.dirname(installed), 'release.json'));
  const payloadFiles = [nextSys.kernel, nextSys.initramfs, newSquashfs, nextSys.release];
  const times = { deltaExtract: [] as number[], patchAlone: [] as number[], fullExtract: [] as number[], cp: [] as number[] };
  const result = deltaResult.record.components['rootfs.squashfs'];
  for (let run = 0; run < RUNS; run++) {
    const into = async (name: string) => {
      const d = path.join(node, `incoming-${name}`);
      await rm(d, { recursive: true, force: true });
      await mkdir(d, { recursive: true });
      return d;
    };
    const cpDir = await into('cp');
    times.cp.push(await secs(async () => {
      await execa('cp', [...payloadFiles, cpDir]);
      await execa('sync');
    }));
    const deltaDir = await into('delta');
    times.deltaExtract.push(await secs(async () => {
      const p = await openPayload(deltaArchive, { workDir: path.join(node, '.download'), installed: (v) => (v === rec.version ? installed : undefined) });
      for (const c of COMPONENTS) await p.extract(c, path.join(deltaDir, c));
      await p.close();
    }));
    if ((await sha256(path.join(deltaDir, 'rootfs.squashfs'))) !== result.sha256) throw new Error('the delta did not make the new squashfs');
    const alone = path.join(await into('patch'), 'rootfs.squashfs');
    times.patchAlone.push(await secs(async () => {
      await execa('zstd', applyArgs(installed, patch27, alone, result.size));
      if ((await sha256(alone)) !== result.sha256) throw new Error('the patch did not make the new squashfs');
      await execa('sync');
    }));
    const fullDir = await into('full');
    times.fullExtract.push(await secs(async () => {
      const p = await openPayload(fullArchive, { workDir: path.join(node, '.download') });
      for (const c of COMPONENTS) await p.extract(c, path.join(fullDir, c));
      await p.close();
    }));
  }
  const rss = await peakRss('zstd', applyArgs(installed, patch27, path.join(node, 'rss.squashfs'), result.size));
  const zstdVersion = (await execa('zstd', ['--version'])).stdout.trim();

  const t = { cp: median(times.cp), deltaExtract: median(times.deltaExtract), patchAlone: median(times.patchAlone), fullExtract: median(times.fullExtract) };
  const figures = {
    payload: path.basename(source),
    zstd: zstdVersion,
    squashfs: { compression: settings.compression, level: settings.level, bytes: result.size, repackIdentical: identical, changedFile: CHANGED_FILE, changedFileBytesBefore: changedBefore },
    bytes: {
      full: fullBytes, delta: deltaBytes, patch: patch.size, runner: runnerBytes, registryPull: registryBytes,
      deltaRatio: deltaBytes / fullBytes, patchRatio: patch.size / fullBytes, runnerRatio: runnerBytes / fullBytes, registryRatio: registryBytes / fullBytes,
      layers: Object.fromEntries(deltaResult.layers.map((l) => [l.component, l.size])),
      unchanged: Object.fromEntries(leftOut.map((l) => [l.component, l.bytes])),
    },
    window: { long27: patch.size, long31: p31.size, identical: p31.sha256 === patch.sha256, decoderPeakRss: rss },
    build: { fullSeconds, deltaSeconds },
    apply: { runs: RUNS, seconds: t, all: times, deltaRatio: t.deltaExtract / t.cp, patchRatio: t.patchAlone / t.cp, fullRatio: t.fullExtract / t.cp },
  };
  const lines = [
    `${rec.name} ${rec.version} ${rec.arch}, squashfs ${mib(result.size)} (${settings.compression} ${settings.level}); one file changed: ${CHANGED_FILE}; ${zstdVersion}`,
    `repack of the unchanged tree: ${identical ? 'byte-identical to the built squashfs' : 'differs from the built squashfs (the repack is the base)'}`,
    '',
    'bytes moved for the release:',
    `  full payload (baseline):   ${mib(fullBytes)}`,
    `  delta payload:             ${mib(deltaBytes)}  = ${pct(deltaBytes / fullBytes)} of the full one (goal <= 2%)`,
    `    its layers: ${deltaResult.layers.map((l) => `${l.component} ${kib(l.size)}`).join(', ')}`,
    `    left out (the base's, taken from the node): ${leftOut.length ? leftOut.map((l) => `${l.component} ${mib(l.bytes)}`).join(', ') : 'nothing'}`,
    `  the patch alone:           ${kib(patch.size)}  = ${pct(patch.size / fullBytes)}`,
    `  the runner layer:          ${kib(runnerBytes)}  = ${pct(runnerBytes / fullBytes)} (busybox and its script: the container needs them to run)`,
    `  the delta without the runner: ${kib(deltaBytes - runnerBytes)}  = ${pct((deltaBytes - runnerBytes) / fullBytes)}`,
    `  a registry pull (node has the base image's layers): ${kib(registryBytes)} = ${pct(registryBytes / fullBytes)} (${pulled.map((l) => l.component).join(', ')})`,
    '',
    `zstd window: --long=27 ${patch.size} B, --long=31 ${p31.size} B (${p31.sha256 === patch.sha256 ? 'the same bytes' : 'different bytes'}); decoder peak memory ${rss === undefined ? 'not measured (no /usr/bin/time)' : mib(rss)}`,
    `build side: full archive ${fullSeconds.toFixed(1)} s, delta archive ${deltaSeconds.toFixed(1)} s (zstd -19)`,
    '',
    `applying on the node (median of ${RUNS}, same disk, warm page cache):`,
    `  cp + sync of the payload's files (baseline): ${t.cp.toFixed(2)} s`,
    `  delta through openPayload (base check, patch, ${unchanged.length ? `${unchanged.join(' and ')} copied from the base, ` : ''}sha256, every component): ${t.deltaExtract.toFixed(2)} s = ${(t.deltaExtract / t.cp).toFixed(2)}x baseline`,
    `  the patch + sha256 alone:                    ${t.patchAlone.toFixed(2)} s = ${(t.patchAlone / t.cp).toFixed(2)}x baseline`,
    `  full payload through openPayload:            ${t.fullExtract.toFixed(2)} s = ${(t.fullExtract / t.cp).toFixed(2)}x baseline`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  const results = path.join(root, 'bench/results');
  await mkdir(results, { recursive: true });
  const file = path.join(results, `upgrade-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  await writeFile(file, `${JSON.stringify(figures, null, 2)}\n`);
  process.stdout.write(`figures: ${path.relative(process.cwd(), file)}\n`);
} finally {
  await rm(work, { recursive: true, force: true });
}
