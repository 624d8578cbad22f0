// The config validator compiled when the image is built (ajv's standalone
// code in the init bundle) must judge every config as the one compiled at
// run time does: the same errors, at the same paths, with the same params.
// The test bundles src/config/schema.ts with the init bundle's plugin, loads
// that bundle, and compares both validators on good and bad configs.
import t, { type Test } from 'tap';
import { build } from 'esbuild';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { ErrorObject, ValidateFunction } from 'ajv';
import { configSchema } from '../../src/config/schema.js';
import { makeAjv } from '../../src/config/compile.js';
import { precompiledValidatorPlugin } from '../../src/builder/stages/init.js';
import { repoRoot } from '../../src/builder/paths.js';

interface Bundled {
  configValidator: () => ValidateFunction;
  precompiledValidator: ValidateFunction | undefined;
}

async function loadBundle(t: Test): Promise<Bundled> {
  const dir = await mkdtemp(path.join(tmpdir(), 'cairn-precompiled-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const entry = path.join(dir, 'entry.ts');
  await writeFile(entry, `export { configValidator } from ${JSON.stringify(path.join(repoRoot(), 'src/config/schema.ts'))};\nexport { precompiledValidator } from ${JSON.stringify(path.join(repoRoot(), 'src/config/precompiled.ts'))};\n`);
  const out = path.join(dir, 'bundle.mjs');
  await build({
    entryPoints: [entry],
    outfile: out,
    bundle: true,
    platform: 'node',
    format: 'esm',
    logLevel: 'silent',
    plugins: [precompiledValidatorPlugin()],
    banner: { js: "import { createRequire as __r } from 'node:module'; const require = __r(import.meta.url);" },
    absWorkingDir: repoRoot(),
  });
  return (await import(pathToFileURL(out).href)) as Bundled;
}

const CONFIGS: [string, unknown][] = [
  ['a good config', { hostname: 'edge-1', ssh_authorized_keys: ['ssh-ed25519 AAAA test'], k3os: { ntp_servers: ['10.0.0.1'], labels: { site: 's1' } } }],
  ['a good static network', { cairn: { network: { interfaces: { eth0: { addresses: ['10.0.0.5/24', 'fd00::5/64'], gateway: '10.0.0.1', routes: [{ to: 'default', via: '10.0.0.1' }, { to: '192.168.0.0/16' }] } } } } }],
  ['a wrong type', { hostname: 42 }],
  ['an unknown key', { k3os: { no_such_key: true } }],
  ['an address that is not an IP', { k3os: { dns_nameservers: ['10.0.0.300', 'not-an-ip'] } }],
  ['a CIDR with a bad prefix', { cairn: { network: { interfaces: { eth0: { addresses: ['10.0.0.5/33', '10.0.0.5'] } } } } }],
  ['a route to nowhere', { cairn: { network: { interfaces: { eth0: { routes: [{ to: 'somewhere' }, { via: '10.0.0.1' }] } } } } }],
  ['an MTU out of range', { cairn: { network: { interfaces: { eth0: { mtu: 100 } } } } }],
  ['a list that is not a list', { write_files: { path: '/etc/x' } }],
];

const shape = (errors: ErrorObject[] | null | undefined) =>
  (errors ?? []).map((e) => ({ instancePath: e.instancePath, schemaPath: e.schemaPath, keyword: e.keyword, params: e.params, message: e.message, data: e.data }));

t.test('the bundle validates with the validator compiled at build time', async (t) => {
  const bundled = await loadBundle(t);
  t.type(bundled.precompiledValidator, 'function', 'the bundle carries a compiled validator');
  t.equal(bundled.configValidator(), bundled.precompiledValidator, 'and uses it instead of compiling the schema');
  const runtime = makeAjv().compile(configSchema);
  let invalid = 0;
  const keywords = new Set<string>();
  for (const [what, config] of CONFIGS) {
    const a = runtime(config);
    const b = bundled.precompiledValidator!(config);
    t.equal(b, a, `${what}: ${a ? 'valid' : 'invalid'} for both`);
    t.same(shape(bundled.precompiledValidator!.errors), shape(runtime.errors), `${what}: the same errors`);
    if (!a) invalid++;
    for (const e of runtime.errors ?? []) keywords.add(e.keyword);
  }
  t.equal(invalid, CONFIGS.length - 2, 'every bad config was found bad');
  for (const k of ['type', 'additionalProperties', 'format', 'required', 'minimum']) t.ok(keywords.has(k), `a ${k} error was compared`);
});
