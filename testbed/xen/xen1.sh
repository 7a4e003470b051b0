#!/usr/bin/env bash
# xen1: the testbed's real Xen 4.17 node. Xen + a PV dom0 (xl, xenstored, xenconsoled, sshd; dnsmasq
# and nft for vws to use) run in QEMU (TCG), attached by a tap to the head bridge vwsbr0. See
# testbed/README.md.
#
#   xen1.sh up       build (cached), boot, wait for dom0 and SSH; idempotent
#   xen1.sh status   one line per component; exit 0 iff QEMU runs, the tap is up and ssh xl works
#   xen1.sh down     dom0 `poweroff -f`, QEMU killed by PID if still there after 10 s, tap removed
#
# Exit code 3 from up: the Xen packages could not be fetched (no apt mirror); testbed.sh then
# warns and goes on without xen1.
set -euo pipefail
export LC_ALL=C
umask 022

SCRIPT_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
TB="${VWS_TESTBED_DIR:-/var/lib/vws/testbed}"
GUEST_DIR="${VWS_CACHE_DIR:-$REPO_ROOT/.cache}/guest"
NAME=xen1
HD="$TB/hosts/$NAME"
HEAD_BR=vwsbr0
HEAD_IP=10.213.0.1
IP=10.213.0.21
TAP="$NAME-tap"
MAC=52:54:00:d0:00:21          # dom0's eth0 (fixed, so the head's ARP cache stays valid)
DATA_SIZE=2G                   # sparse node disk: guest disks and ~130 MiB saved states
READY_TIMEOUT=90               # seconds from QEMU start to the dom0 ready marker
SSH_TIMEOUT=30
PIDFILE="$HD/qemu.pid"
SERIAL="$HD/serial.log"

T0="${EPOCHREALTIME/./}"
elapsed() { local us=$(( ${EPOCHREALTIME/./} - T0 )); printf '%d.%02d' $((us / 1000000)) $((us % 1000000 / 10000)); }
step() { printf '[%6ss] %s: %s\n' "$(elapsed)" "$NAME" "$*"; }
die() { printf '%s: error: %s\n' "$NAME" "$*" >&2; exit 1; }

# A PID counts only if it is alive and is QEMU (a stale PID file must not make us kill a stranger).
qemu_pid() {
  local p=""
  [[ -r "$PIDFILE" ]] && read -r p < "$PIDFILE" 2>/dev/null || true
  [[ "$p" =~ ^[0-9]+$ && -r "/proc/$p/comm" ]] || return 1
  [[ "$(cat "/proc/$p/comm" 2>/dev/null)" == qemu-system-x86 ]] || return 1
  grep -q '^State:.*[ZX]' "/proc/$p/status" 2>/dev/null && return 1
  printf '%s' "$p"
}

ssh_node() { timeout 20 ssh -F "$TB/ssh/config" -o ConnectTimeout=5 "$NAME" "$@"; }

poll() { # poll SECONDS CMD...
  local tries=$(( $1 * 10 )); shift
  while (( tries-- > 0 )); do "$@" && return 0; sleep 0.1; done
  "$@"
}

# Host key generated once and kept; pinned as "xen1,IP key" plus a `Host xen1` block. testbed.sh up
# rewrites both files for the vmm hosts, so this runs on every up (also when already up).
pin_keys() {
  mkdir -p "$HD" "$TB/ssh"
  [[ -s "$TB/ssh/id_ed25519" ]] || die "no client key $TB/ssh/id_ed25519 (run testbed/testbed.sh up)"
  if [[ ! -s "$HD/ssh_host_ed25519_key" ]]; then
    rm -f "$HD/ssh_host_ed25519_key" "$HD/ssh_host_ed25519_key.pub"
    ssh-keygen -q -t ed25519 -N '' -C "$NAME" -f "$HD/ssh_host_ed25519_key"
  fi
  local key
  read -r key < <(cut -d' ' -f1,2 "$HD/ssh_host_ed25519_key.pub")
  { grep -v "^$NAME," "$TB/ssh/known_hosts" 2>/dev/null || true; printf '%s,%s %s\n' "$NAME" "$IP" "$key"; } \
    > "$TB/ssh/known_hosts.$NAME.tmp"
  mv "$TB/ssh/known_hosts.$NAME.tmp" "$TB/ssh/known_hosts"
  { awk -v h="Host $NAME " 'index($0, h) == 1 { skip = 1; next } /^Host / { skip = 0 } !skip' \
      "$TB/ssh/config" 2>/dev/null || true
    printf 'Host %s %s\n  HostName %s\n  User root\n  IdentityFile %s\n  IdentitiesOnly yes\n  UserKnownHostsFile %s\n  HostKeyAlias %s\n  StrictHostKeyChecking yes\n  BatchMode yes\n\n' \
      "$NAME" "$IP" "$IP" "$TB/ssh/id_ed25519" "$TB/ssh/known_hosts" "$NAME"
  } > "$TB/ssh/config.$NAME.tmp"
  mv "$TB/ssh/config.$NAME.tmp" "$TB/ssh/config"
}

