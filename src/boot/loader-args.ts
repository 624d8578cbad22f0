/**
 * What tells a first stage that its loader does not count tries, and the
 * command lines of the boards that have such a loader (the Raspberry Pi's
 * firmware, NVIDIA's L4TLauncher). Pure: the builder, the boards and a
 * running node share it (see ./loader.ts).
 */
import { joinArgs } from '../builder/outputs/common.js';
import type { Arch } from '../builder/types.js';

/** On the loader's own command line (cmdline.txt, extlinux.conf's APPEND): the first stage chooses the version and starts another one with kexec. */
export const FIXED_LOADER_ARG = 'cairn.loader=fixed';
/** The machine's watchdog keeps counting through a kexec (and a reboot): a trial kernel that hangs at its start is reset. */
export const KEEP_WATCHDOG_ARG = 'watchdog.stop_on_reboot=0';

/**
 * The arches whose first stage gets kexec. Not armv7: Debian's armmp-lpae
 * kernel faults in its own kexec (an oops in __soft_restart, then a hang;
 * seen under QEMU virt), which would leave a board hung in the middle of a
 * trial. Without kexec the first stage gives such a trial up at once.
 */
export const KEXEC_ARCHES: readonly Arch[] = ['amd64', 'arm64'];

/** The board record on CAIRN_STATE, relative to its root (/cairn/loader.json on a node). */
export const LOADER_REL = 'cairn/loader.json';

export const LOADER_BOARDS = ['rpi4', 'jetson'] as const;
export type LoaderBoard = (typeof LOADER_BOARDS)[number];

/** What a node knows about its loader: the board, and the consoles its kernels are given. */
export interface LoaderRecord {
  board: LoaderBoard;
  /** The board's console= arguments; an upgrade's command line gets these instead of the payload's. */
  console: string;
}

/** A command line without console= (the board names its own consoles). */
export function withoutConsoles(cmdline: string | undefined): string {
  return (cmdline ?? '').split(/\s+/).filter((a) => a !== '' && !a.startsWith('console=')).join(' ');
}

/** The command line of a state boot of exactly `version` on a board: its bootenv, and what kexec passes to a trial. */
export function boardCmdline(console: string, version: string, cmdline: string | undefined): string {
  return joinArgs('cairn.mode=state', `cairn.version=${version}`, 'panic=10', KEEP_WATCHDOG_ARG, console, withoutConsoles(cmdline));
}

/** The command line the loader itself passes: the version's, and that it does not count. */
export function loaderCmdline(versionCmdline: string): string {
  return joinArgs(versionCmdline, FIXED_LOADER_ARG);
}

/** The record as a file for the builder to put on CAIRN_STATE. */
export function loaderRecord(rec: LoaderRecord): { dest: string; content: string } {
  return { dest: LOADER_REL, content: `${JSON.stringify(rec, null, 2)}\n` };
}

/** Reads the record; a record that is not one says what is wrong. */
export function parseLoaderRecord(text: string, where: string): LoaderRecord {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new Error(`${where} is not JSON: ${(e as Error).message}`);
  }
  const r = v as Partial<LoaderRecord>;
  if (!r || typeof r !== 'object' || !LOADER_BOARDS.includes(r.board as LoaderBoard) || typeof r.console !== 'string') {
    throw new Error(`${where} must be {"board": ${LOADER_BOARDS.map((b) => `"${b}"`).join(' or ')}, "console": "console=..."}`);
  }
  return { board: r.board as LoaderBoard, console: r.console };
}
