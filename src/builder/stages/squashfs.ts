/**
 * squashfs: the read-only root, reproducible. Entries are sorted by
 * mksquashfs itself; every time stamp (files and the superblock) is the
 * build's SOURCE_DATE_EPOCH; extended attributes are left out; the
 * compressor runs with fixed settings. Two builds from the same tree give the
 * same bytes.
 */
import path from 'node:path';
import { execa } from 'execa';
import type { Entry, StageCache } from '../cache.js';
import { hashValue } from '../hash.js';
import type { StageProgress } from '../progress.js';
import type { Compression } from '../spec.js';

const SQUASHFS_STAGE_VERSION = 1;

export interface SquashfsInputs {
  stage: number;
  system: string;
  compression: Compression;
  level: number;
  sourceDateEpoch: number;
}

export function squashfsInputs(system: string, compression: Compression, level: number, sourceDateEpoch: number): SquashfsInputs {
  return { stage: SQUASHFS_STAGE_VERSION, system, compression, level, sourceDateEpoch };
}

export function mksquashfsArgs(src: string, dest: string, i: SquashfsInputs, processors: number): string[] {
  const comp = i.compression === 'xz' ? ['-comp', 'xz', '-Xdict-size', '100%'] : ['-comp', 'zstd', '-Xcompression-level', String(i.level)];
  return [
    src,
    dest,
    '-noappend',
    ...comp,
    '-b',
    '1M',
    '-no-xattrs',
    '-mkfs-time',
    String(i.sourceDateEpoch),
    '-all-time',
    String(i.sourceDateEpoch),
    '-processors',
    String(processors),
    '-progress',
    '-no-exports',
  ];
}

export async function buildSquashfs(
  cache: StageCache,
  inputs: SquashfsInputs,
  systemRoot: string,
  progress: StageProgress,
  signal?: AbortSignal,
): Promise<Entry<{ bytes: number }>> {
  return cache.get<{ bytes: number }>(
    'squashfs',
    hashValue(inputs),
    inputs,
    async (dir) => {
      const dest = path.join(dir, 'rootfs.squashfs');
      const proc = execa('mksquashfs', mksquashfsArgs(systemRoot, dest, inputs, Math.max(1, (await import('node:os')).availableParallelism())), {
        // The time stamps are given as options; mksquashfs refuses both.
        env: Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'SOURCE_DATE_EPOCH')),
        extendEnv: false,
        buffer: { stdout: false, stderr: true },
        stdin: 'ignore',
        cancelSignal: signal,
      });
      proc.stdout?.setEncoding('utf8');
      proc.stdout?.on('data', (chunk: string) => {
        const all = [...chunk.matchAll(/(\d+)%/g)];
        const last = all[all.length - 1];
        if (last) progress.update(Number(last[1]) / 100, 'compress');
      });
      await proc;
      const { size } = await (await import('node:fs/promises')).stat(dest);
      return { bytes: size };
    },
    { needBytes: 400 * 1024 ** 2 },
  );
}
