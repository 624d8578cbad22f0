/**
 * Module profiles: which kernel modules (globs relative to
 * /lib/modules/<release>/kernel/) and firmware (globs relative to
 * /lib/firmware/) an image keeps. Modules the kept ones depend on are kept
 * too (from modules.dep). Pure data and matching; the prune stage acts on it.
 */
import type { Arch } from './types.js';
import type { ModuleProfileName } from './spec.js';

export interface ModuleProfile {
  modules: string[];
  firmware: string[];
}

/** Boot and root: what the first stage needs to find and mount the system. */
const BOOT = [
  'fs/squashfs/**',
  'fs/overlayfs/**',
  'fs/ext4/**',
  'fs/jbd2/**',
  'fs/mbcache.*',
  'fs/fat/**',
  'fs/isofs/**',
  'fs/nls/nls_cp437.*',
  'fs/nls/nls_iso8859-1.*',
  'fs/nls/nls_utf8.*',
  'drivers/virtio/**',
  'drivers/block/virtio_blk.*',
  'drivers/block/loop.*',
  'drivers/scsi/virtio_scsi.*',
  'drivers/scsi/sd_mod.*',
  'drivers/scsi/sr_mod.*',
  'drivers/scsi/sg.*',
  'drivers/cdrom/**',
  'drivers/ata/**',
  'drivers/nvme/**',
  'drivers/char/virtio_console.*',
  'drivers/char/hw_random/**',
  // the ACPI power button (and gpio-keys on ARM boards) through evdev: clean shutdowns
  'drivers/acpi/button.*',
  'drivers/input/evdev.*',
  'drivers/input/keyboard/gpio_keys.*',
  'lib/**',
  'crypto/**',
  'arch/*/crypto/**',
];

const USB_SD = [
  'drivers/usb/core/**',
  'drivers/usb/common/**',
  'drivers/usb/host/**',
  'drivers/usb/storage/**',
  'drivers/usb/dwc2/**',
  'drivers/usb/dwc3/**',
  'drivers/usb/phy/**',
  'drivers/hid/hid.*',
  'drivers/hid/hid-generic.*',
  'drivers/hid/usbhid/**',
  'drivers/mmc/**',
];

const WIRED = [
  'drivers/net/virtio_net.*',
  'drivers/net/net_failover.*',
  'net/core/failover.*',
  'drivers/net/mii.*',
  'drivers/net/mdio/**',
  'drivers/net/phy/**',
  'drivers/net/pcs/**',
  'drivers/net/usb/**',
  'drivers/net/vmxnet3/**',
  'drivers/net/hyperv/**',
  'drivers/net/ethernet/intel/e100.*',
  'drivers/net/ethernet/intel/e1000/**',
  'drivers/net/ethernet/intel/e1000e/**',
  'drivers/net/ethernet/intel/igb/**',
  'drivers/net/ethernet/intel/igc/**',
  'drivers/net/ethernet/intel/ixgbe/**',
  'drivers/net/ethernet/intel/i40e/**',
  'drivers/net/ethernet/realtek/**',
  'drivers/net/ethernet/broadcom/tg3.*',
  'drivers/net/ethernet/broadcom/genet/**',
  'drivers/net/ethernet/broadcom/bnx2.*',
  'drivers/net/ethernet/stmicro/**',
  'drivers/net/ethernet/marvell/**',
  'drivers/net/ethernet/amd/**',
];

const WIFI = [
  'net/wireless/**',
  'net/mac80211/**',
  'net/rfkill/**',
  'drivers/net/wireless/intel/iwlwifi/**',
  'drivers/net/wireless/realtek/**',
  'drivers/net/wireless/broadcom/brcm80211/**',
  'drivers/net/wireless/ath/ath.*',
  'drivers/net/wireless/ath/ath9k/**',
  'drivers/net/wireless/ath/ath10k/**',
  'drivers/net/wireless/mediatek/mt76/**',
];

