/**
 * `cairn flash IMAGE DEVICE [--config site.yaml]`: writes a cairn disk or
 * card image (raw, or a board's .img) onto a disk, as rpi-imager and
 * Etcher do, then reads it back and checks it.
 *
 * In order, nothing written before every check passed:
 *   1. the image is a cairn disk (a partition labelled CAIRN_STATE);
 *   2. the per-site config, if any, has no errors (located, as `cairn config
 *      validate` reports them);
 *   3. the device: a regular file (written as it is), or a whole block
 *      device that is not mounted, not used as swap or by another device
 *      (dm, md), does not hold the running system, is large enough, and is
 *      removable (an SD card reader, USB) unless --force;
 *   4. the write: dd in 4 MiB blocks, direct I/O on a block device, with
 *      progress (bytes, rate, time left), flushed at the end;
 *   5. the read-back: the device's first image-size bytes hashed (direct
 *      I/O, past the page cache) against the image's sha256;
 *   6. the config, written into CAIRN_STATE as cairn/system/config.yaml
 *      (root, 0600: the node's own config, read on first boot) with
 *      debugfs at the partition's offset, and read back.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, readdirSync, realpathSync, statSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { formatDiagnostic, hasErrors } from '../config/diagnostics.js';
import { readConfig } from '../config/read.js';
import { UserError } from '../errors.js';

export const STATE_LABEL = 'CAIRN_STATE';
/** Where the node reads its own config (src/config/loader.ts: /cairn/system/config.yaml), inside CAIRN_STATE. */
export const NODE_CONFIG_IN_STATE = '/cairn/system/config.yaml';
const BLOCK = 4 * 1024 * 1024;

export interface FlashProgress {
  /** bytes written (or read back) so far, of `total` */
  done: number;
  total: number;
  phase: 'write' | 'verify';
}

export interface FlashOptions {
  image: string;
  device: string;
  config?: string;
  force?: boolean;
  progress?: (p: FlashProgress) => void;
  log?: (line: string) => void;
  /** Where /sys and /proc are (tests). */
  sysRoot?: string;
}

export interface FlashResult {
  bytes: number;
  sha256: string;
  config?: string;
  seconds: number;
}

interface Partition {
  start: number;
  size: number;
  type: string;
}

/** The image's partitions and which one is CAIRN_STATE (by its file system's label). */
export async function imageLayout(image: string): Promise<{ state: Partition; partitions: Partition[] }> {
  const r = await execa('sfdisk', ['--json', image], { reject: false });
  if (r.exitCode !== 0) throw new UserError(`${image} has no partition table: it is not a cairn disk image`, 'flash a raw image (NAME-VERSION-ARCH.raw) or a board image (NAME-VERSION-ARCH-BOARD.img) from cairn build');
  const parts = (JSON.parse(r.stdout) as { partitiontable: { partitions?: Partition[] } }).partitiontable.partitions ?? [];
  for (const p of parts) {
    const b = await execa('blkid', ['-p', '-o', 'export', '-O', String(p.start * 512), image], { reject: false });
    if (/^LABEL=CAIRN_STATE$/m.test(b.stdout)) return { state: p, partitions: parts };
  }
  throw new UserError(`${image} has no ${STATE_LABEL} partition: it is not a cairn disk image`, 'flash a raw image or a board image from cairn build');
}

