/** Which arches each output format is made for, and the parsing of --arch / --format lists. */
import { UserError } from '../errors.js';
import { ARCHES, FORMATS, type Arch, type Format } from './types.js';

export const formatArches: Record<Format, readonly Arch[]> = {
  iso: ['amd64', 'arm64'],
  pxe: ['amd64', 'arm64', 'armv7'],
  raw: ['amd64', 'arm64', 'armv7'],
  qcow2: ['amd64', 'arm64', 'armv7'],
  oci: ['amd64', 'arm64', 'armv7'],
};

/** Debian's and other common names for our arches. */
const ARCH_ALIASES: Record<string, Arch> = { x86_64: 'amd64', aarch64: 'arm64', armhf: 'armv7', arm: 'armv7' };

export function parseArches(list: string): Arch[] {
  const out: Arch[] = [];
  const bad: string[] = [];
  for (const raw of list.split(',').map((s) => s.trim()).filter(Boolean)) {
    const a = (ARCHES as readonly string[]).includes(raw) ? (raw as Arch) : ARCH_ALIASES[raw];
    if (a) {
      if (!out.includes(a)) out.push(a);
    } else bad.push(raw);
  }
  if (bad.length) throw new UserError(`unknown arch ${bad.map((b) => `"${b}"`).join(', ')}`, `arches are ${ARCHES.join(', ')}`);
  if (out.length === 0) throw new UserError('no arch given', `arches are ${ARCHES.join(', ')}`);
  return out;
}

export function parseFormats(list: string): Format[] {
  const items = list.split(',').map((s) => s.trim()).filter(Boolean);
  const bad = items.filter((f) => !(FORMATS as readonly string[]).includes(f));
  if (bad.length) throw new UserError(`unknown format ${bad.map((b) => `"${b}"`).join(', ')}`, `formats are ${FORMATS.join(', ')}`);
  if (items.length === 0) throw new UserError('no format given', `formats are ${FORMATS.join(', ')}`);
  return [...new Set(items)] as Format[];
}

/** Every (arch, format) pair the build makes; an impossible pair is an error naming it. */
export function checkFormatArches(arches: Arch[], formats: Format[]): void {
  const bad = arches.flatMap((a) => formats.filter((f) => !formatArches[f].includes(a)).map((f) => `${f} for ${a}`));
  if (bad.length) {
    throw new UserError(
      `cannot build ${bad.join(', ')}`,
      formats.map((f) => `${f}: ${formatArches[f].join(', ')}`).join('; '),
    );
  }
}
