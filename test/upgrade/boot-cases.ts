// One table of boot decisions (src/boot/state.ts: choose). The TypeScript
// decision, the first stage's sh (src/boot/shell.ts) and GRUB's script
// (src/boot/grub.ts) are each tested against it, so the three cannot drift.
import type { BootState } from '../../src/boot/state.js';

export type Files = 'all' | 'kernel-only' | 'no-squashfs';

export interface BootCase {
  name: string;
  /** grubenv variables as found on disk (raw strings: a case may hold a bad count). */
  env: Record<string, string>;
  /** Versions installed, and which of their files are there (default: all). */
  present: Record<string, Files>;
  /** What boots, and as what; none when nothing is bootable. */
  want: { version?: string; kind?: 'trial' | 'active' | 'fallback' };
  /** The state saved afterwards (what grubenv reads as). */
  after: BootState;
}

export const BOOT_CASES: BootCase[] = [
  { name: 'active only', env: { cairn_active: '1.0' }, present: { '1.0': 'all' }, want: { version: '1.0', kind: 'active' }, after: { active: '1.0' } },
  { name: 'active missing: the fallback', env: { cairn_active: '2.0', cairn_fallback: '1.0' }, present: { '1.0': 'all' }, want: { version: '1.0', kind: 'fallback' }, after: { active: '2.0', fallback: '1.0' } },
  { name: 'active without its squashfs: the fallback', env: { cairn_active: '2.0', cairn_fallback: '1.0' }, present: { '1.0': 'all', '2.0': 'no-squashfs' }, want: { version: '1.0', kind: 'fallback' }, after: { active: '2.0', fallback: '1.0' } },
  { name: 'nothing bootable', env: { cairn_active: '2.0', cairn_fallback: '1.0' }, present: { '2.0': 'kernel-only' }, want: {}, after: { active: '2.0', fallback: '1.0' } },
  { name: 'a trial with 3 tries: booted, 2 left', env: { cairn_active: '1.0', cairn_trial: '2.0', cairn_tries: '3' }, present: { '1.0': 'all', '2.0': 'all' }, want: { version: '2.0', kind: 'trial' }, after: { active: '1.0', trial: '2.0', tries: 2 } },
  { name: 'the last try', env: { cairn_active: '1.0', cairn_fallback: '0.9', cairn_trial: '2.0', cairn_tries: '1', cairn_deadline: '300' }, present: { '0.9': 'all', '1.0': 'all', '2.0': 'all' }, want: { version: '2.0', kind: 'trial' }, after: { active: '1.0', fallback: '0.9', trial: '2.0', tries: 0, deadline: 300 } },
  { name: 'tries spent: the active version', env: { cairn_active: '1.0', cairn_trial: '2.0', cairn_tries: '0' }, present: { '1.0': 'all', '2.0': 'all' }, want: { version: '1.0', kind: 'active' }, after: { active: '1.0', trial: '2.0', tries: 0 } },
  { name: 'the trial is not installed: given up', env: { cairn_active: '1.0', cairn_trial: '2.0', cairn_tries: '2' }, present: { '1.0': 'all' }, want: { version: '1.0', kind: 'active' }, after: { active: '1.0', trial: '2.0', tries: 0 } },
  { name: 'the trial lacks its initrd: given up', env: { cairn_active: '1.0', cairn_trial: '2.0', cairn_tries: '2' }, present: { '1.0': 'all', '2.0': 'kernel-only' }, want: { version: '1.0', kind: 'active' }, after: { active: '1.0', trial: '2.0', tries: 0 } },
  { name: 'nine tries, the most', env: { cairn_active: '1.0', cairn_trial: '2.0', cairn_tries: '9' }, present: { '1.0': 'all', '2.0': 'all' }, want: { version: '2.0', kind: 'trial' }, after: { active: '1.0', trial: '2.0', tries: 8 } },
  { name: 'a count out of range is spent', env: { cairn_active: '1.0', cairn_trial: '2.0', cairn_tries: '12' }, present: { '1.0': 'all', '2.0': 'all' }, want: { version: '1.0', kind: 'active' }, after: { active: '1.0', trial: '2.0', tries: 0 } },
  { name: 'a count that is no number is spent', env: { cairn_active: '1.0', cairn_trial: '2.0', cairn_tries: 'x' }, present: { '1.0': 'all', '2.0': 'all' }, want: { version: '1.0', kind: 'active' }, after: { active: '1.0', trial: '2.0', tries: 0 } },
  { name: 'a trial while the active version is missing', env: { cairn_active: '1.0', cairn_fallback: '0.9', cairn_trial: '2.0', cairn_tries: '2' }, present: { '0.9': 'all', '2.0': 'all' }, want: { version: '2.0', kind: 'trial' }, after: { active: '1.0', fallback: '0.9', trial: '2.0', tries: 1 } },
  { name: 'tries spent and the active version missing: the fallback', env: { cairn_active: '1.0', cairn_fallback: '0.9', cairn_trial: '2.0', cairn_tries: '0', cairn_failed: '1.5' }, present: { '0.9': 'all', '2.0': 'all' }, want: { version: '0.9', kind: 'fallback' }, after: { active: '1.0', fallback: '0.9', trial: '2.0', tries: 0, failed: '1.5' } },
];

/** The files to create for a case's versions (relative to its system folder). */
export function caseFiles(c: BootCase): string[] {
  const out: string[] = [];
  for (const [v, files] of Object.entries(c.present)) {
    out.push(`${v}/kernel`);
    if (files !== 'kernel-only') out.push(`${v}/initrd`);
    if (files === 'all') out.push(`${v}/rootfs.squashfs`);
  }
  return out;
}
