/**
 * The build: spec → rootfs → system (overlay, runtime, init, prune) →
 * squashfs → initramfs → outputs, for each arch asked for. Stages are cached
 * (see cache.ts); outputs are written into a staging folder under --out and
 * moved into place only when every one of them succeeded, so a failed or
 * interrupted build leaves no partial artifact behind.
 */
import { boardProfile, checkBoard, checkBoardBsp, type BoardName } from './boards.js';
import { bspRecord, openBsp, type Bsp } from './bsp.js';
import { renderModulesLoad } from './arches.js';
import { copyFile, link, mkdir, mkdtemp, readdir, rename, rm, writeFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { UserError } from '../errors.js';
import { VERSION } from '../version.js';
import { StageCache, checkFreeSpace, defaultCacheDir, isDiskFull } from './cache.js';
import { cacheLimit, formatBytes, pruneCache } from './cache-admin.js';
import { archiveState } from './debian.js';
import { checkFormatArches } from './formats.js';
import { hashFile, hashValue } from './hash.js';
import { checkHost } from './hostcheck.js';
import { repoRoot } from './paths.js';
import { createReporter, type Reporter } from './progress.js';
import { type ArtifactRecord, type BuildRecord, type ReleaseRecord, type StageRecord } from './record.js';
import { loadSpec, type ImageSpec } from './spec.js';
import { cachedInitBundle } from './stages/init.js';
import { builderCodeHash, functionKey } from './code.js';
import { moduleProfile } from './profiles.js';
import { fetchK3s } from './stages/k3s.js';
import { checkOverlayInputs, overlayInputs } from './stages/overlay.js';
import { buildRootfs, rootfsInputs, rootfsKey } from './stages/rootfs.js';
import { checkRuntimeInputs, runtimeInputs } from './stages/runtime.js';
import { buildSquashfs, squashfsInputs } from './stages/squashfs.js';
import type { SnapshotCheckFn } from './stages/snapshot.js';
import { SYSTEM_STAGE_VERSION, buildSystem, systemKey, type SystemData, type SystemInputs } from './stages/system.js';
import type { Arch, Artifact, Format, OutputWriter, SystemArtifacts } from './types.js';
import { defaultInitramfs, defaultOutputs, type InitramfsFn } from './writers.js';
import { publicKeyOf } from '../upgrade/keys.js';
import { previousPayloads } from './previous.js';

export interface BuildOptions {
  spec: string | ImageSpec;
  /** Default: the spec's first arch. */
  arches?: Arch[];
  /** Default: the spec's formats (the board's with a board). */
  formats?: Format[];
  /** A board profile (boards/): its disk image instead of the generic raw disk, its console and modules. */
  board?: BoardName;
  /**
   * The board support package a board's vendor kernel comes from (cairn
   * build --bsp; the jetson board: NVIDIA's Jetson Linux R36 tarball). An
   * input the user brings: read, checked, recorded by its sha256, never
   * downloaded.
   */
  bsp?: string;
  /** Default ~/.cache/cairn. */
  cacheDir?: string;
  /** Ignore cached stage outputs (the .deb pool is still used). */
  noCache?: boolean;
  /**
   * The size the cache is pruned to when the build is done (never what this
   * build used); null: no pruning. Default: $CAIRN_CACHE_MAX_SIZE, else
   * DEFAULT_CACHE_MAX_BYTES (src/builder/cache-admin.ts).
   */
  cacheMaxBytes?: number | null;
  /** Default out/. */
  outDir?: string;
  /** A local k3s binary (offline builds, tests). */
  k3s?: string;
  /** Default: $SOURCE_DATE_EPOCH, else the time of the checkout's last commit. */
  sourceDateEpoch?: number;
  /** Override the spec's squashfs settings (e.g. a fast level for development builds). */
  squashfs?: Partial<ImageSpec['squashfs']>;
  reporter?: Reporter;
  signal?: AbortSignal;
  /** Injected writers (tests); default: src/builder/outputs and src/builder/initramfs. */
  outputs?: Partial<Record<Format, OutputWriter>>;
  initramfs?: InitramfsFn;
  /**
   * Injected check of the init's startup snapshot (tests whose roots hold no
   * runnable node); default: src/builder/stages/snapshot.ts, which starts the
   * image's own node in its tree.
   */
  snapshotCheck?: SnapshotCheckFn;
  /** Skip the host tool check (tests that inject writers). */
  skipHostCheck?: boolean;
  /**
   * An ed25519 private key file (cairn build --sign): the upgrade payload of
   * every oci output is signed with it, and the image trusts its public key
   * (so nodes running the image take only payloads it signed).
   */
  signingKey?: string;
  /**
   * A previous build (cairn build --delta-from): its full upgrade payload, or
   * its output folder. Every oci output also gets a delta payload against it
   * (src/upgrade/delta.ts).
   */
  deltaFrom?: string;
}

export async function resolveSourceDateEpoch(explicit?: number): Promise<number> {
  if (explicit !== undefined) return explicit;
  const env = process.env.SOURCE_DATE_EPOCH;
  if (env !== undefined && env !== '') {
    const n = Number(env);
    if (!Number.isInteger(n) || n < 0) throw new UserError(`SOURCE_DATE_EPOCH must be a whole number of seconds, not "${env}"`);
    return n;
  }
  try {
    const { stdout } = await execa('git', ['log', '-1', '--format=%ct'], { cwd: repoRoot() });
    const n = Number(stdout.trim());
    if (Number.isInteger(n) && n > 0) return n;
  } catch {
    /* not a git checkout */
  }
  return Math.floor(Date.now() / 1000);
}

/** Runs a whole build; returns its record (also written to <out>/build.json). */
export async function build(opts: BuildOptions): Promise<BuildRecord> {
  const scratch: { bsp?: string } = {};
  try {
    return await runBuild(opts, scratch);
  } finally {
    if (scratch.bsp) await rm(scratch.bsp, { recursive: true, force: true }).catch(() => {});
  }
}

async function runBuild(opts: BuildOptions, scratch: { bsp?: string }): Promise<BuildRecord> {
  const started = performance.now();
  const reporter = opts.reporter ?? createReporter();
  const log = (l: string) => reporter.log(l);
  const signal = opts.signal;
  const spec = typeof opts.spec === 'string' ? loadSpec(opts.spec) : opts.spec;
  const arches = opts.arches ?? [spec.arches[0]!];
  const board = opts.board === undefined ? undefined : boardProfile(opts.board);
  const formats = opts.formats ?? (board ? board.defaultFormats : spec.formats);
  const notInSpec = arches.filter((a) => !spec.arches.includes(a));
  if (notInSpec.length) throw new UserError(`${spec.file} is not made for ${notInSpec.join(', ')}`, `its arches are ${spec.arches.join(', ')}`);
  if (opts.board !== undefined) checkBoard(opts.board, arches, formats);
  checkBoardBsp(opts.board, opts.bsp);
  checkFormatArches(arches, formats);
  if (!opts.skipHostCheck) checkHost(arches, formats);
  // The BSP is checked (release, layout) before anything is written; its files are unpacked to a scratch folder.
  let bsp: Bsp | undefined;
  if (opts.bsp !== undefined) {
    scratch.bsp = await mkdtemp(path.join(tmpdir(), 'cairn-bsp-'));
    bsp = await openBsp(opts.bsp, scratch.bsp);
    log(`bsp: Jetson Linux R${bsp.release}, kernel ${bsp.kernelRelease}, ${bsp.dtbs.length} Orin device trees (${path.basename(bsp.file)}, sha256 ${bsp.sha256.slice(0, 12)}…)`);
  }
  await checkOverlayInputs(spec);
  await checkRuntimeInputs(spec, log);
  const sde = await resolveSourceDateEpoch(opts.sourceDateEpoch);
  // A bad key stops the build before any stage runs.
  const signingKey = opts.signingKey === undefined ? undefined : path.resolve(opts.signingKey);
  const signer = signingKey === undefined ? undefined : publicKeyOf(signingKey);
  // So does a previous build that no delta can be made against.
  if (opts.deltaFrom !== undefined && !formats.includes('oci')) {
    throw new UserError('--delta-from makes a delta of the oci upgrade payload, and this build makes no oci output', 'add oci to --format');
  }
  const deltaFrom = opts.deltaFrom === undefined ? undefined : await previousPayloads(path.resolve(opts.deltaFrom), { name: spec.name, version: spec.version, arches }, tmpdir());
  const squashfsSettings = { ...spec.squashfs, ...opts.squashfs };

  const outDir = path.resolve(opts.outDir ?? 'out');
  const cache = new StageCache(opts.cacheDir ?? defaultCacheDir(), { reuse: !opts.noCache, log });
  await cache.open();
  await mkdir(outDir, { recursive: true });
  await checkFreeSpace(outDir, 64 * 1024 ** 2, 'output');
  const writers = opts.outputs ?? (await defaultOutputs());
  const initramfs = opts.initramfs ?? (await defaultInitramfs());
  const missingWriters = formats.filter((f) => !writers[f]);
  if (missingWriters.length) throw new UserError(`this cairn has no writer for ${missingWriters.join(', ')} yet`);

  const staging = path.join(outDir, `.cairn-partial.${process.pid}`);
  const work = path.join(cache.root, 'tmp', `work.${process.pid}.0`);
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { recursive: true });
  await mkdir(work, { recursive: true });
  await removeStaleStaging(outDir);

  const systems: ReleaseRecord[] = [];
  const artifacts: (Artifact & { bytes: number; sha256: string })[] = [];
  try {
    const code = await builderCodeHash();
    const init = await reporter.stage('init', async () => {
      const { bundle: b, cached } = await cachedInitBundle(cache, code);
      return { value: b, cached, detail: b.code ? `${(b.code.length / 1024).toFixed(0)} KiB` : 'no src/init yet' };
    });
    for (const arch of arches) {
      signal?.throwIfAborted();
      const stages: StageRecord[] = [];
      const timed = async <T extends { cached: boolean; meta?: { key: string } }>(
        name: string,
        fn: (p: Parameters<Parameters<Reporter['stage']>[1]>[0]) => Promise<T>,
        long = false,
      ): Promise<T> => {
        const t = performance.now();
        const v = await reporter.stage(`${name}${arches.length > 1 ? `/${arch}` : ''}`, async (p) => {
          const r = await fn(p);
          return { value: r, cached: r.cached };
        }, { long });
        stages.push({ name, seconds: (performance.now() - t) / 1000, cached: v.cached, key: v.meta?.key });
        signal?.throwIfAborted();
        return v;
      };

      const archive = await archiveState(spec, cache.stateDir(), log);
      const rIn = rootfsInputs(spec, arch, archive);
      const k3s = await timed('k3s', (p) => fetchK3s(cache, spec, arch, opts.k3s, p, log), true);
      const sysIn: SystemInputs = {
        stage: SYSTEM_STAGE_VERSION,
        rootfs: rootfsKey(rIn),
        overlay: await overlayInputs(spec),
        runtime: await runtimeInputs(spec, k3s.meta.data.sha256),
        init: init.sha256,
        // The profile's globs, not only its name: a changed profile prunes anew.
        modules: { ...spec.modules, globs: moduleProfile(spec.modules.profile, arch) },
        trustedKeys: signer ? [signer] : undefined,
        release: { name: spec.name, version: spec.version, arch },
        modulesLoad: renderModulesLoad(arch, board?.modulesLoad),
        // The check leaves the tree as it was: its name only keeps a tree it did not check from a real build.
        ...(opts.snapshotCheck ? { snapshotCheck: opts.snapshotCheck.name || 'injected' } : {}),
        ...(bsp && board?.bsp ? { kernel: { sha256: bsp.sha256, release: bsp.kernelRelease, keepModules: board.bsp.keepModules, keepFirmware: board.bsp.keepFirmware } } : {}),
      };
      // The rootfs is only read (and checked) when the system tree must be made anew.
      const cachedSystem = await cache.lookup<SystemData>('system', systemKey(sysIn));
      const rootfs = cachedSystem ? undefined : await timed('rootfs', (p) => buildRootfs(cache, rIn, p, log, signal), true);
      const system = await timed('system', async () =>
        cachedSystem ?? buildSystem(cache, sysIn, {
          spec,
          arch,
          rootfs: rootfs!,
          k3sBinary: path.join(k3s.dir, 'k3s'),
          init,
          log,
          snapshotCheck: opts.snapshotCheck,
          step: (name, seconds) => stages.push({ name, seconds, cached: false }),
          boardKernel: bsp ? { kernel: bsp.kernel, kernelRelease: bsp.kernelRelease, supplements: bsp.supplements } : undefined,
        }),
      );
      const sqIn = squashfsInputs(systemKey(sysIn), squashfsSettings.compression, squashfsSettings.level, sde);
      const squashfs = await timed('squashfs', (p) => buildSquashfs(cache, sqIn, path.join(system.dir, 'rootfs'), p, signal), true);
      const squashfsFile = path.join(squashfs.dir, 'rootfs.squashfs');
      const kernelRelease = system.meta.data.kernelRelease;
      const archWork = path.join(work, arch);
      await mkdir(archWork, { recursive: true });

      // What the initramfs takes from the system (busybox, e2fsck, the kernel's modules) comes from the packages and the module profile: an overlay or a new init does not make it anew.
      const irLevel = initramfsLevel(opts.squashfs?.level);
      const irIn = {
        stage: INITRAMFS_STAGE_VERSION,
        code,
        writer: opts.initramfs ? functionKey(opts.initramfs) : 'default',
        system: { stage: sysIn.stage, rootfs: sysIn.rootfs, modules: sysIn.modules, kernel: sysIn.kernel },
        arch,
        kernelRelease,
        sourceDateEpoch: sde,
        level: irLevel,
        extraModules: board?.initramfsModules,
      };
      const initrdEntry = await timed('initramfs', () =>
        cache.get('initramfs', hashValue(irIn), irIn, async (dir) => {
          await initramfs({ rootfs: path.join(system.dir, 'rootfs'), kernelRelease, arch, out: path.join(dir, 'initrd'), sourceDateEpoch: sde, extraModules: board?.initramfsModules, level: irLevel });
          return {};
        }),
      );
      const initrd = path.join(initrdEntry.dir, 'initrd');

      const release: ReleaseRecord = {
        name: spec.name,
        version: spec.version,
        arch,
        ...(opts.board ? { board: opts.board } : {}),
        kernelRelease,
        sourceDateEpoch: sde,
        cairn: VERSION,
        inputs: {
          spec: path.relative(process.cwd(), spec.file) || spec.file,
          debian: { ...spec.debian, archive },
          packages: rIn.packages,
          k3s: { version: k3s.meta.data.version, sha256: k3s.meta.data.sha256, source: k3s.meta.data.source },
          overlays: sysIn.overlay,
          runtime: sysIn.runtime,
          init: init.sha256,
          modules: spec.modules,
          squashfs: squashfsSettings,
          cmdline: spec.cmdline,
          ...(bsp ? { bsp: bspRecord(bsp) } : {}),
        },
        packages: system.meta.data.pruned.packages,
        sizes: { ...system.meta.data.sizes, squashfs: squashfs.meta.data.bytes, initramfs: (await stat(initrd)).size },
        pruned: system.meta.data.pruned.removed,
        squashfs: { sha256: squashfs.meta.sha256, bytes: squashfs.meta.data.bytes },
        stages,
      };
      const releaseFile = path.join(archWork, 'release.json');
      // What ships with the version is reproducible: the timings stay in build.json.
      const { stages: _timings, ...shipped } = release;
      await writeFile(releaseFile, `${JSON.stringify(shipped, null, 2)}\n`);

      const sys: SystemArtifacts = {
        name: spec.name,
        version: spec.version,
        arch,
        kernelRelease,
        kernel: path.join(system.dir, 'vmlinuz'),
        initramfs: initrd,
        squashfs: squashfsFile,
        cmdline: spec.cmdline,
        release: releaseFile,
        rootfs: path.join(system.dir, 'rootfs'),
        sourceDateEpoch: sde,
        k3s: path.join(k3s.dir, 'k3s'),
        board: opts.board,
        bsp,
      };
      // Each output is a cache entry keyed on everything it is made from: a rebuild with nothing changed links the files it made before.
      const outBase = {
        stage: OUTPUT_STAGE_VERSION,
        code,
        arch,
        release: hashValue(shipped),
        system: systemKey(sysIn),
        initramfs: initrdEntry.meta.key,
        squashfs: squashfs.meta.sha256,
        signingKey: signingKey === undefined ? undefined : await hashFile(signingKey),
        deltaFrom: deltaFrom?.get(arch) ? { version: deltaFrom.get(arch)!.version, sha256: await hashFile(deltaFrom.get(arch)!.archive) } : undefined,
        board: opts.board,
        bsp: bsp?.sha256,
      };
      for (const format of formats) {
        signal?.throwIfAborted();
        const writer = writers[format]!;
        const workDir = path.join(archWork, format);
        await mkdir(workDir, { recursive: true });
        const outIn = { ...outBase, format, writer: opts.outputs ? functionKey(writer) : 'default' };
        const made = await reporter.stage(`${format}${arches.length > 1 ? `/${arch}` : ''}`, async () => {
          const t = performance.now();
          const e = await cache.get<{ artifacts: (Artifact & { bytes: number; sha256: string })[] }>('output', hashValue(outIn), outIn, async (dir) => {
            const r = await writer(sys, { outDir: dir, workDir, log, signingKey, deltaFrom: deltaFrom?.get(arch), signal });
            const files = [];
            for (const a of r) {
              const st = await stat(path.join(dir, a.file)).catch(() => undefined);
              if (!st?.isFile()) throw new Error(`the ${a.format} writer reported ${a.file}, which it did not write`);
              files.push({ ...a, bytes: st.size, sha256: await hashFile(path.join(dir, a.file)) });
            }
            return { artifacts: files };
          });
          for (const a of e.meta.data.artifacts) await linkOrCopy(path.join(e.dir, a.file), path.join(staging, a.file));
          stages.push({ name: format, seconds: (performance.now() - t) / 1000, cached: e.cached, key: e.meta.key });
          return { value: e.meta.data.artifacts, cached: e.cached, detail: e.meta.data.artifacts.map((a) => a.file).join(', ') };
        }, { long: true });
        artifacts.push(...made);
        await rm(workDir, { recursive: true, force: true });
      }
      systems.push(release);
    }

    // Every writer succeeded: move the artifacts into place (their sums were taken when they were made).
    const records: ArtifactRecord[] = artifacts.map((a) => ({ file: a.file, format: a.format, arch: a.arch, bytes: a.bytes, sha256: a.sha256 }));
    for (const a of artifacts) {
      const to = path.join(outDir, a.file);
      await mkdir(path.dirname(to), { recursive: true });
      await rename(path.join(staging, a.file), to);
    }
    records.sort((x, y) => (x.file < y.file ? -1 : x.file > y.file ? 1 : 0));
    await writeFile(path.join(outDir, 'SHA256SUMS'), records.map((r) => `${r.sha256}  ${r.file}\n`).join(''));
    const record: BuildRecord = {
      spec: path.relative(process.cwd(), spec.file) || spec.file,
      name: spec.name,
      version: spec.version,
      sourceDateEpoch: sde,
      seconds: (performance.now() - started) / 1000,
      systems,
      artifacts: records,
    };
    await writeFile(path.join(outDir, 'build.json'), `${JSON.stringify(record, null, 2)}\n`);
    const limit = opts.cacheMaxBytes === undefined ? cacheLimit() : opts.cacheMaxBytes ?? undefined;
    if (limit !== undefined && cache.reuse) {
      try {
        const pruned = await pruneCache(cache.root, { maxBytes: limit, keep: cache.usedEntries() });
        if (pruned.removed.length) log(`cache: pruned ${pruned.removed.length} unused item${pruned.removed.length === 1 ? '' : 's'} (${formatBytes(pruned.removedBytes)}); it holds ${formatBytes(pruned.bytes)} of its ${formatBytes(limit)} limit`);
      } catch (err) {
        log(`cache: could not prune ${cache.root}: ${(err as Error).message}`);
      }
    }
    return record;
  } catch (err) {
    if (isDiskFull(err)) {
      throw new UserError(
        'disk full while writing the build outputs; partial outputs were removed and the cache is unchanged',
        'free some space (or point --out / --cache at a larger disk) and run the build again',
      );
    }
    if (signal?.aborted) throw new UserError('build interrupted; partial outputs were removed, finished stages stay cached');
    throw err;
  } finally {
    await rm(staging, { recursive: true, force: true }).catch(() => {});
    await rm(work, { recursive: true, force: true }).catch(() => {});
    await cache.close();
  }
}

