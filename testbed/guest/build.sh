#!/usr/bin/env bash
# Build the tiny test guest used by the vws testbed, from Debian packages only:
#   vmlinuz          Debian cloud kernel (small, boots fast under TCG)
#   initrd.gz        busybox-static initramfs with the virtio/acpi modules and /init (DHCP on
#                    eth0..eth3; TESTBED ONLY: an unauthenticated root shell on TCP port 7000)
#   disk.raw         sample workspace image: 16 MiB ext4 holding /vws-image
#   disk.raw.sha256  hex digest of disk.raw
#   stamp            hash of this script + kernel/busybox package versions
# Output: ${VWS_CACHE_DIR:-<repo>/.cache}/guest. Cached: when the stamp matches,
# it prints "guest: cached" and exits. It builds into a temp dir and renames it,
# so an interrupted build never leaves a half-made output directory.
set -euo pipefail
export LC_ALL=C
umask 022

SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
REPO_ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE_DIR="${VWS_CACHE_DIR:-$REPO_ROOT/.cache}"
OUT="$CACHE_DIR/guest"
DL_DIR="$CACHE_DIR/downloads"    # kept across builds: the kernel .deb is 27 MB
# The virtio drivers are modules in Debian's kernels; button+evdev let busybox
# acpid see the ACPI power button, so QMP system_powerdown works. xen-netfront and xen-blkfront
# let the same initrd boot as a Xen PV guest (eth0 and /dev/xvda instead of virtio's /dev/vda).
MODULES=(virtio virtio_ring virtio_pci virtio_pci_modern_dev virtio_pci_legacy_dev
         virtio_net net_failover failover virtio_blk button evdev xen-netfront xen-blkfront)
IMAGE_TEXT='vws-sample-image v1'
IMAGE_SIZE=16M

log() { printf 'guest: %s\n' "$*"; }
die() { printf 'guest: error: %s\n' "$*" >&2; exit 1; }

# The metapackage linux-image-cloud-amd64 depends on the current ABI package
# with an exact version: "Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)".
# One apt-cache call gives both (each call costs ~0.7 s here: docker-clean
# disables apt's binary cache). Prints "PKG VERSION".
resolve_kernel_pkg() {
  apt-cache show --no-all-versions linux-image-cloud-amd64 2>/dev/null | awk '
    $1 == "Depends:" && match($0, /linux-image-[0-9][^ ,]*-cloud-amd64 \(= [^)]+\)/) {
      dep = substr($0, RSTART, RLENGTH); gsub(/[()=]/, "", dep); split(dep, a, " +")
      print a[1], a[2]; exit
    }'
}

# Lists may be missing on a fresh machine; refresh them once, then retry.
resolve_kernel() {
  local r
  r="$(resolve_kernel_pkg)"
  if [[ -z "$r" ]]; then
    log "apt lists do not know linux-image-cloud-amd64; running apt-get update"
    apt-get update -qq >/dev/null
    r="$(resolve_kernel_pkg)"
  fi
  [[ -n "$r" ]] || die "cannot resolve the kernel package behind linux-image-cloud-amd64"
  KPKG="${r% *}"
  KVER_PKG="${r#* }"
}

compute_stamp() {
  local bb
  bb="$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null)" \
    || die "busybox-static is not installed"
  { cat "$SELF"; printf '%s=%s\nbusybox-static=%s\n' "$KPKG" "$KVER_PKG" "$bb"; } \
    | sha256sum | cut -d' ' -f1
}

is_cached() {
  local f
  [[ -f "$OUT/stamp" && "$(cat "$OUT/stamp")" == "$STAMP" ]] || return 1
  for f in vmlinuz initrd.gz disk.raw disk.raw.sha256; do
    [[ -s "$OUT/$f" ]] || return 1
  done
}

