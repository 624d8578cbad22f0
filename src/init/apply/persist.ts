/**
 * What of /etc persists across an upgrade. /etc is an overlay: the image's
 * /etc below (read-only, a new one with each version), the node's changes
 * above (cairn/data/etc on the state partition). A file nobody changed is not
 * in the upper layer, so it is the image's and follows every new version.
 * The first stage also binds the image's /etc, read-only, at IMAGE_ETC, so
 * that the init can tell the node's changes from the image's. The rule, made
 * at each boot by the `etc` phase before anything reads an account or starts
 * a service:
 *
 * 1. Accounts (passwd, group, shadow, gshadow) are made again from the
 *    image's files and the node's own entries (accounts.ts): what the node
 *    added or changed stays (the cairn user, its password hash, its groups,
 *    users added by hand or by init_cmd); every other entry follows the
 *    image, so a system account a new image adds appears. An image account
 *    whose uid or gid a node account of another name holds is left out, with
 *    a warning, never merged.
 * 2. A file the node changed (by hand, write_files, init_cmd, k3s, the SSH
 *    host keys) is the node's: it stays, and hides the image's version. When
 *    a new image changes such a file, the boot log says that the node's copy
 *    was kept (the image's is at IMAGE_ETC/<path> to compare). Changed means:
 *    its content, mode, owner or link target differ from what the image it
 *    came from shipped, or the node removed it.
 * 3. A file the node rewrote without changing it (the same content, mode and
 *    owner as that image's; a `sed -i` that matched nothing does so) is not
 *    the node's: when a new image changes or removes it, the new image's
 *    version is put in its place. Which image a copy came from is told by a
 *    record of the image's /etc (IMAGE_ETC_RECORD: each file's type, mode,
 *    owner and sha256) written at each boot. Without a record (a node's
 *    first boot, or the first boot of a version that keeps one) every copy
 *    stays as it is.
 * 4. CONFIG_FILES are written from the config at every boot (hostname, hosts,
 *    environment, resolv.conf, chrony.conf, the cairn sudoers file, k3s'
 *    registries.yaml): they follow the config, not the image; a change by
 *    hand lasts until the next boot. The image's versions of them are
 *    replaced by design, so rule 2 and 3 leave them alone.
 *
 * Reads: IMAGE_ETC, /etc, the records. Writes: the account files, the files
 * of rule 3 (through the overlay: removing a file from the upper layer under
 * a mounted overlay is not allowed, so an unchanged copy is replaced by the
 * new image's content, not removed), then the records.
 */
import { crypto } from '../lazy.js';
import { existsSync, lstatSync, readFileSync, readdirSync, readlinkSync, renameSync, rmSync, symlinkSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { at, type NodeContext } from '../context.js';
import { ACCOUNT_FILES, keepNodeAccounts, type AccountsResult } from './accounts.js';
import { writeFileAtomic } from './files.js';

/** Where the first stage binds the image's own /etc, read-only. */
export const IMAGE_ETC = '/run/cairn/image-etc';
/**
 * The image's /etc as manifestOf() sees it, made when the image is built
 * (src/builder/stages/system.ts): the boot reads it instead of hashing
 * every file of the image's /etc (a second or more under emulation).
 */
export const IMAGE_ETC_MANIFEST = '/usr/lib/cairn/etc-manifest.json';
/** What the image's /etc held at the last boot, file by file. */
export const IMAGE_ETC_RECORD = '/var/lib/cairn/image-etc.json';

/**
 * Files of /etc (relative paths) that the init writes from the config at
 * every boot: system.ts (hostname, hosts, environment, resolv.conf,
 * chrony.conf), users.ts (sudoers.d/cairn), runtime/manifests.ts
 * (registries.yaml). DHCP leases rewrite resolv.conf too.
 */
export const CONFIG_FILES = ['hostname', 'hosts', 'environment', 'resolv.conf', 'chrony/chrony.conf', 'sudoers.d/cairn', 'rancher/k3s/registries.yaml'];

/** Left out of the files' rule: the account files (and the backups the shadow tools keep of them), and the config's files. */
const NOT_FILES = new Set<string>([...ACCOUNT_FILES, ...ACCOUNT_FILES.map((f) => `${f}-`), ...CONFIG_FILES]);

/** Path (relative to /etc) to what a file is: `file <mode> <uid>:<gid> <sha256>` or `link <target>`. */
export type Manifest = Record<string, string>;

/** What is at `path`, as a manifest records it; undefined when nothing is. */
export function fingerprint(path: string): string | undefined {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return undefined;
  }
  if (st.isSymbolicLink()) return `link ${readlinkSync(path)}`;
  if (!st.isFile()) return st.isDirectory() ? 'folder' : 'special';
  let sum: string;
  try {
    sum = crypto().createHash('sha256').update(readFileSync(path)).digest('hex');
  } catch {
    sum = 'unreadable';
  }
  return `file ${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid} ${sum}`;
}

