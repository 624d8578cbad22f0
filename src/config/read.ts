/**
 * Reading one config source: bytes → YAML → lenient normalisation against
 * the schema → validation. Pure: no file system, no globals; every problem
 * comes back as a located Diagnostic, nothing throws for bad input.
 *
 * Values come from js-yaml with a schema in which every scalar is a string
 * (so that `0755` stays "0755" and `no` stays "no" until the cairn schema
 * says what a key holds). The same parse records where each node opens and
 * closes (js-yaml's listener), in a flat array; only when there is something
 * to report is that rebuilt into a tree, which finds a key or a value by the
 * path as written, and is an offset turned into a line and a column.
 */
import jsyaml from 'js-yaml';
import type { ErrorObject } from 'ajv';
import type { Diagnostic, Severity } from './diagnostics.js';
import { pointerToPath } from './diagnostics.js';
import { labelKeyProblem } from './labels.js';
import { configSchema, configValidator, looseKey, resolveSchema, schemaAt, spellings, suggestKey, type SchemaNode } from './schema.js';
import { isSecretEnvName, redactK3sArgs, redactUrlCredentials } from './secrets.js';
import type { CairnConfig, Encoding, JsonObject } from './types.js';
import { isObject } from './types.js';
import { decodeContent } from './write-files.js';

/** Limits on one config source; documented in docs/config.md. */
export const LIMITS = {
  /** Largest config file read, in bytes. */
  maxBytes: 1024 * 1024,
  /** Deepest nesting of maps and lists. */
  maxDepth: 32,
  /** Most values a document may expand to, aliases included (stops "billion laughs"). */
  maxNodes: 100_000,
};

export interface ReadResult {
  /** The valid part of the config: keys with errors are left out, `k3os:` is folded into `cairn:`. */
  config: CairnConfig;
  diagnostics: Diagnostic[];
  /** Set when the source is a `#!` script (user-data) rather than a config. */
  script?: string;
}

/** A path into the source as written: original key spellings and list indexes. */
export type RawPath = (string | number)[];

/** Where a source's values are: 1-based line and column of a key or a value. */
export interface SourceMap {
  file: string;
  locate(raw: RawPath, part: 'key' | 'value'): { line: number; col: number };
}

class LimitError extends Error {
  constructor(
    message: string,
    readonly raw: RawPath,
  ) {
    super(message);
  }
}

const UNSET = Symbol('unset');
type Walked = unknown | typeof UNSET;

interface Context {
  source: SourceMap;
  diagnostics: Diagnostic[];
  /** The raw path of every canonical JSON pointer, for locating problems found later. */
  raw: Map<string, RawPath>;
  nodes: number;
}

function report(ctx: Context, severity: Severity, raw: RawPath, part: 'key' | 'value', path: string, message: string): void {
  const pos = ctx.source.locate(raw, part);
  ctx.diagnostics.push({ severity, file: ctx.source.file, line: pos.line, col: pos.col, path, message });
}

/** Keys that would reach an object's prototype; refused in every source. */
export const FORBIDDEN_KEYS: ReadonlySet<string> = new Set(['__proto__', 'constructor', 'prototype']);

function describeValue(v: unknown): string {
  if (v === null || v === undefined) return 'nothing';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a map';
  const text = JSON.stringify(v);
  const shown = text.length > 60 ? `${text.slice(0, 57)}...` : text;
  return `${typeof v === 'string' ? 'the string' : `the ${typeof v}`} ${shown}`;
}

const TRUE = /^(true|yes|on)$/i;
const FALSE = /^(false|no|off)$/i;
const NUMBER = /^-?\d+(\.\d+)?$/;

function enter(raw: RawPath, depth: number, ctx: Context): void {
  ctx.nodes++;
  if (ctx.nodes > LIMITS.maxNodes) {
    throw new LimitError(`the document expands to more than ${LIMITS.maxNodes} values (aliases included); simplify it or remove repeated aliases`, raw);
  }
  if (depth > LIMITS.maxDepth) {
    throw new LimitError(`nesting is deeper than ${LIMITS.maxDepth} levels; a cloud-config needs far fewer`, raw);
  }
}

/** Schema-blind copy of a value, counting values and depth as it goes (aliases are shared references: they count each time). */
function plain(value: unknown, raw: RawPath, depth: number, ctx: Context): unknown {
  enter(raw, depth, ctx);
  if (Array.isArray(value)) return value.map((v, i) => plain(v, [...raw, i], depth + 1, ctx));
  if (isObject(value)) {
    const out: JsonObject = {};
    for (const [k, v] of Object.entries(value)) if (!FORBIDDEN_KEYS.has(k)) out[k] = plain(v, [...raw, k], depth + 1, ctx);
    return out;
  }
  return value;
}

/** Counts every value the document expands to, and its depth, before anything else looks at it. */
function measure(value: unknown, raw: RawPath, depth: number, ctx: Context): void {
  enter(raw, depth, ctx);
  if (Array.isArray(value)) value.forEach((v, i) => measure(v, [...raw, i], depth + 1, ctx));
  else if (isObject(value)) for (const [k, v] of Object.entries(value)) measure(v, [...raw, k], depth + 1, ctx);
}

