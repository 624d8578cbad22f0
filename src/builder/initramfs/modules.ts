/**
 * Which kernel modules the first stage needs, and the files that hold them.
 *
 * The decisions are pure functions over the text of the kernel's own index
 * files (modules.dep, modules.alias, modules.softdep, modules.builtin), so
 * they are tested with plain strings. When a root has no modules.dep (an
 * unpacked foreign-arch root whose maintainer scripts never ran depmod), the
 * caller builds the same index from each module's `depends=` field instead.
 */
import { ARCH_TABLE } from '../arches.js';
import type { Arch } from '../types.js';

/** Modules every first stage loads when the kernel has them (built-in ones are skipped). */
export const BASE_MODULES: readonly string[] = [
  // buses and disks
  'virtio', 'virtio_ring', 'virtio_pci', 'virtio_mmio', 'virtio_blk', 'virtio_scsi',
  'scsi_mod', 'sd_mod', 'sr_mod', 'cdrom', 'ahci', 'ata_piix', 'ata_generic', 'nvme',
  'usb_storage', 'uas', 'xhci_pci', 'xhci_plat_hcd', 'ehci_pci', 'ehci_platform', 'ohci_pci', 'uhci_hcd',
  'mmc_block', 'sdhci', 'sdhci_pci', 'sdhci_acpi', 'sdhci_pltfm', 'sdhci_of_arasan', 'sdhci_iproc', 'dw_mmc',
  // filesystems
  'crc32c_generic', 'crc32c_intel', 'ext4', 'isofs', 'vfat', 'nls_cp437', 'nls_iso8859_1', 'nls_ascii', 'nls_utf8',
  'squashfs', 'overlay', 'loop',
  // network boot
  'af_packet', 'virtio_net',
];

/**
 * The modules of BASE_MODULES every first stage loads whatever the machine:
 * the file systems, loop, the checksum ext4 asks for, packet sockets for
 * DHCP. The rest are drivers, loaded for the devices that ask for them
 * (their modalias), and every one of them only when the system is not
 * found with those (see the init script).
 */
export const ALWAYS_MODULES: readonly string[] = [
  'crc32c_generic', 'ext4', 'isofs', 'vfat', 'nls_cp437', 'nls_iso8859_1', 'nls_ascii', 'nls_utf8',
  'squashfs', 'overlay', 'loop', 'af_packet',
];

/** Per-arch additions to BASE_MODULES. */
export const ARCH_MODULES: Record<Arch, readonly string[]> = {
  amd64: ARCH_TABLE.amd64.initramfsModules,
  arm64: ARCH_TABLE.arm64.initramfsModules,
  armv7: ARCH_TABLE.armv7.initramfsModules,
};

/** Modules that must be present (as a module or built in) or the first stage cannot mount a root. */
export const REQUIRED_MODULES: readonly string[] = ['squashfs', 'overlay', 'loop'];

/** The name a module file is known by: basename without `.ko[.xz|.zst|.gz]`, with `-` as `_`. */
export function moduleName(file: string): string {
  const base = file.slice(file.lastIndexOf('/') + 1);
  return base.replace(/\.ko(\.(xz|zst|gz))?$/, '').replace(/-/g, '_');
}

/** The path a module has in the initramfs: compression suffix removed (the builder unpacks modules). */
export function unpackedPath(file: string): string {
  return file.replace(/\.ko\.(xz|zst|gz)$/, '.ko');
}

export interface ModuleIndex {
  /** module file (relative to lib/modules/<release>) → the files it depends on, in depmod's order */
  deps: Map<string, string[]>;
  /** module name → module file */
  byName: Map<string, string>;
  /** alias (exact, no wildcard) → module names */
  aliases: Map<string, string[]>;
  /** aliases with a wildcard (the devices' modalias patterns), in the file's order */
  patterns: { pattern: string; name: string }[];
  /** module name → names or aliases it wants loaded first */
  softdeps: Map<string, string[]>;
  /** names of modules built into the kernel */
  builtin: Set<string>;
}

function lines(text: string): string[] {
  return text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
}

