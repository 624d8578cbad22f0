/**
 * The initramfs builder and the output writers the pipeline calls by
 * default (src/builder/initramfs, and the writers of the format table in
 * src/builder/formats.ts).
 */
import { buildInitramfs } from './initramfs/index.js';
import { formatWriters } from './formats.js';
import type { Arch, Format, OutputWriter } from './types.js';

export interface InitramfsRequest {
  rootfs: string;
  kernelRelease: string;
  arch: Arch;
  out: string;
  sourceDateEpoch: number;
  /** zstd level of the initramfs (default 19). */
  level?: number;
  /** First-stage modules a board adds (its card reader, USB). */
  extraModules?: readonly string[];
}

export type InitramfsFn = (req: InitramfsRequest) => Promise<void>;

export async function defaultInitramfs(): Promise<InitramfsFn> {
  return (req) => buildInitramfs(req);
}

export async function defaultOutputs(): Promise<Partial<Record<Format, OutputWriter>>> {
  return formatWriters();
}
