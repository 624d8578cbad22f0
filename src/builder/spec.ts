/**
 * The image spec (images/<name>.yaml): load, validate against
 * images/schema.json, report errors with file:line:col and the key path,
 * and fill defaults. Pure apart from reading the spec file itself.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Ajv2020, type ErrorObject } from 'ajv/dist/2020.js';
import { LineCounter, parseDocument, stringify, isMap, isSeq, isScalar, type Node as YamlNode, type Document } from 'yaml';
import { UserError } from '../errors.js';
import { readConfig } from '../config/read.js';
import { checkImageRepository, imageRepositoryProblem, versionTagProblem } from '../upgrade/plan.js';
import { FORMATS, type Format } from './formats.js';
import type { Arch } from './types.js';
import schema from '../../images/schema.json' with { type: 'json' };

export type Compression = 'zstd' | 'xz';
export type ModuleProfileName = 'default' | 'minimal' | 'all';

export interface SpecFile {
  path: string;
  source?: string;
  content?: string;
  mode?: string;
  owner?: string;
}

export interface HelmChartSpec {
  name: string;
  chart: string;
  namespace?: string;
  repo?: string;
  version?: string;
  target_namespace?: string;
  values?: Record<string, unknown>;
}

/** The spec as written, after validation (shape guaranteed by the schema). */
export interface RawSpec {
  name: string;
  version: string;
  arches: Arch[];
  debian: { suite: string; snapshot?: string; mirror?: string; components?: string[] };
  packages?: string[];
  overlays?: string[];
  files?: SpecFile[];
  k3s: { version?: string; sha256?: Partial<Record<Arch, string>>; path?: string };
  manifests?: string[];
  helm_charts?: HelmChartSpec[];
  airgap_images?: string[];
  registries?: Record<string, unknown>;
  config?: Record<string, unknown>;
  cmdline?: string;
  modules?: { profile?: ModuleProfileName; include?: string[]; firmware?: string[] };
  formats?: Format[];
  squashfs?: { compression?: Compression; level?: number };
  upgrade?: { image?: string };
}

/** The spec with defaults filled and every path made absolute. */
export interface ImageSpec {
  /** Absolute path of the spec file. */
  file: string;
  name: string;
  version: string;
  arches: Arch[];
  debian: { suite: string; snapshot?: string; mirror: string; components: string[] };
  packages: string[];
  overlays: string[];
  files: SpecFile[];
  k3s: { version?: string; sha256: Partial<Record<Arch, string>>; path?: string };
  manifests: string[];
  helmCharts: HelmChartSpec[];
  airgapImages: string[];
  registries?: Record<string, unknown>;
  config: Record<string, unknown>;
  cmdline: string;
  modules: { profile: ModuleProfileName; include: string[]; firmware: string[] };
  formats: Format[];
  squashfs: { compression: Compression; level: number };
  /** The OCI repository nodes upgrade from (no tag: the version is the tag); without it the image ships no Plan. */
  upgrade: { image?: string };
}

export const DEFAULT_MIRROR = 'http://deb.debian.org/debian';
export const SNAPSHOT_MIRROR = 'http://snapshot.debian.org/archive/debian';

/** One problem in a spec, located in its file. */
export interface SpecProblem {
  file: string;
  line: number;
  col: number;
  /** Key path such as "k3s.sha256.amd64" or "packages[2]". */
  keyPath: string;
  message: string;
}

export class SpecError extends UserError {
  readonly problems: SpecProblem[];
  constructor(problems: SpecProblem[]) {
    const lines = problems.map((p) => `${p.file}:${p.line}:${p.col}: ${p.keyPath || '(top level)'}: ${p.message}`);
    super(`invalid image spec:\n  ${lines.join('\n  ')}`, 'fix the spec; images/schema.json lists every key');
    this.name = 'SpecError';
    this.problems = problems;
  }
}

/**
 * The spec schema, with the formats' enum taken from the format table
 * (images/schema.json carries the same list for editors; a test keeps them
 * equal).
 */
export function specSchema(): typeof schema {
  const formats = { ...schema.properties.formats, items: { enum: [...FORMATS] } };
  return { ...schema, properties: { ...schema.properties, formats } } as typeof schema;
}

let validator: ReturnType<Ajv2020['compile']> | undefined;
function validate(data: unknown): ErrorObject[] {
  if (!validator) {
    const ajv = new Ajv2020({ allErrors: true, strict: true, strictRequired: false, allowUnionTypes: true });
    validator = ajv.compile(specSchema());
  }
  return validator(data) ? [] : (validator.errors ?? []);
}

