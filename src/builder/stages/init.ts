/**
 * init: the on-device init (src/init, with src/runtime and src/config) as one
 * JavaScript file for the image's Node.js, at /usr/lib/cairn/init.js. The
 * initramfs starts it under tini: tini -- node /usr/lib/cairn/init.js.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { _ } from 'ajv/dist/2020.js';
import standalone from 'ajv/dist/standalone/index.js';
import { build, type Plugin } from 'esbuild';
import { configSchema } from '../../config/schema.js';
import { makeAjv } from '../../config/compile.js';
import { hashValue } from '../hash.js';
import type { StageCache } from '../cache.js';
import { writeFresh } from '../fsutil.js';
import { repoRoot } from '../paths.js';
import { SNAPSHOT_ENTRY } from '../../init/startup-snapshot.js';

export const INIT_PATH = 'usr/lib/cairn/init.js';
const ENTRIES = ['src/init/main.ts', 'src/init/index.ts'];

export const CLI_PATH = 'usr/lib/cairn/cairn.js';
const CLI_ENTRY = 'src/init/cli.ts';

/** The startup snapshot's entry (src/init/snapshot.ts), as CommonJS: `node --build-snapshot` takes a script that requires only built-in modules. */
const SNAPSHOT_SRC = 'src/init/snapshot.ts';

export interface InitBundle {
  /** undefined when the checkout has no init yet. */
  code?: string;
  /** The init as the entry of its V8 startup snapshot (src/init/startup-snapshot.ts). */
  snapshotEntry?: string;
  /** The node's `cairn` command (status, poweroff, reboot, config). */
  cli?: string;
  sha256: string;
}

/**
 * ajv's standalone code for config/schema.json, as the ES module that takes
 * the place of src/config/precompiled.ts in the bundles: the node validates
 * its config without compiling the schema at boot. The formats come from
 * src/config/formats.ts, the module the run-time validator uses.
 */
export function precompiledValidatorModule(): string {
  const formats = path.join(repoRoot(), 'src/config/formats.ts');
  const ajv = makeAjv({ source: true, esm: true, formats: _`require(${formats}).CONFIG_FORMATS` });
  const code = standalone.default(ajv, ajv.compile(configSchema));
  return `${code}\nexport { validate as precompiledValidator };\n`;
}

/** Puts the validator compiled now in place of src/config/precompiled.ts. */
export function precompiledValidatorPlugin(): Plugin {
  return {
    name: 'cairn-precompiled-config-validator',
    setup(b) {
      let code: string | undefined;
      b.onLoad({ filter: /[\\/]src[\\/]config[\\/]precompiled\.ts$/ }, () => {
        code ??= precompiledValidatorModule();
        return { contents: code, loader: 'js', resolveDir: path.join(repoRoot(), 'src/config') };
      });
      // the validator is compiled already: ajv's compiler stays out of the bundle
      b.onLoad({ filter: /[\\/]src[\\/]config[\\/]compile\.ts$/ }, () => ({
        contents: "const built = () => { throw new Error('the config schema was compiled when the image was built'); };\nexport const makeAjv = built;\nexport const compileConfigSchema = built;\n",
        loader: 'js',
      }));
    },
  };
}

async function bundle(entry: string, format: 'esm' | 'cjs' = 'esm'): Promise<string> {
  const result = await build({
    plugins: [precompiledValidatorPlugin()],
    entryPoints: [entry],
    bundle: true,
    platform: 'node',
    target: 'node20',
    format,
    write: false,
    minify: false,
    legalComments: 'none',
    logLevel: 'silent',
    ...(format === 'esm' ? { banner: { js: "import { createRequire as __cairnRequire } from 'node:module'; const require = __cairnRequire(import.meta.url);" } } : {}),
    absWorkingDir: repoRoot(),
  });
  return result.outputFiles[0]?.text ?? '';
}

export async function bundleInit(): Promise<InitBundle> {
  const entry = ENTRIES.map((e) => path.join(repoRoot(), e)).find((e) => existsSync(e));
  if (!entry) return { sha256: 'none' };
  const code = await bundle(entry);
  const cliEntry = path.join(repoRoot(), CLI_ENTRY);
  const cli = existsSync(cliEntry) ? await bundle(cliEntry) : undefined;
  const snapEntry = path.join(repoRoot(), SNAPSHOT_SRC);
  const snapshotEntry = existsSync(snapEntry) ? await bundle(snapEntry, 'cjs') : undefined;
  return { code, cli, snapshotEntry, sha256: hashValue(`${code}\0${cli ?? ''}\0${snapshotEntry ?? ''}`) };
}

/**
 * The bundles from the cache when the builder's code is unchanged (esbuild
 * and ajv's standalone code take seconds), else made anew.
 */
export async function cachedInitBundle(cache: StageCache, code: string): Promise<{ bundle: InitBundle; cached: boolean }> {
  const inputs = { stage: 2, code };
  const e = await cache.get<{ sha256: string; code: boolean; cli: boolean; snapshotEntry: boolean }>('init', hashValue(inputs), inputs, async (dir) => {
    const b = await bundleInit();
    if (b.code !== undefined) await writeFile(path.join(dir, 'init.js'), b.code);
    if (b.cli !== undefined) await writeFile(path.join(dir, 'cairn.js'), b.cli);
    if (b.snapshotEntry !== undefined) await writeFile(path.join(dir, 'init-snapshot.cjs'), b.snapshotEntry);
    return { sha256: b.sha256, code: b.code !== undefined, cli: b.cli !== undefined, snapshotEntry: b.snapshotEntry !== undefined };
  });
  const read = (name: string, present: boolean) => (present ? readFile(path.join(e.dir, name), 'utf8') : Promise.resolve(undefined));
  const d = e.meta.data;
  return { bundle: { sha256: d.sha256, code: await read('init.js', d.code), cli: await read('cairn.js', d.cli), snapshotEntry: await read('init-snapshot.cjs', d.snapshotEntry) }, cached: e.cached };
}

export async function installInit(root: string, bundle: InitBundle, log: (l: string) => void): Promise<void> {
  if (bundle.code === undefined) {
    log('init: the checkout has no src/init yet; the image boots to the fallback shell');
    return;
  }
  await writeFresh(root, INIT_PATH, { content: bundle.code }, { mode: 0o644, uid: 0, gid: 0 });
  // The first stage binds the state partition's cairn/ folder here.
  await mkdir(path.join(root, 'cairn'), { recursive: true, mode: 0o755 });
  await writeFresh(root, 'usr/lib/cairn/package.json', { content: '{ "type": "module" }\n' }, { mode: 0o644, uid: 0, gid: 0 });
  // the entry of the startup snapshot the node makes of the init (src/init/startup-snapshot.ts)
  if (bundle.snapshotEntry !== undefined) await writeFresh(root, SNAPSHOT_ENTRY.slice(1), { content: bundle.snapshotEntry }, { mode: 0o644, uid: 0, gid: 0 });
  if (bundle.cli !== undefined) {
    await writeFresh(root, CLI_PATH, { content: bundle.cli }, { mode: 0o644, uid: 0, gid: 0 });
    await writeFresh(root, 'usr/local/bin/cairn', { content: `#!/bin/sh\nexec /usr/bin/node /${CLI_PATH} "$@"\n` }, { mode: 0o755, uid: 0, gid: 0 });
  }
  log(`init: ${(bundle.code.length / 1024).toFixed(0)} KiB bundle`);
}
