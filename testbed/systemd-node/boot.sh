#!/usr/bin/env bash
# A real systemd boot, to test vws's boot-time unit (deploy/systemd/vws-pilot-boot-reset.service) the way a
# node runs it. A VM without network (QEMU, TCG) boots the testbed guest's
# Debian kernel with a root file system that is this machine's own: read-only over virtiofs, under a tmpfs
# overlay. PID 1 is therefore Debian's real systemd, with this machine's packages (Node.js, slurmd and its
# unit). Before systemd starts, the initramfs
#   - mounts OUT_DIR (read-write, virtiofs) at /mnt/out;
#   - copies the tree OUT_DIR/seed over the root (units, /etc/vws, the /opt/vws link: the test's set-up);
#   - leaves enabled, of this machine's own multi-user units, only slurmd (postgres, sshd, slurmctld, …
#     have nothing to do in this VM), then enables what the seed lists in OUT_DIR/seed.enable (one unit per
#     line, each linked into multi-user.target.wants as `systemctl enable` does for WantedBy=multi-user.target).
# The seed's units do the test and power the VM off; this script waits for QEMU to exit and leaves the
# console in OUT_DIR/console.log.
#
#   boot.sh OUT_DIR [TIMEOUT_SECONDS]   exit 0: the VM powered off; 1: timeout (QEMU killed) or a failure
#
# Needs the testbed guest's kernel (testbed/guest/build.sh, run here if missing) and QEMU's virtiofsd.
set -euo pipefail
export LC_ALL=C
umask 022

SCRIPT_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
CACHE_DIR="${VWS_CACHE_DIR:-$REPO_ROOT/.cache}"
GUEST_DIR="$CACHE_DIR/guest"
VIRTIOFSD=/usr/lib/qemu/virtiofsd
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci fuse virtiofs overlay)

die() { printf 'systemd-node: error: %s\n' "$*" >&2; exit 1; }
step() { printf 'systemd-node: %s\n' "$*"; }

OUT="${1:?usage: boot.sh OUT_DIR [TIMEOUT_SECONDS]}"
TIMEOUT="${2:-180}"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "TIMEOUT_SECONDS must be a whole number, got '$TIMEOUT'"
[[ -d "$OUT/seed" ]] || die "$OUT/seed is missing (the tree copied over the VM's root)"
[[ "$(id -u)" == 0 ]] || die "must run as root (virtiofsd)"
[[ -x "$VIRTIOFSD" ]] || die "$VIRTIOFSD is missing (Debian package qemu-system-common)"
OUT="$(cd "$OUT" && pwd)"

# The initramfs: busybox, the virtio/virtiofs/overlay modules of the guest kernel, /init. Cached by its inputs.
initrd() {
  [[ -s "$GUEST_DIR/vmlinuz" ]] || "$REPO_ROOT/testbed/guest/build.sh" >/dev/null
  local release deb key dir tmp
  release="$(cat "$GUEST_DIR/kernel-release")"
  deb="$(ls "$CACHE_DIR"/downloads/linux-image-"$release"_*.deb 2>/dev/null | head -1)"
  [[ -n "$deb" ]] || die "the kernel package of $release is not in $CACHE_DIR/downloads (run testbed/guest/build.sh)"
  key="$(cat "$0" "$GUEST_DIR/kernel-release" /bin/busybox | sha256sum | cut -c1-16)"
  dir="$CACHE_DIR/systemd-node/$key"
  if [[ ! -s "$dir/initrd.gz" ]]; then
    tmp="$(mktemp -d)"
    mkdir -p "$tmp/root/bin" "$tmp/root/lib/modules" "$tmp/root/proc" "$tmp/root/sys" "$tmp/root/dev" "$tmp/x"
    cp /bin/busybox "$tmp/root/bin/busybox"
    local patterns=() m f
    for m in "${MODULES[@]}"; do patterns+=("./lib/modules/*/$m.ko*"); done
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp/x" --wildcards "${patterns[@]}"
    for m in "${MODULES[@]}"; do
      f="$(find "$tmp/x" -name "$m.ko*" | head -1)"
      case "$f" in
        *.xz) xz -dc "$f" > "$tmp/root/lib/modules/$m.ko" ;;
        *.zst) zstd -qdc "$f" > "$tmp/root/lib/modules/$m.ko" ;;
        *) cp "$f" "$tmp/root/lib/modules/$m.ko" ;;
      esac
    done
    cat > "$tmp/root/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