/** "/k3s/sha256/amd64" → ["k3s","sha256","amd64"] (JSON pointer, RFC 6901). */
function pointerSegments(pointer: string): string[] {
  if (!pointer) return [];
  return pointer.slice(1).split('/').map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function keyPathOf(segments: (string | number)[]): string {
  let out = '';
  for (const s of segments) {
    if (typeof s === 'number' || /^\d+$/.test(String(s))) out += `[${s}]`;
    else out += out ? `.${s}` : String(s);
  }
  return out;
}

/** The YAML node at a path, and the key node of its last segment when there is one. */
function locate(doc: Document, segments: string[]): { node?: YamlNode; key?: YamlNode } {
  let node: unknown = doc.contents;
  let key: YamlNode | undefined;
  for (const seg of segments) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === seg);
      if (!pair) return { node: node as YamlNode, key };
      key = pair.key as YamlNode;
      node = pair.value;
    } else if (isSeq(node)) {
      const item = node.items[Number(seg)];
      if (item === undefined) return { node: node as YamlNode, key };
      key = undefined;
      node = item;
    } else {
      return { node: node as YamlNode, key };
    }
  }
  return { node: (node ?? undefined) as YamlNode | undefined, key };
}

function describeAjvError(e: ErrorObject): { segments: string[]; message: string; atKey: boolean } {
  const segments = pointerSegments(e.instancePath);
  switch (e.keyword) {
    case 'additionalProperties': {
      const extra = String((e.params as { additionalProperty: string }).additionalProperty);
      return { segments: [...segments, extra], message: `unknown key "${extra}"`, atKey: true };
    }
    case 'required':
      return { segments, message: `missing required key "${(e.params as { missingProperty: string }).missingProperty}"`, atKey: false };
    case 'enum':
      return {
        segments,
        message: `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}`,
        atKey: false,
      };
    case 'pattern':
      return { segments, message: `does not match ${(e.params as { pattern: string }).pattern}`, atKey: false };
    default:
      return { segments, message: e.message ?? e.keyword, atKey: false };
  }
}

/** Errors that only say "some branch of anyOf/oneOf failed" add nothing when a precise one exists. */
function usefulErrors(errors: ErrorObject[]): ErrorObject[] {
  const precise = errors.filter((e) => e.keyword !== 'anyOf' && e.keyword !== 'oneOf' && e.keyword !== 'if');
  const out: ErrorObject[] = [];
  const seen = new Set<string>();
  for (const e of errors) {
    if ((e.keyword === 'anyOf' || e.keyword === 'oneOf') && precise.some((p) => p.instancePath === e.instancePath && p.keyword !== 'required')) continue;
    if (e.keyword === 'required' && errors.some((o) => (o.keyword === 'anyOf' || o.keyword === 'oneOf') && o.instancePath === e.instancePath)) continue;
    const id = `${e.instancePath} ${e.keyword} ${JSON.stringify(e.params)}`;
    if (seen.has(id)) continue;
    seen.add(id);
    out.push(e);
  }
  return out;
}

/** Parses and validates spec text; `file` is used for messages and to resolve relative paths. */
export function parseSpec(text: string, file: string): ImageSpec {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const at = (offset: number | undefined) => {
    const pos = lineCounter.linePos(offset ?? 0);
    return { line: pos.line, col: pos.col };
  };
  if (doc.errors.length > 0) {
    throw new SpecError(
      doc.errors.map((e) => ({ file, ...at(e.pos[0]), keyPath: '', message: e.message.split('\n')[0] ?? e.message })),
    );
  }
  const data: unknown = doc.toJS();
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw new SpecError([{ file, line: 1, col: 1, keyPath: '', message: 'the spec must be a mapping of keys' }]);
  }
  const errors = usefulErrors(validate(data));
  if (errors.length > 0) {
    const problems = errors.map((e) => {
      const { segments, message, atKey } = describeAjvError(e);
      const { node, key } = locate(doc, segments);
      const target = atKey && key ? key : (node ?? key);
      return { file, ...at(target?.range?.[0]), keyPath: keyPathOf(segments), message };
    });
    problems.sort((a, b) => a.line - b.line || a.col - b.col);
    throw new SpecError(problems);
  }
  const raw = data as RawSpec;
  // Cross-field checks the schema cannot express.
  const problems: SpecProblem[] = [];
  const problemAt = (segments: string[], message: string): SpecProblem => {
    const { node, key } = locate(doc, segments);
    return { file, ...at((key ?? node)?.range?.[0]), keyPath: keyPathOf(segments), message };
  };
  for (const arch of Object.keys(raw.k3s.sha256 ?? {})) {
    if (!raw.arches.includes(arch as Arch)) problems.push(problemAt(['k3s', 'sha256', arch], `arch ${arch} is not in arches`));
  }
  // The upgrade image is named without a tag: the Plan's version (this spec's) is the tag.
  const upgradeImage = raw.upgrade?.image;
  if (upgradeImage !== undefined) {
    const imageProblem = imageRepositoryProblem(upgradeImage);
    if (imageProblem) problems.push(problemAt(['upgrade', 'image'], `not an OCI repository without a tag: ${imageProblem}`));
    const versionProblem = versionTagProblem(raw.version);
    if (versionProblem) problems.push(problemAt(['version'], `with an upgrade image, the version is its tag, and ${versionProblem}`));
  }
  // The default cloud-config is checked by the config schema, located in the spec.
  if (raw.config) {
    for (const d of readConfig(stringify(raw.config), `${file}#config`).diagnostics) {
      if (d.severity !== 'error') continue;
      const segs = configPathSegments(d.path);
      problems.push({ ...problemAt(['config', ...segs], d.message), keyPath: d.path ? `config.${d.path}` : 'config' });
    }
  }
  if (problems.length > 0) throw new SpecError(problems);
  return withDefaults(raw, file);
}