/** The config's text when it has no errors (warnings are logged); its errors, located, as a UserError otherwise. */
export function checkSiteConfig(file: string, log: (l: string) => void): string {
  let text: Buffer;
  try {
    text = readFileSync(file);
  } catch (e) {
    throw new UserError(`cannot read the config ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, 'give the path of a cloud-config file');
  }
  const r = readConfig(text, file);
  for (const d of r.diagnostics) if (d.severity !== 'error') log(formatDiagnostic(d));
  if (hasErrors(r.diagnostics)) {
    const errors = r.diagnostics.filter((d) => d.severity === 'error').map(formatDiagnostic);
    throw new UserError(`${file} has errors; nothing was written:\n  ${errors.join('\n  ')}`, 'fix them (cairn config validate checks a file), then flash again');
  }
  if (r.script) throw new UserError(`${file} is a script, not a cloud-config; nothing was written`, 'flash a cloud-config (YAML); scripts run as user-data from a data source');
  return text.toString('utf8');
}

interface DeviceFacts {
  kind: 'file' | 'block';
  /** /dev/<name> resolved, or the file */
  path: string;
  /** bytes (a file: unlimited) */
  size?: number;
}

/** What is wrong with writing to a block device; the checks of step 3. */
export function blockDeviceProblems(dev: string, opts: { sysRoot?: string; force?: boolean; imageBytes: number }): { problems: string[]; size: number } {
  const sys = opts.sysRoot ?? '/';
  const name = path.basename(dev);
  const block = path.join(sys, 'sys/class/block', name);
  const problems: string[] = [];
  if (!existsSync(block)) return { problems: [`${dev} is not a block device this machine knows`], size: 0 };
  if (existsSync(path.join(block, 'partition'))) {
    const parent = path.basename(path.dirname(realpathSync(block)));
    problems.push(`${dev} is a partition; flash the whole disk (/dev/${parent})`);
  }
  const size = Number(readFileSync(path.join(block, 'size'), 'utf8').trim()) * 512;
  // the disk and its partitions, as mounts and swaps name them
  const names = new Set([name, ...readdirSync(path.join(sys, 'sys/class/block')).filter((n) => existsSync(path.join(sys, 'sys/class/block', name, n)))]);
  const devNames = (field: string) => path.basename(field.replace(/\\040/g, ' '));
  const mounts = readFileSync(path.join(sys, 'proc/self/mounts'), 'utf8').split('\n').map((l) => l.split(' ')).filter((f) => f.length > 1 && f[0]!.startsWith('/dev/'));
  const mounted = mounts.filter((f) => names.has(devNames(f[0]!)));
  const system = mounted.filter((f) => ['/', '/usr', '/boot', '/boot/efi', '/run/cairn/state', '/cairn'].includes(f[1]!));
  if (system.length) problems.push(`${dev} holds the running system (${system.map((f) => `${f[0]} on ${f[1]}`).join(', ')})`);
  else if (mounted.length) problems.push(`${dev} is mounted (${mounted.map((f) => `${f[0]} on ${f[1]}`).join(', ')}); unmount it first`);
  const swaps = existsSync(path.join(sys, 'proc/swaps')) ? readFileSync(path.join(sys, 'proc/swaps'), 'utf8').split('\n').slice(1).map((l) => l.split(/\s+/)[0]!).filter((s) => s && names.has(path.basename(s))) : [];
  if (swaps.length) problems.push(`${dev} is in use as swap (${swaps.join(', ')})`);
  const holders = [...names].flatMap((n) => {
    const h = path.join(sys, 'sys/class/block', n, 'holders');
    return existsSync(h) ? readdirSync(h) : [];
  });
  if (holders.length) problems.push(`${dev} is in use by ${holders.join(', ')} (device mapper, RAID or LVM)`);
  const removable = readFileSync(path.join(block, 'removable'), 'utf8').trim() === '1' || /^mmcblk\d+$/.test(name) || realpathSync(block).includes('/usb');
  if (!removable && !opts.force) problems.push(`${dev} is not a removable disk (an SD card, a USB stick or card reader); pass --force if you mean it`);
  if (size < opts.imageBytes) problems.push(`${dev} holds ${size} bytes, less than the image's ${opts.imageBytes}`);
  return { problems, size };
}

async function deviceFacts(dev: string, opts: FlashOptions, imageBytes: number): Promise<DeviceFacts> {
  const st = statSync(dev, { throwIfNoEntry: false });
  if (!st || st.isFile()) {
    if (!st && !existsSync(path.dirname(path.resolve(dev)))) throw new UserError(`${dev}: no such device, and its folder does not exist`, 'name a disk such as /dev/sdb or /dev/mmcblk0, or a file');
    return { kind: 'file', path: dev };
  }
  if (!st.isBlockDevice()) throw new UserError(`${dev} is neither a block device nor a regular file`, 'name a disk such as /dev/sdb or /dev/mmcblk0, or a file');
  const real = realpathSync(dev);
  const { problems, size } = blockDeviceProblems(real, { sysRoot: opts.sysRoot, force: opts.force, imageBytes });
  if (problems.length) throw new UserError(`will not write to ${dev}; nothing was written:\n  ${problems.join('\n  ')}`, 'pick the SD card or USB disk (lsblk lists them)');
  return { kind: 'block', path: real, size };
}

async function sha256Stream(stream: NodeJS.ReadableStream, onBytes?: (n: number) => void): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    h.update(chunk);
    onBytes?.(chunk.length);
  }
  return h.digest('hex');
}

/** dd's progress lines: "123456789 bytes (123 MB, 118 MiB) copied, 2 s, 61.7 MB/s". */
export function parseDdProgress(line: string): number | undefined {
  const m = /^(\d+) bytes/.exec(line.trim());
  return m ? Number(m[1]) : undefined;
}

