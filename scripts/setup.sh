#!/usr/bin/env bash
# Installs what cairn needs on a fresh Debian or Ubuntu machine with Node.js 20:
# the host packages (through apt-get when run as root) and the npm packages
# (npm ci), then bundles the CLI. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

HOST_PACKAGES=(
  mmdebstrap debian-archive-keyring arch-test   # root filesystems from Debian packages
  squashfs-tools zstd xz-utils cpio kmod        # squashfs, initramfs, module index
  xorriso grub-common grub-pc-bin grub-efi-amd64-bin mtools dosfstools e2fsprogs fdisk  # iso and disk images
  qemu-utils skopeo                             # qcow2, OCI checks
  openssh-client sqlite3 wpasupplicant          # tests: ssh into booted nodes, datastore checks, Wi-Fi config parsing
  cloud-image-utils                             # tests: cloud-init's own seeds (cloud-localds)
  qemu-system-x86 qemu-system-arm qemu-efi-aarch64 qemu-efi-arm ovmf ipxe-qemu  # boots (qemu-efi-arm: AAVMF32 for armv7 UEFI)
  qemu-user-static binfmt-support busybox-static # foreign arches, first stage
)

missing=()
for p in "${HOST_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "cairn setup: installing host packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "cairn setup: these Debian packages are missing: ${missing[*]}" >&2
    echo "Install them as root, then run this again:" >&2
    echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
fi

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "cairn setup: Node.js 20 or later is needed (found: $(node --version 2>/dev/null || echo none))." >&2
  exit 1
fi

# node-pty builds against Node's headers: use the installed ones when there
# are (no download from nodejs.org needed).
if [ -z "${npm_config_nodedir:-}" ] && [ -f /usr/include/node/node_version.h ]; then
  export npm_config_nodedir=/usr
fi
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "cairn setup: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent build
