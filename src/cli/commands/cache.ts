/** `cairn cache`: what the stage cache holds; `cairn cache prune`: keep it bounded (src/builder/cache-admin.ts). */
import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { UserError } from '../../errors.js';
import { defaultCacheDir } from '../../builder/cache.js';
import { cacheItems, cacheLimit, formatBytes, parseDuration, parseSize, pruneCache, renderCacheReport } from '../../builder/cache-admin.js';

function cacheRoot(dir: string | undefined): string {
  const root = path.resolve(dir ?? defaultCacheDir());
  if (!existsSync(root)) throw new UserError(`no cache at ${root}`, dir ? 'give --cache the folder cairn build used' : 'cairn build makes it; --cache DIR names another');
  return root;
}

export function registerCache(program: Command): void {
  const cache = program
    .command('cache')
    .description('what the build cache holds: size and last use per stage and arch')
    .option('--cache <dir>', 'the cache folder (default ~/.cache/cairn)')
    .option('--json', 'print every item as JSON')
    .action(async (opts: { cache?: string; json?: boolean }) => {
      const root = cacheRoot(opts.cache);
      const items = await cacheItems(root);
      process.stdout.write(opts.json ? `${JSON.stringify(items, null, 2)}\n` : renderCacheReport(root, items, new Date(), cacheLimit()));
    });
  cache
    .command('prune')
    .description('remove superseded packages, then entries unused for longer than --older-than, then the least recently used until the cache fits --max-size (with neither: the limit builds prune to)')
    .option('--cache <dir>', 'the cache folder (default ~/.cache/cairn)')
    .option('--max-size <size>', 'the most the cache may hold, e.g. 5G, 500M')
    .option('--older-than <time>', 'remove what was not used for this long, e.g. 30d, 12h')
    .option('--dry-run', 'say what would be removed, remove nothing')
    .action(async (opts: { cache?: string; maxSize?: string; olderThan?: string; dryRun?: boolean }, cmd: Command) => {
      // --cache is also the parent's option: either place works
      const root = cacheRoot(opts.cache ?? (cmd.parent?.opts() as { cache?: string }).cache);
      const maxBytes = opts.maxSize !== undefined ? parseSize(opts.maxSize, '--max-size') : opts.olderThan === undefined ? cacheLimit() : undefined;
      const olderThanMs = opts.olderThan === undefined ? undefined : parseDuration(opts.olderThan, '--older-than');
      const r = await pruneCache(root, { maxBytes, olderThanMs, dryRun: opts.dryRun });
      const verb = opts.dryRun ? 'would remove' : 'removed';
      for (const i of r.removed) process.stdout.write(`${verb} ${i.rel} (${formatBytes(i.bytes)})\n`);
      process.stdout.write(`${verb} ${r.removed.length} item${r.removed.length === 1 ? '' : 's'}, ${formatBytes(r.removedBytes)}; the cache holds ${formatBytes(r.bytes)}\n`);
      if (r.keptOverLimit) process.stdout.write(`still over ${formatBytes(maxBytes!)}: what is left is in use by a running build or is the current version of a package\n`);
    });
}