export function parseModulesDep(text: string): Map<string, string[]> {
  const deps = new Map<string, string[]>();
  for (const line of lines(text)) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const file = line.slice(0, colon).trim();
    const rest = line.slice(colon + 1).trim();
    deps.set(file, rest === '' ? [] : rest.split(/\s+/));
  }
  return deps;
}

export function parseAliases(text: string): Map<string, string[]> {
  const aliases = new Map<string, string[]>();
  for (const line of lines(text)) {
    const m = /^alias\s+(\S+)\s+(\S+)$/.exec(line);
    if (!m || /[*?[]/.test(m[1]!)) continue;
    const key = m[1]!;
    const list = aliases.get(key) ?? [];
    list.push(m[2]!.replace(/-/g, '_'));
    aliases.set(key, list);
  }
  return aliases;
}

export function parseAliasPatterns(text: string): { pattern: string; name: string }[] {
  const out: { pattern: string; name: string }[] = [];
  for (const line of lines(text)) {
    const m = /^alias\s+(\S+)\s+(\S+)$/.exec(line);
    if (m && /[*?[]/.test(m[1]!)) out.push({ pattern: m[1]!, name: m[2]!.replace(/-/g, '_') });
  }
  return out;
}

export function parseSoftdeps(text: string): Map<string, string[]> {
  const soft = new Map<string, string[]>();
  for (const line of lines(text)) {
    const m = /^softdep\s+(\S+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const name = m[1]!.replace(/-/g, '_');
    const words = m[2]!.split(/\s+/).filter((w) => w !== 'pre:' && w !== 'post:');
    soft.set(name, [...(soft.get(name) ?? []), ...words]);
  }
  return soft;
}

export function parseBuiltin(text: string): Set<string> {
  return new Set(lines(text).map(moduleName));
}

export function makeIndex(texts: { dep: string; alias?: string; softdep?: string; builtin?: string }): ModuleIndex {
  const deps = parseModulesDep(texts.dep);
  const byName = new Map<string, string>();
  for (const file of deps.keys()) byName.set(moduleName(file), file);
  return {
    deps,
    byName,
    aliases: parseAliases(texts.alias ?? ''),
    patterns: parseAliasPatterns(texts.alias ?? ''),
    softdeps: parseSoftdeps(texts.softdep ?? ''),
    builtin: parseBuiltin(texts.builtin ?? ''),
  };
}

/**
 * Leaves out of the index the modules whose file is gone (a pruned root
 * with a stale modules.dep), and those that need one that is gone.
 */
export function dropMissing(index: ModuleIndex, present: (file: string) => boolean): ModuleIndex {
  const gone = new Set([...index.deps.keys()].filter((f) => !present(f)));
  for (let changed = true; changed; ) {
    changed = false;
    for (const [file, deps] of index.deps) {
      if (!gone.has(file) && deps.some((d) => gone.has(d) || !index.deps.has(d))) {
        gone.add(file);
        changed = true;
      }
    }
  }
  if (gone.size === 0) return index;
  const deps = new Map([...index.deps].filter(([f]) => !gone.has(f)));
  const byName = new Map([...index.byName].filter(([, f]) => !gone.has(f)));
  return { ...index, deps, byName };
}

export interface ModuleSelection {
  /** Every module file to ship (the wanted ones and all they depend on), sorted. */
  files: string[];
  /** The names to load at boot, in order (soft dependencies first); built-in and absent ones are left out. */
  load: string[];
  /** Wanted names the kernel has built in. */
  builtin: string[];
  /** Wanted names this kernel has neither as a module nor built in. */
  absent: string[];
}

/** Resolves wanted module names (or aliases) to files, with dependencies and soft dependencies. */
export function selectModules(wanted: readonly string[], index: ModuleIndex): ModuleSelection {
  const files = new Set<string>();
  const load: string[] = [];
  const builtin: string[] = [];
  const absent: string[] = [];
  const visiting = new Set<string>();

  const resolveName = (raw: string): string | undefined => {
    const name = raw.replace(/-/g, '_');
    if (index.byName.has(name) || index.builtin.has(name)) return name;
    for (const target of index.aliases.get(raw) ?? index.aliases.get(name) ?? []) {
      if (index.byName.has(target)) return target;
    }
    for (const target of index.aliases.get(raw) ?? index.aliases.get(name) ?? []) {
      if (index.builtin.has(target)) return target;
    }
    return undefined;
  };

  const addFile = (file: string): void => {
    if (files.has(file)) return;
    files.add(file);
    for (const dep of index.deps.get(file) ?? []) addFile(dep);
  };

  const want = (raw: string, top: boolean): void => {
    const name = resolveName(raw);
    if (name === undefined) {
      if (top) absent.push(raw);
      return;
    }
    if (visiting.has(name)) return;
    visiting.add(name);
    for (const soft of index.softdeps.get(name) ?? []) want(soft, false);
    if (index.builtin.has(name) && !index.byName.has(name)) {
      if (top) builtin.push(name);
      return;
    }
    addFile(index.byName.get(name)!);
    if (!load.includes(name)) load.push(name);
  };

  for (const w of wanted) want(w, true);
  return { files: [...files].sort(), load, builtin, absent };
}

/**
 * modules.dep for the initramfs: the selected files only, with the names
 * they have there (unpacked), keeping depmod's order of dependencies.
 */
export function renderModulesDep(selection: ModuleSelection, index: ModuleIndex): string {
  return selection.files
    .map((file) => {
      const deps = (index.deps.get(file) ?? []).map(unpackedPath);
      return `${unpackedPath(file)}:${deps.length ? ' ' + deps.join(' ') : ''}\n`;
    })
    .join('');
}

/**
 * modules.alias for the initramfs: the exact aliases of the shipped modules
 * (so the kernel's requests resolve), then their modalias patterns, in
 * depmod's order (so `modprobe <a device's modalias>` finds its driver).
 */
export function renderModulesAlias(selection: ModuleSelection, index: ModuleIndex): string {
  const shipped = new Set(selection.files.map(moduleName));
  const out: string[] = [];
  for (const [alias, names] of [...index.aliases.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    for (const name of names) if (shipped.has(name)) out.push(`alias ${alias} ${name}\n`);
  }
  for (const { pattern, name } of index.patterns) if (shipped.has(name)) out.push(`alias ${pattern} ${name}\n`);
  return out.join('');
}

/**
 * What the first stage loads on every boot, before it knows the machine:
 * the modules of ALWAYS_MODULES and the board's own list (`extra`), in the
 * order of `selection.load`. Empty when no shipped driver has a modalias
 * pattern (a root whose modules.alias is missing): the first stage then
 * loads its whole list, as it has nothing to match devices with.
 */
export function alwaysLoaded(selection: ModuleSelection, index: ModuleIndex, extra: readonly string[] = []): string[] {
  const shipped = new Set(selection.files.map(moduleName));
  if (!index.patterns.some((p) => shipped.has(p.name))) return [];
  const always = new Set([...ALWAYS_MODULES, ...extra.map((m) => m.replace(/-/g, '_'))]);
  return selection.load.filter((m) => always.has(m));
}

/** Reads `depends=` out of a module's .modinfo section (for roots without modules.dep). */
export function modinfoDepends(ko: Buffer): string[] {
  const marker = Buffer.from('\0depends=', 'latin1');
  let at = ko.indexOf(marker);
  while (at >= 0) {
    const start = at + marker.length;
    const end = ko.indexOf(0, start);
    const value = ko.subarray(start, end < 0 ? ko.length : end).toString('latin1');
    if (/^[A-Za-z0-9_,-]*$/.test(value)) return value === '' ? [] : value.split(',').map((s) => s.replace(/-/g, '_'));
    at = ko.indexOf(marker, start);
  }
  return [];
}

/**
 * Orders the dependency list of one module the way depmod does: a module's
 * own dependencies come after it, so loading the list from the end works.
 */
export function depmodOrder(name: string, direct: (n: string) => string[]): string[] {
  const out: string[] = [];
  const seen = new Set<string>([name]);
  const visit = (n: string): void => {
    for (const d of direct(n)) {
      if (seen.has(d)) continue;
      seen.add(d);
      visit(d);
      out.push(d);
    }
  };
  visit(name);
  return out.reverse();
}