# Returns the path of the kernel .deb, downloading it into DL_DIR if needed.
fetch_kernel_deb() {
  local deb="$DL_DIR/${KPKG}_${KVER_PKG//:/%3a}_amd64.deb" tmp
  if [[ ! -s "$deb" ]]; then
    mkdir -p "$DL_DIR"
    tmp="$(mktemp -d "$DL_DIR/.dl.XXXXXX")"
    # Sandbox user root: as root, apt's _apt user could not write our dir.
    (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$KPKG=$KVER_PKG") >&2 \
      || { rm -rf "$tmp"; die "apt-get download $KPKG=$KVER_PKG failed"; }
    mv -f "$tmp"/*.deb "$deb"
    rm -rf "$tmp"
  fi
  printf '%s\n' "$deb"
}

# Extract only vmlinuz and the needed modules (tar fails if one is missing).
extract_kernel() {
  local deb="$1" dest="$2" m
  local patterns=('./boot/vmlinuz-*')
  for m in "${MODULES[@]}"; do patterns+=("./lib/modules/*/$m.ko*"); done
  mkdir -p "$dest"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dest" --wildcards "${patterns[@]}"
  # Future kernels may ship compressed modules; busybox modprobe wants plain .ko.
  find "$dest/lib/modules" -name '*.ko.xz' -exec xz -d {} +
  find "$dest/lib/modules" -name '*.ko.zst' -exec zstd -q -d --rm {} +
}

write_init() {
  local root="$1"
  cat > "$root/init" <<'EOF'
#!/bin/busybox sh
# vws test guest: PID 1. Must never exit (the kernel panics if it does).
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /bin /sbin /usr/bin /usr/sbin /mnt/root
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
# Graceful stop by signal (used by a Xen-style driver later); acpid covers QMP.
trap '/sbin/vws-poweroff' USR2 TERM
for m in virtio_pci virtio_net virtio_blk button evdev; do modprobe "$m" 2>/dev/null; done
# Xen PV guest (same initrd; console=hvc0 on Xen's cmdline): load the Xen front ends.
XEN=
[ "$(cat /sys/hypervisor/type 2>/dev/null)" = xen ] && XEN=1
if [ -n "$XEN" ]; then modprobe xen-netfront 2>/dev/null; modprobe xen-blkfront 2>/dev/null; fi
ip link set lo up
HN=$(sed -n 's/.*vmname=\([^ ]*\).*/\1/p' /proc/cmdline)
[ -n "$HN" ] || HN=vws-guest
hostname "$HN"
# ACPI power button (QMP system_powerdown) -> /etc/acpi/PWRF/00000080
acpid -c /etc/acpi -l /tmp/acpid.log
# virtio's /dev/vda exists once virtio_blk is loaded; Xen's /dev/xvda appears asynchronously
# (xenbus probing), so wait for it briefly, under Xen only.
ROOTDEV=/dev/vda
if [ -n "$XEN" ]; then
  ROOTDEV=/dev/xvda
  for i in $(seq 50); do [ -b /dev/xvda ] && break; sleep 0.1; done
fi
if [ -b "$ROOTDEV" ] && mount -t ext4 -o rw "$ROOTDEV" /mnt/root; then
  echo "VWS-GUEST: image=$(cat /mnt/root/vws-image 2>/dev/null)"
  echo "boot $(date -u +%Y-%m-%dT%H:%M:%SZ) host=$HN up=$(cut -d' ' -f1 /proc/uptime)" >> /mnt/root/boots.log
  sync
fi
# Extra disks (a workspace's partitions after the root): vdb.. under QEMU, xvdb.. under Xen.
# No blkid in busybox-static: the filesystem is told by its magic numbers. ext4 = ext magic 0xEF53
# (offset 1080) with extents, 64bit or flex_bg (incompat 0x2C0, offset 1120); swap = "SWAPSPACE2"
# at the end of the first 4 KiB page. Anything else is "none".
fstype() {
  if [ "$(od -An -tx1 -j1080 -N2 "$1" 2>/dev/null | tr -d ' \n')" = 53ef ]; then
    [ $(( $(od -An -tu4 -j1120 -N4 "$1" | tr -d ' \n') & 0x2C0 )) -ne 0 ] && { echo ext4; return; }
  elif [ "$(dd if="$1" bs=1 skip=4086 count=10 2>/dev/null)" = SWAPSPACE2 ]; then
    echo swap; return
  fi
  echo none
}
DISKS="vdb vdc vdd"
if [ -n "$XEN" ]; then
  DISKS="xvdb xvdc xvdd"
  # blkfront sets the disks up one by one after xvda: wait (briefly) until there are as many
  # xvd block devices as vbd devices on xenbus; a domain without extra disks does not wait.
  NVBD=$(ls -d /sys/bus/xen/devices/vbd-* 2>/dev/null | wc -l)
  for i in $(seq 50); do [ "$(ls -d /sys/block/xvd* 2>/dev/null | wc -l)" -ge "$NVBD" ] && break; sleep 0.1; done
fi
for d in $DISKS; do
  [ -b "/dev/$d" ] || continue
  FS=$(fstype "/dev/$d")
  echo "VWS-GUEST: disk $d sectors=$(cat /sys/block/$d/size) fs=$FS"
  case "$FS" in
    ext4)
      mkdir -p "/mnt/$d"
      if mount -t ext4 -o rw "/dev/$d" "/mnt/$d"; then
        echo "write $(date -u +%Y-%m-%dT%H:%M:%SZ) host=$HN dev=$d up=$(cut -d' ' -f1 /proc/uptime)" >> "/mnt/$d/writes.log"
        sync
      fi
      ;;
    swap) swapon "/dev/$d" ;;
  esac
