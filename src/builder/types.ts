/**
 * Shapes shared by the build pipeline (src/builder/pipeline) and the output
 * writers (src/builder/outputs). Pure data: no behaviour here.
 */
import { ARCH_TABLE } from './arches.js';
import type { BoardName } from './boards.js';
import type { Bsp } from './bsp.js';

/** cairn's architecture names; Debian's names are in debianArch below. */
export type Arch = 'amd64' | 'arm64' | 'armv7';

export const ARCHES: readonly Arch[] = ['amd64', 'arm64', 'armv7'];

/** Debian's name for each arch (mmdebstrap --architectures). */
export const debianArch: Record<Arch, string> = { amd64: ARCH_TABLE.amd64.debian, arm64: ARCH_TABLE.arm64.debian, armv7: ARCH_TABLE.armv7.debian };

/** The arch of the machine this runs on, in cairn's names; undefined for any other. */
export function nodeArch(nodeName: string = process.arch): Arch | undefined {
  const names: Record<string, Arch> = { x64: 'amd64', arm64: 'arm64', arm: 'armv7' };
  return names[nodeName];
}

/** The output format names: the rows of the format table (formats.ts). */
export type { Format } from './formats.js';
import type { Format } from './formats.js';

/**
 * One built system version: what the pipeline hands to every output writer.
 * All paths are absolute files in the build cache; writers never modify them.
 */
export interface SystemArtifacts {
  /** Image name from the spec, e.g. "default". */
  name: string;
  /** System version, e.g. "0.1.0". */
  version: string;
  arch: Arch;
  /** Kernel release, e.g. "6.12.48+deb13-amd64". */
  kernelRelease: string;
  /** The kernel as the bootloader loads it (vmlinuz / Image / zImage). */
  kernel: string;
  /** The cairn initramfs (cpio, compressed). */
  initramfs: string;
  /** The read-only root filesystem. */
  squashfs: string;
  /** The kernel command line the spec asks for (without root= arguments). */
  cmdline: string;
  /** release.json: the build record of this version (inputs, package versions, sizes). */
  release: string;
  /** The unpacked root filesystem, for files a writer needs (GRUB modules, firmware, device trees). */
  rootfs: string;
  /** SOURCE_DATE_EPOCH of the build, for reproducible outputs. */
  sourceDateEpoch: number;
  /**
   * The k3s binary of this version, for writers that carry it beside the
   * squashfs. The squashfs holds it too, at /usr/local/bin/k3s.
   */
  k3s?: string;
  /** The board the system is built for (boards/): its disk layout, boot files and console. */
  board?: BoardName;
  /** The board support package the kernel came from (cairn build --bsp), unpacked: the board's boot files are taken from it. */
  bsp?: Bsp;
}

/** One file an output writer produced. */
export interface Artifact {
  /** Path relative to the output folder. */
  file: string;
  format: Format;
  arch: Arch;
}

export interface OutputContext {
  /** Folder the artifacts go to (exists). */
  outDir: string;
  /** Scratch folder for this writer (exists, removed after the build). */
  workDir: string;
  /** Progress and log lines. */
  log: (line: string) => void;
  /** An ed25519 private key file (cairn build --sign): writers that carry an upgrade payload sign its record with it. */
  signingKey?: string;
  /**
   * cairn build --delta-from: the previous build's full upgrade payload for
   * this system's arch (an OCI archive) and its version; the oci writer also
   * writes a delta payload against it (src/upgrade/delta.ts).
   */
  deltaFrom?: { archive: string; version: string };
  /** The build's abort signal, for a writer's long steps. */
  signal?: AbortSignal;
}

export type OutputWriter = (system: SystemArtifacts, ctx: OutputContext) => Promise<Artifact[]>;
