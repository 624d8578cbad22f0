/**
 * Boards: profiles that shape a build for one kind of machine (boards/<name>/:
 * a board.json of data and one small module). A board is not a format: it
 * picks the arches it runs, the formats it shapes (its disk image instead of
 * the generic raw disk), its console, the modules it needs, and the files
 * of its boot partition.
 */
import { UserError } from '../errors.js';
import { jetson } from '../../boards/jetson/index.js';
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
    /** The FAT32 partition the board's firmware reads, first on the disk (GPT: its partition name, when not the label). */
    boot: { label: string; mib: number; mbrType: string; partName?: string };
    /** GPT: the state partition's partition name, when the firmware looks it up by name (its file system label stays CAIRN_STATE). */
    statePartName?: string;
  };
  /**
   * The board boots a vendor kernel from a board support package the user
   * brings (cairn build --bsp): the image's kernel, its modules and
   * firmware come from it instead of the Debian kernel package.
   */
  bsp?: {
    /** What --bsp is, for help and errors, e.g. "NVIDIA's Jetson Linux R36 BSP tarball (Jetson_Linux_R36.*_aarch64.tbz2)". */
    what: string;
    /** Module paths (globs under lib/modules/<release>/) kept beyond the module profile: the vendor's own drivers. */
    keepModules: string[];
    /** Firmware paths (globs under lib/firmware/) kept beyond the module profile. */
    keepFirmware: string[];
  };
}

export interface BoardProfile extends BoardData {
  /** The files of the boot partition for `system` (firmware, device trees, the boot config). */
  bootFiles(system: SystemArtifacts, ctx: { log: (line: string) => void }): Promise<BootFile[]>;
  /** The kernel command line of a state boot of `system` on this board. */
  cmdline(system: Pick<SystemArtifacts, 'version' | 'cmdline'>): string;
  /** Files the board's bootloader reads from the state partition (dest relative to its root), beside cairn/system/<version>/. */
  stateFiles?(system: SystemArtifacts): Promise<BootFile[]>;
}

export const BOARD_TABLE = { jetson, rpi4 } satisfies Record<string, BoardProfile>;

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

/**
 * --bsp and the board: a board that boots a vendor kernel needs one, and
 * --bsp is for no other board (and for no build without --board).
 */
export function checkBoardBsp(name: BoardName | undefined, bsp: string | undefined): void {
  const withBsp = BOARDS.filter((b) => boardProfile(b).bsp);
  if (name === undefined) {
    if (bsp !== undefined) throw new UserError('--bsp is the board support package of a board, and this build names no board', `add --board ${withBsp.join(' or --board ')}, or leave --bsp out`);
    return;
  }
  const b = boardProfile(name);
  if (b.bsp && bsp === undefined) {
    throw new UserError(
      `the ${name} board boots its vendor's kernel, and no --bsp was given: the image would have no kernel that runs on it`,
      `download ${b.bsp.what} yourself (cairn does not fetch or ship it) and pass it with --bsp PATH`,
    );
  }
  if (!b.bsp && bsp !== undefined) {
    throw new UserError(`the ${name} board takes no --bsp: its kernel comes from the image's Debian packages`, `leave --bsp out${withBsp.length ? ` (it is for --board ${withBsp.join(', ')})` : ''}`);
  }
}

/** A board's arches and formats: an impossible pair is an error naming what the board makes. */
export function checkBoard(name: BoardName, arches: Arch[], formats: Format[]): void {
  const b = boardProfile(name);
  const badArches = arches.filter((a) => !b.arches.includes(a));
  if (badArches.length) throw new UserError(`the ${name} board does not run ${badArches.join(', ')}`, `build it with --arch ${b.arches.join(' or --arch ')}`);
  const badFormats = formats.filter((f) => !b.formats.includes(f));
  if (badFormats.length) throw new UserError(`a build for the ${name} board cannot make ${badFormats.join(', ')}`, `its formats are ${b.formats.join(', ')} (raw is its ${b.imageExtension} card image)`);
}
