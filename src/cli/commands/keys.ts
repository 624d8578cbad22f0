/** `cairn keys generate`: an ed25519 key pair for signing upgrade payloads (see src/upgrade/keys.ts). */
import path from 'node:path';
import type { Command } from 'commander';
import { UserError } from '../../errors.js';
import { generateKeys } from '../../upgrade/keys.js';

export function registerKeys(program: Command): void {
  const keys = program.command('keys').description('signing keys for upgrade payloads (cairn build --sign)');
  keys
    .command('generate')
    .description('write a new ed25519 key pair: NAME.key (private, mode 0600) and NAME.pub (public)')
    .option('-o, --out <dir>', 'folder for the key files (made when missing)')
    .option('-n, --name <name>', 'file name of the pair, without extension', 'cairn')
    .action((opts: { out?: string; name: string }) => {
      if (!opts.out) throw new UserError('cairn keys generate needs --out DIR', 'for example: cairn keys generate --out ~/.config/cairn/keys');
      const k = generateKeys(path.resolve(opts.out), opts.name);
      process.stdout.write(
        `public key ${k.publicKey}\n` +
          `fingerprint ${k.fingerprint}\n` +
          `private key ${k.privateKey} (mode 0600: keep it on the build machine, never in the image or a repository)\n` +
          `sign a build with: cairn build --sign ${k.privateKey}\n`,
      );
    });
}