/** A shell word as sh reads it: quoted unless it is plain. */
function shellWord(w: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(w) ? w : `'${w.replace(/'/g, `'\\''`)}'`;
}

/** One list item in cloud-init's shapes made cairn's: a command as a word list, a user as its name. */
function cloudInitItem(item: unknown, schema: SchemaNode): unknown {
  if (schema['x-argv-items'] && Array.isArray(item) && item.every((w) => typeof w === 'string')) return item.map(shellWord).join(' ');
  const nameKey = schema['x-name-items'];
  if (nameKey && typeof item === 'string') return { [nameKey]: item };
  return item;
}

/** Walks a value against its schema, renaming keys to their canonical spelling and coercing lenient values. */
function walk(value: unknown, schemaIn: SchemaNode | undefined, pointer: string, raw: RawPath, depth: number, ctx: Context): Walked {
  enter(raw, depth, ctx);
  ctx.raw.set(pointer, raw);
  if (value === null || value === undefined) return UNSET;
  const schema = schemaIn ? resolveSchema(schemaIn) : undefined;
  switch (schema?.type) {
    case 'array': {
      if (typeof value === 'string' && schema['x-false-empty'] && FALSE.test(value)) return [];
      if (typeof value === 'string' && schema['x-split'] !== undefined) {
        value = value.split(schema['x-split']).map((p) => p.trim()).filter((p) => p !== '');
      }
      if (Array.isArray(value)) {
        const out: unknown[] = [];
        value.forEach((item, i) => {
          const v = walk(cloudInitItem(item, schema), schema.items, `${pointer}/${out.length}`, [...raw, i], depth + 1, ctx);
          if (v !== UNSET) out.push(v);
        });
        return out;
      }
      // A single value where a list is expected is a one-item list.
      const v = walk(cloudInitItem(value, schema), schema.items, `${pointer}/0`, raw, depth + 1, ctx);
      return v === UNSET ? UNSET : [v];
    }
    case 'object':
      return isObject(value) ? walkMap(value, schema, pointer, raw, depth, ctx) : plain(value, raw, depth, ctx);
    case 'boolean':
      if (typeof value === 'string') {
        if (TRUE.test(value)) return true;
        if (FALSE.test(value)) return false;
      }
      return plain(value, raw, depth, ctx);
    case 'integer':
    case 'number':
      if (typeof value === 'string' && NUMBER.test(value.trim())) return Number(value);
      return plain(value, raw, depth, ctx);
    default:
      // Strings stay as written; anything else goes to validation as it is.
      return plain(value, raw, depth, ctx);
  }
}

function walkMap(value: JsonObject, schema: SchemaNode, pointer: string, raw: RawPath, depth: number, ctx: Context): JsonObject {
  const out: JsonObject = {};
  const writtenAs = new Map<string, string>();
  const props = schema.properties;
  const extra = typeof schema.additionalProperties === 'object' ? schema.additionalProperties : undefined;
  const path = pointerToPath(pointer);
  for (const [written, v] of Object.entries(value)) {
    const at = [...raw, written];
    if (FORBIDDEN_KEYS.has(written)) {
      report(ctx, 'error', at, 'key', pointerToPath(`${pointer}/${escapePointer(written)}`), `"${written}" cannot be used as a key (JavaScript gives it a special meaning); remove it`);
      continue;
    }
    let key = written;
    let valueSchema: SchemaNode | undefined = extra;
    if (props) {
      const canonical = spellings(props).get(looseKey(written));
      if (canonical) {
        key = canonical;
        valueSchema = props[canonical];
      } else if (!extra) {
        const notApplied = Object.entries(schema['x-not-applied'] ?? {}).find(([k]) => looseKey(k) === looseKey(written));
        if (notApplied) {
          report(ctx, 'warning', at, 'key', path ? `${path}.${written}` : written, `not applied: ${notApplied[1]}`);
          continue;
        }
        const hint = suggestKey(written, Object.keys(props));
        const where = path ? ` in ${path}` : '';
        report(ctx, 'warning', at, 'key', path ? `${path}.${written}` : written, `unknown key "${written}"${where}, ignored${hint ? `; did you mean "${hint}"?` : ''}`);
        continue;
      }
    }
    const previous = writtenAs.get(key);
    if (previous !== undefined) {
      report(ctx, 'warning', at, 'key', pointerToPath(`${pointer}/${key}`), `"${written}" and "${previous}" are the same key; the later one is used`);
    }
    writtenAs.set(key, written);
    const result = walk(v, valueSchema, `${pointer}/${escapePointer(key)}`, at, depth + 1, ctx);
    if (result === UNSET) delete out[key];
    else out[key] = result;
  }
  return out;
}

export function escapePointer(seg: string): string {
  return seg.replace(/~/g, '~0').replace(/\//g, '~1');
}

/** The raw path recorded for a pointer, or for its closest ancestor. */
function rawOf(pointer: string, ctx: Context): RawPath {
  let p = pointer;
  for (;;) {
    const raw = ctx.raw.get(p);
    if (raw) return raw;
    if (p === '') return [];
    p = p.slice(0, p.lastIndexOf('/'));
  }
}

function expected(err: ErrorObject): string {
  const parent = err.parentSchema as SchemaNode | undefined;
  if (parent?.['x-expected']) return parent['x-expected'];
  switch (err.keyword) {
    case 'type': {
      const type = String(err.params.type);
      const named = type === 'object' ? 'map' : type === 'array' ? 'list' : type;
      return `${/^[aeiou]/.test(named) ? 'an' : 'a'} ${named}`;
    }
    case 'enum':
      return `one of ${(err.params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
    case 'pattern':
      return `a string matching ${String(err.params.pattern)}`;
    case 'minLength':
      return `at least ${String(err.params.limit)} characters`;
    case 'maxLength':
      return `at most ${String(err.params.limit)} characters`;
    case 'minimum':
    case 'maximum':
      return `a number ${err.keyword === 'minimum' ? '>=' : '<='} ${String(err.params.limit)}`;
    case 'format':
      return String(err.params.format) === 'ip' ? 'an IP address' : String(err.params.format) === 'cidr' ? 'an address in CIDR notation such as 192.168.1.10/24' : `a ${String(err.params.format)}`;
    default:
      return `a value that ${err.message ?? 'is valid'}`;
  }
}

/** What a secret is, without its value. */
function describeSecret(v: unknown): string {
  if (typeof v === 'string') return `a secret of ${[...v].length} characters (not shown)`;
  return describeValue(typeof v === 'object' ? v : null).replace(/^nothing$/, `a ${typeof v}`);
}

/** Whether the value at a pointer of the config being validated is a secret (see secrets.ts). */
function isSecretAt(pointer: string, value: JsonObject): boolean {
  if (schemaAt(pointer)?.['x-secret']) return true;
  const env = /^\/(cairn|k3os)\/environment\/([^/]*)$/.exec(pointer);
  if (env) return isSecretEnvName(env[2]!.replace(/~1/g, '/').replace(/~0/g, '~'));
  const arg = /^\/(cairn|k3os)\/k3s_args\/(\d+)$/.exec(pointer);
  if (arg) {
    const ns = value[arg[1]!];
    const list = isObject(ns) && Array.isArray(ns.k3s_args) ? ns.k3s_args.map(String) : [];
    const i = Number(arg[2]);
    if (redactK3sArgs(list)[i] !== list[i]) return true;
  }
  const data = pointer.split('/').slice(1).reduce<unknown>((v, seg) => (isObject(v) || Array.isArray(v) ? (v as JsonObject)[seg.replace(/~1/g, '/').replace(/~0/g, '~')] : undefined), value);
  return typeof data === 'string' && redactUrlCredentials(data) !== data;
}

// eslint-disable-next-line no-control-regex -- finding control characters is the point
const CONTROL = /[\u0000-\u001f\u007f]/;

/** The error of a string that holds a newline or another control character. */
function controlCharacterMessage(s: string): string {
  const at = s.search(CONTROL);
  const c = s[at]!;
  const what = c === '\n' ? 'a newline' : c === '\r' ? 'a carriage return' : c === '\t' ? 'a tab' : `the control character U+${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}`;
  const finalNewline = c === '\n' && at === s.length - 1;
  const fix = finalNewline ? 'write it on one line, or use "|-" instead of "|" to drop the final newline' : `remove the ${what.replace(/^(a|the) /, '')}`;
  return `contains ${what} (character ${[...s.slice(0, at)].length + 1} of ${[...s].length}); this value goes into a config file or a program's arguments as one line, so it cannot hold control characters: ${fix}`;
}

function isControlCharacterError(err: ErrorObject): boolean {
  return err.keyword === 'pattern' && (err.parentSchema as SchemaNode | undefined)?.['x-single-line'] === true;
}

/** One ajv error as a located diagnostic. */
function fromAjv(err: ErrorObject, value: JsonObject, ctx: Context): void {
  const pointer = err.instancePath;
  const path = pointerToPath(pointer);
  const raw = rawOf(pointer, ctx);
  if (err.propertyName !== undefined) {
    // A key of a map that breaks the rule for its keys (propertyNames); located at the key.
    const name = err.propertyName;
    const keyPath = pointerToPath(`${pointer}/${escapePointer(name)}`);
    const problem = CONTROL.test(name) ? controlCharacterMessage(name) : `expected ${expected(err)}`;
    report(ctx, 'error', [...raw, name], 'key', keyPath, `the key ${JSON.stringify(name)} is not valid: ${problem}`);
    return;
  }
  switch (err.keyword) {
    case 'required':
      report(ctx, 'error', raw, 'key', path, `the required key "${String(err.params.missingProperty)}" is missing`);
      return;
    case 'additionalProperties':
      report(ctx, 'error', raw, 'key', path, `unknown key "${String(err.params.additionalProperty)}"`);
      return;
    case 'propertyNames':
      return; // the error of the key itself (above) says what is wrong
    default: {
      if (isControlCharacterError(err) && typeof err.data === 'string') {
        report(ctx, 'error', raw, 'value', path, controlCharacterMessage(err.data));
        return;
      }
      const found = isSecretAt(pointer, value) ? describeSecret(err.data) : describeValue(err.data);
      report(ctx, 'error', raw, 'value', path, `expected ${expected(err)}, found ${found}`);
    }
  }
}

/**
 * The errors worth reporting, one problem once: a control character hides
 * the other errors of the same value, and a value that is not a string is
 * said once, with the most specific expectation.
 */
function usefulErrors(errors: ErrorObject[]): ErrorObject[] {
  const at = (e: ErrorObject) => `${e.instancePath}\u0000${e.propertyName ?? ''}`;
  const control = new Set(errors.filter(isControlCharacterError).map(at));
  const typed = new Set<string>();
  const specific = [...errors].sort((a, b) => Number(isFromLineDef(a)) - Number(isFromLineDef(b)));
  const keep = new Set<ErrorObject>();
  for (const e of specific) {
    if (control.has(at(e)) && !isControlCharacterError(e)) continue;
    if (e.keyword === 'type') {
      if (typed.has(at(e))) continue;
      typed.add(at(e));
    }
    keep.add(e);
  }
  return errors.filter((e) => keep.has(e));
}

function isFromLineDef(err: ErrorObject): boolean {
  return (err.parentSchema as SchemaNode | undefined)?.['x-single-line'] === true;
}

/** Extra checks the schema cannot express: write_files content must decode as its encoding says; label and taint key prefixes. */
function checkSemantics(value: JsonObject, ctx: Context): string[] {
  const bad: string[] = [];
  const files = value.write_files;
  if (Array.isArray(files)) {
    files.forEach((f: unknown, i) => {
      if (!isObject(f) || typeof f.content !== 'string') return;
      try {
        decodeContent(f.content, f.encoding as Encoding | undefined);
      } catch (e) {
        const pointer = `/write_files/${i}/content`;
        report(ctx, 'error', rawOf(pointer, ctx), 'value', pointerToPath(pointer), `${(e as Error).message} (encoding "${String(f.encoding ?? '')}")`);
        bad.push(pointer);
      }
    });
  }
  for (const ns of ['cairn', 'k3os']) {
    const system = value[ns];
    if (!isObject(system)) continue;
    if (isObject(system.labels)) {
      for (const key of Object.keys(system.labels)) {
        const problem = labelKeyProblem(key);
        if (!problem) continue;
        const pointer = `/${ns}/labels/${escapePointer(key)}`;
        report(ctx, 'error', rawOf(pointer, ctx), 'key', pointerToPath(pointer), `the label key is not valid: ${problem}`);
        bad.push(pointer);
      }
    }
    if (Array.isArray(system.taints)) {
      system.taints.forEach((taint: unknown, i) => {
        const problem = typeof taint === 'string' ? labelKeyProblem(taint.split(/[=:]/)[0]!) : undefined;
        if (!problem) return;
        const pointer = `/${ns}/taints/${i}`;
        report(ctx, 'error', rawOf(pointer, ctx), 'value', pointerToPath(pointer), `the taint's key is not valid: ${problem}`);
        bad.push(pointer);
      });
    }
  }
  return bad;
}

/** Removes the value at a JSON pointer (an item from a list, a key from a map), and containers it leaves empty. */
function removeAt(root: JsonObject, pointer: string): void {
  const segs = pointer.split('/').slice(1).map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
  const chain: unknown[] = [root];
  for (const s of segs.slice(0, -1)) {
    const cur = chain[chain.length - 1];
    const next = Array.isArray(cur) ? cur[Number(s)] : isObject(cur) ? cur[s] : undefined;
    if (next === undefined) return;
    chain.push(next);
  }
  for (let i = segs.length - 1; i >= 0; i--) {
    const parent = chain[i];
    const seg = segs[i]!;
    if (Array.isArray(parent)) parent.splice(Number(seg), 1);
    else if (isObject(parent)) delete parent[seg];
    const emptied = Array.isArray(parent) ? parent.length === 0 : isObject(parent) && Object.keys(parent).length === 0;
    if (i === 0 || !emptied) return;
  }
}

/**
 * Validates a normalised value, reporting every problem, and returns the
 * value with the invalid parts removed (so that a node boots with what is good).
 */
function validateNormalized(value: JsonObject, ctx: Context): JsonObject {
  const validate = configValidator();
  const valid = validate(value);
  const broken = new Set<string>();
  if (!valid) {
    for (const err of usefulErrors(validate.errors ?? [])) {
      fromAjv(err, value, ctx);
      if (err.keyword === 'propertyNames') continue;
      // A bad key of a map removes that key only.
      broken.add(err.propertyName === undefined ? err.instancePath : `${err.instancePath}/${escapePointer(err.propertyName)}`);
    }
  }
  for (const p of checkSemantics(value, ctx)) broken.add(p);
  if (broken.size === 0) return value;
  const pruned = structuredClone(value);
  // Deepest and highest list indexes first, so that earlier removals do not shift later ones.
  const pointers = [...broken].sort((x, y) => y.localeCompare(x, 'en', { numeric: true }));
  for (const p of pointers) {
    if (p === '') return {};
    removeAt(pruned, p);
  }
  // Pruning can leave a required key missing; validate once more and give up on what is still wrong.
  if (!validate(pruned)) {
    for (const err of validate.errors ?? []) {
      if (err.instancePath === '') return {};
      removeAt(pruned, err.instancePath);
    }
    if (!validate(pruned)) return {};
  }
  return pruned;
}

/** Folds `k3os:` into `cairn:` (cairn's keys win) so that later code sees one namespace. */
export function foldNamespaces(value: JsonObject): CairnConfig {
  const { k3os, cairn, ...rest } = value;
  if (k3os === undefined && cairn === undefined) return rest as CairnConfig;
  const merged = mergeConfig(isObject(k3os) ? k3os : {}, isObject(cairn) ? cairn : {});
  return { ...rest, cairn: merged } as CairnConfig;
}

/** Maps merge key by key; lists and scalars from `over` replace those in `base`. */
export function mergeConfig(base: JsonObject, over: JsonObject): JsonObject {
  const out: JsonObject = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (FORBIDDEN_KEYS.has(k)) continue;
    const b = out[k];
    out[k] = isObject(b) && isObject(v) ? mergeConfig(b, v) : v;
  }
  return out;
}

