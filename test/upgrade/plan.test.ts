// The system-upgrade-controller Plan: the one a build ships and the ones
// `cairn plan` prints are checked against the Plan CRD's schema in
// images/manifests/system-upgrade-controller.yaml (with ajv), select the
// nodes they should, and every bad option is a clear error.
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { Ajv, type ValidateFunction } from 'ajv';
import { parse, parseAllDocuments } from 'yaml';
import { UserError } from '../../src/errors.js';
import { loadSpec, parseSpec, SpecError, withUpgradeImage } from '../../src/builder/spec.js';
import { MANIFESTS_DIR, UPGRADE_PLAN_MANIFEST, checkRuntimeInputs, installRuntime, runtimeInputs, upgradePlanManifest } from '../../src/builder/stages/runtime.js';
import { planOptionsFromFlags, type PlanFlags } from '../../src/cli/commands/plan.js';
import { imageRepositoryProblem, parseDays, planFor, renderPlan, selectorMatches, type Plan, type PlanOptions } from '../../src/upgrade/plan.js';

const REPO = path.resolve(new URL('../..', import.meta.url).pathname);
const SUC_MANIFEST = path.join(REPO, 'images/manifests/system-upgrade-controller.yaml');
const K3S_DOUBLE = path.join(REPO, 'test/fixtures/k3s-double');
const IMAGE = 'registry.example/cairn';

// ---------------------------------------------------------------------------
// The CRD's schema as ajv reads it.

type Schema = Record<string, unknown>;

/** The Plan CRD in the shipped manifest: its group/version and openAPIV3Schema. */
async function planCrd(): Promise<{ apiVersion: string; schema: Schema }> {
  const docs = parseAllDocuments(await readFile(SUC_MANIFEST, 'utf8')).map((d) => d.toJS({ maxAliasCount: 100 }) as Schema);
  const crd = docs.find((d) => d.kind === 'CustomResourceDefinition' && (d.spec as { names: { kind: string } }).names.kind === 'Plan');
  if (!crd) throw new Error(`${SUC_MANIFEST} has no Plan CRD`);
  const spec = crd.spec as { group: string; versions: { name: string; storage?: boolean; schema: { openAPIV3Schema: Schema } }[] };
  const v = spec.versions.find((x) => x.storage) ?? spec.versions[0]!;
  return { apiVersion: `${spec.group}/${v.name}`, schema: v.schema.openAPIV3Schema };
}

/**
 * A Kubernetes structural schema as plain JSON Schema:
 * - x-kubernetes-int-or-string becomes anyOf integer/string;
 * - x-kubernetes-preserve-unknown-fields leaves the object open; every other
 *   object with properties is closed (additionalProperties: false), since the
 *   API server drops unknown fields without a word and a misspelt field must
 *   fail here instead;
 * - format int32 becomes its range, int64 is dropped (JS numbers);
 * - the other x-kubernetes-* keys only steer server-side apply: dropped.
 */
function toJsonSchema(s: unknown): unknown {
  if (Array.isArray(s)) return s.map(toJsonSchema);
  if (s === null || typeof s !== 'object') return s;
  const src = s as Schema;
  const out: Schema = {};
  for (const [k, v] of Object.entries(src)) {
    if (k.startsWith('x-kubernetes-')) continue;
    if (k === 'format') {
      if (v === 'int32') Object.assign(out, { minimum: -(2 ** 31), maximum: 2 ** 31 - 1 });
      else if (v !== 'int64') throw new Error(`a format this test does not map: ${String(v)}`);
      continue;
    }
    if (k === 'properties' || k === 'patternProperties') {
      out[k] = Object.fromEntries(Object.entries(v as Schema).map(([name, sub]) => [name, toJsonSchema(sub)]));
      continue;
    }
    out[k] = toJsonSchema(v);
  }
  if (src['x-kubernetes-int-or-string'] === true && !out.anyOf) out.anyOf = [{ type: 'integer' }, { type: 'string' }];
  if (src.type === 'object' && src.properties && src.additionalProperties === undefined && src['x-kubernetes-preserve-unknown-fields'] !== true) {
    out.additionalProperties = false;
  }
  return out;
}

