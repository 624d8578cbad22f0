/**
 * `cairn install` on a node booted from the ISO (or PXE with --iso-url):
 * with --device, unattended (--silent skips the confirmation); without it on
 * a terminal, the interactive installer (src/install/prompt.ts). Reboots
 * into the installed system afterwards, or powers off with --power-off.
 */
import type { Command } from 'commander';
import { createInterface } from 'node:readline/promises';
import { UserError } from '../../errors.js';
import { execCommand } from '../../init/exec.js';
import { httpFetch } from '../../init/context.js';
import { install, listDevices, type InstallOptions } from '../../install/install.js';
import { contentsOf, describeDisk, flatten, type BlockDevice } from '../../install/plan.js';
import { promptInstall } from '../../install/prompt.js';
import { runShutdownCommand, SHUTDOWN_ACK_MS } from './node.js';

interface Flags {
  device?: string;
  config?: string;
  isoUrl?: string;
  force?: boolean;
  silent?: boolean;
  powerOff?: boolean;
  reboot: boolean;
  format: boolean;
  forceEfi?: boolean;
  tty?: string;
  debug?: boolean;
  root: string;
}

async function devices(): Promise<BlockDevice[]> {
  try {
    return await listDevices(execCommand);
  } catch (e) {
    throw new UserError((e as Error).message, 'run cairn install on a cairn node, as root (sudo cairn install)');
  }
}

export function registerInstall(program: Command): void {
  program
    .command('install')
    .description('on a node booted from the ISO: install cairn to a disk (asks for the disk, a config and a way in when --device is not given)')
    .option('--device <dev>', 'the disk to install to, such as /dev/sda (its partitions and data are erased)')
    .option('--config <file|url>', 'the config to install with (a file on this node or an http(s) URL); stored as /cairn/system/config.yaml')
    .option('--iso-url <url>', 'install from this ISO (http(s) URL or file) instead of the medium this node booted from')
    .option('--force', 'erase a disk that holds partitions or file systems')
    .option('--silent', 'do not ask for confirmation')
    .option('--power-off', 'power off after installing instead of rebooting')
    .option('--no-reboot', 'neither reboot nor power off afterwards')
    .option('--no-format', 'keep the partitions: write into the existing CAIRN_EFI and CAIRN_STATE')
    .option('--force-efi', "accepted for k3OS' installer: cairn always installs both BIOS and UEFI boot on amd64")
    .option('--tty <console>', 'a console for the installed system, such as ttyS0 (added to its kernel command line)')
    .option('--debug', 'print every command the installer runs')
    .option('--root <dir>', 'the node file system', '/')
    .action(async (f: Flags) => {
      if (process.getuid?.() !== 0 && f.root === '/') throw new UserError('cairn install needs root', 'run sudo cairn install');
      const log = (line: string) => process.stderr.write(`cairn: ${line}\n`);
      let opts: InstallOptions | undefined;
      if (!f.device) {
        if (!process.stdin.isTTY) throw new UserError('cairn install needs --device when it cannot ask (stdin is not a terminal)', 'give --device /dev/DISK (and --config FILE|URL), or run it on a console');
        opts = await promptInstall(await devices(), { input: process.stdin, output: process.stdout }, { ...(f.isoUrl ? { isoUrl: f.isoUrl } : {}), ...(f.tty ? { tty: f.tty } : {}), ...(f.debug ? { debug: true } : {}) });
        if (!opts) {
          process.stdout.write('nothing was installed\n');
          return;
        }
      } else {
        opts = {
          device: f.device,
          ...(f.config ? { configUrl: f.config } : {}),
          ...(f.isoUrl ? { isoUrl: f.isoUrl } : {}),
          ...(f.force ? { force: true } : {}),
          ...(f.format === false ? { noFormat: true } : {}),
          ...(f.tty ? { tty: f.tty } : {}),
          ...(f.debug ? { debug: true } : {}),
        };
        if (!f.silent) {
          if (!process.stdin.isTTY) throw new UserError('cairn install asks before it erases a disk, and stdin is not a terminal', 'add --silent to install without asking');
          const disk = (await devices()).flatMap(flatten).find((d) => d.path === f.device);
          const held = disk ? contentsOf(disk) : undefined;
          const rl = createInterface({ input: process.stdin, output: process.stdout });
          const a = (await rl.question(`cairn will ${f.format === false ? 'write into' : 'erase'} ${disk ? describeDisk(disk) : f.device}${held ? `, which holds ${held}` : ''}. Continue? [y/N] `)).trim().toLowerCase();
          rl.close();
          if (a !== 'y' && a !== 'yes') {
            process.stdout.write('nothing was installed\n');
            return;
          }
          opts.force = true;
        }
      }
      const done = await install(opts, { root: f.root, exec: execCommand, log, fetchText: (url) => httpFetch(url, { timeoutMs: 30_000 }) });
      process.stdout.write(`cairn ${done.version} is installed on ${done.device} (in ${Math.round(done.ms / 1000)} s)\n`);
      if (!f.reboot) return;
      process.stdout.write(await runShutdownCommand(f.root, f.powerOff ? 'poweroff' : 'reboot', SHUTDOWN_ACK_MS));
    });
}