/** Finds the first byte that is not valid UTF-8, or -1. */
function invalidUtf8At(buf: Uint8Array): number {
  let i = 0;
  while (i < buf.length) {
    const b = buf[i]!;
    let n = 0;
    if (b < 0x80) n = 0;
    else if (b >= 0xc2 && b <= 0xdf) n = 1;
    else if (b >= 0xe0 && b <= 0xef) n = 2;
    else if (b >= 0xf0 && b <= 0xf4) n = 3;
    else return i;
    for (let k = 1; k <= n; k++) {
      const c = buf[i + k];
      if (c === undefined || (c & 0xc0) !== 0x80) return i;
    }
    i += n + 1;
  }
  return -1;
}

/** Line and column (in characters, as editors count them, not bytes) of a byte of valid UTF-8 text before it. */
function lineColOfByte(buf: Uint8Array, at: number): { line: number; col: number } {
  let line = 1;
  let col = 1;
  for (let i = 0; i < at; i++) {
    const b = buf[i]!;
    if (b === 0x0a) {
      line++;
      col = 1;
    } else if ((b & 0xc0) !== 0x80) {
      col += b >= 0xf0 ? 2 : 1; // a 4-byte sequence is two UTF-16 units, as JavaScript strings count
    }
  }
  return { line, col };
}

