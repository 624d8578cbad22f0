/**
 * pxe: the files a network boot serves, in one folder: vmlinuz, initrd,
 * rootfs.squashfs, release.json and boot.ipxe. The iPXE script fetches the
 * kernel and initramfs from where it was itself fetched from (or from
 * ${cairn-base}, when the chaining script sets it) and passes the
 * squashfs URL to the first stage as cairn.root_url=, with its sha256.
 */
import { rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Artifact, OutputWriter, SystemArtifacts } from '../types.js';
import { artifactStem, consoleArgs, copyOut, joinArgs, sha256File } from './common.js';

export const PXE_FILES = ['vmlinuz', 'initrd', 'rootfs.squashfs', 'release.json', 'boot.ipxe'] as const;

/**
 * The iPXE script. Relative names resolve against the script's own URL,
 * but the kernel command line needs an absolute one: set cairn-base before
 * chaining this script (set cairn-base http://server/path), or it is taken
 * from the DHCP next-server with the folder's name.
 */
export function renderIpxe(system: Pick<SystemArtifacts, 'name' | 'version' | 'arch' | 'cmdline'>, folder: string, squashfsSha256: string): string {
  const args = joinArgs(
    'initrd=initrd',
    'panic=10',
    'cairn.mode=net',
    'cairn.root_url=${cairn-base}/rootfs.squashfs',
    `cairn.root_sha256=${squashfsSha256}`,
    // The fetched squashfs carries no release record: the script names its version.
    `cairn.version=${system.version}`,
    consoleArgs[system.arch],
    system.cmdline,
  );
  return [
    '#!ipxe',
    `# cairn ${system.name} ${system.version} (${system.arch})`,
    `isset \${cairn-base} || set cairn-base http://\${next-server}/${folder}`,
    `echo cairn: booting ${system.name} ${system.version} from \${cairn-base}`,
    `kernel \${cairn-base}/vmlinuz ${args}`,
    'initrd --name initrd ${cairn-base}/initrd',
    'boot',
    '',
  ].join('\n');
}

export const pxe: OutputWriter = async (system, ctx) => {
  const folder = `${artifactStem(system)}-pxe`;
  const dir = path.join(ctx.outDir, folder);
  await rm(dir, { recursive: true, force: true });
  await copyOut(system.kernel, path.join(dir, 'vmlinuz'));
  await copyOut(system.initramfs, path.join(dir, 'initrd'));
  await copyOut(system.squashfs, path.join(dir, 'rootfs.squashfs'));
  await copyOut(system.release, path.join(dir, 'release.json'));
  await writeFile(path.join(dir, 'boot.ipxe'), renderIpxe(system, folder, await sha256File(system.squashfs)));
  ctx.log(`pxe: ${folder}/`);
  return PXE_FILES.map((f): Artifact => ({ file: `${folder}/${f}`, format: 'pxe', arch: system.arch }));
};