fail() { echo "init: \$*"; sleep 1; poweroff -f; }
for m in ${MODULES[*]}; do insmod /lib/modules/\$m.ko 2>/dev/null || grep -q "^\$m " /proc/modules || echo "init: insmod \$m failed"; done
mkdir -p /lower /rw /newroot
mount -t virtiofs -o ro hostroot /lower || fail "no root (virtiofs hostroot)"
mount -t tmpfs -o mode=0755 tmpfs /rw && mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || fail "no overlay root"
mkdir -p /newroot/mnt/out && mount -t virtiofs out /newroot/mnt/out || fail "no out share"
cp -a /newroot/mnt/out/seed/. /newroot/
# seed.bind: "SOURCE TARGET" lines, bind mounts of this machine's directories (e.g. the vws tree at
# /opt/vws): a link would not do for a tree under /tmp, which systemd's tmp.mount covers in the VM.
if [ -f /newroot/mnt/out/seed.bind ]; then
  while read -r src dst; do [ -n "\$dst" ] && mkdir -p "/newroot\$dst" && mount --bind "/newroot\$src" "/newroot\$dst"; done < /newroot/mnt/out/seed.bind
fi
# The VM's own /tmp and /var/tmp: systemd-tmpfiles walks them at boot, and every file it looks up on this
# machine's (a CI clone with its node_modules) costs virtiofsd an open descriptor, until EMFILE.
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp && mount -t tmpfs -o mode=1777 tmpfs /newroot/var/tmp
w=/newroot/etc/systemd/system/multi-user.target.wants
mkdir -p \$w
for l in \$w/*; do case "\${l##*/}" in slurmd.service) ;; *) rm -f "\$l" ;; esac; done
if [ -f /newroot/mnt/out/seed.enable ]; then
  while read -r u; do [ -n "\$u" ] && ln -sf "/etc/systemd/system/\$u" "\$w/\$u"; done < /newroot/mnt/out/seed.enable
fi
echo "init: root ready, starting systemd"
umount /proc /sys /dev 2>/dev/null
exec switch_root /newroot /lib/systemd/systemd
EOF
    chmod 755 "$tmp/root/init"
    (cd "$tmp/root" && find . | cpio -o -H newc --quiet | gzip -1) > "$tmp/initrd.gz"
    mkdir -p "$dir"
    mv "$tmp/initrd.gz" "$dir/initrd.gz"
    rm -rf "$tmp"
  fi
  printf '%s\n' "$dir/initrd.gz"
}

INITRD="$(initrd)"
RUN="$(mktemp -d)"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

# The root: this machine's, shared read-only in spirit (the guest mounts it ro; the overlay takes writes).
"$VIRTIOFSD" --socket-path="$RUN/root.sock" -o source=/ -o cache=auto -o sandbox=chroot -o log_level=err --rlimit-nofile=1000000 &
pids+=($!)
"$VIRTIOFSD" --socket-path="$RUN/out.sock" -o source="$OUT" -o cache=none -o sandbox=chroot -o log_level=err --rlimit-nofile=1000000 &
pids+=($!)
for _ in $(seq 100); do [[ -S "$RUN/root.sock" && -S "$RUN/out.sock" ]] && break; sleep 0.05; done
[[ -S "$RUN/root.sock" && -S "$RUN/out.sock" ]] || die "virtiofsd did not start"

# TCG: this machine's /dev/kvm is PVM nested virtualisation, which stock Debian kernels cannot run on
# (shared/research/testbed-qemu-vms.md), as for every testbed guest.
step "booting (TCG, timeout ${TIMEOUT} s; console: $OUT/console.log)"
t0=$SECONDS
qemu-system-x86_64 -accel tcg -m 1024 -smp 2 -no-reboot -display none -monitor none -nic none \
  -object memory-backend-memfd,id=mem,size=1024M,share=on -numa node,memdev=mem \
  -chardev socket,id=root,path="$RUN/root.sock" -device vhost-user-fs-pci,chardev=root,tag=hostroot \
  -chardev socket,id=out,path="$RUN/out.sock" -device vhost-user-fs-pci,chardev=out,tag=out \
  -kernel "$GUEST_DIR/vmlinuz" -initrd "$INITRD" -serial file:"$OUT/console.log" \
  -append "console=ttyS0 panic=-1 systemd.show_status=1 systemd.log_target=console" &
qemu=$!
pids+=("$qemu")
while kill -0 "$qemu" 2>/dev/null; do
  if (( SECONDS - t0 > TIMEOUT )); then
    kill -9 "$qemu" 2>/dev/null || true
    die "the VM did not power off within $TIMEOUT s (see $OUT/console.log)"
  fi
  sleep 0.2
done
wait "$qemu" || die "qemu failed (see $OUT/console.log)"
step "powered off after $((SECONDS - t0)) s"