/** Checks the raw bytes of a source: size, binary content, UTF-8. Returns the text or the diagnostic. */
export function decodeSource(data: Uint8Array | string, file: string): { text: string } | { error: Diagnostic } {
  const fail = (line: number, col: number, message: string) => ({ error: { severity: 'error' as const, file, line, col, path: '', message } });
  const size = typeof data === 'string' ? Buffer.byteLength(data) : data.length;
  if (size > LIMITS.maxBytes) {
    return fail(1, 1, `the file is ${size} bytes; a config may be at most ${LIMITS.maxBytes} bytes (1 MiB). Split it into files under config.d/`);
  }
  if (typeof data === 'string') return { text: data.replace(/^\uFEFF/, '') };
  const nul = data.indexOf(0);
  if (nul >= 0) {
    const p = lineColOfByte(data, nul);
    return fail(p.line, p.col, 'the file holds binary data (a NUL byte), not YAML text; is this the right file?');
  }
  const bad = invalidUtf8At(data);
  if (bad >= 0) {
    const p = lineColOfByte(data, bad);
    return fail(p.line, p.col, `the file is not UTF-8 text (byte 0x${data[bad]!.toString(16).padStart(2, '0')}); save it as UTF-8`);
  }
  return { text: Buffer.from(data).toString('utf8').replace(/^\uFEFF/, '') };
}