/** Bumped when the initramfs or an output is made differently in a way the code hash does not show. */
const INITRAMFS_STAGE_VERSION = 1;
const OUTPUT_STAGE_VERSION = 1;

/** A cached output into the staging folder: a hard link, or a copy across file systems. */
async function linkOrCopy(from: string, to: string): Promise<void> {
  await mkdir(path.dirname(to), { recursive: true });
  await rm(to, { force: true });
  try {
    await link(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV' && (err as NodeJS.ErrnoException).code !== 'EPERM') throw err;
    await copyFile(from, to);
  }
}

/**
 * The initramfs' zstd level: 19 unless the build asks for a squashfs level
 * (cairn build --level), which then applies to both (capped at 19), so a
 * fast development build is fast throughout.
 */
export function initramfsLevel(level: number | undefined): number | undefined {
  return level === undefined ? undefined : Math.min(19, level);
}

/** Staging folders of builds that were killed. */
async function removeStaleStaging(outDir: string): Promise<void> {
  for (const name of await readdir(outDir).catch(() => [] as string[])) {
    const pid = Number(/^\.cairn-partial\.(\d+)$/.exec(name)?.[1]);
    if (!pid || pid === process.pid) continue;
    let alive = true;
    try {
      process.kill(pid, 0);
    } catch (err) {
      alive = (err as NodeJS.ErrnoException).code === 'EPERM';
    }
    if (!alive) await rm(path.join(outDir, name), { recursive: true, force: true });
  }
}
