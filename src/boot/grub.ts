/**
 * The boot decision of ./state.ts (choose) in GRUB script, and GRUB's menu
 * on the state partition built around it. GRUB has no arithmetic, so the
 * try count is lowered through a spelled-out chain (MAX_TRIES steps).
 *
 * The functions read cairn_active, cairn_fallback, cairn_trial, cairn_tries
 * (loaded from grubenv), and the folder of the versions (cairn_sys) and the
 * environment file (cairn_env); they set boot_version, boot_kind
 * (trial|active|fallback, empty when nothing is bootable) and save
 * cairn_tries when it changed.
 */
import { GRUBENV, MAX_TRIES, SYSTEM_DIR } from './state.js';

/** GRUB script: the functions cairn_bootable and cairn_choose. */
export function grubChooseFunctions(): string {
  const lower: string[] = [];
  for (let n = 1; n <= MAX_TRIES; n++) lower.push(`    ${n === 1 ? 'if' : 'elif'} [ "$cairn_tries" = ${n} ]; then set cairn_left=${n - 1}`);
  return [
    'function cairn_bootable {',
    '  set cairn_ok=',
    '  if [ -f "$cairn_sys/$1/kernel" ]; then',
    '    if [ -f "$cairn_sys/$1/initrd" ]; then',
    '      if [ -f "$cairn_sys/$1/rootfs.squashfs" ]; then set cairn_ok=1; fi',
    '    fi',
    '  fi',
    '}',
    'function cairn_choose {',
    '  set boot_version=',
    '  set boot_kind=',
    '  set cairn_save=',
    '  if [ -n "$cairn_trial" ]; then',
    '    set cairn_left=',
    ...lower,
    '    fi',
    '    cairn_bootable "$cairn_trial"',
    '    if [ -z "$cairn_ok" ]; then set cairn_left=; fi',
    '    if [ -n "$cairn_left" ]; then',
    '      set cairn_tries="$cairn_left"',
    '      set boot_version="$cairn_trial"',
    '      set boot_kind=trial',
    '      set cairn_save=1',
    '    elif [ "$cairn_tries" != 0 ]; then',
    '      set cairn_tries=0',
    '      set cairn_save=1',
    '    fi',
    '  fi',
    '  if [ -z "$boot_version" ]; then',
    '    cairn_bootable "$cairn_active"',
    '    if [ -n "$cairn_active" -a -n "$cairn_ok" ]; then',
    '      set boot_version="$cairn_active"',
    '      set boot_kind=active',
    '    elif [ -n "$cairn_fallback" ]; then',
    '      cairn_bootable "$cairn_fallback"',
    '      if [ -n "$cairn_ok" ]; then',
    '        set boot_version="$cairn_fallback"',
    '        set boot_kind=fallback',
    '      fi',
    '    fi',
    '  fi',
    '  if [ -n "$cairn_save" ]; then save_env -f "$cairn_env" cairn_tries; fi',
    '}',
  ].join('\n');
}

/** Clears the state variables and loads them from `$cairn_env`. */
export function grubLoadState(): string {
  return ['set cairn_active=', 'set cairn_fallback=', 'set cairn_trial=', 'set cairn_tries=', 'load_env -f "$cairn_env" cairn_active cairn_fallback cairn_trial cairn_tries'].join('\n');
}

/**
 * GRUB's menu on the state partition: the chosen version first, then the
 * one to fall back to (GRUB's `fallback` boots it when the first kernel or
 * initrd does not load), then a rescue shell. Each version's kernel command
 * line comes from its bootenv; `defaultArgs` stands in for a version
 * without one.
 */
export function renderStateGrubCfg(opts: { terminal: string[]; defaultArgs: string }): string {
  const entry = (title: string, version: string, args: string, extra = ''): string[] => [
    `menuentry "${title}" {`,
    `  linux ${SYSTEM_DIR}/${version}/kernel ${args} cairn.version=${version}${extra}`,
    `  initrd ${SYSTEM_DIR}/${version}/initrd`,
    '}',
  ];
  return [
    '# cairn: boots the version that cairn/grub/grubenv names (see cairn/system on this partition)',
    ...opts.terminal,
    'set timeout=3',
    'set default=0',
    `set cairn_sys=${SYSTEM_DIR}`,
    `set cairn_env=${GRUBENV}`,
    grubChooseFunctions(),
    grubLoadState(),
    'cairn_choose',
    '# the entry to fall back to: the active version after a trial, the fallback after the active one',
    'set alt_version=',
    'if [ "$boot_kind" = trial ]; then set alt_version="$cairn_active"',
    'elif [ "$boot_kind" = active ]; then set alt_version="$cairn_fallback"',
    'fi',
    `set cairn_cmdline="${opts.defaultArgs}"`,
    'if [ -n "$alt_version" ]; then load_env -f "$cairn_sys/$alt_version/bootenv" cairn_cmdline; fi',
    'set alt_cmdline="$cairn_cmdline"',
    `set cairn_cmdline="${opts.defaultArgs}"`,
    'load_env -f "$cairn_sys/$boot_version/bootenv" cairn_cmdline',
    'set boot_note=""',
    'if [ "$boot_kind" = trial ]; then set boot_note=" (trial, $cairn_tries tries left after this one)"; fi',
    'if [ -n "$alt_version" ]; then set fallback=1; fi',
    '# menu entries run in their own scope: only exported variables reach them',
    'export boot_version boot_note alt_version cairn_cmdline alt_cmdline',
    'if [ -z "$boot_version" ]; then echo "cairn: no bootable version in $cairn_sys (grubenv: active=$cairn_active fallback=$cairn_fallback trial=$cairn_trial)"; fi',
    '',
    ...entry('cairn ${boot_version}${boot_note}', '${boot_version}', '${cairn_cmdline}'),
    'if [ -n "$alt_version" ]; then',
    ...entry('cairn ${alt_version}', '${alt_version}', '${alt_cmdline}').map((l) => `  ${l}`),
    'fi',
    ...entry('cairn ${boot_version} (rescue shell)', '${boot_version}', '${cairn_cmdline}', ' cairn.rescue cairn.debug'),
    '',
  ].join('\n');
}
