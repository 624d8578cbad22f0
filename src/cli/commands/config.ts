/** `cairn config validate`, `cairn config show` and `cairn config render` (one config per site). */
import { mkdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Command } from 'commander';
import { stringify } from 'yaml';
import { formatDiagnostic, hasErrors, type Diagnostic } from '../../config/diagnostics.js';
import { loadConfig } from '../../config/loader.js';
import { readConfig } from '../../config/read.js';
import { redact } from '../../config/redact.js';
import { renderFleet } from '../../config/fleet.js';
import { EXIT_USER } from '../../errors.js';
import { writeFileAtomic } from '../../init/apply/files.js';
import { makeSeed } from '../../../qemu/seed.js';

/** A file's bytes, or a located diagnostic saying why it cannot be read. */
async function readOrDiagnose(file: string): Promise<{ data: Buffer } | { diagnostic: Diagnostic }> {
  try {
    return { data: await readFile(file) };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a folder, not a file' : `cannot be read (${code})`;
    return { diagnostic: { severity: 'error', file, line: 1, col: 1, path: '', message: `${why}; check the path` } };
  }
}

async function validateFile(file: string): Promise<Diagnostic[]> {
  const r = await readOrDiagnose(file);
  return 'diagnostic' in r ? [r.diagnostic] : readConfig(r.data, file).diagnostics;
}

export function registerConfig(program: Command): void {
  const config = program.command('config').description('check and show cloud-configs (k3OS config.yaml format)');

  config
    .command('validate')
    .description('check config files; every problem is reported as file:line:col with the key path')
    .argument('<file...>', 'config files to check')
    .option('--json', 'print the problems as JSON')
    .action(async (files: string[], opts: { json?: boolean }) => {
      const all: Diagnostic[] = [];
      for (const file of files) {
        const ds = await validateFile(file);
        all.push(...ds);
        if (!opts.json) {
          for (const d of ds) process.stderr.write(`${formatDiagnostic(d)}\n`);
          if (!hasErrors(ds)) process.stdout.write(`${file}: ok${ds.length ? ` (${ds.length} warning${ds.length > 1 ? 's' : ''})` : ''}\n`);
        }
      }
      if (opts.json) process.stdout.write(`${JSON.stringify({ ok: !hasErrors(all), diagnostics: all }, null, 2)}\n`);
      if (hasErrors(all)) process.exitCode = EXIT_USER;
    });

  config
    .command('show')
    .description('print the merged config of a node: image default, kernel command line, config.yaml, user-data, config.d')
    .option('--root <dir>', 'the node file system to read', '/')
    .option('--cmdline <string>', 'kernel command line to use instead of <root>/proc/cmdline')
    .option('--show-secrets', 'show passwords, tokens and Wi-Fi passphrases')
    .option('--json', 'print JSON (with the sources read and the problems found)')
    .action(async (opts: { root: string; cmdline?: string; showSecrets?: boolean; json?: boolean }) => {
      const result = await loadConfig({ root: opts.root, cmdline: opts.cmdline });
      const shown = opts.showSecrets ? result.config : redact(result.config);
      if (opts.json) {
        process.stdout.write(`${JSON.stringify({ config: shown, sources: result.sources, diagnostics: result.diagnostics }, null, 2)}\n`);
      } else {
        for (const d of result.diagnostics) process.stderr.write(`${formatDiagnostic(d)}\n`);
        process.stdout.write(stringify(shown));
      }
      if (hasErrors(result.diagnostics)) process.exitCode = EXIT_USER;
    });

  config
    .command('render')
    .description('write one checked cloud-config per site: a template with "{{column}}" placeholders, filled from each row of a CSV table')
    .requiredOption('--template <file>', 'the cloud-config template; placeholders go in quoted strings, e.g. hostname: "{{hostname}}"')
    .requiredOption('--sites <file>', 'the sites: a CSV table whose first line names the columns; hostname is required')
    .requiredOption('-o, --output <dir>', 'the folder to write <hostname>.yaml into (mode 0600: configs hold tokens)')
    .option('--seeds', 'also write <hostname>.iso, a NoCloud cidata seed of each config')
    .action(async (opts: { template: string; sites: string; output: string; seeds?: boolean }) => {
      const [tpl, csv] = await Promise.all([readOrDiagnose(opts.template), readOrDiagnose(opts.sites)]);
      const unreadable = [tpl, csv].flatMap((r) => ('diagnostic' in r ? [r.diagnostic] : []));
      const r = 'data' in tpl && 'data' in csv ? renderFleet(tpl.data.toString('utf8'), opts.template, csv.data.toString('utf8'), opts.sites) : { sites: [], diagnostics: unreadable };
      for (const d of r.diagnostics) process.stderr.write(`${formatDiagnostic(d)}\n`);
      if (hasErrors(r.diagnostics)) {
        process.stderr.write(`cairn: no config written: fix the ${r.diagnostics.filter((d) => d.severity === 'error').length} problem(s) above\n`);
        process.exitCode = EXIT_USER;
        return;
      }
      mkdirSync(opts.output, { recursive: true });
      for (const site of r.sites) {
        const file = join(opts.output, `${site.hostname}.yaml`);
        writeFileAtomic(file, site.text, { mode: 0o600 });
        let seed = '';
        if (opts.seeds) {
          const iso = join(opts.output, `${site.hostname}.iso`);
          await makeSeed(file, iso);
          seed = `, ${iso}`;
        }
        process.stdout.write(`${file}${seed}\n`);
      }
      process.stdout.write(`${r.sites.length} site${r.sites.length === 1 ? '' : 's'} written to ${opts.output}\n`);
    });
}
