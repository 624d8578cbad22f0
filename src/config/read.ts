/**
 * Reading one config source: bytes → YAML document → lenient normalisation
 * against the schema → validation. Pure: no file system, no globals; every
 * problem comes back as a located Diagnostic, nothing throws for bad input.
 */
import {
  Document,
  LineCounter,
  isAlias,
  isMap,
  isScalar,
  isSeq,
  parseDocument,
  type Node,
  type YAMLMap,
} from 'yaml';
import type { ErrorObject } from 'ajv';
import type { Diagnostic, Severity } from './diagnostics.js';
import { pointerToPath } from './diagnostics.js';
import { configSchema, configValidator, looseKey, resolveSchema, spellings, suggestKey, type SchemaNode } from './schema.js';
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

class LimitError extends Error {
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(message);
  }
}

const UNSET = Symbol('unset');
type Walked = unknown | typeof UNSET;

interface Located {
  /** Character offset into the source text. */
  offset: number;
}

/**
 * Where each value came from, by JSON pointer. Sources that are not YAML
 * text (the kernel command line) supply their own offsets.
 */
export type Locations = Map<string, Located>;

interface WalkContext {
  file: string;
  doc: Document;
  lines: LineCounter;
  diagnostics: Diagnostic[];
  locations: Locations;
  nodes: number;
}

function diag(ctx: { file: string; lines: LineCounter; diagnostics: Diagnostic[] }, severity: Severity, offset: number, path: string, message: string): void {
  const pos = ctx.lines.linePos(offset);
  ctx.diagnostics.push({ severity, file: ctx.file, line: pos.line, col: pos.col, path, message });
}

function describeValue(v: unknown): string {
  if (v === null || v === undefined) return 'nothing';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a map';
  const text = JSON.stringify(v);
  const shown = text.length > 60 ? `${text.slice(0, 57)}...` : text;
  return `${typeof v === 'string' ? 'the string' : `the ${typeof v}`} ${shown}`;
}

function describeNode(node: Node): string {
  if (isMap(node)) return 'a map';
  if (isSeq(node)) return 'a list';
  if (isScalar(node)) return describeValue(node.value);
  return 'a value';
}

const TRUE = /^(true|yes|on)$/i;
const FALSE = /^(false|no|off)$/i;

/** Schema-blind conversion of a node to plain JSON, counting nodes and depth as it goes. */
function plain(node: Node | null, depth: number, ctx: WalkContext): unknown {
  enter(node, depth, ctx);
  if (node === null) return null;
  if (isAlias(node)) return plain(resolveAlias(node, ctx), depth + 1, ctx);
  if (isMap(node)) {
    const out: JsonObject = {};
    for (const pair of node.items) {
      const key = isScalar(pair.key) ? String(pair.key.value) : '';
      if (key === '__proto__') continue;
      out[key] = plain(pair.value as Node | null, depth + 1, ctx);
    }
    return out;
  }
  if (isSeq(node)) return node.items.map((item) => plain(item as Node | null, depth + 1, ctx));
  if (isScalar(node)) return node.value;
  return null;
}

function offsetOf(node: Node | null): number {
  return node?.range?.[0] ?? 0;
}

function enter(node: Node | null, depth: number, ctx: WalkContext): void {
  ctx.nodes++;
  if (ctx.nodes > LIMITS.maxNodes) {
    throw new LimitError(`the document expands to more than ${LIMITS.maxNodes} values (aliases included); simplify it or remove repeated aliases`, offsetOf(node));
  }
  if (depth > LIMITS.maxDepth) {
    throw new LimitError(`nesting is deeper than ${LIMITS.maxDepth} levels; a cloud-config needs far fewer`, offsetOf(node));
  }
}

function resolveAlias(node: Node, ctx: WalkContext): Node {
  if (!isAlias(node)) return node;
  const target = node.resolve(ctx.doc);
  if (!target) throw new LimitError(`the alias *${node.source} has no anchor &${node.source} before it`, offsetOf(node));
  return target as Node;
}