/** Scalars are strings; `~`, `null` and empty values are null; `<<` merge keys work. */
const yamlTypes = (jsyaml as unknown as { types: Record<'null' | 'merge', jsyaml.Type> }).types;
const STRINGS_SCHEMA = jsyaml.FAILSAFE_SCHEMA.extend({ implicit: [yamlTypes.null, yamlTypes.merge] });

/** A node as js-yaml composed it: where it opens and closes in the text, its kind, its value, its anchor. */
interface YamlNode {
  open: number;
  close: number;
  kind: NodeKind;
  result: unknown;
  anchor?: string;
  /** Nodes composed inside it, in text order: for a map, keys and values in turn. */
  children: YamlNode[];
  /** A map's pairs or a list's items, as the raw path counts them; worked out on first use. */
  pairs?: { key: YamlNode; value?: YamlNode }[];
  items?: (YamlNode | undefined)[];
}

const enum NodeKind {
  Other = 0,
  Scalar = 1,
  Sequence = 2,
  Mapping = 3,
}

/**
 * What js-yaml's listener reports while it loads a text, kept flat and cheap:
 * `marks` holds, in order, the offset where each node opens (>= 0) and,
 * when it closes, -1 - (offset * 4 + kind); `results` and `anchors` are
 * indexed by the order in which nodes close.
 */
