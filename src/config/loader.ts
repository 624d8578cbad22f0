/**
 * Loads the node's config from every source, in order, later overriding
 * earlier (maps merge, lists replace):
 *
 *   1. the image's default config      /usr/lib/cairn/config.yaml
 *   2. the node's own config           /cairn/system/config.yaml
 *   3. the kernel command line         /proc/cmdline (cairn.* and k3os.* keys)
 *   4. data-source user-data           /var/lib/cairn/userdata/*  (sorted by name)
 *   5. drop-in files                   /var/lib/cairn/config.d/*  (sorted by name)
 *
 * This is k3OS' order (its system config, then the command line, then the
 * local config and config.d): a key typed at the boot prompt wins over the
 * installed config file for that boot.
 *
 * Every path is relative to `root` so that tests and `cairn config show
 * --root` need no root privileges. A source with errors contributes its
 * valid keys; its problems are returned as diagnostics.
 */
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { readCmdline } from './cmdline.js';
import type { Diagnostic } from './diagnostics.js';
import { LIMITS, mergeConfig, readConfig, type ReadResult } from './read.js';
import type { CairnConfig, JsonObject } from './types.js';

export const CONFIG_PATHS = {
  imageDefault: '/usr/lib/cairn/config.yaml',
  cmdline: '/proc/cmdline',
  node: '/cairn/system/config.yaml',
  userdata: '/var/lib/cairn/userdata',
  configD: '/var/lib/cairn/config.d',
} as const;

export type SourceKind = 'image' | 'cmdline' | 'node' | 'userdata' | 'config.d';

export interface SourceReport {
  kind: SourceKind;
  /** Path on the node (without the root prefix), or "cmdline". */
  file: string;
  status: 'read' | 'missing' | 'invalid' | 'script';
}

export interface LoadOptions {
  /** Folder the node's file system is under; "/" on a node. */
  root: string;
  /** The kernel command line; read from <root>/proc/cmdline when not given. */
  cmdline?: string;
}

export interface LoadResult {
  config: CairnConfig;
  sources: SourceReport[];
  diagnostics: Diagnostic[];
  /** User-data `#!` scripts, by path on the node; they also end `run_cmd`. */
  scripts: string[];
}

type Read = { kind: 'missing' } | { kind: 'data'; data: Buffer } | { kind: 'error'; message: string };

async function readSource(path: string): Promise<Read> {
  try {
    const st = await stat(path);
    if (st.isDirectory()) return { kind: 'error', message: 'is a folder; expected a YAML file' };
    // Larger files are refused by readConfig; read only enough to say so.
    if (st.size > LIMITS.maxBytes) return { kind: 'data', data: Buffer.alloc(st.size) };
    return { kind: 'data', data: await readFile(path) };
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT') return { kind: 'missing' };
    return { kind: 'error', message: `cannot be read (${err.code ?? err.message})` };
  }
}

async function listFolder(path: string): Promise<string[]> {
  try {
    return (await readdir(path)).filter((n) => !n.startsWith('.')).sort();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return [];
    throw e;
  }
}

export async function loadConfig(opts: LoadOptions): Promise<LoadResult> {
  const sources: SourceReport[] = [];
  const diagnostics: Diagnostic[] = [];
  const scripts: string[] = [];
  let config: CairnConfig = {};
  const add = (kind: SourceKind, file: string, r: ReadResult) => {
    diagnostics.push(...r.diagnostics);
    const invalid = r.diagnostics.some((d) => d.severity === 'error');
    if (r.script !== undefined) scripts.push(file);
    sources.push({ kind, file, status: r.script !== undefined ? 'script' : invalid ? 'invalid' : 'read' });
    config = mergeConfig(config as JsonObject, r.config as JsonObject) as CairnConfig;
  };
  const fromFile = async (kind: SourceKind, file: string) => {
    const r = await readSource(join(opts.root, file));
    if (r.kind === 'missing') {
      sources.push({ kind, file, status: 'missing' });
    } else if (r.kind === 'error') {
      sources.push({ kind, file, status: 'invalid' });
      diagnostics.push({ severity: 'error', file, line: 1, col: 1, path: '', message: `the config file ${r.message}` });
    } else {
      add(kind, file, readConfig(r.data, file));
    }
  };

  await fromFile('image', CONFIG_PATHS.imageDefault);
  await fromFile('node', CONFIG_PATHS.node);
  let cmdline = opts.cmdline;
  if (cmdline === undefined) {
    const r = await readSource(join(opts.root, CONFIG_PATHS.cmdline));
    cmdline = r.kind === 'data' ? r.data.toString('utf8') : '';
  }
  add('cmdline', 'cmdline', readCmdline(cmdline));
  for (const name of await listFolder(join(opts.root, CONFIG_PATHS.userdata))) {
    await fromFile('userdata', `${CONFIG_PATHS.userdata}/${name}`);
  }
  for (const name of await listFolder(join(opts.root, CONFIG_PATHS.configD))) {
    await fromFile('config.d', `${CONFIG_PATHS.configD}/${name}`);
  }
  if (scripts.length > 0) config = { ...config, run_cmd: [...(config.run_cmd ?? []), ...scripts] };
  return { config, sources, diagnostics, scripts };
}
