/** The build record: package versions from the root's dpkg status (read before the prune step removes it), and the record's shape. */

/** name → version of every installed package (arch-qualified names keep their :arch). */
export function parseDpkgStatus(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const para of text.split(/\n\n+/)) {
    const field = (name: string) => new RegExp(`^${name}: (.*)$`, 'm').exec(para)?.[1]?.trim();
    const pkg = field('Package');
    const version = field('Version');
    const status = field('Status');
    if (pkg && version && (!status || status.endsWith(' installed'))) out[pkg] = version;
  }
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

export interface StageRecord {
  name: string;
  seconds: number;
  cached: boolean;
  key?: string;
}

export interface ArtifactRecord {
  file: string;
  format: string;
  arch: string;
  bytes: number;
  sha256: string;
}

/** release.json: one system version of one arch. */
export interface ReleaseRecord {
  name: string;
  version: string;
  arch: string;
  /** The board profile the system was built for (boards/), when one was given. */
  board?: string;
  kernelRelease: string;
  sourceDateEpoch: number;
  cairn: string;
  inputs: {
    spec: string;
    debian: { suite: string; snapshot?: string; mirror: string; components: string[]; archive: string };
    packages: string[];
    k3s: { version: string; sha256: string; source: string };
    overlays: unknown;
    runtime: unknown;
    init: string;
    modules: unknown;
    squashfs: { compression: string; level: number };
    cmdline: string;
    /** The board support package (cairn build --bsp): its file name, sha256 and release, and its kernel's release. */
    bsp?: { file: string; sha256: string; release: string; kernelRelease: string };
  };
  packages: Record<string, string>;
  sizes: Record<string, number>;
  pruned: Record<string, number>;
  squashfs: { sha256: string; bytes: number };
  stages: StageRecord[];
}

/** The record of a whole build, written to <out>/build.json. */
export interface BuildRecord {
  spec: string;
  name: string;
  version: string;
  sourceDateEpoch: number;
  seconds: number;
  systems: ReleaseRecord[];
  artifacts: ArtifactRecord[];
}