interface ParseEvents {
  marks: number[];
  results: unknown[];
  anchors: Map<number, string>;
}

function parseListener(events: ParseEvents): (event: 'open' | 'close', state: jsyaml.State) => void {
  const { marks, results, anchors } = events;
  return (event, state) => {
    if (event === 'open') {
      marks.push(state.position);
      return;
    }
    const k = state.kind as string | null;
    marks.push(-1 - (state.position * 4 + (k === 'mapping' ? NodeKind.Mapping : k === 'sequence' ? NodeKind.Sequence : k === 'scalar' ? NodeKind.Scalar : NodeKind.Other)));
    const anchor = (state as { anchor?: string | null }).anchor;
    if (anchor != null) anchors.set(results.length, anchor);
    results.push(state.result);
  };
}

/** The documents' root nodes, rebuilt from the events. */
function buildTree(events: ParseEvents): YamlNode[] {
  const roots: YamlNode[] = [];
  const stack: YamlNode[] = [];
  let closed = 0;
  for (const m of events.marks) {
    if (m >= 0) {
      stack.push({ open: m, close: m, kind: NodeKind.Other, result: null, children: [] });
      continue;
    }
    const node = stack.pop();
    if (!node) break;
    const v = -1 - m;
    node.close = Math.floor(v / 4);
    node.kind = v % 4;
    node.result = events.results[closed];
    node.anchor = events.anchors.get(closed);
    closed++;
    let done = node;
    if (node.kind !== NodeKind.Sequence && node.kind !== NodeKind.Mapping) {
      // A scalar's children are what js-yaml tried and gave up (a block map's first key, found not to be one).
      node.children = [];
    } else if (node.children.length === 1 && node.children[0]!.kind === node.kind && node.children[0]!.result === node.result) {
      // A flow collection where a block map could have been: js-yaml composed it as a first key, then kept it as the node.
      done = node.children[0]!;
      done.anchor ??= node.anchor;
    }
    (stack.length > 0 ? stack[stack.length - 1]!.children : roots).push(done);
  }
  return roots;
}

const isBlank = (c: number) => c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d;
const isFlowIndicator = (c: number) => c === 0x2c || c === 0x5b || c === 0x5d || c === 0x7b || c === 0x7d;

/** Skips spaces, line breaks (unless `sameLine`) and comments from an offset. */
function skipSpace(text: string, at: number, sameLine: boolean): number {
  let i = at;
  for (;;) {
    const c = text.charCodeAt(i);
    if (c === 0x20 || c === 0x09) i++;
    else if (!sameLine && (c === 0x0a || c === 0x0d)) i++;
    else if (!sameLine && c === 0x23) {
      while (i < text.length && text.charCodeAt(i) !== 0x0a) i++;
    } else return i;
  }
}

/** Where a node's content starts: js-yaml opens a node before the spaces and the properties (`&anchor`, `!tag`) in front of it. */
function nodeStart(text: string, node: YamlNode): number {
  // An empty value is where it would have been written, on its own line (as a block map's "key:" leaves it).
  const empty = node.kind === NodeKind.Other && node.result === null && !isAliasNode(text, node);
  let i = skipSpace(text, node.open, empty);
  for (;;) {
    const c = text.charCodeAt(i);
    if (c !== 0x21 && c !== 0x26) return i;
    while (i < text.length && !isBlank(text.charCodeAt(i)) && !(c === 0x26 && isFlowIndicator(text.charCodeAt(i)))) i++;
    i = skipSpace(text, i, empty);
  }
}

/** Whether a node is an alias (`*name`); an empty value before a line that starts with one is not. */
function isAliasNode(text: string, node: YamlNode): boolean {
  if (node.kind !== NodeKind.Other) return false;
  const at = skipSpace(text, node.open, false);
  return at < node.close && text.charCodeAt(at) === 0x2a;
}

/** Whether a `:` follows a node: then it was a key, and the next node its value. */
function followedByColon(text: string, node: YamlNode): boolean {
  return text.charCodeAt(skipSpace(text, node.close, false)) === 0x3a;
}