/** Counts every value the document expands to and its depth, before anything else looks at it. */
function measure(node: Node | null, depth: number, ctx: WalkContext): void {
  enter(node, depth, ctx);
  if (node === null) return;
  if (isAlias(node)) measure(resolveAlias(node, ctx), depth + 1, ctx);
  else if (isMap(node)) {
    for (const pair of node.items) {
      measure(pair.key as Node | null, depth + 1, ctx);
      measure(pair.value as Node | null, depth + 1, ctx);
    }
  } else if (isSeq(node)) for (const item of node.items) measure(item as Node | null, depth + 1, ctx);
}

/** Walks a node against its schema, renaming keys to their canonical spelling and coercing lenient values. */
function walk(node: Node | null, schemaIn: SchemaNode | undefined, pointer: string, depth: number, ctx: WalkContext): Walked {
  enter(node, depth, ctx);
  if (node && isAlias(node)) {
    ctx.locations.set(pointer, { offset: offsetOf(node) });
    return walk(resolveAlias(node, ctx), schemaIn, pointer, depth + 1, ctx);
  }
  ctx.locations.set(pointer, { offset: offsetOf(node) });
  if (node === null || (isScalar(node) && node.value === null)) return UNSET;
  const schema = schemaIn ? resolveSchema(schemaIn) : undefined;
  switch (schema?.type) {
    case 'array': {
      if (isSeq(node)) {
        const out: unknown[] = [];
        for (const item of node.items) {
          const v = walk(item as Node | null, schema.items, `${pointer}/${out.length}`, depth + 1, ctx);
          if (v !== UNSET) out.push(v);
        }
        return out;
      }
      // A single value where a list is expected is a one-item list.
      const v = walk(node, schema.items, `${pointer}/0`, depth + 1, ctx);
      return v === UNSET ? UNSET : [v];
    }
    case 'object':
      return isMap(node) ? walkMap(node, schema, pointer, depth, ctx) : plain(node, depth, ctx);
    case 'string':
      if (isScalar(node) && (typeof node.value === 'number' || typeof node.value === 'boolean')) {
        // Keep what was written: `permissions: 0755` means "0755", not 493.
        return node.source ?? String(node.value);
      }
      return plain(node, depth, ctx);
    case 'boolean':
      if (isScalar(node) && typeof node.value === 'string') {
        if (TRUE.test(node.value)) return true;
        if (FALSE.test(node.value)) return false;
      }
      return plain(node, depth, ctx);
    case 'integer':
    case 'number':
      if (isScalar(node) && typeof node.value === 'string' && /^-?\d+(\.\d+)?$/.test(node.value.trim())) return Number(node.value);
      return plain(node, depth, ctx);
    default:
      return plain(node, depth, ctx);
  }
}

function walkMap(node: YAMLMap, schema: SchemaNode, pointer: string, depth: number, ctx: WalkContext): JsonObject {
  const out: JsonObject = {};
  const writtenAs = new Map<string, string>();
  const props = schema.properties;
  const extra = typeof schema.additionalProperties === 'object' ? schema.additionalProperties : undefined;
  for (const pair of node.items) {
    const keyNode = pair.key as Node | null;
    const at = offsetOf(keyNode);
    const path = pointerToPath(pointer);
    if (!isScalar(keyNode) || keyNode.value === null || typeof keyNode.value === 'object') {
      diag(ctx, 'error', at, path, `a key must be a plain word, found ${keyNode ? describeNode(keyNode) : 'nothing'}`);
      continue;
    }
    // What was written: under YAML 1.1 a key such as `y` or `on` would otherwise read as a boolean.
    const written = keyNode.source ?? String(keyNode.value);
    if (written === '<<' && pair.value) {
      // YAML 1.1 merge key: the merged map's keys, unless already set here.
      const merged = resolveAlias(pair.value as Node, ctx);
      if (isMap(merged)) {
        for (const [k, v] of Object.entries(walkMap(merged, schema, pointer, depth + 1, ctx))) if (!(k in out)) out[k] = v;
      }
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
        const hint = suggestKey(written, Object.keys(props));
        const where = path ? ` in ${path}` : '';
        diag(ctx, 'warning', at, path ? `${path}.${written}` : written, `unknown key "${written}"${where}, ignored${hint ? `; did you mean "${hint}"?` : ''}`);
        continue;
      }
    }
    if (key === '__proto__' || key === 'constructor' || key === 'prototype') {
      diag(ctx, 'error', at, path, `"${key}" cannot be used as a key`);
      continue;
    }
    const previous = writtenAs.get(key);
    if (previous !== undefined) {
      diag(ctx, 'warning', at, pointerToPath(`${pointer}/${key}`), `"${written}" and "${previous}" are the same key; the later one is used`);
    }
    writtenAs.set(key, written);
    const value = walk(pair.value as Node | null, valueSchema, `${pointer}/${escapePointer(key)}`, depth + 1, ctx);
    if (value === UNSET) delete out[key];
    else out[key] = value;
  }
  return out;
}

