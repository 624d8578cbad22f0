/** qcow2: the raw disk image converted for QEMU and other hypervisors. */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import type { Artifact, OutputWriter } from '../types.js';
import { artifactStem, run } from './common.js';
import { buildRawImage } from './raw.js';

export const qcow2: OutputWriter = async (system, ctx) => {
  const file = `${artifactStem(system)}.qcow2`;
  const rawFile = path.join(ctx.workDir, `${artifactStem(system)}.raw`);
  ctx.log(`qcow2: assembling the raw disk, then ${file}`);
  await buildRawImage(system, ctx.workDir, rawFile, ctx.log);
  const out = path.join(ctx.outDir, file);
  await rm(out, { force: true });
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'compat=1.1', rawFile, out]);
  await rm(rawFile, { force: true });
  const artifacts: Artifact[] = [{ file, format: 'qcow2', arch: system.arch }];
  return artifacts;
};