/** Every file and link under `dir` but the ones rule 1 and 4 cover, by path relative to it. */
export function manifestOf(dir: string): Manifest {
  const out: Manifest = {};
  const walk = (rel: string) => {
    const entries = readdirSync(join(dir, rel), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (NOT_FILES.has(r)) continue;
      if (e.isDirectory()) walk(r);
      else if (e.isFile() || e.isSymbolicLink()) {
        const fp = fingerprint(join(dir, r));
        if (fp) out[r] = fp;
      }
    }
  };
  walk('');
  return out;
}

export interface FilesPlan {
  /** Unchanged copies of the earlier image's file: the new image's version goes in their place (or they go, when it has none). */
  follow: string[];
  /** Files the node changed that the new image changed too: the node's stay. */
  kept: string[];
}

/**
 * Rule 2 and 3 (pure): for each file the image changed since `before`
 * (the record), what the node has (`visible`) decides. Without a record,
 * nothing is changed.
 */
export function planFiles(before: Manifest | undefined, image: Manifest, visible: (rel: string) => string | undefined): FilesPlan {
  const plan: FilesPlan = { follow: [], kept: [] };
  if (!before) return plan;
  const paths = [...new Set([...Object.keys(before), ...Object.keys(image)])].sort();
  for (const p of paths) {
    if (NOT_FILES.has(p)) continue;
    const was = before[p];
    const now = image[p];
    if (was === now) continue;
    const has = visible(p);
    if (has === now) continue;
    if (has === was) plan.follow.push(p);
    else plan.kept.push(p);
  }
  return plan;
}

/** Puts the image's version of `rel` in /etc (through the overlay), or removes the node's copy when the image has none. */
function followImage(root: string, imageEtc: string, rel: string): void {
  const from = join(imageEtc, rel);
  const to = join(root, 'etc', rel);
  let st;
  try {
    st = lstatSync(from);
  } catch {
    rmSync(to, { force: true });
    return;
  }
  if (st.isSymbolicLink()) {
    const tmp = join(dirname(to), `.${basename(to)}.cairn-tmp`);
    rmSync(tmp, { force: true });
    symlinkSync(readlinkSync(from), tmp);
    renameSync(tmp, to);
    return;
  }
  writeFileAtomic(to, readFileSync(from), { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid });
}

export interface FilesResult extends FilesPlan {
  recorded: boolean;
  files: number;
}

/** The manifest the image was built with, when it has one (older images do not). */
function shippedManifest(root: string): Manifest | undefined {
  try {
    const m = JSON.parse(readFileSync(join(root, IMAGE_ETC_MANIFEST), 'utf8')) as unknown;
    return m && typeof m === 'object' && !Array.isArray(m) ? (m as Manifest) : undefined;
  } catch {
    return undefined;
  }
}