function pairsOf(text: string, node: YamlNode): { key: YamlNode; value?: YamlNode }[] {
  if (node.pairs) return node.pairs;
  const pairs: { key: YamlNode; value?: YamlNode }[] = [];
  const c = node.children;
  for (let i = 0; i < c.length; ) {
    const key = c[i++]!;
    // A key written without a value (`{a, b: c}`, `? a`) has no value node.
    const value = i < c.length && followedByColon(text, key) ? c[i++] : undefined;
    pairs.push({ key, value });
  }
  return (node.pairs = pairs);
}

function itemsOf(text: string, node: YamlNode): (YamlNode | undefined)[] {
  if (node.items) return node.items;
  const c = node.children;
  const items: (YamlNode | undefined)[] = [];
  if (text.charCodeAt(nodeStart(text, node)) === 0x5b) {
    // A flow list: `[a: b]` is a one-pair map, composed as two nodes.
    for (let i = 0; i < c.length; ) {
      const first = c[i++]!;
      if (i < c.length && followedByColon(text, first)) {
        const value = c[i++]!;
        items.push({ open: first.open, close: value.close, kind: NodeKind.Mapping, result: null, children: [first, value] });
      } else items.push(first);
    }
  } else {
    // A block list: an empty item ("-" and a line break) has no node; the values show which items have one.
    const values = Array.isArray(node.result) ? (node.result as unknown[]) : [];
    let i = 0;
    let dash = nodeStart(text, node);
    for (const v of values) {
      const child = c[i];
      // A null item is the child only if the child opens right after this item's "-" (`-` then `- ~`).
      if (child && child.result === v && (v !== null || child.open === skipSpace(text, dash + 1, false))) {
        items.push(child);
        i++;
        dash = skipSpace(text, child.close, false);
      } else {
        // Located just after its "-", where its value would be.
        items.push({ open: dash + 1, close: dash + 1, kind: NodeKind.Other, result: null, children: [] });
        dash = skipSpace(text, dash + 1, false);
      }
    }
  }
  return (node.items = items);
}

/** The node an alias names: the last node before it with that anchor (`anchored` is in text order). */
function resolveAlias(text: string, anchored: YamlNode[], alias: YamlNode): YamlNode | undefined {
  const at = skipSpace(text, alias.open, false) + 1;
  let end = at;
  while (end < text.length && !isBlank(text.charCodeAt(end)) && !isFlowIndicator(text.charCodeAt(end))) end++;
  const name = text.slice(at, end);
  for (let i = anchored.length - 1; i >= 0; i--) {
    const n = anchored[i]!;
    if (n.open < alias.open && n.anchor === name) return n;
  }
  return undefined;
}

/** The nodes of a tree that have an anchor, in text order. */
function anchoredNodes(roots: YamlNode[]): YamlNode[] {
  const out: YamlNode[] = [];
  const stack = [...roots].reverse();
  for (let n = stack.pop(); n; n = stack.pop()) {
    if (n.anchor !== undefined) out.push(n);
    for (let i = n.children.length - 1; i >= 0; i--) stack.push(n.children[i]!);
  }
  return out;
}

/** Finds the key and value nodes of a raw path. */
function findNodes(text: string, tree: { roots: YamlNode[]; anchored?: YamlNode[] }, raw: RawPath): { key?: YamlNode; value?: YamlNode; found: number } {
  let node: YamlNode | undefined = tree.roots[0];
  let key: YamlNode | undefined;
  let found = 0;
  for (const seg of raw) {
    if (node && isAliasNode(text, node)) node = resolveAlias(text, (tree.anchored ??= anchoredNodes(tree.roots)), node);
    if (typeof seg === 'number' && node?.kind === NodeKind.Sequence) {
      const item: YamlNode | undefined = itemsOf(text, node)[seg];
      if (!item) break;
      key = item;
      node = item;
    } else if (node?.kind === NodeKind.Mapping) {
      const pair = pairsOf(text, node).find((p) => String(p.key.result) === String(seg));
      if (!pair) break;
      key = pair.key;
      node = pair.value;
    } else break;
    found++;
  }
  return { key, value: node, found };
}

/** 1-based line and column of an offset; the offsets where lines start are found once. */
function lineCounter(text: string): (offset: number) => { line: number; col: number } {
  let starts: number[] | undefined;
  return (offset) => {
    if (!starts) {
      starts = [0];
      for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) starts.push(i + 1);
    }
    let lo = 0;
    let hi = starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (starts[mid]! <= offset) lo = mid;
      else hi = mid - 1;
    }
    return { line: lo + 1, col: offset - starts[lo]! + 1 };
  };
}

/** Locations in YAML text, from the events of the parse that read its values; the tree is rebuilt on first use. */
function yamlSourceMap(text: string, file: string, events: ParseEvents): SourceMap {
  let tree: { roots: YamlNode[]; anchored?: YamlNode[] } | undefined;
  const linePos = lineCounter(text);
  return {
    file,
    locate(raw, part) {
      tree ??= { roots: buildTree(events) };
      const { roots } = tree;
      const { key, value, found } = findNodes(text, tree, raw);
      const node = found === raw.length ? (part === 'key' ? (key ?? value) : (value ?? key)) : (value ?? key);
      // An empty document is located at its start.
      const empty = !node || (node === roots[0] && node.kind === NodeKind.Other && node.result === null);
      return linePos(empty ? 0 : nodeStart(text, node));
    },
  };
}

