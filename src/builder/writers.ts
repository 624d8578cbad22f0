/**
 * The initramfs builder and the output writers the pipeline calls by
 * default (src/builder/initramfs, src/builder/outputs).
 */
import { existsSync } from 'node:fs';
import type { Arch, Format, OutputWriter } from './types.js';

export interface InitramfsRequest {
  rootfs: string;
  kernelRelease: string;
  arch: Arch;
  out: string;
  sourceDateEpoch: number;
}

export type InitramfsFn = (req: InitramfsRequest) => Promise<void>;

export async function defaultInitramfs(): Promise<InitramfsFn> {
  const mod = await import('./initramfs/index.js');
  return (req) => mod.buildInitramfs(req);
}

export async function defaultOutputs(): Promise<Partial<Record<Format, OutputWriter>>> {
  // Loaded by a computed name while the writers are being written beside this file.
  const spec = ['.', 'outputs', 'index.js'].join('/');
  const here = new URL(spec, import.meta.url);
  if (here.protocol === 'file:' && !existsSync(here) && !existsSync(here.pathname.replace(/\.js$/, '.ts'))) return {};
  try {
    const mod = (await import(spec)) as { outputs?: Partial<Record<Format, OutputWriter>> };
    return mod.outputs ?? {};
  } catch {
    return {};
  }
}