# dom0's initrd = the cached generic one + a per-host cpio with the keys (Linux unpacks
# concatenated archives in order), so the cache holds no secrets.
make_initrd() {
  local base="$1" ov="$HD/overlay"
  rm -rf "$ov"; mkdir -p "$ov/etc/ssh" "$ov/root/.ssh"
  install -m 600 "$HD/ssh_host_ed25519_key" "$ov/etc/ssh/ssh_host_ed25519_key"
  install -m 600 "$TB/ssh/id_ed25519.pub" "$ov/root/.ssh/authorized_keys"
  { cat "$base/initrd.gz"; (cd "$ov" && find . | sort | cpio -o -H newc --quiet | gzip -1); } > "$HD/initrd.gz.tmp"
  mv "$HD/initrd.gz.tmp" "$HD/initrd.gz"
  rm -rf "$ov"
}

# The node disk is made once (no mount needed: mkfs -d from a staging dir) and kept across down/up,
# like the vmm hosts' node dirs; dom0 clears per-VM records at boot.
ensure_data_disk() {
  [[ -s "$HD/node.img" ]] && return 0
  local st="$HD/node.staging"
  rm -rf "$st"; mkdir -p "$st/dhcp" "$st/workspaces" "$st/cache" "$st/kernels/default"
  cp "$GUEST_DIR/vmlinuz" "$GUEST_DIR/initrd.gz" "$st/kernels/default/"
  truncate -s "$DATA_SIZE" "$HD/node.img.tmp"
  mkfs.ext4 -q -F -L vws-node -d "$st" "$HD/node.img.tmp"
  mv "$HD/node.img.tmp" "$HD/node.img"
  rm -rf "$st"
  step "node disk created ($HD/node.img, $DATA_SIZE sparse)"
}

# The guest kernel may have been rebuilt since the disk was made: copy it over SSH if it differs.
sync_kernels() {
  local f want have
  for f in vmlinuz initrd.gz; do
    want="$(sha256sum "$GUEST_DIR/$f" | cut -d' ' -f1)"
    have="$(ssh_node sha256sum "/var/lib/vws/node/kernels/default/$f" 2>/dev/null | cut -d' ' -f1 || true)"
    [[ "$want" == "$have" ]] && continue
    ssh_node "mkdir -p /var/lib/vws/node/kernels/default && cat > /var/lib/vws/node/kernels/default/$f.tmp && mv /var/lib/vws/node/kernels/default/$f.tmp /var/lib/vws/node/kernels/default/$f" \
      < "$GUEST_DIR/$f"
    step "guest $f copied to /var/lib/vws/node/kernels/default"
  done
}

ensure_tap() {
  ip link show dev "$HEAD_BR" >/dev/null 2>&1 || die "bridge $HEAD_BR missing (run testbed/testbed.sh up)"
  ip link show dev "$TAP" >/dev/null 2>&1 || ip tuntap add dev "$TAP" mode tap
  ip link set "$TAP" master "$HEAD_BR" up
}

remove_tap() { ip link del "$TAP" 2>/dev/null || true; }

kill_qemu() {
  local pid
  pid="$(qemu_pid)" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  poll 5 bash -c "! kill -0 $pid 2>/dev/null" || kill -KILL "$pid" 2>/dev/null || true
  poll 5 bash -c "! kill -0 $pid 2>/dev/null" || true
}

start_qemu() {
  local base="$1"
  rm -f "$SERIAL" "$PIDFILE"
  # -cpu max,-smap,-smep: with SMAP visible, dom0 crashes on its first exception bounce and Xen
  # reboots the machine forever. tb-size=256 caps TCG's translation cache (default 1 GiB of RSS).
  qemu-system-x86_64 -accel tcg,tb-size=256 -machine pc -cpu max,-smap,-smep -m 2048 -smp 2 \
    -nodefaults -no-user-config -display none -name "$NAME" \
    -kernel "$base/xen" \
    -append "console=com1 com1=115200,8n1 dom0_mem=512M,max:512M bootscrub=0" \
    -initrd "$base/vmlinuz console=hvc0 vws.ip=$IP/24 vws.gw=$HEAD_IP vws.hostname=$NAME,$HD/initrd.gz" \
    -serial "file:$SERIAL" \
    -netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no" -device "virtio-net-pci,netdev=n0,mac=$MAC" \
    -drive "file=$HD/node.img,format=raw,if=virtio,cache=unsafe,discard=unmap" \
    -pidfile "$PIDFILE" -daemonize
}

wait_ready() {
  local deadline=$((SECONDS + READY_TIMEOUT))
  while (( SECONDS < deadline )); do
    # Xen reboots the machine in a loop when dom0 dies: treat that as fatal at once.
    if grep -aq crashed "$SERIAL" 2>/dev/null; then
      grep -a -B5 crashed "$SERIAL" | tail -n 12 >&2
      return 1
    fi
    grep -aq VWS-DOM0-READY "$SERIAL" 2>/dev/null && return 0
    qemu_pid >/dev/null || { echo "qemu exited" >&2; return 1; }
    sleep 0.2
  done
  echo "no VWS-DOM0-READY within ${READY_TIMEOUT}s" >&2
  return 1
}

