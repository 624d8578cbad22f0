/**
 * The first stage: /init of the cairn initramfs, a POSIX sh script that
 * busybox runs as PID 1. It finds the system, mounts its squashfs read-only
 * as the root, lays out the writable parts and switches root.
 *
 * Where the system comes from (cairn.mode= on the command line picks one;
 * GRUB on the ISO passes cairn.mode=live; without it: state, then live):
 *   net    cairn.root_url=URL: DHCP on each interface, the squashfs fetched
 *          with wget into RAM (optional cairn.root_sha256= check).
 *   state  the ext4 partition labelled CAIRN_STATE: the versions in
 *          cairn/system/<version>/, the boot state in cairn/grub/grubenv,
 *          what persists in cairn/data/{etc,var,home,opt} (see
 *          src/boot/state.ts). GRUB chooses the version and passes
 *          cairn.version=; without it the same choice is made here. A
 *          loader that does not count tries (the Raspberry Pi's firmware,
 *          L4TLauncher on Jetson) always starts the proven version's kernel
 *          and says so with cairn.loader=fixed: the choice is made here, and
 *          a trial (or a fallback) is started from here with kexec, its own
 *          kernel, initramfs and command line (src/boot/loader.ts). A trial
 *          version's squashfs is checked against its SHA256SUMS; one that
 *          fails it or does not mount is given up (src/boot: abandon) and
 *          the node reboots into the version before it.
 *   live   the ISO9660 medium labelled CAIRN_LIVE with cairn/rootfs.squashfs.
 *
 * The new root: the squashfs read-only; tmpfs on /run and /tmp; /etc an
 * overlay over the image's /etc (upper layer in cairn/data/etc on the state
 * partition, in RAM on a live or net boot; the image's /etc itself is bound
 * read-only at /run/cairn/image-etc, for the init to tell the node's changes
 * from the image's: src/init/apply/persist.ts); /var, /home and /opt bound
 * from cairn/data (seeded from the image on first boot; RAM on a live or net
 * boot); the state partition mounted at /run/cairn/state and its cairn/
 * folder bound at /cairn. /run/cairn/boot.env records what was booted.
 * Then switch_root to tini and the TypeScript init.
 *
 * Before anything else the clock is set to the image's build time
 * (SOURCE_DATE_EPOCH in /etc/cairn-initramfs/release) when it reads
 * earlier: boards without a battery-backed clock start in 1970.
 *
 * CAIRN_STATE is checked with e2fsck -p before it is mounted: repaired
 * errors are logged; "reboot wanted" (exit 2) reboots; errors it cannot
 * repair mount it read-only, with /etc, /var, /home and /opt in RAM for that
 * boot (CAIRN_STATE_READONLY=1 in boot.env) and a message saying how to
 * repair it (with cairn.rescue, a shell is offered first). Seeding /var,
 * /home and /opt copies into a temporary folder, checks the copy, flushes it
 * and renames it into place, so a power cut never leaves a half seed that
 * is taken for a whole one.
 *
 * Command line: cairn.mode=state|live|net, cairn.root_url=, cairn.root_sha256=,
 * cairn.version=, cairn.loader=fixed, cairn.wait=SECONDS (how long to look for the system,
 * default 30), cairn.debug (trace), cairn.rescue (a shell instead of a reboot
 * when the system cannot be found, and before switching root with
 * cairn.rescue=pre), cairn.snapshot=0 (start the init from init.js, not from
 * its startup snapshot). k3os.* spellings are accepted for mode, debug, rescue.
 *
 * The script is kept free of shell "${" forms that a template literal would
 * take, so it reads as plain sh.
 */

import { shellStateFunctions } from '../../boot/shell.js';
import { CPU_ID, SNAPSHOT_DIR } from '../../init/startup-snapshot.js';

export const INIT_MARKER_SWITCHING = 'cairn-initramfs: switching root';
/** Printed when the clock read earlier than the image's build time and was set to it. */
export const INIT_MARKER_CLOCK = 'cairn-initramfs: clock set to ';

/**
 * The first stage's decisions about the clock, the state partition's check,
 * seeding and the modules it loads, as shell functions that the tests run
 * on their own (with log, date, e2fsck, cp, modprobe and reboot stubbed)
 * against a temporary folder. They use log, dbg, rescue_shell and RESCUE
 * from the script around them; look_for_system also find_system, WAIT,
 * MODE and DEVTMPFS.
 */
