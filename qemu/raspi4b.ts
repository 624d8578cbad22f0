/**
 * QEMU's raspi4b machine (QEMU 9 and later: four Cortex-A72, the BCM2711's
 * UARTs and SD controller; no PCIe, no Ethernet, no firmware) for booting a
 * Raspberry Pi 4 card's own kernel, device tree and initramfs with the card
 * as its SD card.
 *
 * Debian 12's QEMU (7.2) has no raspi4b, so Debian trixie's QEMU runs from a
 * root made once with mmdebstrap in the cache (~/.cache/cairn/qemu/trixie),
 * through that root's own dynamic loader: nothing is installed on the host.
 *
 * The Pi's stock device tree needs a few changes for what QEMU does not
 * emulate (raspi4bDtb): without them Debian's kernel takes an external abort
 * in the HDMI block's interrupt controller, the SD controller waits forever
 * for the Wi-Fi power sequence (a firmware GPIO QEMU does not answer), and
 * a console on the mini UART (ttyS1, the Pi's usual one) stalled some boots.
 * The console is the PL011 (ttyAMA0, the first -serial).
 */
import { execa } from 'execa';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile, copyFile } from 'node:fs/promises';
import path from 'node:path';
import { UserError } from '../src/errors.js';
import { ConsoleText, tailLines } from './console.js';
import { fallbackCacheDir } from './pvh.js';

export interface TrixieQemu {
  /** The root holding QEMU (qemu-system-arm) and fdtput (device-tree-compiler). */
  root: string;
  /** QEMU's Debian version, e.g. 1:10.0.13+ds-0+deb13u1. */
  version: string;
}

const PACKAGES = ['qemu-system-arm', 'device-tree-compiler'];
/** Bump when the root's recipe changes. */
const ROOT_VERSION = 1;

/** Runs a program of the trixie root through the root's own loader and libraries. */
export function trixieCommand(q: TrixieQemu, program: string, args: string[]): { file: string; args: string[]; env: Record<string, string> } {
  const lib = path.join(q.root, 'usr/lib/x86_64-linux-gnu');
  return {
    file: path.join(q.root, 'lib64/ld-linux-x86-64.so.2'),
    args: ['--library-path', `${lib}:${path.join(q.root, 'lib/x86_64-linux-gnu')}`, path.join(q.root, program), ...args],
    // QEMU's own modules and firmware from the root, never the host's older ones
    env: { QEMU_MODULE_DIR: path.join(lib, 'qemu') },
  };
}

/**
 * Debian trixie's QEMU in the cache, made with mmdebstrap the first time
 * (about 2 minutes and 250 MB; needs root and Debian's mirror). amd64 hosts
 * only.
 */