done
# DHCP on every NIC: eth0 (default route) and up to three more (other networks). Xen's netfront
# NICs appear asynchronously (xenbus): wait briefly until there are as many ethN as vif devices.
if [ -n "$XEN" ]; then
  NVIF=$(ls -d /sys/bus/xen/devices/vif-* 2>/dev/null | wc -l)
  for i in $(seq 50); do [ "$(ls -d /sys/class/net/eth* 2>/dev/null | wc -l)" -ge "$NVIF" ] && break; sleep 0.1; done
fi
for nic in eth0 eth1 eth2 eth3; do
  [ -e "/sys/class/net/$nic" ] || continue
  ip link set "$nic" up 2>/dev/null
  udhcpc -f -i "$nic" -s /etc/udhcpc.script -x hostname:"$HN" -t 30 -T 1 -A 1 -S &
done
# TESTBED ONLY: an unauthenticated root shell on TCP 7000, so tests can drive pings and address
# changes from inside the guest. Each connection gets a fresh sh (stderr into the connection too);
# the client sends commands, half-closes, and reads the output until EOF. Never use as a real image.
nc -ll -p 7000 -e /sbin/vws-control-shell &
# "sleep & wait": the shell runs traps only after a foreground child exits.
while true; do sleep 3600 & wait $!; done
EOF
  cat > "$root/sbin/vws-control-shell" <<'EOF'
#!/bin/sh
# One connection of the testbed control port (7000): a root shell, stdout and stderr to the client.
exec /bin/sh 2>&1
EOF
  cat > "$root/sbin/vws-poweroff" <<'EOF'
#!/bin/sh
# Flush and release the workspace disks, then power off at once.
sync
for m in /mnt/vd? /mnt/xvd?; do [ -d "$m" ] && { umount "$m" 2>/dev/null || mount -o remount,ro "$m" 2>/dev/null; }; done
umount /mnt/root 2>/dev/null || mount -o remount,ro /mnt/root 2>/dev/null
sync
poweroff -f
EOF
  # `xl reboot` makes the kernel run /sbin/reboot; busybox's reboot would signal PID 1 with TERM,
  # which means power off here. This one (busybox --install does not overwrite it) reboots, so
  # Xen restarts the domain (on_reboot="restart"). Nothing runs it under QEMU.
  cat > "$root/sbin/reboot" <<'EOF'
#!/bin/sh
sync
for m in /mnt/vd? /mnt/xvd?; do [ -d "$m" ] && { umount "$m" 2>/dev/null || mount -o remount,ro "$m" 2>/dev/null; }; done
umount /mnt/root 2>/dev/null || mount -o remount,ro /mnt/root 2>/dev/null
sync
/bin/busybox reboot -f
EOF
  mkdir -p "$root/etc/acpi/PWRF"
  printf '#!/bin/sh\nsync; /sbin/vws-poweroff\n' > "$root/etc/acpi/PWRF/00000080"
  cat > "$root/etc/udhcpc.script" <<'EOF'
#!/bin/sh
# busybox udhcpc hook: $1 = event; $interface $ip $mask $router from udhcpc. One udhcpc per NIC;
# only eth0 (the first network) sets the default route.
case "$1" in
  deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    [ "$1" = bound ] && ip addr flush dev "$interface"
    ip addr replace "$ip/${mask:-24}" dev "$interface"
    if [ -n "$router" ] && [ "$interface" = eth0 ]; then
      set -- $router
      ip route replace default via "$1" dev "$interface"
    fi
    echo "VWS-GUEST-READY host=$(hostname) ip=$ip mac=$(cat /sys/class/net/$interface/address) iface=$interface up=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
    ;;
