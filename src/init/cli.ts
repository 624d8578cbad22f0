/**
 * The cairn command on a node (/usr/local/bin/cairn): the subcommands that
 * make sense there, bundled with their dependencies into one file.
 */
import { Command, CommanderError } from 'commander';
import { registerConfig } from '../cli/commands/config.js';
import { registerInstall } from '../cli/commands/install.js';
import { registerNode } from '../cli/commands/node.js';
import { registerUpgrade } from '../cli/commands/upgrade.js';
import { EXIT_INTERNAL, EXIT_USER, UserError, describeError } from '../errors.js';
import { VERSION } from '../version.js';

const program = new Command('cairn').description('cairn on this node').version(VERSION, '-V, --version').exitOverride();
registerConfig(program);
registerInstall(program);
registerNode(program);
registerUpgrade(program);
try {
  await program.parseAsync(process.argv.slice(2), { from: 'user' });
} catch (err) {
  if (err instanceof CommanderError) process.exitCode = err.exitCode === 0 ? 0 : EXIT_USER;
  else if (err instanceof UserError) {
    process.stderr.write(`cairn: ${describeError(err)}\n`);
    process.exitCode = EXIT_USER;
  } else {
    process.stderr.write(`cairn: internal error: ${describeError(err)}\n`);
    process.exitCode = EXIT_INTERNAL;
  }
}