export const FIRST_STAGE_FUNCTIONS = String.raw`
# The clock: boards without a battery-backed clock start in 1970, when no
# certificate (k3s, TLS) is valid yet. It is never left earlier than the
# image's build time ($1, seconds); chrony corrects it once the network is up.
clock_not_before() {
  case "$1" in ''|*[!0-9]*) return 0 ;; esac
  now=$(date +%s 2>/dev/null)
  case "$now" in ''|*[!0-9]*) now=0 ;; esac
  [ "$now" -ge "$1" ] && return 0
  was=$(date -u -d "@$now" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null)
  if date -u -s "@$1" >/dev/null 2>&1; then
    log "clock set to $(date -u +%Y-%m-%dT%H:%M:%SZ), the image's build time (it read $was)"
  else
    log "warning: the clock reads $was, before the image's build time, and cannot be set"
  fi
  return 0
}

# The state partition's check before it is mounted (e2fsck -p: 0 clean,
# 1 repaired, 2 repaired but a reboot is wanted, 4 and more errors left or
# e2fsck could not run). Sets STATE_RO=1 when it must be mounted read-only:
# the boot goes on with /etc, /var, /home and /opt in RAM, so the node stays
# reachable, and says how to repair it; with cairn.rescue a shell is
# offered first and the check runs again when it is left.
check_state() {
  STATE_RO=
  if ! command -v e2fsck >/dev/null 2>&1; then
    log "warning: no e2fsck in the initramfs: CAIRN_STATE ($1) is mounted unchecked"
    return 0
  fi
  e2fsck -p "$1" >/tmp/e2fsck.log 2>&1
  rc=$?
  case "$rc" in
    0) dbg "CAIRN_STATE ($1) is clean" ;;
    1) log "CAIRN_STATE ($1): e2fsck repaired the file system" ;;
    2|3)
      log "CAIRN_STATE ($1): e2fsck repaired the file system and asks for a reboot: rebooting"
      sync
      reboot -f
      sleep 60
      ;;
    *)
      log "CAIRN_STATE ($1) has errors e2fsck -p cannot repair (exit $rc):"
      tail -n 5 /tmp/e2fsck.log | while read -r line; do log "  $line"; done
      if [ -n "$RESCUE" ]; then
        rescue_shell "repair it with: e2fsck -f $1   (then leave the shell: the check runs again)"
        check_state "$1"
        return
      fi
      log "booting with CAIRN_STATE read-only: /etc, /var, /home and /opt changes stay in RAM this boot"
      log "to repair it, boot with cairn.rescue and run: e2fsck -f $1"
      STATE_RO=1
      ;;
  esac
  return 0
}

# What a folder holds, for comparing a copy with its source: type, size,
# mode, owner and name of every entry but the folder itself (folders' sizes
# depend on the file system, so they have none).
tree_list() {
  (cd "$1" && find . ! -path . ! -type d -exec stat -c '%F %s %a %u:%g %n' {} + && find . ! -path . -type d -exec stat -c '%F %a %u:%g %n' {} +) | sort
}

# The init's startup snapshot of version $2 (src/init/startup-snapshot.ts),
# as the path node takes in the new root $1: when the node made one on this
# CPU and the last start from it ran. The CPU's feature lines go to
# ${CPU_ID} for the init. The ok marker is removed, on disk, before node
# starts from the blob (the init writes it back once it runs): a blob node
# cannot start from is tried once, not at every boot.
pick_snapshot() {
  grep -E '^(flags|Features|CPU implementer|CPU architecture|CPU variant|CPU part)[[:space:]]*:' /proc/cpuinfo | sort -u >"$1${CPU_ID}" 2>/dev/null || return 0
  s="${SNAPSHOT_DIR}/$2"
  [ -f "$1$s.blob" ] && [ -f "$1$s.ok" ] && [ -f "$1$s.cpu" ] || return 0
  [ "$(cat "$1$s.cpu")" = "$(cat "$1${CPU_ID}")" ] || return 0
  rm -f "$1$s.ok" && sync && echo "$s.blob"
}

# Seeds $2/$3 from the image's folder $1 the first time: copied into
# $2/.seed-$3, checked against the image, flushed, then renamed into place,
# so a folder that exists is always a whole seed. A temporary folder left
# by a power cut is removed and the copy made again. Fails (1) when the
# copy cannot be made whole.
seed_dir() {
  [ -d "$2/$3" ] && return 0
  seed_tmp="$2/.seed-$3"
  if [ -e "$seed_tmp" ]; then
    log "/$3: a seed was interrupted (power cut?); making it again"
    rm -rf "$seed_tmp" || return 1
  fi
  mkdir -p "$seed_tmp" || return 1
  if ! cp -a "$1/." "$seed_tmp/"; then
    log "warning: copying the image's /$3 to $2 failed"
    rm -rf "$seed_tmp"
    return 1
  fi
  if [ "$(tree_list "$1")" != "$(tree_list "$seed_tmp")" ]; then
    log "warning: the copy of the image's /$3 in $2 is not whole"
    rm -rf "$seed_tmp"
    return 1
  fi
  sync
  mv "$seed_tmp" "$2/$3" || return 1
  sync
  dbg "seeded /$3 in $2"
  return 0
}

# Modules. modules-always (file systems, loop: what every boot needs) loads
# beside the drivers the machine's devices ask for, by their modalias as
# udev's coldplug does, and then the drivers of the devices those found
# (disks behind a controller, virtio devices). Every driver of the list
# (modules) loads only when the system is not found with those: a device
# without a modalias, one that showed up late. Without modules-always (no
# modalias patterns to match), the whole list at once.
MODDIR=/etc/cairn-initramfs
SYSFS=/sys
SEEN=" "
ALL_LOADED=

# one modprobe for a list file (a process start is costly on a small
# board); only when that fails, one each, to say which did not load
load_list() {
  [ -f "$1" ] || return 0
  modprobe -a $(cat "$1") 2>/dev/null && return 0
  while read -r m; do
    [ -n "$m" ] || continue
    modprobe "$m" 2>/dev/null || dbg "module $m did not load"
  done <"$1"
  return 0
}

# The drivers of the devices not seen before (0: there were some).
coldplug() {
  [ -f "$MODDIR/modules-always" ] || return 1
  new=
  all=$(cat "$SYSFS"/bus/*/devices/*/modalias 2>/dev/null)
  set -f
  for a in $all; do
    case "$SEEN" in *" $a "*) ;; *) new="$new $a"; SEEN="$SEEN$a " ;; esac
  done
  [ -n "$new" ] && modprobe -a -q $new 2>/dev/null
  set +f
  [ -n "$new" ]
}

# Every driver of the list, once (0: loaded now).
load_all() {
  [ -z "$ALL_LOADED" ] || return 1
  ALL_LOADED=1
  [ -f "$MODDIR/modules-always" ] && dbg "the system is not found with the drivers the devices asked for: loading every driver"
  load_list "$MODDIR/modules"
  return 0
}

load_modules() {
  if [ -f "$MODDIR/modules-always" ]; then
    load_list "$MODDIR/modules-always" &
    always=$!
    coldplug
    wait $always
    coldplug && coldplug
  else
    load_all
  fi
  return 0
}

# Looks for the system (find_system) for up to $WAIT s. Before each wait
# the drivers of devices that showed up since load, then every driver.
look_for_system() {
  deadline=$(( $(cut -d. -f1 /proc/uptime) + WAIT ))
  said=
  while ! find_system; do
    if coldplug || load_all; then
      [ -n "$DEVTMPFS" ] || mdev -s 2>/dev/null
      continue
    fi
    now=$(cut -d. -f1 /proc/uptime)
    if [ "$now" -ge "$deadline" ]; then return 1; fi
    [ -z "$said" ] && log "waiting up to $WAIT s for the system (mode: $MODE)" && said=1
    sleep 1
    [ -n "$DEVTMPFS" ] || mdev -s 2>/dev/null
  done
  return 0
}
`;

