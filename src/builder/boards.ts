/**
 * Boards: profiles that shape a build for one kind of machine (boards/<name>/:
 * a board.json of data and one small module). A board is not a format: it
 * picks the arches it runs, the formats it shapes (its disk image instead of
 * the generic raw disk), its console, the modules it needs, and the files
 * of its boot partition.
 */
import { UserError } from '../errors.js';
import { rpi4 } from '../../boards/rpi4/index.js';
import { FORMATS, type Format } from './formats.js';
import type { Arch, SystemArtifacts } from './types.js';

/** One file on a board's boot partition: copied from `src`, or written from `content`. */
export interface BootFile {
  dest: string;
  src?: string;
  content?: string | Buffer;
}

export interface BoardData {
  name: string;
  about: string;
  arches: Arch[];
  /** The formats a build for this board can make; its disk image is the raw format's. */
  formats: Format[];
  /** What a build makes with --board and no --format. */
  defaultFormats: Format[];
  /** The disk image's extension: NAME-VERSION-ARCH-BOARD.EXT. */
  imageExtension: string;
  /** The kernel's consoles on this board (they replace the arch's and the spec's console= arguments). */
  console: string;
  /** Modules the init loads at boot, beyond the arch's. */
  modulesLoad: string[];
  /** First-stage modules, beyond the common and the arch's lists (the card reader, USB boot). */
  initramfsModules: string[];
  disk: {
    /** dos: MBR (the Pi's firmware reads MBR only); gpt */
    table: 'dos' | 'gpt';
    /** The FAT32 partition the board's firmware reads, first on the disk. */
    boot: { label: string; mib: number; mbrType: string };
  };
}

export interface BoardProfile extends BoardData {
  /** The files of the boot partition for `system` (firmware, device trees, the boot config). */
  bootFiles(system: SystemArtifacts, ctx: { log: (line: string) => void }): Promise<BootFile[]>;
  /** The kernel command line of a state boot of `system` on this board. */
  cmdline(system: Pick<SystemArtifacts, 'version' | 'cmdline'>): string;
}

export const BOARD_TABLE = { rpi4 } satisfies Record<string, BoardProfile>;

export type BoardName = keyof typeof BOARD_TABLE;
export const BOARDS = Object.keys(BOARD_TABLE) as BoardName[];

export function boardProfile(name: BoardName): BoardProfile {
  return BOARD_TABLE[name];
}

export function parseBoard(name: string): BoardName {
  if ((BOARDS as string[]).includes(name)) return name as BoardName;
  if ((FORMATS as string[]).includes(name)) throw new UserError(`"${name}" is a format, not a board`, `pass it as --format ${name}; boards are ${BOARDS.join(', ')}`);
  throw new UserError(`unknown board "${name}"`, `boards are ${BOARDS.join(', ')}`);
}

/** A board's arches and formats: an impossible pair is an error naming what the board makes. */
export function checkBoard(name: BoardName, arches: Arch[], formats: Format[]): void {
  const b = boardProfile(name);
  const badArches = arches.filter((a) => !b.arches.includes(a));
  if (badArches.length) throw new UserError(`the ${name} board does not run ${badArches.join(', ')}`, `build it with --arch ${b.arches.join(' or --arch ')}`);
  const badFormats = formats.filter((f) => !b.formats.includes(f));
  if (badFormats.length) throw new UserError(`a build for the ${name} board cannot make ${badFormats.join(', ')}`, `its formats are ${b.formats.join(', ')} (raw is its ${b.imageExtension} card image)`);
}
