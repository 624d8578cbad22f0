/**
 * The output writers, one file per format; the format table that names
 * them, their arches and host tools is src/builder/formats.ts.
 */
export { buildRawImage } from './raw.js';
export { buildOciArchive } from './oci.js';
export { renderDiskGrubCfg, renderLiveGrubCfg, renderGrubEnv, parseGrubEnv } from './grub.js';
export { planDisk, sfdiskScript } from '../../boot/disk.js';
export { renderIpxe } from './pxe.js';