export function renderInitScript(): string {
  return String.raw`#!/bin/busybox sh
# cairn first stage (generated by the cairn image builder)
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
umask 022

/bin/busybox mkdir -p /proc /sys /dev /run /tmp /mnt
/bin/busybox mount -t proc -o nosuid,nodev,noexec proc /proc
# the boot's timeline (cairn status --plot): this stage's times on the clock of /proc/uptime
read STAGE1_START _ </proc/uptime
/bin/busybox mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
# devtmpfs makes every device node, with the kernel's modes (/dev/null
# 0666); only without it does mdev make them, from /etc/mdev.conf
DEVTMPFS=1
/bin/busybox mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev 2>/dev/null || { DEVTMPFS=; /bin/busybox mount -t tmpfs -o mode=0755 dev /dev; }
[ -c /dev/console ] || mknod -m 600 /dev/console c 5 1
[ -c /dev/null ] || mknod -m 666 /dev/null c 1 3
mkdir -p /dev/pts && mount -t devpts -o noexec,nosuid,gid=5,mode=0620 devpts /dev/pts 2>/dev/null
exec </dev/console >/dev/console 2>&1

# Every line goes to every active console (serial and screen alike).
CONSOLES=
for c in $(cat /sys/class/tty/console/active 2>/dev/null); do
  [ -c "/dev/$c" ] && CONSOLES="$CONSOLES /dev/$c"
done
[ -n "$CONSOLES" ] || CONSOLES=/dev/console
log() {
  for c in $CONSOLES; do echo "cairn-initramfs: $*" >"$c" 2>/dev/null; done
}
DEBUG=
dbg() { [ -n "$DEBUG" ] && log "debug: $*"; return 0; }
${FIRST_STAGE_FUNCTIONS}
${shellStateFunctions()}

MODE=
ROOT_URL=
ROOT_SHA256=
WANT_VERSION=
LOADER_FIXED=
KEEP_WATCHDOG=
RESCUE=
SNAPSHOT=1
WAIT=30
set -f
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    cairn.mode=*|k3os.mode=*) MODE=$(echo "$arg" | cut -d= -f2-) ;;
    cairn.root_url=*) ROOT_URL=$(echo "$arg" | cut -d= -f2-) ;;
    cairn.root_sha256=*) ROOT_SHA256=$(echo "$arg" | cut -d= -f2-) ;;
    cairn.version=*) WANT_VERSION=$(echo "$arg" | cut -d= -f2-) ;;
    cairn.loader=fixed) LOADER_FIXED=1 ;;
    watchdog.stop_on_reboot=0) KEEP_WATCHDOG=1 ;;
    cairn.wait=*) WAIT=$(echo "$arg" | cut -d= -f2-) ;;
    cairn.debug|cairn.debug=1|cairn.debug=true|k3os.debug|k3os.debug=true) DEBUG=1 ;;
    cairn.rescue|cairn.rescue=1|cairn.rescue=true|k3os.rescue) RESCUE=1 ;;
    cairn.rescue=pre) RESCUE=pre ;;
    cairn.snapshot=0|cairn.snapshot=false) SNAPSHOT= ;;
  esac
done
set +f
case "$WAIT" in ''|*[!0-9]*) WAIT=30 ;; esac
[ -n "$ROOT_URL" ] && [ -z "$MODE" ] && MODE=net
[ -z "$MODE" ] && MODE=auto
[ -n "$DEBUG" ] && set -x

log "starting ($(uname -r))"
echo /sbin/modprobe >/proc/sys/kernel/modprobe 2>/dev/null
clock_not_before "$(sed -n 's/^SOURCE_DATE_EPOCH=//p' /etc/cairn-initramfs/release 2>/dev/null)"

# busybox-static has no mountpoint applet
is_mounted() { grep -q " $1 " /proc/mounts; }

rescue_shell() {
  log "$1"
  log "starting a shell on the console; leave it (exit) to try again"
  /bin/busybox --install -s 2>/dev/null
  setsid cttyhack /bin/sh -l 2>/dev/null || /bin/sh
}

fail() {
  log "cannot boot: $1"
  if [ -n "$RESCUE" ]; then
    rescue_shell "cairn.rescue is set"
    return 0
  fi
  log "add cairn.rescue to the kernel command line for a shell; rebooting in 10 s"
  sleep 10
  reboot -f
  sleep 60
}

# --- modules (see load_modules) -------------------------------------------
load_modules
[ -n "$DEVTMPFS" ] || mdev -s 2>/dev/null

# --- finding the system ---------------------------------------------------
REASONS=
note() { REASONS="$REASONS; $*"; dbg "$*"; }

find_label() {
  findfs "LABEL=$1" 2>/dev/null && return 0
  return 1
}

BOOT_MODE=
BOOT_VERSION=
BOOT_TRY=
SQUASHFS=
STATE_DEV=
STATE_RO=
CHECKED_DEV=
MEDIUM_DEV=

read_pointer() { [ -f "$1" ] && head -n 1 "$1" | tr -d ' \r\t'; }

STATE_SYS=/mnt/state/cairn/system
STATE_ENV=/mnt/state/cairn/grub/grubenv
BOOT_KIND=

# Sets CHOSEN (the version to boot from the state partition, empty: none)
# and BOOT_KIND. GRUB chose already when it passed cairn.version=; without
# it, the same decision is made here (see src/boot/state.ts).
choose_version() {
  CHOSEN=
  BOOT_KIND=
  if [ ! -f "$STATE_ENV" ]; then note "CAIRN_STATE has no cairn/grub/grubenv (the boot state)"; return; fi
  if [ -n "$WANT_VERSION" ] && [ -z "$LOADER_FIXED" ]; then
    take_wanted && return
    log "cairn.version=$WANT_VERSION is not installed; choosing from cairn/grub/grubenv"
  fi
  cairn_choose "$STATE_SYS" "$STATE_ENV" 2>/dev/null
  BOOT_KIND=$CHOSEN_KIND
  [ "$BOOT_KIND" = trial ] && BOOT_TRY=$S_TRIES
  if [ -n "$S_TRIAL" ] && [ "$BOOT_KIND" != trial ]; then log "version $S_TRIAL did not come up within its tries: falling back"; fi
  [ "$BOOT_KIND" = fallback ] && log "the active version $S_ACTIVE is missing or broken; booting the fallback $CHOSEN"
  [ -z "$CHOSEN" ] && note "no bootable version in cairn/system (active: $S_ACTIVE, fallback: $S_FALLBACK, trial: $S_TRIAL)"
  return 0
}

# The version the command line names, when it is installed: CHOSEN and BOOT_KIND.
take_wanted() {
  cairn_state_load "$STATE_ENV"
  cairn_bootable "$STATE_SYS" "$WANT_VERSION" || return 1
  CHOSEN=$WANT_VERSION
  if [ "$CHOSEN" = "$S_TRIAL" ]; then BOOT_KIND=trial; BOOT_TRY=$S_TRIES
  elif [ "$CHOSEN" = "$S_ACTIVE" ]; then BOOT_KIND=active
  elif [ "$CHOSEN" = "$S_FALLBACK" ]; then BOOT_KIND=fallback
  else BOOT_KIND=chosen
  fi
  return 0
}

# Leaves the machine's watchdog counting through a kexec: the kernel keeps
# it running (watchdog.stop_on_reboot=0 is on this command line), the next
# kernel's driver finds it running and keeps it fed, and that version's init
# takes it over for its trial (src/init/trial.ts). A kernel that hangs before
# its driver loads is reset by the hardware. busybox's watchdog, killed
# without its magic close, leaves the timer armed.
arm_watchdog_for_kexec() {
  [ -n "$KEEP_WATCHDOG" ] || { log "no watchdog.stop_on_reboot=0: the kexec is not guarded by the watchdog"; return 0; }
  [ -c /dev/watchdog0 ] || { log "no watchdog device: the kexec is not guarded by the watchdog"; return 0; }
  watchdog -F -T 15 -t 60 /dev/watchdog0 2>/dev/null &
  wpid=$!
  sleep 1
  kill -9 $wpid 2>/dev/null
  log "watchdog armed (15 s) for the start of $1"
}

# Starts version $1 from the state partition with kexec: its own kernel,
# initramfs and the command line of its bootenv (plus cairn.version=$1).
# Returns only when it could not, with KEXEC_WHY set; CAIRN_STATE is
# mounted again then.
start_by_kexec() {
  KEXEC_WHY=
  dir=$STATE_SYS/$1
  cmd=$(sed -n 's/^cairn_cmdline=//p' "$dir/bootenv" 2>/dev/null | head -n 1)
  [ -n "$cmd" ] || { KEXEC_WHY="cairn/system/$1/bootenv holds no kernel command line"; return 1; }
  case " $cmd " in *" cairn.version="*) ;; *) cmd="$cmd cairn.version=$1" ;; esac
  command -v kexec >/dev/null 2>&1 || { KEXEC_WHY="this first stage has no kexec (the arm64 image has it; the armv7 kernel cannot kexec)"; return 1; }
  log "starting $1 with kexec (the loader started $WANT_VERSION's kernel)"
  if ! out=$(kexec -s -l "$dir/kernel" --initrd="$dir/initrd" --command-line="$cmd" 2>&1); then
    dbg "kexec_file_load: $out"
    out=$(kexec -l "$dir/kernel" --initrd="$dir/initrd" --command-line="$cmd" 2>&1) ||
      { KEXEC_WHY="kexec cannot load its kernel: $(echo "$out" | tail -n 1)"; return 1; }
  fi
  arm_watchdog_for_kexec "$1"
  umount /mnt/state 2>/dev/null
  sync
  kexec -e
  KEXEC_WHY="kexec -e returned"
  if [ -n "$STATE_RO" ]; then mount -t ext4 -o ro,noatime "$STATE_DEV_FOUND" /mnt/state 2>/dev/null
  else mount -t ext4 -o rw,noatime "$STATE_DEV_FOUND" /mnt/state 2>/dev/null
  fi
  return 1
}

# With cairn.loader=fixed, the version chosen is not always the one whose
# kernel runs: that one is started with kexec. When it cannot be, a trial
# is given up (its tries spent) and the loader's own version boots.
follow_choice() {
  [ -n "$LOADER_FIXED" ] && [ -n "$WANT_VERSION" ] && [ -n "$CHOSEN" ] || return 0
  [ "$CHOSEN" = "$WANT_VERSION" ] && return 0
  if [ -n "$STATE_RO" ] && [ "$BOOT_KIND" = trial ]; then
    # the try could not be written down: a trial that fails would be started again and again
    log "CAIRN_STATE is read-only: the trial of $CHOSEN waits until it is repaired"
    CHOSEN=
    BOOT_KIND=
    BOOT_TRY=
    take_wanted
    return 0
  fi
  start_by_kexec "$CHOSEN"
  log "cannot start $CHOSEN: $KEXEC_WHY"
  if [ "$BOOT_KIND" = trial ] && cairn_abandon "$STATE_ENV" "$CHOSEN"; then
    log "version $CHOSEN is given up: its trial cannot start from this loader"
  fi
  CHOSEN=
  BOOT_KIND=
  BOOT_TRY=
  if take_wanted; then log "booting $WANT_VERSION, whose kernel is running"; fi
  return 0
}

# Gives up on the version booted from the state partition ($1 says why):
# a trial loses its tries, a broken active version hands over to the
# fallback; then a reboot, so the bootloader starts the matching kernel.
abandon_version() {
  log "version $BOOT_VERSION $1"
  if [ "$BOOT_MODE" = state ] && [ -z "$STATE_RO" ] && cairn_abandon "$STATE_ENV" "$BOOT_VERSION"; then
    log "version $BOOT_VERSION is given up; rebooting into $S_ACTIVE"
    umount /mnt/root 2>/dev/null
    umount /mnt/state 2>/dev/null
    sync
    reboot -f
    sleep 60
  fi
}

try_state() {
  dev=$(find_label CAIRN_STATE) || { note "no partition labelled CAIRN_STATE"; return 1; }
  mkdir -p /mnt/state
  if ! is_mounted /mnt/state; then
    if [ "$CHECKED_DEV" != "$dev" ]; then
      check_state "$dev"
      CHECKED_DEV=$dev
    fi
    if [ -n "$STATE_RO" ]; then
      mount -t ext4 -o ro,noatime "$dev" /mnt/state 2>/dev/null || { note "CAIRN_STATE ($dev) does not mount as ext4, not even read-only"; return 1; }
    else
      mount -t ext4 -o rw,noatime "$dev" /mnt/state 2>/dev/null || { note "CAIRN_STATE ($dev) does not mount as ext4"; return 1; }
    fi
  fi
  BOOT_TRY=
  STATE_DEV_FOUND=$dev
  choose_version
  follow_choice
  if [ -z "$CHOSEN" ]; then
    note "CAIRN_STATE ($dev) holds no bootable version under cairn/system"
    umount /mnt/state
    return 1
  fi
  STATE_DEV=$dev
  BOOT_MODE=state
  BOOT_VERSION=$CHOSEN
  SQUASHFS=/mnt/state/cairn/system/$CHOSEN/rootfs.squashfs
  if [ "$BOOT_KIND" = trial ]; then log "system $CHOSEN on $dev (trial boot, $BOOT_TRY tries left)"; else log "system $CHOSEN on $dev"; fi
}

try_live() {
  dev=$(find_label CAIRN_LIVE) || { note "no medium labelled CAIRN_LIVE"; return 1; }
  mkdir -p /mnt/live
  if ! is_mounted /mnt/live; then
    mount -t iso9660 -o ro "$dev" /mnt/live 2>/dev/null || mount -o ro "$dev" /mnt/live 2>/dev/null ||
      { note "CAIRN_LIVE ($dev) does not mount"; return 1; }
  fi
  if [ ! -f /mnt/live/cairn/rootfs.squashfs ]; then
    note "CAIRN_LIVE ($dev) has no cairn/rootfs.squashfs"
    umount /mnt/live
    return 1
  fi
  MEDIUM_DEV=$dev
  BOOT_MODE=live
  BOOT_VERSION=$(read_pointer /mnt/live/cairn/version)
  SQUASHFS=/mnt/live/cairn/rootfs.squashfs
  log "live system $BOOT_VERSION on $dev"
}

net_up() {
  for path in /sys/class/net/*; do
    ifc=$(basename "$path")
    [ "$ifc" = lo ] && continue
    ip link set "$ifc" up 2>/dev/null
    log "DHCP on $ifc"
    if udhcpc -i "$ifc" -n -q -f -t 4 -T 3 -s /etc/cairn-initramfs/udhcpc.script >/dev/null 2>&1; then
      log "$ifc is $(ip -4 -o addr show dev "$ifc" | awk '{print $4}' | head -n 1)"
      return 0
    fi
    ip link set "$ifc" down 2>/dev/null
  done
  return 1
}

try_net() {
  [ -n "$ROOT_URL" ] || { note "no cairn.root_url= on the command line"; return 1; }
  ip link set lo up 2>/dev/null
  if [ -z "$(ip -4 -o addr show scope global 2>/dev/null)" ]; then
    net_up || { note "no network interface got a DHCP lease"; return 1; }
  fi
  mkdir -p /mnt/fetch
  is_mounted /mnt/fetch || mount -t tmpfs -o mode=0755 cairn-fetch /mnt/fetch
  log "fetching $ROOT_URL"
  rm -f /mnt/fetch/rootfs.squashfs
  if ! wget -q -O /mnt/fetch/rootfs.squashfs "$ROOT_URL"; then
    note "could not fetch $ROOT_URL"
    return 1
  fi
  if [ -n "$ROOT_SHA256" ]; then
    got=$(sha256sum /mnt/fetch/rootfs.squashfs | cut -d' ' -f1)
    if [ "$got" != "$ROOT_SHA256" ]; then
      note "$ROOT_URL has sha256 $got, the command line asks for $ROOT_SHA256"
      return 1
    fi
  fi
  BOOT_MODE=net
  BOOT_VERSION=$WANT_VERSION
  SQUASHFS=/mnt/fetch/rootfs.squashfs
  log "fetched $(($(wc -c </mnt/fetch/rootfs.squashfs) / 1048576)) MiB"
}

find_system() {
  REASONS=
  case "$MODE" in
    net) try_net ;;
    live) try_live ;;
    state) try_state ;;
    auto) try_state || try_live ;;
    *) note "unknown cairn.mode=$MODE (state, live or net)"; return 1 ;;
  esac
}

while :; do
  look_for_system
  [ -n "$BOOT_MODE" ] && break
  fail "the system was not found: $(echo "$REASONS" | cut -c3-)"
done
read STAGE1_FOUND _ </proc/uptime

# --- the new root ---------------------------------------------------------
NEWROOT=/mnt/root
mkdir -p $NEWROOT
# a trial's squashfs is checked against the sums written with it before it is trusted
if [ "$BOOT_KIND" = trial ] && [ -f "$STATE_SYS/$BOOT_VERSION/SHA256SUMS" ]; then
  if ! (cd "$STATE_SYS/$BOOT_VERSION" && grep ' rootfs.squashfs$' SHA256SUMS | sha256sum -c) >/dev/null 2>&1; then
    abandon_version "fails its checksum (cairn/system/$BOOT_VERSION/rootfs.squashfs)"
    fail "$SQUASHFS fails its checksum"
    exec /init
  fi
fi
mount -t squashfs -o ro,loop "$SQUASHFS" $NEWROOT || {
  abandon_version "does not mount its squashfs (cairn/system/$BOOT_VERSION/rootfs.squashfs)"
  fail "$SQUASHFS does not mount as squashfs"
  exec /init
}
dbg "root mounted from $SQUASHFS"
# Node.js and its ICU data are most of what the init reads first: read them
# into the page cache now, on another CPU, while this stage and Node.js
# start (each file is opened before switch_root moves the mount)
for f in $NEWROOT/usr/lib/*-linux-gnu*/libnode.so.* $NEWROOT/usr/lib/*-linux-gnu*/libicudata.so.* $NEWROOT/usr/lib/cairn/init.js; do
  [ -f "$f" ] && cat "$f" >/dev/null 2>&1 &
done

if [ "$BOOT_MODE" = state ] && [ -z "$STATE_RO" ]; then
  RW=/mnt/state/cairn/data
else
  mkdir -p /mnt/rw
  mount -t tmpfs -o mode=0755 cairn-rw /mnt/rw
  RW=/mnt/rw
fi
mkdir -p $RW

for d in run tmp etc var home opt cairn proc sys dev; do
  [ -d $NEWROOT/$d ] || log "warning: the image has no /$d folder to mount on"
done
mount -t tmpfs -o mode=0755,nosuid,nodev cairn-run $NEWROOT/run
mount -t tmpfs -o mode=1777,nosuid,nodev cairn-tmp $NEWROOT/tmp
mkdir -p $NEWROOT/run/cairn

# /etc: the image's, with a writable layer on top; the image's own also at
# /run/cairn/image-etc, read-only (bound before the overlay hides it)
mkdir -p $RW/etc $RW/.work/etc $NEWROOT/run/cairn/image-etc
if mount --bind $NEWROOT/etc $NEWROOT/run/cairn/image-etc; then
  mount -o remount,bind,ro $NEWROOT/run/cairn/image-etc 2>/dev/null
else
  log "warning: the image's /etc is not at /run/cairn/image-etc: the init cannot tell the node's changes to /etc from the image's"
fi
if ! mount -t overlay cairn-etc -o lowerdir=$NEWROOT/etc,upperdir=$RW/etc,workdir=$RW/.work/etc $NEWROOT/etc; then
  log "warning: no overlay for /etc; it stays read-only"
fi

# /var, /home, /opt: persistent, seeded from the image the first time (see
# seed_dir); a folder that cannot be seeded lives in RAM for this boot
for d in var home opt; do
  [ -d $NEWROOT/$d ] || continue
  if seed_dir $NEWROOT/$d $RW $d; then
    mount --bind $RW/$d $NEWROOT/$d
  else
    log "warning: /$d is in RAM for this boot (its changes are lost at shutdown)"
    mkdir -p /mnt/ram-$d
    mount -t tmpfs -o mode=0755 cairn-$d /mnt/ram-$d && cp -a $NEWROOT/$d/. /mnt/ram-$d/ && mount --move /mnt/ram-$d $NEWROOT/$d
  fi
done

# keep what the new root still depends on reachable under /run/cairn
if [ -n "$STATE_DEV" ]; then
  mkdir -p $NEWROOT/run/cairn/state
  mount --move /mnt/state $NEWROOT/run/cairn/state
  if [ -d $NEWROOT/cairn ]; then
    mount --bind $NEWROOT/run/cairn/state/cairn $NEWROOT/cairn
  else
    log "warning: the image has no /cairn folder; the state is at /run/cairn/state/cairn"
  fi
fi
if [ -n "$MEDIUM_DEV" ]; then
  mkdir -p $NEWROOT/run/cairn/live
  mount --move /mnt/live $NEWROOT/run/cairn/live
fi
if [ "$BOOT_MODE" = net ]; then
  mkdir -p $NEWROOT/run/cairn/fetch
  mount --move /mnt/fetch $NEWROOT/run/cairn/fetch
fi
if is_mounted /mnt/rw; then
  mkdir -p $NEWROOT/run/cairn/rw
  mount --move /mnt/rw $NEWROOT/run/cairn/rw
fi

cat >$NEWROOT/run/cairn/boot.env <<BOOTENV
CAIRN_BOOT_MODE=$BOOT_MODE
CAIRN_BOOT_VERSION=$BOOT_VERSION
CAIRN_BOOT_TRIES_LEFT=$BOOT_TRY
CAIRN_BOOT_KIND=$BOOT_KIND
CAIRN_STATE_DEVICE=$STATE_DEV
CAIRN_STATE_READONLY=$STATE_RO
CAIRN_MEDIUM_DEVICE=$MEDIUM_DEV
CAIRN_ROOT_URL=$ROOT_URL
CAIRN_STAGE1_START=$STAGE1_START
CAIRN_STAGE1_FOUND=$STAGE1_FOUND
BOOTENV

if [ "$RESCUE" = pre ]; then
  rescue_shell "cairn.rescue=pre: the new root is at $NEWROOT"
fi

if [ -e $NEWROOT/usr/lib/cairn/init.js ] && [ -e $NEWROOT/usr/bin/tini ] && [ -e $NEWROOT/usr/bin/node ]; then
  # the init's startup snapshot, which the node made of this version on an
  # earlier boot, starts in a fraction of the time (pick_snapshot)
  SNAP=
  [ -n "$SNAPSHOT" ] && [ "$BOOT_MODE" = state ] && [ -z "$STATE_RO" ] && SNAP=$(pick_snapshot $NEWROOT "$BOOT_VERSION")
  if [ -n "$SNAP" ]; then
    set -- /usr/bin/tini -- /usr/bin/node --snapshot-blob "$SNAP"
  else
    set -- /usr/bin/tini -- /usr/bin/node /usr/lib/cairn/init.js
  fi
elif [ -e $NEWROOT/sbin/init ] || [ -L $NEWROOT/sbin/init ]; then
  log "the image has no /usr/lib/cairn/init.js (or no tini or node): starting /sbin/init"
  set -- /sbin/init
else
  log "the image has neither /usr/lib/cairn/init.js nor /sbin/init: starting a shell"
  set -- /bin/sh
fi

mount --move /dev $NEWROOT/dev 2>/dev/null || mount -t devtmpfs devtmpfs $NEWROOT/dev
mount --move /sys $NEWROOT/sys 2>/dev/null
mount --move /proc $NEWROOT/proc 2>/dev/null
log "switching root to $* ($BOOT_MODE boot)"
read STAGE1_END _ <$NEWROOT/proc/uptime && echo "CAIRN_STAGE1_END=$STAGE1_END" >>$NEWROOT/run/cairn/boot.env
exec switch_root $NEWROOT "$@" <$NEWROOT/dev/console >$NEWROOT/dev/console 2>&1
`;
}

/** The script udhcpc runs to apply a lease (busybox ships none of its own). */
export function renderUdhcpcScript(): string {
  return String.raw`#!/bin/sh
# cairn initramfs: apply a DHCP lease (udhcpc passes the event in $1)
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip -4 addr add "$ip/$mask" dev "$interface"
    if [ -n "$router" ]; then
      for r in $router; do ip -4 route add default via "$r" dev "$interface" && break; done
    fi
    : >/etc/resolv.conf
    for s in $dns; do echo "nameserver $s" >>/etc/resolv.conf; done
    ;;
esac
exit 0
`;
}
