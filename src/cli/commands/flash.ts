/** `cairn flash IMAGE DEVICE [--config site.yaml] [--force]`: write an image onto an SD card or disk, checked (src/flash/flash.ts). */
import type { Command } from 'commander';
import cliProgress from 'cli-progress';
import { flash, type FlashProgress } from '../../flash/flash.js';

const MIB = 1024 * 1024;

export function registerFlash(program: Command): void {
  program
    .command('flash')
    .description('write a raw or board image onto an SD card or disk (or a file), read it back and check it; with --config, one site\'s cloud-config goes onto the card')
    .argument('<image>', 'the image: NAME-VERSION-ARCH.raw or NAME-VERSION-ARCH-BOARD.img')
    .argument('<device>', 'the whole disk, e.g. /dev/sdb or /dev/mmcblk0 (lsblk lists them), or a file')
    .option('-c, --config <file>', 'a per-site cloud-config, checked first, written to the card as the node\'s own config (read on first boot)')
    .option('--force', 'write to a disk that is not removable')
    .option('-q, --quiet', 'no progress, only errors')
    .action(async (image: string, device: string, opts: { config?: string; force?: boolean; quiet?: boolean }) => {
      const tty = Boolean(process.stderr.isTTY) && !opts.quiet;
      const bar = tty
        ? new cliProgress.SingleBar(
            { format: '{phase} [{bar}] {percentage}% {done}/{total} MiB, {rate} MiB/s, {eta_formatted} left', hideCursor: true, clearOnComplete: true, stream: process.stderr, barsize: 30 },
            cliProgress.Presets.shades_classic,
          )
        : undefined;
      let phase: FlashProgress['phase'] | undefined;
      let phaseStart = 0;
      let lastLine = 0;
      let lastDone = -1;
      const progress = (p: FlashProgress) => {
        const now = performance.now();
        if (p.phase !== phase) {
          bar?.stop();
          phase = p.phase;
          phaseStart = now;
          bar?.start(Math.ceil(p.total / MIB), 0, { phase: p.phase.padEnd(6), done: 0, total: Math.ceil(p.total / MIB), rate: '0' });
        }
        const rate = (p.done / MIB / Math.max(0.001, (now - phaseStart) / 1000)).toFixed(1);
        if (bar) bar.update(Math.floor(p.done / MIB), { phase: p.phase.padEnd(6), done: Math.floor(p.done / MIB), total: Math.ceil(p.total / MIB), rate });
        else if (!opts.quiet && (now - lastLine > 5000 || (p.done === p.total && lastDone !== p.done))) {
          lastLine = now;
          lastDone = p.done;
          process.stderr.write(`${p.phase}: ${Math.floor(p.done / MIB)} of ${Math.ceil(p.total / MIB)} MiB, ${rate} MiB/s\n`);
        }
      };
      try {
        const r = await flash({ image, device, config: opts.config, force: opts.force, progress, log: (l) => (opts.quiet ? undefined : process.stderr.write(`${l}\n`)) });
        bar?.stop();
        process.stdout.write(`${device}: ${image} written and read back (${(r.bytes / MIB).toFixed(0)} MiB, sha256 ${r.sha256}) in ${r.seconds.toFixed(1)} s${r.config ? `; site config ${r.config} on ${'CAIRN_STATE'}` : ''}\n`);
      } finally {
        bar?.stop();
      }
    });
}
