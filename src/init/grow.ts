/**
 * The first boot on a disk larger than the image (an SD card, a disk the
 * raw image was written to): CAIRN_STATE, the last partition, grows to the
 * end of the disk, online. GPT's backup header moves to the disk's end
 * first; the table is changed with sfdisk, the kernel told with partx
 * --update (BLKPG: the partition stays mounted), then resize2fs grows ext4 in place.
 * Later boots find nothing to grow and run nothing.
 */
import { existsSync, readFileSync, readdirSync, realpathSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { at, type NodeContext } from './context.js';

/** Grow only when at least this much is free after the partition (sectors of 512 bytes: 64 MiB). */
export const GROW_MIN_SECTORS = 131072;

export interface GrowPlan {
  disk: string;
  partition: string;
  number: number;
  start: number;
  size: number;
  diskSectors: number;
}

function readNumber(file: string): number | undefined {
  try {
    const n = Number(readFileSync(file, 'utf8').trim());
    return Number.isFinite(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

/** What growing the state partition would do, from /sys; undefined when there is nothing to grow. */
export function growPlan(root: string, device: string): GrowPlan | undefined {
  const partition = basename(device);
  const sys = join(root, 'sys/class/block', partition);
  if (!existsSync(join(sys, 'partition'))) return undefined;
  const number = readNumber(join(sys, 'partition'));
  const start = readNumber(join(sys, 'start'));
  const size = readNumber(join(sys, 'size'));
  const disk = basename(dirname(realpathSync(sys)));
  const diskSectors = readNumber(join(root, 'sys/class/block', disk, 'size'));
  if (number === undefined || start === undefined || size === undefined || diskSectors === undefined) return undefined;
  // the last partition only: another one after it would be overwritten
  const diskDir = join(root, 'sys/class/block', disk);
  for (const p of readdirSync(diskDir)) {
    const s = readNumber(join(diskDir, p, 'start'));
    if (p !== partition && existsSync(join(diskDir, p, 'partition')) && s !== undefined && s > start) return undefined;
  }
  if (diskSectors - (start + size) < GROW_MIN_SECTORS) return undefined;
  return { disk, partition, number, start, size, diskSectors };
}

/** Grows CAIRN_STATE when its disk has room after it; returns what it did, undefined when nothing. */
export async function growState(ctx: NodeContext, readOnly: boolean): Promise<string | undefined> {
  const dev = ctx.boot.stateDevice;
  if (ctx.boot.mode !== 'state' || !dev || readOnly) return undefined;
  const mode = ctx.config.growpart?.mode;
  if (mode === 'off' || mode === 'false') return `not grown: growpart's mode is ${mode}`;
  const plan = growPlan(at(ctx, '/'), dev);
  if (!plan) return undefined;
  const disk = `/dev/${plan.disk}`;
  const run = async (file: string, args: string[], input?: string) => {
    const r = await ctx.exec(file, args, { timeoutMs: 120_000, input });
    if (r.code !== 0) throw new Error(`${file} ${args.join(' ')}: ${(r.stderr || r.stdout).trim().split('\n').pop() ?? `exit ${r.code}`}`);
    return r.stdout;
  };
  const table = JSON.parse(await run('sfdisk', ['--json', disk])) as { partitiontable: { label: string; partitions: { node: string; size: number }[] } };
  if (table.partitiontable.label === 'gpt') await run('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', '--relocate', 'gpt-bak-std', disk]);
  await run('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', '-N', String(plan.number), disk], ',+\n');
  const after = JSON.parse(await run('sfdisk', ['--json', disk])) as typeof table;
  const grown = after.partitiontable.partitions.find((p) => basename(p.node) === plan.partition);
  if (!grown || grown.size <= plan.size) throw new Error(`sfdisk did not grow ${dev} (${plan.size} sectors before, ${grown?.size ?? '?'} after)`);
  await run('partx', ['--update', '--nr', String(plan.number), disk]);
  await run('resize2fs', [dev]);
  const gib = (s: number) => (s * 512 / 1024 ** 3).toFixed(1);
  return `CAIRN_STATE grown from ${gib(plan.size)} to ${gib(grown.size)} GiB (the end of ${disk})`;
}
