/**
 * The account files (/etc/passwd, group, shadow, gshadow) across image
 * versions. At every boot they are made again from the image's own copies
 * plus the node's own entries, so that an account a new image adds appears
 * and the node's stay as the node left them (the rule for all of /etc is in
 * persist.ts).
 *
 * The node's own entries are the lines of the node's files that differ from
 * the image they were last made from: the cairn user, users and groups added
 * by hand or by init_cmd, a password set with passwd or chpasswd, a group
 * membership added with usermod. That image's lines are kept in
 * ACCOUNTS_RECORD (0600: an image's shadow may hold a hash); the node's
 * entries themselves live in the node's files only. Without a record (a node's first boot, or the first boot of a
 * version that keeps one), the node's entries are those the image has no
 * entry of the same name for; a line the image also has is the image's.
 *
 * Making the files again, per file, in the image's order:
 * - an entry the node has of its own replaces the image's of the same name
 *   (for group and gshadow, the members are the image's plus those the node
 *   added, less those the node removed, so that a member a new image adds
 *   to a group the node changed is not lost);
 * - the node's entries the image has no name for follow the image's;
 * - every other entry is the image's as it ships now: a new one appears, one
 *   the image dropped goes.
 * - An image account new since the record whose uid (gid for a group) is
 *   the node's account of another name is left out, with a warning that
 *   names both and what to do: two names for one id would hand the node
 *   account's files to the image's service. Without a record both are kept,
 *   with the same warning. A shared id that both had before is the node's
 *   own choice (a second root, useradd -o) and stays.
 *
 * Reads: the image's account files (persist.ts: IMAGE_ETC), the node's, the
 * record. Writes: the node's account files when they change (atomically,
 * with the owner and mode the image gives them; shadow and gshadow never
 * readable by others), then the record.
 */
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from './files.js';

export const ACCOUNT_FILES = ['passwd', 'group', 'shadow', 'gshadow'] as const;
export type AccountFile = (typeof ACCOUNT_FILES)[number];
/** The lines of each account file; a file that does not exist is absent. */
export type Accounts = Partial<Record<AccountFile, string[]>>;

/** The image's entries the account files were last made from (as taken: without the ones left out). */
export const ACCOUNTS_RECORD = '/var/lib/cairn/accounts.json';

export interface AccountsRecord {
  image: Accounts;
}

/** The files that hold password hashes: never readable by others. */
export function isSecret(file: AccountFile): boolean {
  return file === 'shadow' || file === 'gshadow';
}

/** shadow names the accounts of passwd, gshadow the groups of group. */
const NAMES_OF: Record<AccountFile, 'passwd' | 'group'> = { passwd: 'passwd', shadow: 'passwd', group: 'group', gshadow: 'group' };
/** Which field holds a group's members. */
const MEMBERS: Partial<Record<AccountFile, number>> = { group: 3, gshadow: 3 };

const nameOf = (line: string): string => line.split(':')[0] ?? '';
const field = (line: string, i: number): string => line.split(':')[i] ?? '';

/** The entries of a file by name (the first of a name counts, as for the C library). */
function byName(lines: string[] | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const l of lines ?? []) if (!out.has(nameOf(l))) out.set(nameOf(l), l);
  return out;
}

/** The node's own entries: the lines of the node's files that are not the image's (pure). */
export function nodeEntries(live: Accounts, image: Accounts, base?: Accounts): Accounts {
  const out: Accounts = {};
  for (const f of ACCOUNT_FILES) {
    const lines = live[f];
    if (!lines) continue;
    const now = byName(image[f]);
    const before = base?.[f] ? byName(base[f]) : undefined;
    const seen = new Set<string>();
    out[f] = lines.filter((l) => {
      const n = nameOf(l);
      if (seen.has(n)) return false;
      seen.add(n);
      if (now.get(n) === l) return false;
      // the image's line as the node last took it, untouched since
      if (before) return before.get(n) !== l;
      // no record: a line the image has an entry for is the image's
      return !now.has(n);
    });
  }
  return out;
}

