/** What a check run of the init's startup snapshot (CAIRN_SNAPSHOT_CHECK=1) prints; the build runs the snapshot once this way before it goes into the image. */
export const SNAPSHOT_CHECK_LINE = 'cairn-init-snapshot: ok';