export function escapePointer(seg: string): string {
  return seg.replace(/~/g, '~0').replace(/\//g, '~1');
}

/** The location recorded for a pointer, or for its closest ancestor. */
function locate(pointer: string, locations: Locations): number {
  let p = pointer;
  for (;;) {
    const loc = locations.get(p);
    if (loc) return loc.offset;
    if (p === '') return 0;
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

/** One ajv error as a located diagnostic. */
function fromAjv(err: ErrorObject, ctx: { file: string; lines: LineCounter; diagnostics: Diagnostic[] }, locations: Locations): void {
  const pointer = err.instancePath;
  const path = pointerToPath(pointer);
  switch (err.keyword) {
    case 'required':
      diag(ctx, 'error', locate(pointer, locations), path, `the required key "${String(err.params.missingProperty)}" is missing`);
      return;
    case 'additionalProperties':
      diag(ctx, 'error', locate(pointer, locations), path, `unknown key "${String(err.params.additionalProperty)}"`);
      return;
    case 'propertyNames':
      diag(ctx, 'error', locate(pointer, locations), path, `"${String(err.params.propertyName)}" is not a valid name here`);
      return;
    default: {
      if (err.propertyName !== undefined) return; // reported by its propertyNames error
      diag(ctx, 'error', locate(pointer, locations), path, `expected ${expected(err)}, found ${describeValue(err.data)}`);
    }
  }
}

/** Extra checks the schema cannot express: write_files content must decode as its encoding says. */
function checkSemantics(value: JsonObject, ctx: { file: string; lines: LineCounter; diagnostics: Diagnostic[] }, locations: Locations): string[] {
  const bad: string[] = [];
  const files = value.write_files;
  if (!Array.isArray(files)) return bad;
  files.forEach((f: unknown, i) => {
    if (!isObject(f) || typeof f.content !== 'string') return;
    try {
      decodeContent(f.content, f.encoding as Encoding | undefined);
    } catch (e) {
      const pointer = `/write_files/${i}/content`;
      diag(ctx, 'error', locate(pointer, locations), pointerToPath(pointer), `${(e as Error).message} (encoding "${String(f.encoding ?? '')}")`);
      bad.push(pointer);
    }
  });
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
export function validateNormalized(value: JsonObject, ctx: { file: string; lines: LineCounter; diagnostics: Diagnostic[] }, locations: Locations): JsonObject {
  const validate = configValidator();
  const valid = validate(value);
  const broken = new Set<string>();
  if (!valid) {
    for (const err of validate.errors ?? []) {
      fromAjv(err, ctx, locations);
      broken.add(err.instancePath);
    }
  }
  for (const p of checkSemantics(value, ctx, locations)) broken.add(p);
  if (broken.size === 0) return value;
  const pruned = structuredClone(value);
  // Deepest and highest list indexes first, so that earlier removals do not shift later ones.
  const pointers = [...broken].sort((a, b) => b.localeCompare(a, 'en', { numeric: true }));
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

function lineColOfByte(buf: Uint8Array, at: number): { line: number; col: number } {
  let line = 1;
  let start = 0;
  for (let i = 0; i < at; i++) {
    if (buf[i] === 0x0a) {
      line++;
      start = i + 1;
    }
  }
  return { line, col: at - start + 1 };
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

/**
 * Reads one YAML config source (a config file, cloud-config user-data, a
 * config.d entry). `#!` user-data comes back as a script.
 */
export function readConfig(data: Uint8Array | string, file: string): ReadResult {
  const decoded = decodeSource(data, file);
  if ('error' in decoded) return { config: {}, diagnostics: [decoded.error] };
  const text = decoded.text;
  if (text.startsWith('#!')) return { config: {}, diagnostics: [], script: text };
  const lines = new LineCounter();
  const doc = parseDocument(text, { version: '1.1', uniqueKeys: true, prettyErrors: false, lineCounter: lines, strict: true, keepSourceTokens: false });
  const diagnostics: Diagnostic[] = [];
  const base = { file, lines, diagnostics };
  for (const e of doc.errors) diag(base, 'error', e.pos[0], '', yamlMessage(e.message, e.code));
  for (const w of doc.warnings) diag(base, 'warning', w.pos[0], '', yamlMessage(w.message, w.code));
  if (doc.errors.length > 0) return { config: {}, diagnostics };
  const root = doc.contents as Node | null;
  if (root === null || (isScalar(root) && root.value === null)) {
    diag(base, 'warning', 0, '', 'the file is empty: there is nothing to apply');
    return { config: {}, diagnostics };
  }
  const ctx: WalkContext = { ...base, doc, locations: new Map(), nodes: 0 };
  let value: Walked;
  try {
    if (!isMap(resolveAlias(root, ctx))) {
      diag(base, 'error', offsetOf(root), '', `expected a map of keys (such as "hostname: node1") at the top level, found ${describeNode(root)}`);
      return { config: {}, diagnostics };
    }
    measure(root, 0, ctx);
    ctx.nodes = 0;
    value = walk(root, configSchema, '', 0, ctx);
  } catch (e) {
    if (!(e instanceof LimitError)) throw e;
    diag(base, 'error', e.offset, '', e.message);
    return { config: {}, diagnostics };
  }
  const good = validateNormalized(isObject(value) ? value : {}, base, ctx.locations);
  return { config: foldNamespaces(good), diagnostics: sortDiagnostics(diagnostics) };
}

function sortDiagnostics(ds: Diagnostic[]): Diagnostic[] {
  return ds.sort((a, b) => a.line - b.line || a.col - b.col);
}

/** yaml's messages end with a source excerpt when pretty; keep the first line and make duplicate keys plain. */
function yamlMessage(message: string, code: string): string {
  const first = message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
  if (code === 'DUPLICATE_KEY') return 'a key appears twice in the same map; keep one of them';
  return `invalid YAML: ${first}`;
}

/** Normalises and validates a value built in code (such as from the kernel command line), with offsets supplied by the caller. */
export function readConfigNode(doc: Document, file: string, lines: LineCounter): ReadResult {
  const diagnostics: Diagnostic[] = [];
  const ctx: WalkContext = { file, lines, diagnostics, doc, locations: new Map(), nodes: 0 };
  let value: Walked;
  try {
    measure(doc.contents as Node | null, 0, ctx);
    ctx.nodes = 0;
    value = walk(doc.contents as Node | null, configSchema, '', 0, ctx);
  } catch (e) {
    if (!(e instanceof LimitError)) throw e;
    diag(ctx, 'error', e.offset, '', e.message);
    return { config: {}, diagnostics };
  }
  const good = validateNormalized(isObject(value) ? value : {}, ctx, ctx.locations);
  return { config: foldNamespaces(good), diagnostics: sortDiagnostics(diagnostics) };
}