/** A group line of the node's, its members merged with the image's: the image's, plus the node's additions, less its removals. */
function mergeMembers(file: AccountFile, mine: string, image: string, before: string | undefined): string {
  const i = MEMBERS[file];
  if (i === undefined) return mine;
  const members = (l: string | undefined) => (l === undefined ? [] : field(l, i).split(',').filter(Boolean));
  const own = members(mine);
  const was = members(before);
  const removed = new Set(was.filter((m) => !own.includes(m)));
  const merged = members(image).filter((m) => !removed.has(m));
  for (const m of own) if (!was.includes(m) && !merged.includes(m)) merged.push(m);
  const fields = mine.split(':');
  while (fields.length <= i) fields.push('');
  fields[i] = merged.join(',');
  return fields.join(':');
}

export interface AccountMerge {
  /** The account files to write (only those the image has). */
  files: Accounts;
  /** The image's entries as taken (the record's `image` for the next boot). */
  taken: Accounts;
  /** Image accounts and groups left out for an id the node's own entry has. */
  leftOut: string[];
  warnings: string[];
}

/** The account files from the image's and the node's own entries (pure; see the header for the rule). */
export function mergeAccounts(image: Accounts, node: Accounts, base?: Accounts): AccountMerge {
  const warnings: string[] = [];
  const leftOut = { passwd: new Set<string>(), group: new Set<string>() };
  for (const f of ['passwd', 'group'] as const) {
    const id = f === 'passwd' ? 'uid' : 'gid';
    const kind = f === 'passwd' ? 'account' : 'group';
    const fix = f === 'passwd' ? 'usermod -u' : 'groupmod -g';
    const mine = byName(node[f]);
    const ids = new Map<string, string>();
    for (const [n, l] of mine) if (field(l, 2) !== '' && !ids.has(field(l, 2))) ids.set(field(l, 2), n);
    const before = base?.[f] ? byName(base[f]) : undefined;
    for (const [n, l] of byName(image[f])) {
      const isNew = before !== undefined && !before.has(n);
      const own = mine.get(n);
      if (own !== undefined) {
        if (isNew) warnings.push(`${f}: the image's new ${kind} ${n} (${id} ${field(l, 2)}) is already one of the node's own here (${id} ${field(own, 2)}): the node's entry is kept`);
        continue;
      }
      const other = ids.get(field(l, 2));
      if (other === undefined) continue;
      if (isNew) {
        leftOut[f].add(n);
        warnings.push(
          `${f}: the image's new ${kind} ${n} has ${id} ${field(l, 2)}, which is the node's ${kind} ${other}: ${n} is left out, so that nothing of the image gets ${other}'s files; give ${other} a free ${id} (${fix} <${id}> ${other}) and reboot to let ${n} in`,
        );
      } else if (before === undefined) {
        warnings.push(`${f}: the image's ${kind} ${n} and the node's ${kind} ${other} share ${id} ${field(l, 2)} (no record of an earlier image tells which is new): both are kept; give ${other} a free ${id} (${fix} <${id}> ${other}) unless that is meant`);
      }
    }
  }
  const files: Accounts = {};
  const taken: Accounts = {};
  for (const f of ACCOUNT_FILES) {
    const img = image[f];
    if (!img) continue;
    const mine = byName(node[f]);
    const imageNames = byName(img);
    const before = byName(base?.[f]);
    const out: string[] = [];
    const took: string[] = [];
    for (const l of img) {
      const n = nameOf(l);
      if (leftOut[NAMES_OF[f]].has(n)) continue;
      took.push(l);
      const own = mine.get(n);
      out.push(own === undefined ? l : mergeMembers(f, own, l, before.get(n)));
    }
    for (const [n, l] of mine) if (!imageNames.has(n)) out.push(l);
    files[f] = out;
    taken[f] = took;
  }
  return { files, taken, leftOut: [...leftOut.passwd, ...[...leftOut.group].map((g) => `group ${g}`)], warnings };
}

/** The lines of a file (absent when it cannot be read). */
function readLines(path: string): string[] | undefined {
  try {
    return readFileSync(path, 'utf8').split('\n').filter(Boolean);
  } catch {
    return undefined;
  }
}