/** Rules 2 and 3 for the files of /etc, then the record of the image's /etc. */
export function keepNodeFiles(root: string, imageEtc: string): FilesResult {
  const recordPath = join(root, IMAGE_ETC_RECORD);
  let before: Manifest | undefined;
  try {
    const r = JSON.parse(readFileSync(recordPath, 'utf8')) as { files?: unknown };
    if (r.files && typeof r.files === 'object') before = r.files as Manifest;
  } catch {
    before = undefined;
  }
  const image = shippedManifest(root) ?? manifestOf(imageEtc);
  const plan = planFiles(before, image, (rel) => fingerprint(join(root, 'etc', rel)));
  const problems: string[] = [];
  for (const p of plan.follow) {
    try {
      followImage(root, imageEtc, p);
    } catch (e) {
      problems.push(`/etc/${p}: ${(e as Error).message}`);
    }
  }
  if (problems.length) throw new Error(`the image's version could not be put in place of unchanged copies: ${problems.join('; ')} (the record is kept, so the next boot tries again)`);
  const text = `${JSON.stringify({ files: image }, null, 1)}\n`;
  let old = '';
  try {
    old = readFileSync(recordPath, 'utf8');
  } catch {
    // first record
  }
  if (old !== text) writeFileAtomic(recordPath, text);
  return { ...plan, recorded: before !== undefined, files: Object.keys(image).length };
}

function listed(names: string[], max = 5): string {
  return names.length <= max ? names.join(', ') : `${names.slice(0, max).join(', ')} and ${names.length - max} more`;
}

function accountsSummary(a: AccountsResult): string {
  const own = a.node.passwd.length ? `the node's ${listed(a.node.passwd)}` : 'none of the node\'s own';
  const changes = [
    a.added.length ? `new from the image: ${listed(a.added)}` : '',
    a.dropped.length ? `gone with the image: ${listed(a.dropped)}` : '',
    a.leftOut.length ? `left out: ${listed(a.leftOut)}` : '',
  ].filter(Boolean);
  return `accounts: ${own}${changes.length ? `; ${changes.join('; ')}` : ''}`;
}

function filesSummary(f: FilesResult): string {
  if (!f.recorded) return `files: the image's /etc recorded (${f.files} files)`;
  if (!f.follow.length && !f.kept.length) return 'files: as the image and the node left them';
  return `files: ${f.follow.length} unchanged cop${f.follow.length === 1 ? 'y follows' : 'ies follow'} the image, ${f.kept.length} of the node's kept over the image's change`;
}

/** The `etc` phase: accounts, then files, by the rule in the header. */
export async function keepNodeEtc(ctx: NodeContext): Promise<string> {
  const imageEtc = at(ctx, IMAGE_ETC);
  if (!existsSync(join(imageEtc, 'passwd'))) {
    throw new Error(`the image's /etc is not at ${IMAGE_ETC} (the first stage binds it there): /etc stays as the last boot left it, and accounts a new image adds are missing`);
  }
  const problems: string[] = [];
  const done: string[] = [];
  try {
    const a = keepNodeAccounts(ctx.root, imageEtc);
    for (const w of a.warnings) ctx.log.info(`etc: warning: ${w}`);
    done.push(accountsSummary(a));
  } catch (e) {
    problems.push(`accounts: ${(e as Error).message}`);
  }
  try {
    const f = keepNodeFiles(ctx.root, imageEtc);
    if (f.follow.length) ctx.log.info(`etc: unchanged copies that follow the new image: ${f.follow.map((p) => `/etc/${p}`).join(', ')}`);
    for (const p of f.kept) {
      const theirs = fingerprint(join(imageEtc, p)) ? `the image changed it (the image's is at ${IMAGE_ETC}/${p})` : 'the new image has none';
      ctx.log.info(`etc: /etc/${p}: the node's version is kept; ${theirs}`);
    }
    done.push(filesSummary(f));
  } catch (e) {
    problems.push(`files: ${(e as Error).message}`);
  }
  if (problems.length) throw new Error([...problems, ...done].join('; '));
  return done.join('; ');
}