let validator: { apiVersion: string; validate: ValidateFunction } | undefined;
async function planValidator() {
  if (!validator) {
    const crd = await planCrd();
    const ajv = new Ajv({ allErrors: true, strict: true });
    validator = { apiVersion: crd.apiVersion, validate: ajv.compile(toJsonSchema(crd.schema) as Schema) };
  }
  return validator;
}

/** Problems of a Plan object against the CRD ([] when it is valid). */
async function crdProblems(plan: unknown): Promise<string[]> {
  const v = await planValidator();
  const out: string[] = [];
  if (!v.validate(plan)) for (const e of v.validate.errors ?? []) out.push(`${e.instancePath || '/'} ${e.message ?? e.keyword}${e.params && 'additionalProperty' in e.params ? ` (${String(e.params.additionalProperty)})` : ''}`);
  const p = plan as { apiVersion?: unknown; kind?: unknown };
  if (p.apiVersion !== v.apiVersion) out.push(`apiVersion ${String(p.apiVersion)}, not ${v.apiVersion}`);
  if (p.kind !== 'Plan') out.push(`kind ${String(p.kind)}`);
  return out;
}

/** A rendered Plan read as Kubernetes reads YAML (1.1 scalars: an unquoted 01:00 or no is not a string). */
function readPlan(text: string): Plan {
  const k8s = parse(text, { version: '1.1' }) as Plan;
  if (!isDeepStrictEqual(parse(text), k8s)) throw new Error(`the Plan reads differently as YAML 1.1 and 1.2:\n${text}`);
  return k8s;
}

async function checkRendered(tt: Tap, opts: PlanOptions): Promise<Plan> {
  const plan = readPlan(renderPlan(opts));
  tt.same(await crdProblems(plan), [], `valid against the CRD: ${JSON.stringify(opts)}`);
  tt.same(plan, planFor(opts), 'the text is the Plan');
  return plan;
}

type Tap = Test;

function userError(tt: Tap, fn: () => unknown, message: RegExp, hint?: RegExp, what = String(message)) {
  try {
    fn();
    tt.fail(`no error: ${what}`);
  } catch (err) {
    tt.type(err, UserError, what);
    tt.match((err as UserError).message, message, what);
    if (hint) tt.match((err as UserError).hint ?? '', hint, `${what}: hint`);
  }
}

// ---------------------------------------------------------------------------

t.test('the CRD schema bites: wrong types, misspelt fields and missing ones fail', async (t) => {
  const good = planFor({ version: '0.2.0', image: IMAGE });
  t.same(await crdProblems(good), []);
  // The good Plan with the value at a dotted path replaced (undefined: removed).
  const bad = (at: string, value: unknown) => {
    const p = structuredClone(good) as unknown as Record<string, unknown>;
    const keys = at.split('.');
    let o = p;
    for (const k of keys.slice(0, -1)) o = o[k] as Record<string, unknown>;
    if (value === undefined) delete o[keys.at(-1)!];
    else o[keys.at(-1)!] = value;
    return crdProblems(p);
  };
  t.match(await bad('spec.concurrency', 'one'), [/\/spec\/concurrency must be integer/], 'concurrency "one"');
  t.match(await bad('spec.concurrency', 1.5), [/\/spec\/concurrency must be integer/], 'concurrency 1.5');
  t.match(await bad('spec.concurency', 1), [/\/spec must NOT have additional properties \(concurency\)/], 'a misspelt field');
  t.match(await bad('spec.upgrade', undefined), [/\/spec must have required property 'upgrade'/]);
  t.match(await bad('spec.upgrade.image', undefined), [/\/spec\/upgrade must have required property 'image'/]);
  t.match(await bad('spec.upgrade.command', '/usr/bin/cairn upgrade'), [/\/spec\/upgrade\/command must be array/]);
  t.match(await bad('spec.nodeSelector.matchExpressions.1.values', ['disabled', false]), [/values\/1 must be string/], 'an unquoted false');
  t.match(await bad('spec.window', { days: ['Mon'], startTime: '01:00', endTime: '05:00' }), [/\/spec\/window\/days\/0 must be equal to one of the allowed values/]);
  t.match(await bad('spec.window', { days: [], startTime: '01:00', endTime: '05:00' }), [/\/spec\/window\/days must NOT have fewer than 1 items/]);
  t.match(await bad('spec.window', { days: ['mon'], startTime: 60, endTime: '05:00' }), [/\/spec\/window\/startTime must be string/], 'an unquoted 01:00 read as YAML 1.1');
  t.match(await bad('spec.drain.timeout', true), [/timeout must be integer/, /timeout must be string/, /timeout must match a schema in anyOf/]);
  t.match(await bad('spec.drain.gracePeriod', 2 ** 31), [/gracePeriod must be <= 2147483647/], 'int32');
  t.same(await bad('spec.drain.timeout', 600_000_000_000), [], 'an int-or-string takes an integer (nanoseconds)');
  t.same(await bad('spec.upgrade.securityContext', { privileged: true, anything: 1 }), [], 'objects that keep unknown fields stay open');
  t.match(await bad('kind', 'Plans'), ['kind Plans']);
});

