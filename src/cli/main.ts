/**
 * The cairn command. Each subcommand lives in src/cli/commands/<name>.ts and
 * registers itself on the program; this file only wires them together and
 * maps errors to exit codes (0 ok, 1 user error, 2 internal error).
 */
import { Command, CommanderError } from 'commander';
import { UserError, EXIT_INTERNAL, EXIT_USER, describeError } from '../errors.js';
import { VERSION } from '../version.js';
import { commands } from './commands/index.js';

export async function main(argv: string[]): Promise<number> {
  const program = new Command('cairn')
    .description('cairn: build and run an immutable, k3OS-style edge OS')
    .version(VERSION, '-V, --version')
    .showHelpAfterError('(run with --help for usage)')
    // -V/--version only before a subcommand: `cairn plan --version 0.2.0` is plan's own.
    .enablePositionalOptions()
    .exitOverride();
  program.configureOutput({ writeErr: (s) => process.stderr.write(s) });
  for (const register of commands) register(program);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return process.exitCode === undefined ? 0 : Number(process.exitCode);
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version end here too, with exit code 0.
      return err.exitCode === 0 ? 0 : EXIT_USER;
    }
    if (err instanceof UserError) {
      process.stderr.write(`cairn: ${describeError(err)}\n`);
      return EXIT_USER;
    }
    process.stderr.write(`cairn: internal error: ${describeError(err)}\n`);
    return EXIT_INTERNAL;
  }
}

const code = await main(process.argv.slice(2));
process.exitCode = code;
