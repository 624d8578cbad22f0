// Reading a board's card image with the tools a user has: sfdisk for the
// partition table, mtools for files on its FAT boot partition.
import { execa } from 'execa';
import { chmod } from 'node:fs/promises';

export interface CardPartition {
  /** Byte offset of the partition. */
  start: number;
  /** Size in bytes. */
  size: number;
}

export async function cardPartitions(img: string): Promise<CardPartition[]> {
  const { stdout } = await execa('sfdisk', ['--json', img]);
  const table = JSON.parse(stdout) as { partitiontable: { sectorsize?: number; partitions: { start: number; size: number }[] } };
  const ss = table.partitiontable.sectorsize ?? 512;
  return table.partitiontable.partitions.map((p) => ({ start: p.start * ss, size: p.size * ss }));
}

/** Copies a file off the card's FAT partition `part` (mtools, at the partition's offset); returns `out`. */
export async function cardFile(img: string, part: CardPartition, file: string, out: string): Promise<string> {
  await execa('mcopy', ['-n', '-i', `${img}@@${part.start}`, `::${file}`, out]);
  await chmod(out, 0o644);
  return out;
}

/** A text file of the card's FAT partition. */
export async function cardText(img: string, part: CardPartition, file: string): Promise<string> {
  return (await execa('mtype', ['-i', `${img}@@${part.start}`, `::${file}`])).stdout;
}