t.test('the Plan a build ships for version 0.2.0 and registry.example/cairn', async (t) => {
  const spec = withUpgradeImage(loadSpec(path.join(REPO, 'images/default.yaml')), IMAGE);
  const text = upgradePlanManifest({ ...spec, version: '0.2.0' });
  t.ok(text);
  t.equal(
    text!.slice(text!.indexOf('apiVersion:')),
    `apiVersion: upgrade.cattle.io/v1
kind: Plan
metadata:
  name: cairn
  namespace: system-upgrade
spec:
  concurrency: 1
  version: 0.2.0
  nodeSelector:
    matchExpressions:
      - {key: cairn.io/upgrade, operator: Exists}
      - {key: cairn.io/upgrade, operator: NotIn, values: [disabled, "false"]}
      - {key: cairn.io/mode, operator: Exists}
      - {key: cairn.io/mode, operator: NotIn, values: [live, net, unknown]}
  serviceAccountName: system-upgrade
  tolerations:
    - {operator: Exists}
  prepare:
    image: registry.example/cairn
    command: [/usr/bin/cairn, upgrade]
    args: [--check]
  cordon: true
  drain:
    force: true
    skipWaitForDeleteTimeout: 60
    timeout: 5m
  upgrade:
    image: registry.example/cairn
    command: [/usr/bin/cairn, upgrade]
`,
  );
  t.match(text!, /^# cairn's upgrade Plan for system-upgrade-controller/, 'says what it is');
  t.match(text!, /kubectl label node NODE cairn\.io\/upgrade=true/, 'says how a node opts in');
  const plan = readPlan(text!);
  t.same(await crdProblems(plan), [], 'valid against the CRD');
  t.equal(plan.spec.version, '0.2.0', 'the version is a string');
  t.notOk(plan.spec.upgrade.args, 'the upgrade step takes no arguments: the image knows its payload');
});

t.test('the Plan names what the shipped controller manifest defines', async (t) => {
  const docs = parseAllDocuments(await readFile(SUC_MANIFEST, 'utf8')).map((d) => d.toJS({ maxAliasCount: 100 }) as { kind: string; metadata: { name: string; namespace?: string }; subjects?: unknown[] });
  const plan = planFor({ version: '0.2.0', image: IMAGE });
  const sa = docs.find((d) => d.kind === 'ServiceAccount');
  t.same([sa?.metadata.name, sa?.metadata.namespace], [plan.spec.serviceAccountName, plan.metadata.namespace], 'service account and namespace');
  const deployment = docs.find((d) => d.kind === 'Deployment');
  t.equal(deployment?.metadata.namespace, plan.metadata.namespace, 'the controller watches the Plan\'s namespace');
  const binding = docs.find((d) => d.kind === 'ClusterRoleBinding');
  t.same(binding?.subjects?.[0], { kind: 'ServiceAccount', name: plan.spec.serviceAccountName, namespace: plan.metadata.namespace }, 'the account is bound');
});

t.test('the Plan\'s version is the tag the oci writer gives the upgrade image', async (t) => {
  const outputs = (await import('../../src/builder/formats.js')).formatWriters();
  const dir = await mkdtemp(path.join(tmpdir(), 'cairn-plan-oci-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = async (name: string, content: string) => {
    await writeFile(path.join(dir, name), content);
    return path.join(dir, name);
  };
  const version = '0.2.0';
  // the upgrade image's /bin/sh comes from the image root's static busybox (the host's busybox-static here)
  await mkdir(path.join(dir, 'usr/bin'), { recursive: true });
  await copyFile(existsSync('/usr/bin/busybox') ? '/usr/bin/busybox' : '/bin/busybox', path.join(dir, 'usr/bin/busybox'));
  const system = {
    name: 'default',
    version,
    arch: 'amd64' as const,
    kernelRelease: '6.12.0-test-amd64',
    kernel: await file('vmlinuz', 'kernel'),
    initramfs: await file('initrd', 'initrd'),
    squashfs: await file('rootfs.squashfs', 'squashfs'),
    cmdline: '',
    release: await file('release.json', JSON.stringify({ name: 'default', version, arch: 'amd64' })),
    rootfs: dir,
    sourceDateEpoch: 1_700_000_000,
    k3s: await file('k3s', 'k3s'),
  };
  const [artifact] = await outputs.oci(system, { outDir: dir, workDir: dir, log: () => {} });
  const list = spawnSync('tar', ['-xOf', path.join(dir, artifact!.file), 'index.json'], { encoding: 'utf8' });
  const index = JSON.parse(list.stdout) as { manifests: { annotations: Record<string, string> }[] };
  const tag = index.manifests[0]!.annotations['org.opencontainers.image.ref.name'];
  const spec = withUpgradeImage(loadSpec(path.join(REPO, 'images/default.yaml')), IMAGE);
  t.equal(readPlan(upgradePlanManifest({ ...spec, version })!).spec.version, tag, `both are ${tag}`);
});

t.test('cairn plan: each option, every Plan valid against the CRD', async (t) => {
  const base: PlanFlags = { version: '0.2.0', image: IMAGE, concurrency: '1', name: 'cairn' };
  const cases: [string, PlanFlags, (p: Plan) => void][] = [
    ['defaults', base, (p) => t.same([p.metadata.name, p.spec.concurrency, p.spec.version, p.spec.channel, p.spec.window], ['cairn', 1, '0.2.0', undefined, undefined])],
    ['--concurrency 3', { ...base, concurrency: '3' }, (p) => t.equal(p.spec.concurrency, 3)],
    ['--name', { ...base, name: 'cairn-site-a' }, (p) => t.equal(p.metadata.name, 'cairn-site-a')],
    ['--image with a registry port and a path', { ...base, image: 'registry.example:5000/edge/cairn' }, (p) => t.same([p.spec.prepare.image, p.spec.upgrade.image], ['registry.example:5000/edge/cairn', 'registry.example:5000/edge/cairn'])],
    ['--image on Docker Hub', { ...base, image: 'example/cairn' }, (p) => t.equal(p.spec.upgrade.image, 'example/cairn')],
    ['a version YAML would read as a number', { ...base, version: '1.0' }, (p) => t.equal(p.spec.version, '1.0')],
    ['--channel', { ...base, version: undefined, channel: 'https://releases.example/cairn/latest' }, (p) => t.same([p.spec.channel, p.spec.version], ['https://releases.example/cairn/latest', undefined])],
    [
      'a window in UTC',
      { ...base, windowDays: 'mon,tue', windowStart: '1:00', windowEnd: '05:00' },
      (p) => t.same(p.spec.window, { days: ['mon', 'tue'], startTime: '01:00', endTime: '05:00' }),
    ],
    [
      'a window with a range, numbers, long names and a zone',
      { ...base, windowDays: 'fri-mon,3,Wednesday', windowStart: '22:00', windowEnd: '23:59', windowTz: 'Europe/Berlin' },
      (p) => t.same(p.spec.window, { days: ['fri', 'sat', 'sun', 'mon', 'wed'], startTime: '22:00', endTime: '23:59', timeZone: 'Europe/Berlin' }),
    ],
    [
      'every option at once',
      { image: 'registry.example/edge/cairn', channel: 'https://releases.example/cairn/stable', concurrency: '2', windowDays: 'sat,sun', windowStart: '02:00', windowEnd: '06:00', windowTz: 'UTC', name: 'weekend' },
      (p) => t.same([p.metadata.name, p.spec.concurrency, p.spec.channel, p.spec.window?.days, p.spec.window?.timeZone], ['weekend', 2, 'https://releases.example/cairn/stable', ['sat', 'sun'], 'UTC']),
    ],
  ];
  for (const [name, flags, check] of cases) {
    await t.test(name, async (tt) => {
      const plan = await checkRendered(tt, planOptionsFromFlags(flags));
      check(plan);
      tt.equal(plan.spec.prepare.image, plan.spec.upgrade.image, 'prepare pulls the same image');
      tt.same(plan.spec.prepare.args, ['--check'], 'prepare only checks the payload');
    });
  }
  t.match(renderPlan(planOptionsFromFlags(cases.at(-1)![1])), /# starting jobs only on sat, sun from 02:00 to 06:00 UTC\./, 'the comment tells the window');
});

t.test('the selector: opted-in nodes booted from their state partition, nothing else', async (t) => {
  const selector = planFor({ version: '0.2.0', image: IMAGE }).spec.nodeSelector;
  const cases: [Record<string, string>, boolean, string][] = [
    [{ 'cairn.io/mode': 'state' }, false, 'label absent'],
    [{ 'cairn.io/upgrade': 'disabled', 'cairn.io/mode': 'state' }, false, 'cairn.io/upgrade=disabled'],
    [{ 'cairn.io/upgrade': 'false', 'cairn.io/mode': 'state' }, false, 'cairn.io/upgrade=false'],
    [{ 'cairn.io/upgrade': 'true', 'cairn.io/mode': 'live' }, false, 'a live boot'],
    [{ 'cairn.io/upgrade': 'true', 'cairn.io/mode': 'net' }, false, 'a network boot'],
    [{ 'cairn.io/upgrade': 'true', 'cairn.io/mode': 'unknown' }, false, 'a boot the init could not place'],
    [{ 'cairn.io/upgrade': 'true' }, false, 'not a cairn node (no cairn.io/mode)'],
    [{ 'cairn.io/upgrade': 'true', 'cairn.io/mode': 'state' }, true, 'opted in, state boot'],
    [{ 'cairn.io/upgrade': 'enabled', 'cairn.io/mode': 'state', 'kubernetes.io/hostname': 'n1' }, true, 'any other value opts in'],
    [{ 'cairn.io/upgrade': '', 'cairn.io/mode': 'state' }, true, 'an empty value opts in (k3OS: the label exists)'],
  ];
  for (const [labels, selected, name] of cases) t.equal(selectorMatches(selector, labels), selected, `${name}: ${selected ? 'selected' : 'not selected'}`);
  // The evaluator itself, on the operators the Plan does not use.
  t.ok(selectorMatches({ matchLabels: { a: '1' }, matchExpressions: [{ key: 'b', operator: 'In', values: ['x', 'y'] }, { key: 'c', operator: 'DoesNotExist' }] }, { a: '1', b: 'y' }));
  t.notOk(selectorMatches({ matchLabels: { a: '1' } }, { a: '2' }));
  t.notOk(selectorMatches({ matchExpressions: [{ key: 'b', operator: 'In', values: ['x'] }] }, {}), 'In needs the label');
  t.notOk(selectorMatches({ matchExpressions: [{ key: 'c', operator: 'DoesNotExist' }] }, { c: '' }));
  t.notOk(selectorMatches(undefined, { a: '1' }), 'no selector selects nothing');
  t.ok(selectorMatches({}, { a: '1' }), 'an empty selector selects everything');
});

t.test('bad input: what is wrong and what to do', async (t) => {
  const plan = (o: Partial<PlanOptions>) => () => planFor({ version: '0.2.0', image: IMAGE, ...o });
  const flags = (f: PlanFlags) => () => renderPlan(planOptionsFromFlags({ version: '0.2.0', image: IMAGE, ...f }));
  // images
  userError(t, plan({ image: 'registry.example/cairn:0.2.0' }), /has a tag \(:0\.2\.0\); give the repository alone/, /registry\.example\/cairn/);
  userError(t, plan({ image: `registry.example/cairn@sha256:${'a'.repeat(64)}` }), /names a digest/);
  userError(t, plan({ image: 'https://registry.example/cairn' }), /is a URL/);
  userError(t, plan({ image: 'registry.example/Cairn' }), /"Cairn": repository names are lowercase/);
  userError(t, plan({ image: '' }), /it is empty/);
  userError(t, plan({ image: 'registry.example//cairn' }), /empty path component/);
  userError(t, plan({ image: 'bad_host.example:5000/cairn' }), /"bad_host\.example:5000" is not a registry host/);
  userError(t, plan({ image: 'registry.example/ca--rn-' }), /is not a repository name component/);
  userError(t, flags({ image: 'registry.example/cairn:latest' }), /^--image "registry\.example\/cairn:latest"/);
  for (const ok of ['cairn', 'localhost:5000/cairn', 'localhost/cairn', '[::1]:5000/cairn', 'registry.example/a.b_c__d-e/cairn', 'Registry.Example/cairn']) t.equal(imageRepositoryProblem(ok), undefined, `${ok} is a repository`);
  // versions and channels
  userError(t, plan({ version: '0.2.0+build1' }), /has a "\+".*0\.2\.0-build1/);
  userError(t, plan({ version: 'v'.repeat(64) }), /is not an image tag/);
  userError(t, plan({ version: '' }), /is not an image tag/);
  userError(t, plan({ version: undefined }), /needs a version or a channel/);
  userError(t, plan({ channel: 'https://releases.example/latest' }), /a version or a channel, not both/);
  userError(t, plan({ version: undefined, channel: 'http://releases.example/latest' }), /is not an https URL/, /https/);
  userError(t, plan({ version: undefined, channel: 'releases.example/latest' }), /is not a URL/);
  userError(t, plan({ version: undefined, channel: 'https://me:secret@releases.example/latest' }), /has credentials in it/);
  t.notMatch((() => {
    try {
      planFor({ image: IMAGE, channel: 'https://me:secret@releases.example/latest' });
    } catch (err) {
      return (err as Error).message;
    }
    return '';
  })(), /secret/, 'the credentials are not printed');
  userError(t, flags({ channel: 'https://releases.example/latest' }), /--version and --channel are alternatives/);
  userError(t, flags({ version: undefined }), /needs --version V or --channel URL/);
  userError(t, flags({ image: undefined }), /needs --image REF/);
  // concurrency
  for (const c of ['one', '0', '-1', '1.5', '', ' ']) userError(t, flags({ concurrency: c }), /--concurrency must be a whole number of nodes, 1 or more/, undefined, `--concurrency "${c}"`);
  for (const c of [0, -1, 1.5, Number.NaN]) userError(t, plan({ concurrency: c }), /concurrency must be a whole number/, undefined, `concurrency ${c}`);
  // windows
  const w = { windowDays: 'mon', windowStart: '01:00', windowEnd: '05:00' };
  userError(t, flags({ ...w, windowDays: 'funday' }), /"funday" is not a day of the week/, /mon, tue/);
  userError(t, flags({ ...w, windowDays: 'mon,,tue' }), /an empty day/);
  userError(t, flags({ ...w, windowDays: 'mon-xyz' }), /"xyz" is not a day/);
  userError(t, flags({ ...w, windowDays: '7' }), /"7" is not a day/);
  for (const time of ['25:00', '1am', '01:0', '12:60', '0100', '']) userError(t, flags({ ...w, windowStart: time }), /the window's start ".*" is not a time of day/, /HH:MM/, `start "${time}"`);
  userError(t, flags({ ...w, windowEnd: '24:00' }), /the window's end "24:00" is not a time of day/);
  userError(t, flags({ ...w, windowStart: '22:00', windowEnd: '04:00' }), /ends \(04:00\) before or when it starts \(22:00\)/, /cannot cross midnight/);
  userError(t, flags({ ...w, windowEnd: '01:00' }), /ends \(01:00\) before or when it starts/);
  userError(t, flags({ ...w, windowTz: 'Mars/Olympus_Mons' }), /"Mars\/Olympus_Mons" is not a time zone/, /IANA/);
  userError(t, flags({ windowDays: 'mon' }), /a window needs --window-start and --window-end too/);
  userError(t, flags({ windowTz: 'UTC' }), /a window needs --window-days and --window-start and --window-end too/);
  t.throws(() => parseDays([]), /the window has no days/);
  // names
  for (const n of ['Cairn', 'a_b', 'x'.repeat(64), '-cairn', '']) userError(t, plan({ name: n }), /is not a Kubernetes name/, /plan\.upgrade\.cattle\.io/, `name "${n}"`);
});

// ---------------------------------------------------------------------------
// The spec key and `cairn build --upgrade-image`.

const baseSpec = `name: x
version: 0.2.0
arches: [amd64]
debian:
  suite: trixie
k3s:
  version: v1.33.5+k3s1
`;

function specProblems(text: string): SpecError {
  try {
    parseSpec(text, 'images/x.yaml');
  } catch (err) {
    if (err instanceof SpecError) return err;
    throw err;
  }
  throw new Error('no error');
}

t.test('spec: upgrade.image is checked and located; --upgrade-image wins', async (t) => {
  t.same(parseSpec(`${baseSpec}upgrade:\n  image: ${IMAGE}\n`, '/tmp/x.yaml').upgrade, { image: IMAGE });
  t.same(parseSpec(baseSpec, '/tmp/x.yaml').upgrade, {}, 'no upgrade image by default');
  let e = specProblems(`${baseSpec}upgrade:\n  image: ${IMAGE}:0.2.0\n`);
  t.match(e.problems, [{ line: 9, col: 3, keyPath: 'upgrade.image', message: /has a tag \(:0\.2\.0\)/ }]);
  e = specProblems(`${baseSpec.replace('version: 0.2.0', 'version: 0.2.0+b1')}upgrade:\n  image: ${IMAGE}\n`);
  t.match(e.problems, [{ line: 2, keyPath: 'version', message: /the version is its tag, and "0\.2\.0\+b1" has a "\+"/ }]);
  t.ok(parseSpec(baseSpec.replace('version: 0.2.0', 'version: 0.2.0+b1'), '/tmp/x.yaml'), 'a "+" is fine without an upgrade image');
  e = specProblems(`${baseSpec}upgrade:\n  image: ""\n`);
  t.match(e.problems, [{ keyPath: 'upgrade.image' }]);
  e = specProblems(`${baseSpec}upgrade:\n  imag: ${IMAGE}\n`);
  t.match(e.problems, [{ keyPath: 'upgrade.imag', message: /unknown key "imag"/ }]);

  const spec = parseSpec(`${baseSpec}upgrade:\n  image: ${IMAGE}\n`, '/tmp/x.yaml');
  t.same(withUpgradeImage(spec, 'other.example/cairn').upgrade, { image: 'other.example/cairn' }, 'the option wins');
  userError(t, () => withUpgradeImage(spec, 'other.example/cairn:1'), /^--upgrade-image "other\.example\/cairn:1" is not an OCI repository without a tag: it has a tag/);
  userError(t, () => withUpgradeImage({ ...spec, version: '1+2' }, IMAGE), /--upgrade-image: the upgrade image's tag is the version of \/tmp\/x\.yaml, and "1\+2" has a "\+"/);

  const d = loadSpec(path.join(REPO, 'images/default.yaml'));
  t.same(d.upgrade, {}, 'images/default.yaml names no upgrade image');
  t.notOk(d.manifests.some((m) => path.basename(m) === UPGRADE_PLAN_MANIFEST), 'nor lists a hand-written Plan');
  t.match(await readFile(path.join(REPO, 'images/default.yaml'), 'utf8'), /# upgrade:\n# {3}image: registry\.example\/cairn\n/, 'its comments show how to name one');
});

t.test('runtime stage: the Plan is among the manifests in the root only with an upgrade image', async (t) => {
  const spec = loadSpec(path.join(REPO, 'images/default.yaml'));
  const dir = await mkdtemp(path.join(tmpdir(), 'cairn-plan-runtime-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const manifestsIn = async (root: string) => (await readdir(path.join(root, MANIFESTS_DIR))).sort();

  const lines: string[] = [];
  await checkRuntimeInputs(spec, (l) => lines.push(l));
  t.match(lines, [/^upgrade: no upgrade image \(upgrade\.image in the spec, or --upgrade-image REF\), so no system-upgrade Plan is shipped/], 'one log line says so');
  await installRuntime(path.join(dir, 'without'), spec, K3S_DOUBLE, () => {});
  t.same(await manifestsIn(path.join(dir, 'without')), ['system-upgrade-controller.yaml'], 'without: the controller only');
  t.equal(upgradePlanManifest(spec), undefined);

  const withImage = withUpgradeImage(spec, IMAGE);
  lines.length = 0;
  await checkRuntimeInputs(withImage, (l) => lines.push(l));
  t.match(lines, [/^upgrade: ships the Plan cairn-upgrade-plan\.yaml: nodes labelled cairn\.io\/upgrade upgrade to registry\.example\/cairn:0\.1\.0$/]);
  const logged: string[] = [];
  await installRuntime(path.join(dir, 'with'), withImage, K3S_DOUBLE, (l) => logged.push(l));
  t.same(await manifestsIn(path.join(dir, 'with')), [UPGRADE_PLAN_MANIFEST, 'system-upgrade-controller.yaml'], 'with: the controller and the Plan');
  t.match(logged, [/runtime: k3s, 2 manifests \(with the upgrade Plan\)/]);
  const shipped = await readFile(path.join(dir, 'with', MANIFESTS_DIR, UPGRADE_PLAN_MANIFEST), 'utf8');
  t.equal(shipped, upgradePlanManifest(withImage), 'the file is what the stage renders');
  const plan = readPlan(shipped);
  t.same(await crdProblems(plan), [], 'the shipped file is valid against the CRD');
  t.same([plan.spec.version, plan.spec.upgrade.image], [spec.version, IMAGE], 'the spec\'s version, the given image');

  // The Plan is an input of the system stage: another image is another system.
  const keyOf = async (s: typeof spec) => JSON.stringify(await runtimeInputs(s, 'k3s-sha'));
  const [none, one, other] = [await keyOf(spec), await keyOf(withImage), await keyOf(withUpgradeImage(spec, 'other.example/cairn'))];
  t.not(none, one);
  t.not(one, other);
  t.match(JSON.parse(one).manifests, [{ name: 'system-upgrade-controller.yaml' }, { name: UPGRADE_PLAN_MANIFEST, sha256: /^[0-9a-f]{64}$/ }]);

  // A hand-written manifest of the same name would be overwritten: refused.
  const own = path.join(dir, UPGRADE_PLAN_MANIFEST);
  await writeFile(own, 'kind: Plan\n');
  await t.rejects(checkRuntimeInputs({ ...withImage, manifests: [...withImage.manifests, own] }), /has the name of the Plan the build writes/);
  await t.resolves(checkRuntimeInputs({ ...spec, manifests: [...spec.manifests, own] }), 'without an upgrade image, a file of that name is just a manifest');
});

// ---------------------------------------------------------------------------
// The command line (the source CLI, so no bundle is needed).

function cairn(...args: string[]) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(REPO, 'src/cli/main.ts'), ...args], { encoding: 'utf8', cwd: REPO, env: { ...process.env, NO_COLOR: '1' } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

t.test('cairn plan on the command line', async (t) => {
  const r = cairn('plan', '--version', '0.2.0', '--image', IMAGE, '--window-days', 'sat,sun', '--window-start', '02:00', '--window-end', '06:00');
  t.equal(r.code, 0, r.err);
  t.equal(r.err, '');
  const plan = readPlan(r.out);
  t.same(await crdProblems(plan), [], 'stdout is a valid Plan');
  t.equal(plan.spec.version, '0.2.0', '--version is the plan\'s, not cairn\'s');
  const bad = cairn('plan', '--version', '0.2.0', '--image', IMAGE, '--concurrency', 'one');
  t.equal(bad.code, 1);
  t.equal(bad.out, '');
  t.match(bad.err, /^cairn: --concurrency must be a whole number of nodes, 1 or more, not "one"\n--concurrency 1/);
  t.notMatch(bad.err, /at .*\.ts:\d+/, 'no stack trace');
  const help = cairn('plan', '--help');
  t.equal(help.code, 0);
  for (const o of ['--version', '--channel', '--image', '--concurrency', '--window-days', '--window-start', '--window-end', '--window-tz', '--name']) t.match(help.out, o);
  const version = cairn('--version');
  t.match(version.out, /^\d+\.\d+\.\d+/, 'cairn --version still prints cairn\'s version');
  const build = cairn('build', '--help');
  t.match(build.out, /--upgrade-image <ref>/);
  const buildBad = cairn('build', 'images/default.yaml', '--upgrade-image', `${IMAGE}:0.1.0`);
  t.equal(buildBad.code, 1);
  t.match(buildBad.err, /^cairn: --upgrade-image "registry\.example\/cairn:0\.1\.0" is not an OCI repository without a tag: it has a tag/);
});