/** `cairn.wifi[0].name` or `a["b.c"]` → ["cairn", "wifi", "0", "name"]. */
export function configPathSegments(p: string): string[] {
  const out: string[] = [];
  const re = /([^.[\]]+)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]/g;
  for (const m of p.matchAll(re)) out.push(m[1] ?? m[2] ?? (JSON.parse(m[3]!) as string));
  return out;
}

function withDefaults(raw: RawSpec, file: string): ImageSpec {
  const dir = path.dirname(path.resolve(file));
  const abs = (p: string) => path.resolve(dir, p);
  const snapshot = raw.debian.snapshot;
  const mirror = raw.debian.mirror ?? (snapshot ? `${SNAPSHOT_MIRROR}/${snapshot}` : DEFAULT_MIRROR);
  return {
    file: path.resolve(file),
    name: raw.name,
    version: raw.version,
    arches: raw.arches,
    debian: { suite: raw.debian.suite, snapshot, mirror, components: raw.debian.components ?? ['main'] },
    packages: raw.packages ?? [],
    overlays: (raw.overlays ?? []).map(abs),
    files: (raw.files ?? []).map((f) => (f.source ? { ...f, source: abs(f.source) } : f)),
    k3s: { version: raw.k3s.version, sha256: raw.k3s.sha256 ?? {}, path: raw.k3s.path ? abs(raw.k3s.path) : undefined },
    manifests: (raw.manifests ?? []).map(abs),
    helmCharts: raw.helm_charts ?? [],
    airgapImages: (raw.airgap_images ?? []).map(abs),
    registries: raw.registries,
    config: raw.config ?? {},
    cmdline: raw.cmdline ?? '',
    modules: {
      profile: raw.modules?.profile ?? 'default',
      include: raw.modules?.include ?? [],
      firmware: raw.modules?.firmware ?? [],
    },
    formats: raw.formats ?? ['iso'],
    squashfs: { compression: raw.squashfs?.compression ?? 'zstd', level: raw.squashfs?.level ?? defaultLevel(raw.squashfs?.compression ?? 'zstd') },
    upgrade: { image: raw.upgrade?.image },
  };
}

/** The spec with another upgrade image (`cairn build --upgrade-image REF`), checked as the spec's own would be. */
export function withUpgradeImage(spec: ImageSpec, ref: string): ImageSpec {
  checkImageRepository(ref, '--upgrade-image');
  const versionProblem = versionTagProblem(spec.version);
  if (versionProblem) {
    throw new UserError(`--upgrade-image: the upgrade image's tag is the version of ${spec.file}, and ${versionProblem}`, 'give the spec a version that can be an image tag, such as 0.2.0');
  }
  return { ...spec, upgrade: { image: ref } };
}

function defaultLevel(c: Compression): number {
  return c === 'xz' ? 9 : 15;
}

/** Reads and validates a spec file. A missing file is a user error. */
export function loadSpec(file: string): ImageSpec {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new UserError(`cannot read image spec ${file}: ${code ?? String(err)}`, 'pass a spec file such as images/default.yaml');
  }
  return parseSpec(text, file);
}