export async function flash(opts: FlashOptions): Promise<FlashResult> {
  const started = performance.now();
  const log = opts.log ?? (() => undefined);
  const ist = statSync(opts.image, { throwIfNoEntry: false });
  if (!ist?.isFile()) throw new UserError(`${opts.image}: no such image file`, 'flash an image from cairn build (out/NAME-VERSION-ARCH.raw or ...-BOARD.img)');
  const bytes = ist.size;
  const layout = await imageLayout(opts.image);
  const config = opts.config === undefined ? undefined : checkSiteConfig(opts.config, log);
  const dev = await deviceFacts(opts.device, opts, bytes);
  if (dev.kind === 'file' && path.resolve(dev.path) === path.resolve(opts.image)) throw new UserError('the image and the device are the same file');

  log(`hashing ${opts.image}`);
  const sha256 = await sha256Stream(createReadStream(opts.image));

  // the write
  const ddArgs = [`if=${opts.image}`, `of=${dev.path}`, `bs=${BLOCK}`, 'iflag=fullblock', 'status=progress'];
  if (dev.kind === 'block') ddArgs.push('oflag=direct', 'conv=fsync');
  else ddArgs.push('conv=fsync,sparse');
  if (dev.kind === 'file') await execa('truncate', ['-s', '0', dev.path]).catch(() => undefined);
  const dd = execa('dd', ddArgs, { reject: false, stdin: 'ignore', stdout: 'ignore', stderr: 'pipe' });
  let tail = '';
  dd.stderr?.on('data', (d: Buffer) => {
    tail = (tail + d.toString()).slice(-4096);
    for (const part of d.toString().split(/[\r\n]/)) {
      const n = parseDdProgress(part);
      if (n !== undefined) opts.progress?.({ done: n, total: bytes, phase: 'write' });
    }
  });
  const r = await dd;
  if (r.exitCode !== 0) {
    const why = tail.split(/[\r\n]/).map((l) => l.trim()).filter((l) => l && parseDdProgress(l) === undefined && !/records (in|out)$/.test(l)).pop() ?? `exit ${r.exitCode}`;
    if (/No space left/.test(why)) throw new UserError(`${opts.device} is full: ${why}`, 'write to a larger disk');
    throw new UserError(`writing ${opts.device} failed: ${why}`, 'check the card or disk and its reader, then flash again');
  }
  if (dev.kind === 'file') await execa('truncate', ['-s', String(bytes), dev.path]);
  opts.progress?.({ done: bytes, total: bytes, phase: 'write' });

  // the read-back, past the page cache on a block device
  log(`reading ${opts.device} back`);
  let readBack: string;
  let done = 0;
  const onBytes = (n: number) => opts.progress?.({ done: (done += n), total: bytes, phase: 'verify' });
  if (dev.kind === 'block') {
    const rd = execa('dd', [`if=${dev.path}`, `bs=${BLOCK}`, `count=${bytes}`, 'iflag=direct,count_bytes', 'status=none'], { buffer: false, stdin: 'ignore', stdout: 'pipe', stderr: 'pipe', encoding: 'buffer' });
    readBack = await sha256Stream(rd.stdout!, onBytes);
    await rd;
  } else {
    readBack = await sha256Stream(createReadStream(dev.path, { start: 0, end: bytes - 1 }), onBytes);
  }
  if (readBack !== sha256) {
    throw new UserError(`${opts.device} does not read back as written (sha256 ${readBack}, the image's ${sha256}): the card or its reader is failing`, 'try another card or reader; do not boot this one');
  }

  // the per-site config, into CAIRN_STATE
  if (config !== undefined) await writeNodeConfig(dev.path, layout.state.start * 512, config, log);
  return { bytes, sha256, config: opts.config, seconds: (performance.now() - started) / 1000 };
}

/** Writes `content` as cairn/system/config.yaml (root, 0600) into the ext4 at `offset` of `target`, and reads it back. */
export async function writeNodeConfig(target: string, offset: number, content: string, log: (l: string) => void): Promise<void> {
  const fs = `${target}?offset=${offset}`;
  const dir = await mkdtemp(path.join(tmpdir(), 'cairn-flash-'));
  try {
    const local = path.join(dir, 'config.yaml');
    await writeFile(local, content, { mode: 0o600 });
    const script = path.join(dir, 'debugfs.cmd');
    await writeFile(
      script,
      [
        `rm ${NODE_CONFIG_IN_STATE}`,
        `write ${local} ${NODE_CONFIG_IN_STATE}`,
        `set_inode_field ${NODE_CONFIG_IN_STATE} mode 0100600`,
        `set_inode_field ${NODE_CONFIG_IN_STATE} uid 0`,
        `set_inode_field ${NODE_CONFIG_IN_STATE} gid 0`,
        '',
      ].join('\n'),
    );
    const w = await execa('debugfs', ['-w', '-f', script, fs], { reject: false, stdin: 'ignore' });
    const back = await execa('debugfs', ['-R', `cat ${NODE_CONFIG_IN_STATE}`, fs], { reject: false, stdin: 'ignore', stripFinalNewline: false });
    if (w.exitCode !== 0 || back.exitCode !== 0 || back.stdout !== content) {
      const why = (w.stderr || back.stderr).split('\n').filter((l) => l && !l.startsWith('debugfs ')).pop() ?? 'it reads back differently';
      throw new UserError(`the image is written, but the config could not be put into ${STATE_LABEL}: ${why}`, 'flash again; the card boots without the site config until then');
    }
    log(`config written to ${STATE_LABEL}:${NODE_CONFIG_IN_STATE}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
