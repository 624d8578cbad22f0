/**
 * The output formats: a table from name to one writer, as LinuxKit does.
 * Adding a format is adding one line here and one file beside it.
 *
 *   iso     live medium, BIOS + UEFI (amd64), UEFI (arm64)         iso.ts
 *   pxe     vmlinuz, initrd, rootfs.squashfs, boot.ipxe            pxe.ts
 *   raw     GPT disk: CAIRN_EFI + CAIRN_STATE, GRUB BIOS/UEFI      raw.ts
 *   qcow2   the raw disk for QEMU                                  qcow2.ts
 *   oci     the upgrade image (OCI layout archive)                 oci.ts
 */
import type { Format, OutputWriter } from '../types.js';
import { iso } from './iso.js';
import { oci } from './oci.js';
import { pxe } from './pxe.js';
import { qcow2 } from './qcow2.js';
import { raw } from './raw.js';

export const outputs: Record<Format, OutputWriter> = { iso, pxe, raw, qcow2, oci };

export { buildRawImage } from './raw.js';
export { buildOciArchive } from './oci.js';
export { renderDiskGrubCfg, renderLiveGrubCfg, renderGrubEnv, parseGrubEnv } from './grub.js';
export { planDisk, sfdiskScript } from './disk.js';
export { renderIpxe } from './pxe.js';
