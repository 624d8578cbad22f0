/**
 * The cloud-config schema (config/schema.json) and what cairn derives from it:
 * the validator (compile.ts, or the one compiled when the image was built), and the lookup of a key's canonical name from any of its
 * lenient spellings. The schema is the single source of truth for config keys.
 */
import type { ValidateFunction } from 'ajv/dist/2020.js';
import { compileConfigSchema } from './compile.js';
import { precompiledValidator } from './precompiled.js';
import schemaJson from '../../config/schema.json' with { type: 'json' };

/** The subset of JSON Schema that config/schema.json uses. */
export interface SchemaNode {
  $ref?: string;
  type?: 'object' | 'array' | 'string' | 'boolean' | 'integer' | 'number';
  description?: string;
  properties?: Record<string, SchemaNode>;
  additionalProperties?: SchemaNode | boolean;
  items?: SchemaNode;
  required?: string[];
  enum?: unknown[];
  pattern?: string;
  format?: string;
  default?: unknown;
  examples?: unknown[];
  minimum?: number;
  maximum?: number;
  minLength?: number;
  maxLength?: number;
  'x-expected'?: string;
  'x-secret'?: boolean;
  /** One line of text: no newlines or other control characters (`$defs/line`). */
  'x-single-line'?: boolean;
  propertyNames?: SchemaNode;
  /** cloud-init's shapes, read as cloud-init reads them (src/config/read.ts): */
  /** a string is split at this separator into the list (`groups: "a, b"`, `chpasswd.list`'s lines). */
  'x-split'?: string;
  /** `false` (or `no`) is the empty list (`sudo: false`). */
  'x-false-empty'?: boolean;
  /** an item that is a list of words is one shell command (`runcmd: [[sh, -c, "..."]]`). */
  'x-argv-items'?: boolean;
  /** an item that is a string is a map with this key (`users: [default, ops]`). */
  'x-name-items'?: string;
  /** keys that cannot apply on cairn, with why and what to do instead (warned about, not "unknown"). */
  'x-not-applied'?: Record<string, string>;
}

export const configSchema = schemaJson as unknown as SchemaNode & { $defs: Record<string, SchemaNode> };

/** Follows `$ref`s (only local `#/$defs/...` ones are used) and merges sibling keywords. */
export function resolveSchema(node: SchemaNode): SchemaNode {
  let cur = node;
  let extra: SchemaNode = {};
  while (cur.$ref) {
    const name = cur.$ref.replace(/^#\/\$defs\//, '');
    const target = configSchema.$defs[name];
    if (!target) throw new Error(`schema: unknown $ref ${cur.$ref}`);
    const { $ref: _ref, ...rest } = cur;
    extra = { ...rest, ...extra };
    cur = target;
  }
  return { ...cur, ...extra };
}

/** A key as k3OS compared keys: lowercase, without `_` and `-`. */
export function looseKey(key: string): string {
  return key.toLowerCase().replace(/[_-]/g, '');
}

const spellingCache = new WeakMap<object, Map<string, string>>();

/**
 * Maps every lenient spelling of an object's keys to the canonical key:
 * snake_case, camelCase, lowercase, and the singular of a plural key.
 */
export function spellings(props: Record<string, SchemaNode>): Map<string, string> {
  let map = spellingCache.get(props);
  if (!map) {
    map = new Map();
    for (const key of Object.keys(props)) {
      const loose = looseKey(key);
      map.set(loose, key);
      if (loose.endsWith('s')) map.set(loose.slice(0, -1), key);
    }
    spellingCache.set(props, map);
  }
  return map;
}

/** Levenshtein distance, for "did you mean" suggestions. */
function distance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = prev[j]!;
      prev[j] = Math.min(prev[j]! + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = tmp;
    }
  }
  return prev[b.length]!;
}

/** The known key closest to an unknown one, when it is close enough to be a typo. */
export function suggestKey(unknown: string, known: string[]): string | undefined {
  const u = looseKey(unknown);
  let best: { key: string; d: number } | undefined;
  for (const key of known) {
    const d = Math.min(distance(u, looseKey(key)), distance(u, looseKey(key).replace(/s$/, '')));
    if (!best || d < best.d) best = { key, d };
  }
  if (!best) return undefined;
  return best.d <= Math.max(2, Math.floor(u.length / 4)) ? best.key : undefined;
}

/**
 * The schema of the value at a JSON pointer into a config with canonical
 * key names (`/cairn/wifi/0/passphrase`), or undefined when the schema has
 * no such key.
 */
export function schemaAt(pointer: string): SchemaNode | undefined {
  let node: SchemaNode | undefined = configSchema;
  for (const raw of pointer.split('/').slice(1)) {
    if (!node) return undefined;
    const s = resolveSchema(node);
    const seg = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (s.type === 'array') node = s.items;
    else if (s.properties && Object.hasOwn(s.properties, seg)) node = s.properties[seg];
    else node = typeof s.additionalProperties === 'object' ? s.additionalProperties : undefined;
  }
  return node ? resolveSchema(node) : undefined;
}

let validator: ValidateFunction | undefined;

/** The validator of config/schema.json: the one compiled at build time in the init bundle, else compiled once here. */
export function configValidator(): ValidateFunction {
  validator ??= precompiledValidator ?? compileConfigSchema(configSchema);
  return validator;
}