/** A raw path as a key path, for messages: `k3os.wifi[0].name`. */
function rawPathToPath(raw: RawPath): string {
  return pointerToPath(raw.map((seg) => `/${escapePointer(String(seg))}`).join(''));
}

function sortDiagnostics(ds: Diagnostic[]): Diagnostic[] {
  return ds.sort((x, y) => x.line - y.line || x.col - y.col);
}

/** Normalises and validates a parsed value; the common end of every source. */
export function readValue(value: unknown, source: SourceMap): ReadResult {
  const ctx: Context = { source, diagnostics: [], raw: new Map(), nodes: 0 };
  if (value === null || value === undefined) {
    report(ctx, 'warning', [], 'value', '', 'the file is empty: there is nothing to apply');
    return { config: {}, diagnostics: ctx.diagnostics };
  }
  if (!isObject(value)) {
    report(ctx, 'error', [], 'value', '', `expected a map of keys (such as "hostname: node1") at the top level, found ${describeValue(value)}`);
    return { config: {}, diagnostics: ctx.diagnostics };
  }
  let walked: Walked;
  try {
    measure(value, [], 0, ctx);
    ctx.nodes = 0;
    walked = walk(value, configSchema, '', [], 0, ctx);
  } catch (e) {
    if (!(e instanceof LimitError)) throw e;
    report(ctx, 'error', e.raw, 'value', rawPathToPath(e.raw), e.message);
    return { config: {}, diagnostics: sortDiagnostics(ctx.diagnostics) };
  }
  const good = validateNormalized(isObject(walked) ? walked : {}, ctx);
  return { config: foldNamespaces(good), diagnostics: sortDiagnostics(ctx.diagnostics) };
}

/** Where the second document of a multi-document stream starts (0-based, as js-yaml marks). */
function secondDocument(text: string, events: ParseEvents): { line: number; column: number } {
  const second = buildTree(events)[1];
  const pos = lineCounter(text)(second ? nodeStart(text, second) : 0);
  return { line: pos.line - 1, column: pos.col - 1 };
}

/** js-yaml's reasons, in cairn's words where they are terse. */
function yamlMessage(reason: string): string {
  if (/duplicated mapping key/.test(reason)) return 'a key appears twice in the same map; keep one of them';
  if (/expected a single document/.test(reason)) return 'the file holds more than one YAML document (a "---" line); a config is one document';
  if (/unidentified alias/.test(reason)) return `invalid YAML: ${reason} (an alias *name needs an anchor &name before it)`;
  if (/maxDepth/.test(reason)) return `nesting is deeper than ${LIMITS.maxDepth} levels; a cloud-config needs far fewer`;
  return `invalid YAML: ${reason}`;
}

/** A position moved inside the text: js-yaml marks the end of the stream one line past a final newline. */
function insideText(text: string, line: number, col: number): { line: number; col: number } {
  const lines = text.split('\n');
  if (line <= lines.length) return { line, col: Math.min(col, lines[line - 1]!.length + 1) };
  return { line: lines.length, col: lines[lines.length - 1]!.length + 1 };
}

/**
 * Reads one YAML config source (a config file, cloud-config user-data, a
 * config.d entry). `#!` user-data comes back as a script.
 */
export function readConfig(data: Uint8Array | string, file: string): ReadResult {
  const decoded = decodeSource(data, file);
  if ('error' in decoded) return { config: {}, diagnostics: [decoded.error] };
  const text = decoded.text;
  if (text.startsWith('#!')) return { config: {}, diagnostics: [], script: text };
  let value: unknown;
  const events: ParseEvents = { marks: [], results: [], anchors: new Map() };
  try {
    value = jsyaml.load(text, { schema: STRINGS_SCHEMA, filename: file, maxDepth: LIMITS.maxDepth * 2, listener: parseListener(events) } as jsyaml.LoadOptions);
  } catch (e) {
    if (e instanceof jsyaml.YAMLException) {
      let mark = e.mark as { line?: number; column?: number } | undefined;
      if (/expected a single document/.test(e.reason)) mark = secondDocument(text, events);
      const pos = insideText(text, (mark?.line ?? 0) + 1, (mark?.column ?? 0) + 1);
      return { config: {}, diagnostics: [{ severity: 'error', file, ...pos, path: '', message: yamlMessage(e.reason) }] };
    }
    if (e instanceof RangeError) {
      return { config: {}, diagnostics: [{ severity: 'error', file, line: 1, col: 1, path: '', message: `nesting is deeper than ${LIMITS.maxDepth} levels; a cloud-config needs far fewer` }] };
    }
    throw e;
  }
  return readValue(value, yamlSourceMap(text, file, events));
}
