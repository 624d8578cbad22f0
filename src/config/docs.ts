/**
 * Renders docs/config.md, the config reference, from config/schema.json.
 * `npm run docs` writes it; a test fails when the file and the schema drift.
 */
import { configSchema, resolveSchema, type SchemaNode } from './schema.js';
import { LIMITS } from './read.js';

function typeOf(s: SchemaNode): string {
  switch (s.type) {
    case 'array': {
      const items = s.items ? resolveSchema(s.items) : undefined;
      return `list of ${items ? typeOf(items).replace(/^map$/, 'maps') + (items.type === 'object' ? '' : 's') : 'values'}`.replace(/ss$/, 's');
    }
    case 'object':
      return typeof s.additionalProperties === 'object' && !s.properties ? `map of ${typeOf(resolveSchema(s.additionalProperties)).replace(/^(string|map)$/, '$1s')}` : 'map';
    default:
      return s.type ?? 'value';
  }
}

/** Whether a key's value (or each item, or each map value) must be one line of text. */
function singleLine(s: SchemaNode): boolean {
  if (s['x-single-line']) return true;
  if (s.type === 'array' && s.items) return resolveSchema(s.items)['x-single-line'] === true;
  if (s.type === 'object' && typeof s.additionalProperties === 'object') return resolveSchema(s.additionalProperties)['x-single-line'] === true;
  return false;
}

function details(s: SchemaNode): string {
  const parts: string[] = [];
  if (singleLine(s)) parts.push('one line: no newlines or other control characters');
  if (s.enum) parts.push(`one of ${s.enum.map((v) => `\`${JSON.stringify(v)}\``).join(', ')}`);
  if (s['x-expected'] && !s.enum) parts.push(s['x-expected']);
  if (s.default !== undefined) parts.push(`default \`${JSON.stringify(s.default)}\``);
  if (s.minimum !== undefined) parts.push(`at least ${s.minimum}`);
  if (s.maximum !== undefined) parts.push(`at most ${s.maximum}`);
  if (s.minLength !== undefined) parts.push(`at least ${s.minLength} characters`);
  if (s.maxLength !== undefined) parts.push(`at most ${s.maxLength} characters`);
  if (s['x-secret']) parts.push('secret: hidden by `cairn config show`');
  return parts.join('; ');
}

function rows(props: Record<string, SchemaNode>, prefix: string, out: string[], seen: Set<SchemaNode>): void {
  for (const [key, raw] of Object.entries(props)) {
    const s = resolveSchema(raw);
    const path = `${prefix}${key}`;
    const more = details(s);
    const desc = (s.description ?? '').replace(/\|/g, '\\|').replace(/\n/g, ' ');
    out.push(`| \`${path}\` | ${typeOf(s)} | ${desc}${more ? ` (${more.replace(/\|/g, '\\|')})` : ''} |`);
    const target = s.type === 'array' && s.items ? resolveSchema(s.items) : s;
    if (target.properties && !seen.has(raw)) {
      rows(target.properties, `${path}${s.type === 'array' ? '[]' : ''}.`, out, seen);
    } else if (target.type === 'object' && typeof target.additionalProperties === 'object') {
      const value = resolveSchema(target.additionalProperties);
      if (value.properties) rows(value.properties, `${path}.<name>.`, out, seen);
      else if (value.type === 'array' || value.type === 'object') rows({ '<name>': target.additionalProperties }, `${path}.`, out, seen);
    }
  }
}

export function renderConfigDocs(): string {
  const top = configSchema.properties ?? {};
  const out: string[] = [];
  out.push('# Config reference');
  out.push('');
  out.push('<!-- Generated from config/schema.json by `npm run docs`. Do not edit by hand. -->');
  out.push('');
  out.push(configSchema.description ?? '');
  out.push('');
  out.push('Unknown keys are warnings with a "did you mean" suggestion, not failures. `cairn config validate FILE...` reports every problem as `file:line:col`, with the key path, what was found and what is expected.');
  out.push('');
  out.push('## Where a node reads its config');
  out.push('');
  out.push('Later sources override earlier ones: maps merge key by key, lists and single values replace.');
  out.push('');
  out.push('1. the image\'s default config, `/usr/lib/cairn/config.yaml`');
  out.push('2. the node\'s own config, `/cairn/system/config.yaml`');
  out.push('3. the kernel command line: `cairn.KEY=VALUE` or `k3os.KEY=VALUE`; a repeated key makes a list, a bare key means true, `cairn.sysctl[kernel.printk]="4 4 1 7"` sets one map entry, `cairn.install.device=/dev/sda` a nested key. A key set at the boot prompt wins over the node\'s config file for that boot. Secrets (`password`, `token`, Wi-Fi passphrases) given here get a warning: every process on the node can read `/proc/cmdline`; give them through a data source or the node\'s config file');
  out.push(
    '4. what the data sources give, saved in `/var/lib/cairn/userdata/`: a URL\'s user-data as `NN-<source>`; a seed volume\'s or a metadata service\'s hostname and SSH keys (NoCloud `meta-data`, OpenStack `meta_data.json`, each provider\'s own format) as a config in `NN-<source>`, and its user-data as `NN-<source>.user-data`, read after it, so the user-data\'s keys win. A saved copy applies while its source is in `data_sources`, also at a boot where the source is absent (a `cidata` stick or CD taken out, a metadata service down): what it brought stays, as on k3OS. It is removed when its source leaves `data_sources`. User-data that starts with `#!` is a script: saved 0700 and run as a program, as the last `run_cmd`',
  );
  out.push('5. drop-in files, `/var/lib/cairn/config.d/*`, in name order');
  out.push('');
  out.push('A source with errors still contributes its valid keys, so that a typo never leaves a node that nobody can reach; the problems are logged.');
  out.push('');
  out.push('## Rules for every source');
  out.push('');
  out.push('- values are checked before they are written into a config file or given to a program: keys marked "one line" below refuse newlines and other control characters (U+0000-U+001F, U+007F). Only `write_files` content and the `init_cmd`, `boot_cmd` and `run_cmd` scripts may span lines');
  out.push('- `__proto__`, `constructor` and `prototype` are refused as keys, in files and on the kernel command line');
  out.push('- node labels and taints follow Kubernetes\' rules: a key is an optional prefix (a DNS subdomain of at most 253 characters: lowercase letters, digits, `-`, `.`) and `/`, then a name of at most 63 characters (letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit); a value is empty or such a name; a taint is `key=value:Effect` or `key:Effect` with Effect `NoSchedule`, `PreferNoSchedule` or `NoExecute`');
  out.push('- secrets (keys marked "secret" below, `environment` entries whose name contains TOKEN, PASSWORD, SECRET or KEY, tokens in `k3s_args` and passwords in URLs) are never shown in error messages and are hidden by `cairn config show`');
  out.push('');
  out.push('## Limits');
  out.push('');
  out.push(`- a config file is at most ${LIMITS.maxBytes} bytes (1 MiB), UTF-8 text, one YAML document`);
  out.push(`- maps and lists nest at most ${LIMITS.maxDepth} levels deep`);
  out.push(`- a document expands to at most ${LIMITS.maxNodes} values, aliases included`);
  out.push('');
  out.push('## Keys');
  out.push('');
  out.push('`cairn` and `k3os` are the same namespace; the table lists it once, as `cairn`.');
  out.push('');
  out.push('| key | type | meaning |');
  out.push('|---|---|---|');
  const { k3os: _k3os, ...shown } = top;
  rows(shown, '', out, new Set());
  out.push('');
  return out.join('\n');
}
