/**
 * Debian packages a writer needs as files, not installed in the image (GRUB
 * modules for a foreign arch, the Raspberry Pi's boot firmware): unpacked
 * once into the cache with `mmdebstrap --variant=extract` and reused.
 */
import { existsSync } from 'node:fs';
import { mkdir, rename, rm, utimes } from 'node:fs/promises';
import path from 'node:path';
import { UserError } from '../errors.js';
import { cacheDir, run } from './outputs/common.js';

export interface DebFetch {
  pkg: string;
  /** Debian's arch name (amd64, arm64, armhf). */
  debArch: string;
  suite?: string;
  mirror?: string;
  /** Archive components to look in (default main). */
  components?: readonly string[];
  /** A path inside the package that proves the unpacked tree is whole. */
  expect: string;
  /** What the package is for, in the error when it cannot be fetched. */
  why: string;
  log?: (line: string) => void;
}

/** The root of the unpacked package (and what it depends on). */
export async function fetchDeb(req: DebFetch): Promise<string> {
  const suite = req.suite ?? 'trixie';
  const components = req.components ?? ['main'];
  const dest = path.join(cacheDir(), 'debs-unpacked', `${req.pkg}_${req.debArch}_${suite}`);
  if (existsSync(path.join(dest, req.expect))) {
    // its last use, for cairn cache prune
    await utimes(dest, new Date(), new Date()).catch(() => undefined);
    return dest;
  }
  req.log?.(`fetching ${req.pkg} (${req.debArch}) from Debian ${suite} into ${dest}`);
  const tmp = `${dest}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(path.dirname(dest), { recursive: true });
  try {
    await run('mmdebstrap', [
      '--quiet', '--variant=extract', `--architectures=${req.debArch}`, `--components=${components.join(',')}`, `--include=${req.pkg}`,
      '--dpkgopt=path-exclude=/usr/share/doc/*', '--dpkgopt=path-exclude=/usr/share/locale/*',
      suite, tmp, req.mirror ?? 'http://deb.debian.org/debian',
    ]);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    if (err instanceof UserError) throw err;
    throw new UserError(
      `${req.why} needs the Debian package ${req.pkg} (${req.debArch}${components.some((c) => c !== 'main') ? `, from ${components.join(', ')}` : ''}) and it could not be fetched: ${lastLine((err as Error).message)}`,
      'check the network and the Debian mirror',
    );
  }
  await rm(dest, { recursive: true, force: true });
  await rename(tmp, dest);
  if (!existsSync(path.join(dest, req.expect))) {
    throw new UserError(`${req.pkg} for ${req.debArch} has no ${req.expect}, which ${req.why} needs`, 'report this: the package layout changed');
  }
  return dest;
}

function lastLine(text: string): string {
  return text.split('\n').map((l) => l.trim()).filter(Boolean).pop() ?? text;
}
