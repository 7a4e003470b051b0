#!/usr/bin/env bash
# xen1: the testbed's real Xen 4.17 node. Xen + a PV dom0 (xl, xenstored, xenconsoled, sshd; dnsmasq
# and nft for vws to use) run in QEMU (TCG), attached by a tap to the head bridge vwsbr0. See
# testbed/README.md.
#
#   xen1.sh up       build (cached), boot, wait for dom0 and SSH, sync dom0's clock, start dom0's
#                    munged + slurmd (Slurm node xen1) and wait for it to register; idempotent
#   xen1.sh status   one line per component; exit 0 iff QEMU runs, the tap is up and ssh xl works
#   xen1.sh slurm-status   one line: dom0's slurmd; exit 0 iff Slurm sees node xen1 responding
#   xen1.sh sync-project   copy dist/ and the pilot's packages to dom0 if they changed (done by up too)
#   xen1.sh down     dom0 `poweroff -f`, QEMU killed by PID if still there after 10 s, tap removed
#   xen1.sh reboot [--off-seconds N]   power cut (QEMU killed -9), off N s, then up
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
# dom0's memory (Xen's dom0_mem): vws's pilots balloon it down by a workspace's share and back. At 512
# MiB, ballooned to 320 for a 128 MiB guest, dom0's kernel saw ~197 MiB and its OOM killer killed `xl`
# in 4 of 100 pilot trials (its root file system is in RAM): 768 leaves room for a pilot's share.
DOM0_MIB=768
DATA_SIZE=2G                   # sparse node disk: guest disks and ~130 MiB saved states
READY_TIMEOUT=240              # seconds from QEMU start to the dom0 ready marker (~15 s idle; >90 s seen at load 15)
SSH_TIMEOUT=30
SLURM_TIMEOUT=45               # seconds for dom0's slurmd to register with slurmctld (idle/mixed/allocated)
SLURM_CONF_FILE="$TB/slurm/slurm.conf"
MUNGE_KEY="$TB/munge/munge.key"
GOOD_BASE="$HD/good-base"      # the last dom0 build that came up: the fallback when a new one does not
NODE_DISK="$HD/host-node.img"  # the host's node binary, a read-only ext4 disk for dom0 (/opt/host-node)
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
  # Slurm at boot (dom0's /init runs vws-slurm-start): the testbed's slurm.conf and munge key at the same
  # paths as on the head (slurm.conf names its paths absolutely); xen1.sh re-syncs them over SSH on up.
  mkdir -p "$ov/etc/vws"; printf '%s\n' "$TB" > "$ov/etc/vws/testbed-dir"
  if [[ -s "$SLURM_CONF_FILE" && -s "$MUNGE_KEY" ]]; then
    mkdir -p "$ov$TB/slurm" "$ov$TB/munge"
    install -m 644 "$SLURM_CONF_FILE" "$ov$SLURM_CONF_FILE"
    install -m 400 "$MUNGE_KEY" "$ov$MUNGE_KEY"
  fi
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

# dom0's clock follows Xen's, which starts from QEMU's RTC (whole seconds) and drifts under TCG: set it
# from the head's (munge credentials, job times and the pilot's --end all compare clocks). dom0 prints its
# time once the session is up, then reads the head's, so ssh's connection time does not count.
sync_clock() {
  local theirs ours set
  coproc CLOCK { ssh_node 'date +%s.%N; read -r t && date -u -s "@$t" +%s.%N'; }
  if ! read -r -t 20 theirs <&"${CLOCK[0]}"; then wait "$CLOCK_PID" 2>/dev/null || true; step "clock: no answer"; return 0; fi
  ours="$(date +%s.%N)"
  printf '%s\n' "$(date +%s.%N)" >&"${CLOCK[1]}"
  read -r -t 20 set <&"${CLOCK[0]}" || true
  wait "$CLOCK_PID" 2>/dev/null || true
  step "clock set (dom0 was $(awk -v a="$theirs" -v b="$ours" 'BEGIN { printf "%+.2f", a - b }') s off)"
}

# sinfo's short state of node xen1 (idle, mix, alloc, comp; "*" = not responding), or nothing.
slurm_state() {
  [[ -s "$SLURM_CONF_FILE" ]] || return 0
  SLURM_CONF="$SLURM_CONF_FILE" timeout 5 sinfo -h -N -n "$NAME" -o '%t' 2>/dev/null | head -n1
}

slurm_responding() { [[ "$(slurm_state)" =~ ^(idle|mix|alloc|comp)$ ]]; }