/** What k3s and its CNI (flannel: vxlan, wireguard) need. */
const K3S = [
  'net/netfilter/**',
  'net/ipv4/netfilter/**',
  'net/ipv6/netfilter/**',
  'net/bridge/**',
  'net/802/**',
  'net/llc/**',
  'net/8021q/**',
  'net/sched/**',
  'net/ipv4/ip_tunnel.*',
  'net/ipv4/udp_tunnel.*',
  'net/ipv4/ipip.*',
  'net/ipv4/tunnel4.*',
  'net/ipv6/**',
  'net/vmw_vsock/**',
  'net/xfrm/**',
  'net/key/**',
  'drivers/net/vxlan/**',
  'drivers/net/veth.*',
  'drivers/net/dummy.*',
  'drivers/net/tun.*',
  'drivers/net/macvlan.*',
  'drivers/net/ipvlan/**',
  'drivers/net/wireguard/**',
  'drivers/net/bonding/**',
  'fs/fuse/**',
  'fs/nfs/**',
  'fs/nfs_common/**',
  'fs/lockd/**',
  'net/sunrpc/**',
  'drivers/md/dm-mod.*',
  'drivers/block/rbd.*',
  'kernel/**',
  // virtualisation on the node (KubeVirt, Kata): kvm and its vendor modules
  'arch/*/kvm/**',
  'virt/**',
  // the hardware watchdog an upgrade's trial boot arms (softdog where there is none)
  'drivers/watchdog/**',
];

/** ARM boards: clocks, regulators, PCIe and PHY drivers the SoC needs to reach storage and network. */
const ARM_PLATFORM = [
  'drivers/clk/**',
  'drivers/phy/**',
  'drivers/reset/**',
  'drivers/pinctrl/**',
  'drivers/regulator/**',
  'drivers/gpio/**',
  'drivers/soc/**',
  'drivers/mfd/**',
  'drivers/pci/**',
  'drivers/mailbox/**',
  'drivers/firmware/**',
  'drivers/i2c/busses/**',
  'drivers/rtc/**',
  'drivers/thermal/**',
  'drivers/watchdog/**',
  'drivers/dma/**',
  'drivers/nvmem/**',
  'drivers/pwm/**',
  'drivers/hwmon/**',
  'drivers/cpufreq/**',
  'drivers/iommu/**',
  'drivers/irqchip/**',
  'drivers/bus/**',
];

/** Firmware for the NICs above (only present when the spec adds non-free-firmware packages). */
const FIRMWARE = ['rtl_nic/**', 'rtlwifi/**', 'rtw88/**', 'iwlwifi-*', 'intel/**', 'brcm/**', 'cypress/**', 'ath9k_htc/**', 'ath10k/**', 'mediatek/**', 'regulatory.db*'];

export function moduleProfile(name: ModuleProfileName, arch: Arch): ModuleProfile {
  switch (name) {
    case 'all':
      return { modules: ['**'], firmware: ['**'] };
    case 'minimal':
      return { modules: [...BOOT, 'drivers/net/virtio_net.*', 'net/core/failover.*', 'drivers/net/net_failover.*', ...K3S], firmware: [] };
    case 'default':
      return { modules: [...BOOT, ...USB_SD, ...WIRED, ...WIFI, ...K3S, ...(arch === 'amd64' ? [] : ARM_PLATFORM)], firmware: FIRMWARE };
  }
}

/** A glob (`**`, `*`, `?`, `{a,b}`) as a regular expression over '/'-separated paths. */
export function globToRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*') {
      if (glob[i + 1] === '*') {
        i++;
        if (glob[i + 1] === '/') {
          i++;
          re += '(?:.*/)?';
        } else re += '.*';
      } else re += '[^/]*';
    } else if (c === '?') re += '[^/]';
    else if (c === '{') {
      const end = glob.indexOf('}', i);
      if (end < 0) re += '\\{';
      else {
        re += `(?:${glob.slice(i + 1, end).split(',').map((s) => s.replace(/[.+^$()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*')).join('|')})`;
        i = end;
      }
    } else re += c.replace(/[.+^$()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

export function matcher(globs: string[]): (p: string) => boolean {
  const res = globs.map(globToRegExp);
  return (p) => res.some((r) => r.test(p));
}
