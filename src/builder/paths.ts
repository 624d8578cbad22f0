/** Where the cairn checkout is: its overlay/, images/ and src/init live there. */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

let cached: string | undefined;

/** The folder holding cairn's package.json (found upward from this module, or CAIRN_ROOT). */
export function repoRoot(): string {
  if (cached) return cached;
  if (process.env.CAIRN_ROOT) return (cached = path.resolve(process.env.CAIRN_ROOT));
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'cairn') return (cached = dir);
      } catch {
        /* not ours */
      }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error('cannot find the cairn checkout (set CAIRN_ROOT)');
    dir = up;
  }
}
