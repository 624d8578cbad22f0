/**
 * NoCloud seeds: an ISO9660 volume labelled `cidata` with `user-data` (the
 * cloud-config) and `meta-data` (instance-id, local-hostname), the way
 * cloud-init and cairn's init find a config on a disk. Written with xorriso
 * (Joliet and Rock Ridge), reproducibly: the same config gives the same bytes.
 */
import { createHash } from 'node:crypto';
import { chmod, mkdtemp, readFile, rename, rm, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { hasErrors, type Diagnostic } from '../src/config/diagnostics.js';
import { readConfig } from '../src/config/read.js';
import { UserError } from '../src/errors.js';

export interface SeedFiles {
  userData: string;
  metaData: string;
  instanceId: string;
  hostname?: string;
  diagnostics: Diagnostic[];
}

/** Fixed file times in the ISO, so that seeds are reproducible. */
export const SEED_EPOCH = 1_700_000_000;

/**
 * The files of a seed for one config source. Pure. The config is checked with
 * cairn's config reader; `#cloud-config` is put first when missing (a `#!`
 * script is left as it is). The instance-id is a hash of the user-data, so a
 * changed config is a new instance.
 */
export function seedFiles(config: string, file: string): SeedFiles {
  const read = readConfig(config, file);
  let userData = config;
  if (!read.script && !/^#cloud-config[ \t]*\r?\n/.test(config) && config.trimEnd() !== '#cloud-config') {
    userData = `#cloud-config\n${config}`;
  }
  if (!userData.endsWith('\n')) userData += '\n';
  const instanceId = `iid-cairn-${createHash('sha256').update(userData).digest('hex').slice(0, 16)}`;
  const hostname = read.config.hostname;
  const metaData = `instance-id: ${instanceId}\n${hostname ? `local-hostname: ${hostname}\n` : ''}`;
  return { userData, metaData, instanceId, hostname, diagnostics: read.diagnostics };
}

/** Writes the ISO for seed files. */
export async function writeSeedIso(files: Pick<SeedFiles, 'userData' | 'metaData'>, out: string): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cairn-seed-'));
  const tmpOut = `${out}.${process.pid}.tmp`;
  try {
    await writeFile(path.join(dir, 'user-data'), files.userData);
    await writeFile(path.join(dir, 'meta-data'), files.metaData);
    for (const f of ['user-data', 'meta-data']) await utimes(path.join(dir, f), SEED_EPOCH, SEED_EPOCH);
    const date = new Date(SEED_EPOCH * 1000).toISOString().replace(/[-:T]/g, '').slice(0, 14) + '00';
    try {
      await execa(
        'xorriso',
        [
          '-as', 'mkisofs', '-quiet', '-output', tmpOut, '-volid', 'cidata', '-joliet', '-rock',
          '--modification-date=' + date, '-graft-points',
          `user-data=${path.join(dir, 'user-data')}`, `meta-data=${path.join(dir, 'meta-data')}`,
        ],
        { env: { SOURCE_DATE_EPOCH: String(SEED_EPOCH) } },
      );
    } catch (e) {
      if ((e as { code?: string }).code === 'ENOENT') throw new UserError('xorriso is not installed (it writes the seed ISO)', 'install it with: apt-get install xorriso');
      throw new Error(`xorriso failed: ${(e as { stderr?: string }).stderr ?? (e as Error).message}`);
    }
    // the seed holds the config's secrets (tokens, passwords): for its owner only
    await chmod(tmpOut, 0o600);
    await rename(tmpOut, out);
  } finally {
    await rm(tmpOut, { force: true });
    await rm(dir, { recursive: true, force: true });
  }
}

export interface MakeSeedResult extends SeedFiles {
  out: string;
}

/**
 * Reads a config file and writes its seed ISO to `out`. With errors in the
 * config nothing is written (unless allowInvalid: tests boot broken configs
 * on purpose); the diagnostics are returned either way.
 */
export async function makeSeed(configFile: string, out: string, opts: { allowInvalid?: boolean } = {}): Promise<MakeSeedResult> {
  let data: string;
  try {
    data = await readFile(configFile, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a folder, not a file' : `cannot be read (${code})`;
    const d: Diagnostic = { severity: 'error', file: configFile, line: 1, col: 1, path: '', message: `${why}; check the path` };
    return { out, userData: '', metaData: '', instanceId: '', diagnostics: [d] };
  }
  const files = seedFiles(data, configFile);
  if (hasErrors(files.diagnostics) && !opts.allowInvalid) return { ...files, out };
  await writeSeedIso(files, out);
  return { ...files, out };
}

/** Writes a seed ISO from config text (for tests that build configs in code). */
export async function makeSeedFromText(config: string, out: string, name = 'user-data'): Promise<MakeSeedResult> {
  const files = seedFiles(config, name);
  await writeSeedIso(files, out);
  return { ...files, out };
}
