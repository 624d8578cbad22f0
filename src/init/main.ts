/** The init from /usr/lib/cairn/init.js: what the first stage starts when the image has no startup snapshot, or with cairn.snapshot=0. */
import { runInit } from './run.js';

await runInit(process.env.CAIRN_ROOT ?? '/', 'script');
