/**
 * overlay: the repository's overlay/ folder, then the spec's overlay folders,
 * then the spec's files, laid over the root filesystem. Files from folders
 * are owned by root, mode 0755 when executable and 0644 otherwise; spec files
 * carry their own mode and owner. The spec's default cloud-config becomes
 * /usr/lib/cairn/config.yaml.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { stringify } from 'yaml';
import { readlink } from 'node:fs/promises';
import { UserError } from '../../errors.js';
import { hashTree, hashFile } from '../hash.js';
import { listTree, mkdirInRoot, symlinkFresh, writeFresh } from '../fsutil.js';
import { repoRoot } from '../paths.js';
import type { ImageSpec } from '../spec.js';

export const CONFIG_PATH = 'usr/lib/cairn/config.yaml';

export function overlayFolders(spec: ImageSpec): string[] {
  return [path.join(repoRoot(), 'overlay'), ...spec.overlays];
}

/** Checks that every folder and file the stage reads exists; lists them all at once. */
export async function checkOverlayInputs(spec: ImageSpec): Promise<void> {
  const problems: string[] = [];
  for (const dir of spec.overlays) {
    const st = await stat(dir).catch(() => undefined);
    if (!st) problems.push(`overlay folder ${dir} does not exist`);
    else if (!st.isDirectory()) problems.push(`overlay ${dir} is not a folder`);
  }
  for (const f of spec.files) {
    if (f.source && !(await stat(f.source).catch(() => undefined))?.isFile()) problems.push(`file ${f.source} (for ${f.path}) does not exist`);
  }
  if (problems.length) throw new UserError(`${spec.file}: ${problems.join('; ')}`, 'fix the paths in the spec (they are relative to the spec file)');
}

/** What the overlay stage depends on, as hashes. */
export async function overlayInputs(spec: ImageSpec): Promise<unknown> {
  const folders = [];
  for (const dir of overlayFolders(spec)) {
    const exists = await stat(dir).then((s) => s.isDirectory(), () => false);
    folders.push({ dir: path.basename(dir), tree: exists ? (await hashTree(dir)).sha256 : null });
  }
  const files = [];
  for (const f of spec.files) files.push({ ...f, source: f.source ? await hashFile(f.source) : undefined });
  return { folders, files, config: spec.config };
}

const parseMode = (m: string | undefined, dflt: number) => (m ? parseInt(m, 8) : dflt);

export async function applyOverlay(root: string, spec: ImageSpec, log: (l: string) => void): Promise<number> {
  let count = 0;
  for (const dir of overlayFolders(spec)) {
    if (!(await stat(dir).then((s) => s.isDirectory(), () => false))) continue;
    for (const entry of await listTree(dir)) {
      if (path.posix.basename(entry.rel).startsWith('.git')) continue;
      const src = path.join(dir, entry.rel);
      if (entry.kind === 'dir') await mkdirInRoot(root, entry.rel);
      else if (entry.kind === 'link') await symlinkFresh(root, entry.rel, await readlink(src));
      else {
        const st = await stat(src);
        await writeFresh(root, entry.rel, { file: src }, { mode: st.mode & 0o111 ? 0o755 : 0o644, uid: 0, gid: 0 });
        count++;
      }
    }
  }
  for (const f of spec.files) {
    const [uid, gid] = (f.owner ?? '0:0').split(':').map(Number) as [number, number];
    const rel = f.path.replace(/^\/+/, '');
    const from = f.source ? { file: f.source } : { content: f.content ?? '' };
    await writeFresh(root, rel, from, { mode: parseMode(f.mode, 0o644), uid, gid });
    count++;
  }
  await writeFresh(
    root,
    CONFIG_PATH,
    { content: `# The image's default cloud-config (from ${path.basename(spec.file)}).\n${stringify(spec.config)}` },
    { mode: 0o644, uid: 0, gid: 0 },
  );
  log(`overlay: ${count} files`);
  return count + 1;
}