esac
exit 0
EOF
  chmod 755 "$root/init" "$root/sbin/vws-poweroff" "$root/sbin/reboot" "$root/etc/acpi/PWRF/00000080" \
    "$root/etc/udhcpc.script" "$root/sbin/vws-control-shell"
}

build_initrd() {
  local kroot="$1" out="$2" root kver
  root="$(dirname "$out")/initrd.root"
  kver="$(basename "$(find "$kroot/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)")"
  mkdir -p "$root/bin" "$root/sbin" "$root/etc" "$root/lib/modules"
  cp /bin/busybox "$root/bin/busybox"
  cp -a "$kroot/lib/modules/$kver" "$root/lib/modules/"
  # The .deb's modules.dep is generated at install time; make our own.
  busybox depmod -b "$root" "$kver" >&2
  write_init "$root"
  (cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) | gzip -9 > "$out"
  rm -rf "$root"
  printf '%s\n' "$kver"
}

# Deterministic ext4 (fixed UUID/seed/time) so the digest is stable across builds.
build_disk() {
  local out="$1" src
  src="$(dirname "$out")/disk.root"
  mkdir -p "$src"
  printf '%s\n' "$IMAGE_TEXT" > "$src/vws-image"
  touch -d @0 "$src/vws-image" "$src"
  truncate -s "$IMAGE_SIZE" "$out"
  E2FSPROGS_FAKE_TIME=1 mkfs.ext4 -q -F -L vws-image \
    -U 6b2f3c1e-0d8a-4f5b-9e7c-2a1d3b4c5e6f -E hash_seed=6b2f3c1e-0d8a-4f5b-9e7c-2a1d3b4c5e6f \
    -d "$src" "$out"
  # mkfs -d copies the source's ctimes (the real clock); pin them too.
  printf 'sif %s ctime 1\nsif %s atime 1\n' / / /lost+found /lost+found /vws-image /vws-image \
    | E2FSPROGS_FAKE_TIME=1 debugfs -w -f - "$out" >/dev/null 2>&1
  e2fsck -fn "$out" >/dev/null 2>&1 || die "disk image failed e2fsck"
  rm -rf "$src"
  sha256sum "$out" | cut -d' ' -f1 > "$out.sha256"
}

main() {
  resolve_kernel
  STAMP="$(compute_stamp)"
  if is_cached; then log "cached"; exit 0; fi

  mkdir -p "$CACHE_DIR"
  # Serialise concurrent builds (e.g. testbed up and a test run at once).
  exec 9>"$CACHE_DIR/guest.lock"
  flock 9
  if is_cached; then log "cached"; exit 0; fi

  local t0=$SECONDS deb kver
  TMP_BUILD="$(mktemp -d "$CACHE_DIR/guest.tmp.XXXXXX")"
  chmod 755 "$TMP_BUILD"   # mktemp makes it 0700; it becomes the output dir
  trap 'rm -rf "$TMP_BUILD"' EXIT
  local tmp="$TMP_BUILD"
  log "building ($KPKG $KVER_PKG) into $OUT"
  deb="$(fetch_kernel_deb)"
  extract_kernel "$deb" "$tmp/k"
  cp "$tmp"/k/boot/vmlinuz-* "$tmp/vmlinuz"
  kver="$(build_initrd "$tmp/k" "$tmp/initrd.gz")"
  rm -rf "$tmp/k"
  printf '%s\n' "$kver" > "$tmp/kernel-release"
  build_disk "$tmp/disk.raw"
  printf '%s\n' "$STAMP" > "$tmp/stamp"

  # Swap in the finished directory (rename, so readers never see a partial one).
  rm -rf "$OUT.old"
  [[ -d "$OUT" ]] && mv "$OUT" "$OUT.old"
  mv "$tmp" "$OUT"
  rm -rf "$OUT.old"
  trap - EXIT
  log "built in $((SECONDS - t0)) s: $(cd "$OUT" && du -h vmlinuz initrd.gz disk.raw | tr '\t\n' ': ')"
}

main "$@"