# dom0's munged + slurmd: slurm.conf and the munge key synced (same paths as on the head), the daemons
# started if missing (slurmd restarted if its slurm.conf changed), then a bounded wait (SLURM_TIMEOUT)
# until slurmctld lists xen1 as responding. Skipped when the testbed has no slurm.conf (xen1.sh on its own).
ensure_slurm() {
  local f have want sums mode="" changed=0
  if [[ ! -s "$SLURM_CONF_FILE" || ! -s "$MUNGE_KEY" ]]; then step "no $SLURM_CONF_FILE: Slurm not started in dom0"; return 0; fi
  if ! grep -q "^NodeName=$NAME " "$SLURM_CONF_FILE"; then step "$SLURM_CONF_FILE has no node $NAME: Slurm not started in dom0"; return 0; fi
  # One SSH call for the common case (nothing changed, slurmd registered).
  # Retried: under load an SSH call to dom0 (TCG) can outlast ssh_node's 20 s.
  for f in 1 2 3; do
    sums="$(ssh_node "test -x /usr/local/sbin/vws-slurm-start && echo has-slurm; sha256sum $SLURM_CONF_FILE $MUNGE_KEY; echo ssh-ok" 2>/dev/null || true)"
    grep -qx ssh-ok <<<"$sums" && break
  done
  grep -qx ssh-ok <<<"$sums" || die "dom0 did not answer over SSH (3 tries)"
  grep -qx has-slurm <<<"$sums" || die "dom0 has no /usr/local/sbin/vws-slurm-start (an old dom0 build?)"
  for f in "$SLURM_CONF_FILE:644" "$MUNGE_KEY:400"; do
    want="$(sha256sum "${f%:*}" | cut -d' ' -f1)"
    have="$(awk -v f="${f%:*}" '$2 == f { print $1 }' <<<"$sums")"
    [[ "$want" == "$have" ]] && continue
    ssh_node "mkdir -p ${f%/*} /etc/vws && echo $TB > /etc/vws/testbed-dir && cat > ${f%:*}.tmp && chmod ${f##*:} ${f%:*}.tmp && mv ${f%:*}.tmp ${f%:*}" < "${f%:*}"
    [[ "${f%:*}" == "$SLURM_CONF_FILE" && -n "$have" ]] && mode=restart
    changed=1
    step "${f%:*} copied to dom0"
  done
  if (( changed )) || ! slurm_responding; then
    ssh_node /usr/local/sbin/vws-slurm-start $mode | while read -r l; do step "$l"; done
  fi
  if ! poll "$SLURM_TIMEOUT" slurm_responding; then
    ssh_node tail -n 5 "$TB/hosts/$NAME/log/slurmd.log" "$TB/hosts/$NAME/log/slurmd.err" >&2 2>/dev/null || true
    die "Slurm node $NAME not responding after ${SLURM_TIMEOUT}s (state '$(slurm_state)'); dom0's log: $TB/hosts/$NAME/log/slurmd.log"
  fi
  step "slurmd: Slurm node $NAME $(slurm_state)"
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

# The host's node binary on a read-only ext4 disk of its own (dom0's /dev/vdb at /opt/host-node, linked
# as /usr/bin/node; its libraries are in the initramfs). Remade when the binary changes; QEMU reads it.
ensure_node_disk() {
  local n sum st
  n="$(command -v node 2>/dev/null)" || return 0
  n="$(readlink -f "$n")"
  sum="$(sha256sum "$n" | cut -d' ' -f1)"
  [[ -s "$NODE_DISK" && "$(cat "$NODE_DISK.sha256" 2>/dev/null)" == "$sum" ]] && return 0
  st="$HD/host-node.staging"
  rm -rf "$st"; mkdir -p "$st"; cp "$n" "$st/node"
  rm -f "$NODE_DISK.tmp"
  truncate -s $(( $(stat -c %s "$n") / 1048576 + 32 ))M "$NODE_DISK.tmp"
  mkfs.ext4 -q -F -L host-node -d "$st" "$NODE_DISK.tmp"
  mv "$NODE_DISK.tmp" "$NODE_DISK"; printf '%s\n' "$sum" > "$NODE_DISK.sha256"
  rm -rf "$st"
  step "host-node disk made ($NODE_DISK: $n)"
}

# The project files the pilot needs (dist/ and the packages its require() closure loads, with their
# package.json files), copied over SSH to dom0's node disk, which dom0 links at the project's own path,
# so a batch job runs `node $REPO_ROOT/dist/pilot/main.js`. Sent only when their hash changed. Needs a
# built dist/ (npx tsc -p tsconfig.build.json); without one, nothing is sent.
sync_project() {
  local list sum have
  [[ -s "$REPO_ROOT/dist/pilot/main.js" ]] || { step "no $REPO_ROOT/dist/pilot/main.js: project not synced"; return 0; }
  # The packages main.js loads (require.cache at exit; main.js without arguments prints its usage).
  # A snapshot tree whose node_modules is a symlink (helpers' /tmp/treeX) loads packages by their real
  # path: they are named under the project's own node_modules/, as tar and dom0 see them.
  list="$(cd "$REPO_ROOT" && node -e '
    const path = require("path"), fs = require("fs"), root = process.cwd(), out = new Set(["dist", "package.json"]);
    const nm = fs.realpathSync(path.join(root, "node_modules"));
    process.on("exit", () => {
      for (const f of Object.keys(require.cache)) {
        const m = /^(.*\/node_modules\/(@[^/]+\/)?[^/]+)\//.exec(f);
        if (m) out.add(m[1].startsWith(nm + "/") ? path.join("node_modules", m[1].slice(nm.length + 1)) : path.relative(root, m[1]));
      }
      fs.writeSync(3, [...out].sort().join("\n") + "\n");
    });
    process.argv = [process.argv[0], "main.js"];
    require("./dist/pilot/main.js");
  ' 3>&1 >/dev/null 2>&1)" || true
  [[ -n "$list" ]] || die "cannot compute the pilot's file list"
  # shellcheck disable=SC2086 # one path a line, none with spaces
  sum="$(cd "$REPO_ROOT" && find $list -type f -printf '%p %s %T@\n' | sort | sha256sum | cut -d' ' -f1)"
  have="$(ssh_node cat /var/lib/vws/node/host/project.sha256 2>/dev/null || true)"
  [[ "$sum" == "$have" ]] && return 0
  # Tried twice: a dist/ being rebuilt meanwhile (tsc) can make tar fail; nothing is replaced then.
  local try
  for try in 1 2; do
    (cd "$REPO_ROOT" && tar -cz $list) | timeout 300 ssh -F "$TB/ssh/config" -o ConnectTimeout=5 "$NAME" "rm -rf /var/lib/vws/node/host/project.new && mkdir -p /var/lib/vws/node/host/project.new && tar -xz -C /var/lib/vws/node/host/project.new && rm -rf /var/lib/vws/node/host/project && mv /var/lib/vws/node/host/project.new /var/lib/vws/node/host/project && echo $sum > /var/lib/vws/node/host/project.sha256" && break
    (( try == 2 )) && die "could not copy the project to dom0"
    sleep 2
  done
  step "project synced to dom0 ($REPO_ROOT: dist/ + the pilot's packages)"
}

start_qemu() {
  local base="$1" nodedisk=()
  rm -f "$SERIAL" "$PIDFILE"
  ensure_node_disk
  [[ -s "$NODE_DISK" ]] && nodedisk=(-drive "file=$NODE_DISK,format=raw,if=virtio,readonly=on")
  # -cpu max,-smap,-smep: with SMAP visible, dom0 crashes on its first exception bounce and Xen
  # reboots the machine forever. -xsave (which also hides AVX, AVX2, FMA, F16C): with XSAVE visible, dom0's
  # processes lose their SSE/AVX registers now and then while a guest runs (testbed/README.md, "dom0's
  # faults"; xsave-check.sh measures it). VWS_XEN1_CPU overrides the model, for such experiments.
  # tb-size=256 caps TCG's translation cache (default 1 GiB of RSS).
  # print-fatal-signals=1: dom0's kernel logs every process killed by SIGSEGV/SIGABRT/SIGBUS… on the console
  # (serial.log), which is how those faults were first seen.
  # VWS_XEN1_TCG_THREAD=single: one host thread for both vCPUs (QEMU's default here: one each), for the
  # experiment that ruled out QEMU's multi-threaded TCG as the faults' cause (README.md, "What works today").
  qemu-system-x86_64 -accel "tcg,tb-size=256${VWS_XEN1_TCG_THREAD:+,thread=$VWS_XEN1_TCG_THREAD}" -machine pc -cpu "${VWS_XEN1_CPU:-max,-smap,-smep,-xsave}" -m 2048 -smp 2 \
    -nodefaults -no-user-config -display none -name "$NAME" \
    -kernel "$base/xen" \
    -append "console=com1 com1=115200,8n1 dom0_mem=${DOM0_MIB}M,max:${DOM0_MIB}M bootscrub=0" \
    -initrd "$base/vmlinuz console=hvc0 print-fatal-signals=1 vws.ip=$IP/24 vws.gw=$HEAD_IP vws.hostname=$NAME vws.project=$REPO_ROOT,$HD/initrd.gz" \
    -serial "file:$SERIAL" \
    -netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no" -device "virtio-net-pci,netdev=n0,mac=$MAC" \
    -drive "file=$HD/node.img,format=raw,if=virtio,cache=unsafe,discard=unmap" "${nodedisk[@]}" \
    -pidfile "$PIDFILE" -daemonize
}

# boot BASE: QEMU started with that build; true once dom0's sshd answers. On failure nothing is left
# running (the serial log is kept as serial.log.failed).
boot() {
  local base="$1" t
  ensure_tap
  t="${EPOCHREALTIME/./}"
  start_qemu "$base" || { remove_tap; echo "qemu failed to start" >&2; return 1; }
  step "qemu started (pid $(qemu_pid))"
  if ! wait_ready; then
    kill_qemu; remove_tap; cp -f "$SERIAL" "$SERIAL.failed" 2>/dev/null || true
    echo "dom0 did not come up; see $SERIAL.failed" >&2
    return 1
  fi
  step "$(grep -a -o 'VWS-DOM0-READY.*' "$SERIAL" | head -n1 | tr -d '\r')"
  if ! poll "$SSH_TIMEOUT" ssh_node true 2>/dev/null; then
    kill_qemu; remove_tap; cp -f "$SERIAL" "$SERIAL.failed" 2>/dev/null || true
    echo "sshd on $IP did not answer" >&2
    return 1
  fi
  step "ssh ready $(( (${EPOCHREALTIME/./} - t) / 1000 )) ms after qemu start"
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
      sync_project
      ensure_slurm
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
  if ! boot "$base"; then
    # A new dom0 build that does not come up: boot the last one that did, so xen1 stays usable.
    local good=""
    [[ -r "$GOOD_BASE" ]] && read -r good < "$GOOD_BASE"
    if [[ -n "$good" && "$good" != "$base" && -s "$good/stamp" ]]; then
      step "new dom0 build $base failed; booting the last good one ($good)"
      boot "$good" || die "dom0 did not come up (new and last good build); see $SERIAL"
      sync_kernels; sync_clock; sync_project; ensure_slurm
      die "dom0 build $base did not come up (see $SERIAL.failed); xen1 runs the last good build $good"
    fi
    die "dom0 did not come up; see $SERIAL"
  fi
  printf '%s\n' "$base" > "$GOOD_BASE"
  sync_kernels
  sync_clock
  sync_project
  ensure_slurm
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

# The node's power cut and boot (issue 7's kill matrix: "node reboot"): QEMU killed -9, so Xen, dom0, its
# guests, slurmd and any pilot die at once and dom0's tmpfs is lost (the node disk stays); off for
# --off-seconds; then up (a new boot: Xen sets dom0's memory from dom0_mem again, and slurmd registers with
# a new boot time, so Slurm ends the jobs it had running there as node-fail).
cmd_reboot() {
  local off=0 pid
  if [[ "${1:-}" == --off-seconds ]]; then off="${2:?--off-seconds needs a number}"; fi
  [[ "$off" =~ ^[0-9]+$ ]] || die "--off-seconds must be a whole number of seconds, got '$off'"
  pid="$(qemu_pid)" || die "xen1 is not up"
  kill -9 "$pid"
  poll 10 bash -c "! kill -0 $pid 2>/dev/null" || die "qemu (pid $pid) survived kill -9"
  step "power cut: qemu (pid $pid) killed -9"
  cmd_down
  sleep "$off"
  cmd_up
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

# One line for dom0's slurmd (testbed.sh status prints it; `status` above leaves it out, so that tests
# that need only xl, which skip when `status` fails, do not depend on Slurm). Exit 0 iff xen1 responds.
cmd_slurm_status() {
  local st pid
  st="$(slurm_state)"
  if [[ "$st" =~ ^(idle|mix|alloc|comp)$ ]]; then
    pid="$(ssh_node cat "$TB/hosts/$NAME/slurmd.pid" 2>/dev/null || true)"
    echo "xen1/slurmd  up    pid ${pid:-?} in dom0, Slurm node $NAME $st (partition xen, feature xen)"
  else
    echo "xen1/slurmd  DOWN  Slurm node $NAME state '${st:-unknown}'"; return 1
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  slurm-status) cmd_slurm_status ;;
  # The pilot's project files to dom0 again (after a rebuild of dist/); tests call it before submitting.
  sync-project) qemu_pid >/dev/null || die "xen1 is not up"; sync_project ;;
  down) cmd_down ;;
  reboot) shift; cmd_reboot "$@" ;;
  status) cmd_status ;;
  *) echo "usage: xen1.sh up|down|reboot [--off-seconds N]|status|slurm-status|sync-project   (state: $HD)" >&2; exit 2 ;;
esac
