/**
 * What differs between the arches cairn builds for, in one table: Debian's
 * name, the kernel package, the serial console of the generic machine, the
 * modules the first stage adds to its common list, and the modules the
 * init loads at every boot (/etc/modules-load.d/cairn-arch.conf). A board
 * (boards/) adds its own on top.
 */
import type { Arch } from './types.js';

export interface ArchProfile {
  /** mmdebstrap --architectures */
  debian: string;
  kernelPackage: string;
  /** The consoles of the generic machine (PC, QEMU virt, UEFI servers). */
  console: string;
  /** First-stage modules beyond the common list (src/builder/initramfs/modules.ts). */
  initramfsModules: readonly string[];
  /**
   * Modules the init loads at boot. The power button reaches the init
   * through evdev: the ACPI button on PCs and UEFI arm64 machines, gpio-keys
   * on device-tree boards; 32-bit ARM has no ACPI (no `button` module).
   */
  modulesLoad: readonly string[];
}

export const ARCH_TABLE: Record<Arch, ArchProfile> = {
  amd64: {
    debian: 'amd64',
    kernelPackage: 'linux-image-amd64',
    console: 'console=ttyS0,115200 console=tty0',
    initramfsModules: ['e1000', 'e1000e'],
    modulesLoad: ['evdev', 'button'],
  },
  arm64: {
    debian: 'arm64',
    kernelPackage: 'linux-image-arm64',
    console: 'console=ttyAMA0,115200 console=tty0',
    initramfsModules: [],
    modulesLoad: ['evdev', 'button', 'gpio_keys'],
  },
  armv7: {
    debian: 'armhf',
    kernelPackage: 'linux-image-armmp-lpae',
    console: 'console=ttyAMA0,115200 console=tty0',
    initramfsModules: [],
    modulesLoad: ['evdev', 'gpio_keys'],
  },
};

/** /etc/modules-load.d/ file the system stage writes from the arch (and board) profile. */
export const ARCH_MODULES_FILE = 'etc/modules-load.d/cairn-arch.conf';

export function renderModulesLoad(arch: Arch, extra: readonly string[] = []): string {
  const names = [...new Set([...ARCH_TABLE[arch].modulesLoad, ...extra])];
  return `# Written by cairn build from the ${arch} profile${extra.length ? ' and the board' : ''} (src/builder/arches.ts).\n${names.join('\n')}\n`;
}
