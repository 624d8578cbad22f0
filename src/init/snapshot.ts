/**
 * The entry of the init's V8 startup snapshot, shipped as
 * /usr/lib/cairn/init-snapshot.cjs; the node makes the snapshot from it
 * (startup-snapshot.ts). Node runs it once while building the snapshot:
 * every module of the init is loaded and evaluated then, and the heap is
 * saved. A boot deserializes that heap and runs only the function below,
 * skipping Node's own bootstrap and the parsing and evaluation of the
 * bundle (4.6 s to 2.4 s of a boot under TCG). Nothing at module level may
 * read the node's state: it would be frozen into the snapshot from the
 * boot that made it.
 */
import { startupSnapshot } from 'node:v8';
import { runInit } from './run.js';
import { SNAPSHOT_CHECK_LINE } from './snapshot-check.js';

if (!startupSnapshot.isBuildingSnapshot()) throw new Error('the init snapshot entry runs only under node --build-snapshot');
startupSnapshot.setDeserializeMainFunction(() => {
  if (process.env.CAIRN_SNAPSHOT_CHECK === '1') {
    process.stdout.write(`${SNAPSHOT_CHECK_LINE} ${typeof runInit}\n`);
    return;
  }
  runInit(process.env.CAIRN_ROOT ?? '/', 'snapshot').catch((e: Error) => {
    // as an uncaught error in init.js would: the message on the console, then tini's child is gone
    process.stderr.write(`cairn: the init failed: ${e.stack ?? e.message}\n`);
    process.exit(1);
  });
});
