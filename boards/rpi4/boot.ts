/**
 * The Raspberry Pi 4's boot partition as data: its files and the one-sector
 * pointer to the version that boots. Pure, so that the builder
 * (./index.ts) and a running node (src/boot/loader.ts) write the same
 * bytes.
 */
import data from './board.json' with { type: 'json' };

/** The size of cairn-active.txt: one sector, rewritten in place when the default version changes. */
export const ACTIVE_FILE_BYTES = 512;
export const ACTIVE_FILE = 'cairn-active.txt';
/** The boot partition's label (the firmware reads the first FAT partition; the node finds it by label). */
export const BOOT_LABEL = data.disk.boot.label;
export const DEVICE_TREES: readonly string[] = data.deviceTrees;

/** The folder of a version on the boot partition (os_prefix, with its trailing slash). */
export function versionPrefix(version: string): string {
  return `cairn/${version}/`;
}

/** cairn-active.txt for `version`: os_prefix, then comment padding to exactly one sector. */
export function renderActiveFile(version: string): Buffer {
  const line = `os_prefix=${versionPrefix(version)}\n`;
  const buf = Buffer.alloc(ACTIVE_FILE_BYTES, ' ');
  if (line.length + 2 > ACTIVE_FILE_BYTES) throw new Error(`version name too long for ${ACTIVE_FILE}: ${version}`);
  buf.write(line, 0, 'ascii');
  buf.write('#', line.length, 'ascii');
  buf.write('\n', ACTIVE_FILE_BYTES - 1, 'ascii');
  return buf;
}

/** The version cairn-active.txt names, if it is one of ours. */
export function parseActiveFile(content: Buffer | string): string | undefined {
  const m = /^os_prefix=cairn\/([^/\s]+)\/$/m.exec(content.toString());
  return m?.[1];
}
