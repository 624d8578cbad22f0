/** `cairn seed CONFIG -o seed.iso`: a NoCloud `cidata` seed ISO from a cloud-config. */
import type { Command } from 'commander';
import { formatDiagnostic, hasErrors } from '../../config/diagnostics.js';
import { EXIT_USER } from '../../errors.js';
import { makeSeed } from '../../../qemu/seed.js';

export function registerSeed(program: Command): void {
  program
    .command('seed')
    .description('write a NoCloud seed ISO (volume cidata: user-data, meta-data) from a cloud-config, to attach to a VM')
    .argument('<config>', 'the cloud-config (k3OS config.yaml format); checked first')
    .option('-o, --output <file>', 'the ISO to write', 'seed.iso')
    .action(async (config: string, opts: { output: string }) => {
      const r = await makeSeed(config, opts.output);
      for (const d of r.diagnostics) process.stderr.write(`${formatDiagnostic(d)}\n`);
      if (hasErrors(r.diagnostics)) {
        process.stderr.write(`cairn: ${config} has errors; no seed written\n`);
        process.exitCode = EXIT_USER;
        return;
      }
      process.stdout.write(`${opts.output}: instance-id ${r.instanceId}${r.hostname ? `, hostname ${r.hostname}` : ''}\n`);
    });
}