/** The account files of an /etc folder. */
export function readAccounts(etc: string): Accounts {
  const out: Accounts = {};
  for (const f of ACCOUNT_FILES) {
    const lines = readLines(join(etc, f));
    if (lines) out[f] = lines;
  }
  return out;
}

export interface OwnerMode {
  mode: number;
  uid: number;
  gid: number;
}

/** A file's mode and owner, or undefined when it does not exist. */
export function ownerMode(path: string): OwnerMode | undefined {
  try {
    const st = statSync(path);
    return { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
  } catch {
    return undefined;
  }
}

/**
 * Writes an account file atomically with the given owner and mode (for
 * shadow and gshadow, never readable by others), unless it holds that
 * already. Returns whether it wrote.
 */
export function writeAccountFile(path: string, file: AccountFile, lines: string[], like: OwnerMode): boolean {
  const text = lines.length ? `${lines.join('\n')}\n` : '';
  const mode = isSecret(file) ? like.mode & ~0o007 : like.mode;
  const root = process.getuid?.() === 0;
  const cur = ownerMode(path);
  if (cur && cur.mode === mode && (!root || (cur.uid === like.uid && cur.gid === like.gid)) && readLines(path)?.join('\n') === lines.join('\n')) return false;
  writeFileAtomic(path, text, { mode, uid: like.uid, gid: like.gid });
  return true;
}

function readRecord(path: string): AccountsRecord | undefined {
  try {
    const r = JSON.parse(readFileSync(path, 'utf8')) as Partial<AccountsRecord>;
    const ok = (a: unknown): a is Accounts => typeof a === 'object' && a !== null && Object.values(a).every((v) => Array.isArray(v) && v.every((l) => typeof l === 'string'));
    return ok(r.image) ? { image: r.image } : undefined;
  } catch {
    return undefined;
  }
}

export interface AccountsResult {
  /** The names of the node's own accounts and groups. */
  node: { passwd: string[]; group: string[] };
  /** Accounts and groups the image has that the last one did not. */
  added: string[];
  /** Accounts and groups the last image had that this one does not. */
  dropped: string[];
  leftOut: string[];
  warnings: string[];
  written: AccountFile[];
  /** Whether there was a record of an earlier image. */
  recorded: boolean;
}

/** Makes the node's account files again from the image's (in `imageEtc`) and the node's own entries; see the header. */
export function keepNodeAccounts(root: string, imageEtc: string): AccountsResult {
  const image = readAccounts(imageEtc);
  if (!image.passwd || !image.group) throw new Error(`the image has no ${!image.passwd ? 'passwd' : 'group'} in ${imageEtc}`);
  const recordPath = join(root, ACCOUNTS_RECORD);
  const record = readRecord(recordPath);
  const live = readAccounts(join(root, 'etc'));
  const node = nodeEntries(live, image, record?.image);
  const merge = mergeAccounts(image, node, record?.image);
  const written: AccountFile[] = [];
  // groups before the accounts that name them, each account file before its shadow
  for (const f of ['group', 'gshadow', 'passwd', 'shadow'] as const) {
    const lines = merge.files[f];
    const like = ownerMode(join(imageEtc, f));
    if (!lines || !like) continue;
    if (writeAccountFile(join(root, 'etc', f), f, lines, like)) written.push(f);
  }
  // Only once the files are made: a record ahead of them would take the old image's lines for the node's.
  writeFileAtomic(recordPath, `${JSON.stringify({ image: merge.taken } satisfies AccountsRecord, null, 1)}\n`, { mode: 0o600, uid: 0, gid: 0 });
  const names = (a: Accounts, f: 'passwd' | 'group') => new Set((a[f] ?? []).map(nameOf));
  const diff = (from: Accounts | undefined, to: Accounts) =>
    !from ? [] : (['passwd', 'group'] as const).flatMap((f) => [...names(to, f)].filter((n) => !names(from, f).has(n)).map((n) => (f === 'group' ? `group ${n}` : n)));
  return {
    node: { passwd: [...names(node, 'passwd')], group: [...names(node, 'group')] },
    added: diff(record?.image, merge.taken),
    dropped: record ? diff(merge.taken, record.image) : [],
    leftOut: merge.leftOut,
    warnings: merge.warnings,
    written,
    recorded: record !== undefined,
  };
}
