/** `cairn upgrade` on a node: see src/upgrade/upgrade.ts. */
import type { Command } from 'commander';
import { UserError } from '../../errors.js';
import { execCommand } from '../../init/exec.js';
import { DEFAULT_DEADLINE_S, DEFAULT_TRIES, MAX_TRIES } from '../../boot/state.js';
import { upgrade } from '../../upgrade/upgrade.js';
import { runShutdownCommand, SHUTDOWN_ACK_MS } from './node.js';

function wholeNumber(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value)) throw new UserError(`${flag} ${value} is not a whole number`, `for example ${flag} ${flag === '--tries' ? DEFAULT_TRIES : DEFAULT_DEADLINE_S}`);
  return Number(value);
}

export function registerUpgrade(program: Command): void {
  program
    .command('upgrade')
    .description('on a node: install a new version beside the running one and put it on trial')
    .requiredOption('--source <src>', 'the payload: an OCI archive, an OCI layout folder, a folder of payload files, or an http(s) URL of an archive')
    .option('--reboot', 'reboot into the new version once it is installed')
    .option('--tries <n>', `boots the new version gets to become healthy (1-${MAX_TRIES}, default ${DEFAULT_TRIES})`)
    .option('--deadline <seconds>', `how long each trial boot has to become healthy (default ${DEFAULT_DEADLINE_S})`)
    .option('--force', 'install a version that was rolled back on this node before')
    .option('--check', 'only verify the payload (signature, checksums, arch); change nothing')
    .option('--root <dir>', 'the node file system', '/')
    .action(async (opts: { source: string; reboot?: boolean; tries?: string; deadline?: string; force?: boolean; check?: boolean; root: string }) => {
      const log = (line: string) => process.stderr.write(`cairn: ${line}\n`);
      const r = await upgrade({
        root: opts.root,
        source: opts.source,
        tries: wholeNumber('--tries', opts.tries),
        deadline: wholeNumber('--deadline', opts.deadline),
        force: opts.force,
        check: opts.check,
        exec: execCommand,
        log,
      });
      process.stdout.write(`${r.message}\n`);
      if (opts.reboot && r.outcome === 'staged') process.stdout.write(await runShutdownCommand(opts.root, 'reboot', SHUTDOWN_ACK_MS));
    });
}
