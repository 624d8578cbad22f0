/**
 * The initramfs builder and the output writers the pipeline calls by
 * default (src/builder/initramfs, src/builder/outputs).
 */
import { buildInitramfs } from './initramfs/index.js';
import { outputs } from './outputs/index.js';
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
  return (req) => buildInitramfs(req);
}

export async function defaultOutputs(): Promise<Partial<Record<Format, OutputWriter>>> {
  return { ...outputs };
}