export async function trixieQemu(opts: { cacheDir?: string; mirror?: string; log?: (l: string) => void } = {}): Promise<TrixieQemu> {
  if (process.arch !== 'x64') throw new UserError('the trixie QEMU root is made for amd64 hosts', 'run the raspi4b boot on an amd64 host');
  const dir = path.join(opts.cacheDir ?? fallbackCacheDir(), `trixie-${ROOT_VERSION}`);
  const root = path.join(dir, 'root');
  const stamp = path.join(dir, 'version');
  if (existsSync(stamp)) return { root, version: (await readFile(stamp, 'utf8')).trim() };
  if (process.getuid?.() !== 0) throw new UserError('making the trixie QEMU root needs root (mmdebstrap --mode=root)', 'run as root once; later runs use the cached root');
  await mkdir(dir, { recursive: true });
  const tmp = path.join(dir, `root.partial.${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  opts.log?.(`raspi4b: making a Debian trixie root with ${PACKAGES.join(', ')} (once)`);
  try {
    await execa('mmdebstrap', ['--mode=root', '--variant=apt', `--include=${PACKAGES.join(',')}`, '--aptopt=APT::Install-Recommends "false"', '--dpkgopt=path-exclude=/usr/share/doc/*', 'trixie', tmp, opts.mirror ?? 'http://deb.debian.org/debian'], {
      env: { LC_ALL: 'C.UTF-8', DEBIAN_FRONTEND: 'noninteractive' },
      all: true,
    });
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    const out = ((err as { all?: string }).all ?? '').split('\n').filter((l) => /^E:|error/i.test(l)).slice(-5).join('\n');
    throw new UserError(`making the trixie QEMU root failed: ${out || (err as Error).message.split('\n')[0]}`, 'check that Debian\'s mirror is reachable and that mmdebstrap works, then run again');
  }
  const { stdout } = await execa('chroot', [tmp, 'dpkg-query', '-W', '-f=${Version}', 'qemu-system-arm']);
  await rm(root, { recursive: true, force: true });
  await rename(tmp, root);
  await writeFile(stamp, `${stdout.trim()}\n`);
  return { root, version: stdout.trim() };
}

/** Device-tree nodes raspi4b has no model of, switched off. */
const DISABLED_NODES = [
  // the HDMI/DVP block (nothing is mapped at 0xfef00000): its interrupt controller, clock gates, HDMI and its I2C
  '/soc/clock@7ef00000',
  '/soc/interrupt-controller@7ef00100',
  '/soc/hdmi@7ef00700',
  '/soc/i2c@7ef04500',
  '/soc/hdmi@7ef05700',
  '/soc/i2c@7ef09500',
  // the mini UART (ttyS1) and the Bluetooth behind the PL011
  '/soc/serial@7e215040',
  '/soc/serial@7e201000/bluetooth',
];

/** A copy of the Pi 4's device tree that raspi4b can boot (see the module's comment). */
export async function raspi4bDtb(q: TrixieQemu, src: string, out: string): Promise<void> {
  await copyFile(src, out);
  const fdtput = async (...args: string[]) => {
    const c = trixieCommand(q, 'usr/bin/fdtput', args);
    await execa(c.file, c.args, { env: c.env });
  };
  for (const node of DISABLED_NODES) await fdtput('-t', 's', out, node, 'status', 'disabled');
  // the SD controller's power sequence drives the Wi-Fi's GPIO through the firmware
  await fdtput('-d', out, '/soc/mmc@7e300000', 'mmc-pwrseq');
  await fdtput('-t', 's', out, '/chosen', 'stdout-path', 'serial0:115200n8');
  // the firmware's seed: without one the kernel's random pool is ready only after about 50 s of TCG
  const seed = randomBytes(64);
  const words = Array.from({ length: 16 }, (_, i) => seed.readUInt32BE(i * 4).toString(16));
  await fdtput('-t', 'x', out, '/chosen', 'rng-seed', ...words);
}

/** The QEMU argv for a raspi4b boot of a kernel, its initramfs and device tree, with a card (its size a power of two) on the SD controller. */
export function raspi4bArgs(opts: { kernel: string; initrd: string; dtb: string; card: string; cardFormat: 'raw' | 'qcow2'; append: string }): string[] {
  return [
    '-M', 'raspi4b', '-m', '2G', '-accel', 'tcg',
    '-kernel', opts.kernel, '-initrd', opts.initrd, '-dtb', opts.dtb, '-append', opts.append,
    '-drive', `file=${opts.card},if=sd,format=${opts.cardFormat}`,
    // PL011 (ttyAMA0) on stdio; the mini UART to nowhere
    '-serial', 'stdio', '-serial', 'null',
    '-display', 'none', '-monitor', 'none', '-no-reboot',
  ];
}

/** A raspi4b guest: its console as text, waits on it, and a hard stop. */
export class Raspi4b {
  private readonly console = new ConsoleText();
  private readonly started = Date.now();
  private exited = false;
  private readonly child;

  constructor(q: TrixieQemu, args: string[]) {
    const c = trixieCommand(q, 'usr/bin/qemu-system-aarch64', ['-L', path.join(q.root, 'usr/share/qemu'), ...args]);
    this.child = spawn(c.file, c.args, { env: { ...process.env, ...c.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    const add = (b: Buffer) => void this.console.push(b.toString('latin1'));
    this.child.stdout.on('data', add);
    this.child.stderr.on('data', add);
    this.child.on('close', () => (this.exited = true));
  }

  get output(): string {
    return this.console.text;
  }

  /**
   * Waits for `re` on the console; fails on a kernel panic or a halt (QEMU
   * keeps running after a failed reboot, even with -no-reboot), an exit, or
   * when the time is up. Returns the match and the time since QEMU started.
   */
  async waitFor(re: RegExp, timeoutMs: number): Promise<{ match: RegExpExecArray; elapsedMs: number }> {
    const until = Date.now() + timeoutMs;
    let seen = -1;
    for (;;) {
      const text = this.output;
      const m = re.exec(text);
      // a match that ends where the console does may still grow: taken once the console has been quiet for a poll
      if (m && (m.index + m[0].length < text.length || text.length === seen || this.exited)) return { match: m, elapsedMs: Date.now() - this.started };
      seen = text.length;
      const dead = /Kernel panic - not syncing|System halted/.exec(this.output);
      if (dead || this.exited || Date.now() > until) {
        const why = dead ? `the guest stopped (${dead[0]})` : this.exited ? 'QEMU exited' : `not within ${timeoutMs} ms`;
        throw new Error(`raspi4b: ${re} did not show: ${why}; the console's last lines:\n${tailLines(this.output, 30)}`);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  async stop(): Promise<void> {
    if (this.exited) return;
    this.child.kill('SIGKILL');
    await new Promise((r) => this.child.once('close', r));
  }
}
