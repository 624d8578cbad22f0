/** `cairn build`: image spec → bootable artifacts (see src/builder/pipeline.ts). */
import type { Command } from 'commander';
import { UserError } from '../../errors.js';
import { BOARDS, BOARD_TABLE, parseBoard } from '../../builder/boards.js';
import { FORMATS, parseArches, parseFormats } from '../../builder/formats.js';
import { build } from '../../builder/pipeline.js';
import { loadSpec, withUpgradeImage } from '../../builder/spec.js';
import { createReporter } from '../../builder/progress.js';
import { cacheLimit } from '../../builder/cache-admin.js';

interface BuildFlags {
  arch?: string;
  format?: string;
  out: string;
  cache?: string | boolean;
  cacheMaxSize?: string;
  k3s?: string;
  json?: boolean;
  quiet?: boolean;
  compression?: string;
  level?: string;
  sourceDateEpoch?: string;
  sign?: string;
  upgradeImage?: string;
  deltaFrom?: string;
  board?: string;
  bsp?: string;
}

export function registerBuild(program: Command): void {
  program
    .command('build')
    .description('build a cairn image from a spec: ISO, PXE files, raw disk, qcow2, OCI upgrade image')
    .argument('[spec]', 'image spec file', 'images/default.yaml')
    .option('-a, --arch <list>', 'arches to build, comma separated: amd64, arm64, armv7 (default: the spec\'s first)')
    .option('-f, --format <list>', `output formats, comma separated: ${FORMATS.join(', ')} (default: the spec's; with --board, the board's)`)
    .option('-b, --board <name>', `a board profile: ${BOARDS.map((b) => `${b} (${BOARD_TABLE[b].arches.join(', ')})`).join(', ')}; its card image instead of the generic raw disk`)
    .option('--bsp <tarball>', "the board support package of a board that boots its vendor's kernel: for --board jetson, NVIDIA's Jetson Linux R36 BSP tarball (Jetson_Linux_R36.<x>_aarch64.tbz2, downloaded by you from developer.nvidia.com/embedded/jetson-linux; cairn never fetches or commits it). Its kernel, modules, Orin device trees and L4TLauncher go into the image; its release is checked and its sha256 recorded in build.json")
    .option('-o, --out <dir>', 'folder for the artifacts, SHA256SUMS and build.json', 'out')
    .option('--cache <dir>', 'stage cache folder (default ~/.cache/cairn)')
    .option('--no-cache', 'rebuild every stage (downloaded packages are still reused)')
    .option('--cache-max-size <size>', 'prune the cache to this size when the build is done, never what it used; "off" for no limit (default $CAIRN_CACHE_MAX_SIZE, else 10G)')
    .option('--k3s <path>', 'a local k3s binary instead of the pinned release download')
    .option('--compression <name>', 'squashfs compression: zstd or xz (default: the spec\'s)')
    .option('--level <n>', 'compression level of the squashfs and the initramfs (a low zstd level such as 3 makes fast development builds; the initramfs is capped at 19)')
    .option('--source-date-epoch <seconds>', 'time stamp of every file (default $SOURCE_DATE_EPOCH, else the last commit\'s time)')
    .option('--upgrade-image <ref>', 'OCI repository the upgrade image is pushed to, without a tag, e.g. registry.example/cairn: ships a system-upgrade-controller Plan that upgrades labelled nodes to this version (overrides the spec\'s upgrade.image)')
    .option('--sign <key>', 'sign the OCI upgrade payload with this ed25519 private key (cairn keys generate); the image then trusts only payloads signed by it')
    .option('--delta-from <previous>', "also write a delta upgrade payload (<stem>.delta-from-<version>.oci.tar) against a previous build: its .oci.tar or its output folder; nodes running that version download a patch instead of the whole squashfs")
    .option('--json', 'print the build record as JSON on stdout')
    .option('-q, --quiet', 'print nothing but errors (and --json)')
    .action(async (specFile: string, flags: BuildFlags) => {
      const controller = new AbortController();
      let signals = 0;
      const onSignal = (sig: NodeJS.Signals) => {
        signals++;
        if (signals > 1) process.exit(130);
        process.stderr.write(`cairn: ${sig}: stopping the build (again to stop at once)\n`);
        controller.abort(new UserError(`build interrupted by ${sig}`));
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      try {
        const compression = flags.compression;
        if (compression !== undefined && compression !== 'zstd' && compression !== 'xz') {
          throw new UserError(`unknown compression "${compression}"`, 'use zstd or xz');
        }
        const level = flags.level === undefined ? undefined : Number(flags.level);
        if (level !== undefined && (!Number.isInteger(level) || level < 1 || level > 22)) throw new UserError(`--level must be 1 to 22, not "${flags.level}"`);
        const sde = flags.sourceDateEpoch === undefined ? undefined : Number(flags.sourceDateEpoch);
        if (sde !== undefined && (!Number.isInteger(sde) || sde < 0)) throw new UserError(`--source-date-epoch must be whole seconds, not "${flags.sourceDateEpoch}"`);
        const record = await build({
          spec: flags.upgradeImage === undefined ? specFile : withUpgradeImage(loadSpec(specFile), flags.upgradeImage),
          arches: flags.arch ? parseArches(flags.arch) : undefined,
          formats: flags.format ? parseFormats(flags.format) : undefined,
          board: flags.board === undefined ? undefined : parseBoard(flags.board),
          bsp: flags.bsp,
          outDir: flags.out,
          cacheDir: typeof flags.cache === 'string' ? flags.cache : undefined,
          noCache: flags.cache === false,
          cacheMaxBytes: cacheLimit(flags.cacheMaxSize) ?? null,
          k3s: flags.k3s,
          squashfs: { ...(compression ? { compression } : {}), ...(level ? { level } : {}) },
          sourceDateEpoch: sde,
          reporter: createReporter({ quiet: flags.quiet }),
          signal: controller.signal,
          signingKey: flags.sign,
          deltaFrom: flags.deltaFrom,
        });
        if (flags.json) process.stdout.write(`${JSON.stringify(record, null, 2)}\n`);
        else if (!flags.quiet) {
          for (const a of record.artifacts) process.stderr.write(`${a.file}  ${(a.bytes / 1048576).toFixed(1)} MiB\n`);
          process.stderr.write(`built ${record.name} ${record.version} in ${record.seconds.toFixed(1)}s: ${flags.out}/SHA256SUMS, ${flags.out}/build.json\n`);
        }
      } catch (err) {
        if (!controller.signal.aborted) throw err;
        process.stderr.write(`cairn: ${(err as Error).message}\n`);
        process.exitCode = 130;
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
    });
}