# The dom0 build directory the running QEMU booted (from its -kernel argument).
running_base() {
  local p
  p="$(qemu_pid)" || return 0
  tr '\0' '\n' < "/proc/$p/cmdline" | awk 'prev == "-kernel" { sub(/\/xen$/, ""); print; exit } { prev = $0 }'
}

is_up() {
  qemu_pid >/dev/null && ip -br link show dev "$TAP" 2>/dev/null | grep -q UP \
    && ssh_node xl list 0 >/dev/null 2>&1
}

cmd_up() {
  local base t
  [[ "$(id -u)" == 0 ]] || die "must run as root"
  mkdir -p "$HD"
  pin_keys
  if is_up; then
    # Up, but maybe from an older dom0 build (its tools changed) or with an older guest kernel.
    base="$("$SCRIPT_DIR/build.sh")" || die "testbed/xen/build.sh failed"
    if [[ "$(running_base)" == "$base" ]]; then
      "$REPO_ROOT/testbed/guest/build.sh" >/dev/null
      sync_kernels
      step "already up"
      return 0
    fi
    step "dom0 build changed ($(running_base) -> $base); restarting"
    cmd_down
  fi
  # Something half-up (QEMU without SSH, a stale tap): start from scratch.
  if qemu_pid >/dev/null; then step "QEMU runs but dom0 does not answer; restarting"; cmd_down; fi
  local rc=0
  base="$("$SCRIPT_DIR/build.sh")" || rc=$?
  if (( rc == 3 )); then
    printf '%s: WARNING: the Xen packages could not be downloaded (no apt mirror?); xen1 not started\n' "$NAME" >&2
    exit 3
  fi
  (( rc == 0 )) || die "testbed/xen/build.sh failed (exit $rc)"
  "$REPO_ROOT/testbed/guest/build.sh" >/dev/null
  make_initrd "$base"
  ensure_data_disk
  ensure_tap
  t="${EPOCHREALTIME/./}"
  start_qemu "$base" || { remove_tap; die "qemu failed to start"; }
  step "qemu started (pid $(qemu_pid))"
  if ! wait_ready; then
    kill_qemu; remove_tap
    die "dom0 did not come up; see $SERIAL"
  fi
  step "$(grep -a -o 'VWS-DOM0-READY.*' "$SERIAL" | head -n1 | tr -d '\r')"
  poll "$SSH_TIMEOUT" ssh_node true 2>/dev/null || { kill_qemu; remove_tap; die "sshd on $IP did not answer"; }
  step "ssh ready $(( (${EPOCHREALTIME/./} - t) / 1000 )) ms after qemu start"
  sync_kernels
  step "up: $IP, qemu RSS $(awk '/VmRSS/ { printf "%d MiB", $2 / 1024 }' "/proc/$(qemu_pid)/status")"
}

cmd_down() {
  local pid
  if pid="$(qemu_pid)"; then
    # dom0 powers off -> Xen enters ACPI S5 -> QEMU exits by itself (~3 s). Detached, so ssh
    # returns at once instead of hanging on a connection that never gets its FIN.
    timeout 5 ssh -F "$TB/ssh/config" -o ConnectTimeout=3 "$NAME" \
      '(sleep 0.3; poweroff -f) </dev/null >/dev/null 2>&1 &' >/dev/null 2>&1 || true
    if poll 10 bash -c "! kill -0 $pid 2>/dev/null"; then
      step "dom0 powered off; qemu (pid $pid) exited"
    else
      kill_qemu
      step "qemu (pid $pid) killed"
    fi
  fi
  rm -f "$PIDFILE"
  if ip link show dev "$TAP" >/dev/null 2>&1; then remove_tap; step "tap $TAP removed"; fi
  qemu_pid >/dev/null && die "qemu still running"
  ip link show dev "$TAP" >/dev/null 2>&1 && die "tap $TAP still present"
  step "down: nothing left"
}

cmd_status() {
  local ok=0 pid
  if pid="$(qemu_pid)"; then
    echo "xen1/qemu    up    pid $pid rss $(awk '/VmRSS/ { printf "%d MiB", $2 / 1024 }' "/proc/$pid/status")"
  else
    echo "xen1/qemu    DOWN"; ok=1
  fi
  if ip -br link show dev "$TAP" 2>/dev/null | grep -q UP; then
    echo "xen1/tap     up    $TAP in $HEAD_BR"
  else
    echo "xen1/tap     DOWN  $TAP"; ok=1
  fi
  if (( ok == 0 )) && ssh_node xl list 0 >/dev/null 2>&1; then
    echo "xen1/dom0    up    ssh root@$IP, xl ok, bridge xenbr0"
  else
    echo "xen1/dom0    DOWN  (no ssh/xl on $IP)"; ok=1
  fi
  return "$ok"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: xen1.sh up|down|status   (state: $HD)" >&2; exit 2 ;;
esac
