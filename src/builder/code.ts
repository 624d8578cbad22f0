/**
 * The builder's own code as a cache input: the stages after the system tree
 * (the init bundle, the initramfs, every output) are keyed on it, so that a
 * changed writer or first stage makes its outputs anew while an unchanged
 * checkout reuses them. The hash covers src/, config/, boards/, overlay/
 * and the lockfile (the bundled libraries).
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { hashTree, hashValue } from './hash.js';
import { repoRoot } from './paths.js';
import { VERSION } from '../version.js';

let memo: Promise<string> | undefined;

export function builderCodeHash(): Promise<string> {
  memo ??= (async () => {
    const root = repoRoot();
    const parts: Record<string, string> = { version: VERSION };
    for (const dir of ['src', 'config', 'boards', 'overlay']) {
      if (existsSync(path.join(root, dir))) parts[dir] = (await hashTree(path.join(root, dir))).sha256;
    }
    const lock = await readFile(path.join(root, 'package-lock.json')).catch(() => undefined);
    if (lock) parts.lock = createHash('sha256').update(lock).digest('hex');
    return hashValue(parts);
  })();
  return memo;
}

/** A function given in place of a default one (tests' writers): its source is part of the key. */
export function functionKey(fn: unknown): string {
  return hashValue(String(fn));
}
