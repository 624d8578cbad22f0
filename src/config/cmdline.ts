/**
 * The kernel command line as a config source: `cairn.*` and `k3os.*` keys.
 *
 *   cairn.hostname=node1               a key (top-level keys and system keys alike)
 *   cairn.ssh_authorized_keys=github:a cairn.ssh_authorized_keys=github:b
 *                                      a repeated key makes a list
 *   cairn.install.silent               a bare key means true
 *   cairn.sysctl[kernel.printk]="4 4 1 7"
 *                                      a map entry; double quotes group words
 *
 * Boot parameters that are not config (cairn.debug, cairn.rescue,
 * cairn.mode, cairn.root_url, ...) are read by the first stage and the
 * init, not here.
 *
 * A key named __proto__, constructor or prototype is refused (and the rest
 * of the command line applies). A secret on the command line (a password, a
 * token, a Wi-Fi passphrase) applies but gets a warning: every process on
 * the node can read /proc/cmdline.
 */
import type { Diagnostic } from './diagnostics.js';
import { pointerToPath } from './diagnostics.js';
import { configSchema, looseKey, spellings } from './schema.js';
import { escapePointer, FORBIDDEN_KEYS, readValue, type RawPath, type ReadResult } from './read.js';
import { findSecrets } from './secrets.js';
import type { JsonObject } from './types.js';

/** Boot parameters under `cairn.` that are not config keys. */
export const BOOT_PARAMS = ['debug', 'rescue', 'root_url', 'root_sha256', 'mode', 'version', 'wait'];

export interface CmdlineToken {
  key: string;
  /** undefined for a bare key. */
  value?: string;
  /** Offset of the token in the command line. */
  offset: number;
}

/** Splits a kernel command line as the kernel does: whitespace outside double quotes; quotes removed. */
export function tokenize(cmdline: string): CmdlineToken[] {
  const tokens: CmdlineToken[] = [];
  let i = 0;
  while (i < cmdline.length) {
    while (i < cmdline.length && /\s/.test(cmdline[i]!)) i++;
    if (i >= cmdline.length) break;
    const start = i;
    let word = '';
    let quoted = false;
    while (i < cmdline.length && (quoted || !/\s/.test(cmdline[i]!))) {
      if (cmdline[i] === '"') quoted = !quoted;
      else word += cmdline[i];
      i++;
    }
    const eq = word.indexOf('=');
    tokens.push(eq < 0 ? { key: word, offset: start } : { key: word.slice(0, eq), value: word.slice(eq + 1), offset: start });
  }
  return tokens;
}

/** Boot parameters (`cairn.debug`, `cairn.root_url=...`) from a command line; k3os.* spellings too. */
export function bootParams(cmdline: string): Record<string, string | true> {
  const out: Record<string, string | true> = {};
  for (const t of tokenize(cmdline)) {
    const m = /^(?:cairn|k3os)\.([A-Za-z0-9_]+)$/.exec(t.key);
    if (m && BOOT_PARAMS.includes(m[1]!)) out[m[1]!] = t.value ?? true;
  }
  return out;
}

const KEY = /^(?:cairn|k3os)\.([A-Za-z0-9_.-]+?)(?:\[([^\]]+)\])?$/;

export const CMDLINE_SECRET_WARNING =
  'a secret on the kernel command line can be read by every process on the node (/proc/cmdline) and is in the kernel log; ' +
  "give it through a data source instead (a NoCloud cidata seed or a config URL) or put it in the node's config file /cairn/system/config.yaml";

/** Reads the config keys of a kernel command line. */
export function readCmdline(cmdline: string, file = 'cmdline'): ReadResult {
  const topLevel = spellings(configSchema.properties ?? {});
  const root: JsonObject = {};
  /** Offset of the token that set each raw path, for locating problems. */
  const offsets = new Map<string, number>();
  const refused: Diagnostic[] = [];
  for (const t of tokenize(cmdline)) {
    const m = KEY.exec(t.key);
    if (!m) continue;
    const segs = m[1]!.split('.');
    if (!m[2] && segs.length === 1 && BOOT_PARAMS.includes(segs[0]!)) continue;
    const first = topLevel.get(looseKey(segs[0]!));
    const path = first && first !== 'cairn' && first !== 'k3os' ? segs : ['cairn', ...segs];
    if (m[2] !== undefined) path.push(m[2]);
    const forbidden = path.find((seg) => FORBIDDEN_KEYS.has(seg));
    if (forbidden !== undefined) {
      refused.push({
        severity: 'error',
        file,
        line: 1,
        col: t.offset + 1,
        path: t.key,
        message: `"${forbidden}" cannot be used as a key (JavaScript gives it a special meaning); this parameter is ignored, remove it`,
      });
      continue;
    }
    let level = root;
    for (const [i, seg] of path.entries()) {
      const at = JSON.stringify(path.slice(0, i + 1));
      if (!offsets.has(at)) offsets.set(at, t.offset);
      if (i < path.length - 1) {
        const next = Object.hasOwn(level, seg) ? level[seg] : undefined;
        if (typeof next !== 'object' || next === null || Array.isArray(next)) level[seg] = {};
        level = level[seg] as JsonObject;
        continue;
      }
      const value = t.value ?? 'true';
      const prev = Object.hasOwn(level, seg) ? level[seg] : undefined;
      if (prev === undefined) level[seg] = value;
      else {
        // A repeated key makes a list; each item is located at its own token.
        const list = Array.isArray(prev) ? prev : [prev];
        offsets.set(JSON.stringify([...path, list.length]), t.offset);
        if (!Array.isArray(prev)) offsets.set(JSON.stringify([...path, 0]), offsets.get(at)!);
        list.push(value);
        level[seg] = list;
      }
    }
  }
  const locate = (raw: RawPath) => {
    for (let n = raw.length; n > 0; n--) {
      const offset = offsets.get(JSON.stringify(raw.slice(0, n)));
      if (offset !== undefined) return { line: 1, col: offset + 1 };
    }
    return { line: 1, col: 1 };
  };
  // One warning per parameter that holds a secret; never the value.
  const secrets = new Map<number, Diagnostic>();
  for (const raw of findSecrets(root)) {
    const { col } = locate(raw);
    if (secrets.has(col)) continue;
    const path = pointerToPath(raw.map((seg) => `/${escapePointer(String(seg))}`).join(''));
    secrets.set(col, { severity: 'warning', file, line: 1, col, path, message: CMDLINE_SECRET_WARNING });
  }
  const result = readValue(root, { file, locate });
  const diagnostics = [...result.diagnostics, ...refused, ...secrets.values()];
  return { ...result, diagnostics: diagnostics.sort((x, y) => x.col - y.col) };
}
