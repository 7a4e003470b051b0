#!/usr/bin/env bash
# vws testbed: N fake "VMM hosts" on this machine, each a network + UTS + mount
# namespace with its own sshd and slurmd, plus munged and slurmctld on the head
# (root namespace). Two networks: "default" (vwsbr0/br0) and "private"
# (vwsbr1/br1). The DHCP servers are vws's own (it starts them under the node
# dir's dhcp/<network>/); down stops any it left running. See testbed/README.md.
#
#   testbed.sh up [--hosts N]        start (idempotent; starts what is missing)
#   testbed.sh status                one line per component; exit 0 if all up
#   testbed.sh down                  stop everything, verify nothing is left
#   testbed.sh clean [--only-prefix P]   remove vws leftovers on the nodes (VMs, taps, nft, DHCP, dirs)
#   testbed.sh exec HOST -- CMD...   run CMD inside HOST's namespaces
#   testbed.sh env                   print export lines for eval
set -euo pipefail
export LC_ALL=C
umask 022

SCRIPT_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
TB="${VWS_TESTBED_DIR:-/var/lib/vws/testbed}"
GUEST_DIR="${VWS_CACHE_DIR:-$REPO_ROOT/.cache}/guest"
XEN1="$SCRIPT_DIR/xen/xen1.sh"      # the Xen node (QEMU running Xen + dom0), see testbed/xen/
XEN1_SKIPPED="$TB/xen1.skipped"     # why the last up went on without xen1 (no Xen packages)
NODE_MNT=/var/lib/vws/node          # each host sees its own node dir here
HEAD_BR=vwsbr0                      # network "default": head vwsbr0, hosts' br0 (eth0)
NET_PREFIX=10.213.0
HEAD_IP="$NET_PREFIX.1"
PRIV_BR=vwsbr1                      # network "private": head vwsbr1, hosts' br1 (eth1)
PRIV_PREFIX=10.214.0
PRIV_IP="$PRIV_PREFIX.1"
DHCP_COMMS=dnsmasq,dhcpd            # the DHCP servers vws may leave running in a host
SLURM_CONF_FILE="$TB/slurm/slurm.conf"
MUNGE_SOCKET="$TB/munge/run/munge.socket.2"
IDLE_TIMEOUT=30                     # seconds for all slurmd to register idle
DEFAULT_HOSTS=3
export SLURM_CONF="$SLURM_CONF_FILE"

T0="${EPOCHREALTIME/./}"
KILLED_PIDS=()   # every PID we signalled, to wait for its reaping at the end

# ---------------------------------------------------------------- helpers

die() { printf 'testbed: error: %s\n' "$*" >&2; exit 1; }

elapsed() {
  local us=$(( ${EPOCHREALTIME/./} - T0 ))
  printf '%d.%02d' $((us / 1000000)) $((us % 1000000 / 10000))
}

# One line per step, prefixed with the time since the command started.
step() { printf '[%6ss] %s\n' "$(elapsed)" "$*" 2>/dev/null || true; }

host_ip() { printf '%s.%d' "$NET_PREFIX" $((10 + ${1#vmm})); }
host_priv_ip() { printf '%s.%d' "$PRIV_PREFIX" $((10 + ${1#vmm})); }
host_dir() { printf '%s/hosts/%s' "$TB" "$1"; }

# poll SECONDS CMD...: run CMD every 0.1 s until it succeeds; false on timeout.
poll() {
  local tries=$(( $1 * 10 )); shift
  while (( tries-- > 0 )); do
    "$@" && return 0
    sleep 0.1
  done
  "$@"
}

read_pid() { # read_pid FILE: prints the PID in FILE, or nothing
  local p=""
  [[ -r "$1" ]] && read -r p < "$1" 2>/dev/null || true
  [[ "$p" =~ ^[0-9]+$ ]] && printf '%s' "$p"
  return 0
}

# A PID counts as running if it exists, is not a zombie, and (if given) its
# command name matches: a stale PID file must not make us signal a stranger.
# COMM may list several names, comma-separated (dnsmasq,dhcpd).
pid_alive() { # pid_alive PID [COMM[,COMM...]]
  local pid="$1" comm="${2:-}" stat state
  [[ -n "$pid" && -r "/proc/$pid/stat" ]] || return 1
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  state="${stat##*) }"; state="${state%% *}"
  [[ "$state" != Z && "$state" != X ]] || return 1
  [[ -z "$comm" || ",$comm," == *",$(cat "/proc/$pid/comm" 2>/dev/null),"* ]]
}

pidfile_alive() { # pidfile_alive FILE COMM: prints the PID if it runs
  local pid
  pid="$(read_pid "$1")"
  pid_alive "$pid" "$2" && printf '%s' "$pid"
}

# kill_wait PID...: TERM, wait up to 5 s for all to exit, then KILL and wait.
kill_wait() {
  local pids=() p
  for p in "$@"; do pid_alive "$p" && pids+=("$p"); done
  (( ${#pids[@]} )) || return 0
  KILLED_PIDS+=("${pids[@]}")
  kill -TERM "${pids[@]}" 2>/dev/null || true
  any_alive() { local q; for q in "${pids[@]}"; do pid_alive "$q" && return 0; done; return 1; }
  none_alive() { ! any_alive; }
  poll 5 none_alive && return 0
  for p in "${pids[@]}"; do pid_alive "$p" && kill -KILL "$p" 2>/dev/null || true; done
  poll 5 none_alive || { printf 'testbed: warning: PIDs still alive after KILL: %s\n' "${pids[*]}" >&2; return 1; }
}

# stop_pidfiles "FILE|COMM|NAME"...: stop those daemons together (TERM all,
# then wait; faster than one by one), print one line each, drop the PID files.
stop_pidfiles() {
  local spec file comm name pid pids=() names=()
  for spec in "$@"; do
    IFS='|' read -r file comm name <<<"$spec"
    if pid="$(pidfile_alive "$file" "$comm")"; then
      pids+=("$pid"); names+=("$name (pid $pid)")
    fi
  done
  if (( ${#pids[@]} )); then
    kill_wait "${pids[@]}" || true
    for name in "${names[@]}"; do step "stopped $name"; done
  fi
  for spec in "$@"; do IFS='|' read -r file _ <<<"$spec"; rm -f "$file"; done
}

netns_inode() { stat -L -c %i "/run/netns/$1" 2>/dev/null; }

# The anchor is the process that holds a host's UTS + mount namespaces. It is
# only valid if it is still in the host's current network namespace.
anchor_pid() { # prints the anchor PID of HOST if valid
  local h="$1" pid ino
  pid="$(pidfile_alive "$(host_dir "$h")/anchor.pid" sleep)" || return 1
  ino="$(netns_inode "$h")" || return 1
  [[ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" == "net:[$ino]" ]] || return 1
  printf '%s' "$pid"
}

in_host() { # in_host HOST CMD...: run CMD in the host's namespaces
  local pid
  pid="$(anchor_pid "$1")" || die "host $1 is not up (no anchor process)"
  shift
  nsenter -t "$pid" --net --uts --mount -- "$@"
}

# Hosts known to this state dir or present as namespaces (for down/status).
known_hosts_list() {
  local names=() d n
  for d in "$TB"/hosts/vmm[1-9]; do [[ -d "$d" ]] && names+=("${d##*/}"); done
  for n in /run/netns/vmm[1-9]; do [[ -e "$n" ]] && names+=("${n##*/}"); done
  (( ${#names[@]} )) && printf '%s\n' "${names[@]}" | sort -u
  return 0
}

configured_hosts() { # the hosts of the current (or last) up
  local n
  n="$(cat "$TB/nhosts" 2>/dev/null || true)"
  [[ "$n" =~ ^[1-9]$ ]] || return 0
  seq -f 'vmm%g' 1 "$n"
}

# Both count the vmm hosts only (partition vws); xen1's slurmd has its own status line.
slurm_idle_count() {
  timeout 5 sinfo -h -N -p vws -t idle -o '%N' 2>/dev/null | sort -u | grep -c . || true
}

slurm_up_count() { # nodes that are responding (idle, mixed, allocated, completing)
  timeout 5 sinfo -h -N -p vws -t idle,mix,alloc,comp -o '%N' 2>/dev/null | sort -u | grep -c . || true
}

# True if any process, namespace or link of the testbed exists (for HOSTS).
anything_up() {
  local h hd l
  pidfile_alive "$TB/slurm/slurmctld.pid" slurmctld >/dev/null && return 0
  pidfile_alive "$TB/munge/munged.pid" munged >/dev/null && return 0
  ip link show dev "$HEAD_BR" >/dev/null 2>&1 && return 0
  ip link show dev "$PRIV_BR" >/dev/null 2>&1 && return 0
  pidfile_alive "$TB/hosts/xen1/qemu.pid" qemu-system-x86 >/dev/null && return 0
  ip link show dev xen1-tap >/dev/null 2>&1 && return 0
  for h in "$@"; do
    hd="$(host_dir "$h")"
    [[ -e "/run/netns/$h" ]] && return 0
    ip link show dev "$h-h" >/dev/null 2>&1 && return 0
    ip link show dev "$h-p" >/dev/null 2>&1 && return 0
    for l in "anchor.pid sleep" "sshd.pid sshd" "slurmd.pid slurmd"; do
      pidfile_alive "$hd/${l% *}" "${l#* }" >/dev/null && return 0
    done
    for l in "$hd"/node/dhcp/*/server.pid; do
      pidfile_alive "$l" "$DHCP_COMMS" >/dev/null && return 0
    done
  done
  return 1
}

# ---------------------------------------------------------------- checks

# Prints "NAME STATE DETAIL" lines; returns 0 only if every component is up.
check_all() {
  local ok=0 hosts h hd ip pip pid n idle upn
  mapfile -t hosts < <(configured_hosts)
  if (( ${#hosts[@]} == 0 )); then
    echo "testbed      down  (never brought up in $TB)"
    return 1
  fi
  if ip -br addr show dev "$HEAD_BR" 2>/dev/null | grep -q "$HEAD_IP/24"; then
    echo "bridge       up    $HEAD_BR $HEAD_IP/24 (network default)"
  else
    echo "bridge       DOWN  $HEAD_BR"; ok=1
  fi
  if ip -br addr show dev "$PRIV_BR" 2>/dev/null | grep -q "$PRIV_IP/24"; then
    echo "bridge1      up    $PRIV_BR $PRIV_IP/24 (network private)"
  else
    echo "bridge1      DOWN  $PRIV_BR"; ok=1
  fi
  pid="$(pidfile_alive "$TB/munge/munged.pid" munged)" \
    && echo "munged       up    pid $pid" || { echo "munged       DOWN"; ok=1; }
  pid="$(pidfile_alive "$TB/slurm/slurmctld.pid" slurmctld)" \
    && echo "slurmctld    up    pid $pid" || { echo "slurmctld    DOWN"; ok=1; }
  for h in "${hosts[@]}"; do
    hd="$(host_dir "$h")"; ip="$(host_ip "$h")"; pip="$(host_priv_ip "$h")"
    if pid="$(anchor_pid "$h")" \
        && ip -n "$h" -br addr show dev br0 2>/dev/null | grep -q "$ip/24" \
        && ip -br link show dev "$h-h" 2>/dev/null | grep -q UP; then
      echo "$h/anchor  up    pid $pid netns $h br0 $ip"
    else
      echo "$h/anchor  DOWN  (namespace, veth or anchor missing)"; ok=1
    fi
    if ip -n "$h" -br addr show dev br1 2>/dev/null | grep -q "$pip/24" \
        && ip -br link show dev "$h-p" 2>/dev/null | grep -q UP; then
      echo "$h/br1     up    br1 $pip, veth $h-p in $PRIV_BR"
    else
      echo "$h/br1     DOWN  (br1, $pip or veth $h-p missing)"; ok=1
    fi
    pid="$(pidfile_alive "$hd/sshd.pid" sshd)" \
      && echo "$h/sshd    up    pid $pid $ip:22" || { echo "$h/sshd    DOWN"; ok=1; }
    pid="$(pidfile_alive "$hd/slurmd.pid" slurmd)" \
      && echo "$h/slurmd  up    pid $pid" || { echo "$h/slurmd  DOWN"; ok=1; }
    if [[ -s "$hd/node/kernels/default/vmlinuz" && -s "$hd/node/kernels/default/initrd.gz" ]]; then
      echo "$h/kernel  ok    $NODE_MNT/kernels/default"
    else
      echo "$h/kernel  DOWN  $NODE_MNT/kernels/default missing"; ok=1
    fi
  done
  n=${#hosts[@]}
  if [[ -n "$(pidfile_alive "$TB/slurm/slurmctld.pid" slurmctld)" ]]; then
    idle="$(slurm_idle_count)"; upn="$(slurm_up_count)"
  else
    idle=0; upn=0
  fi
  if (( upn == n )); then
    echo "nodes        up    $idle/$n idle, $((upn - idle)) busy"
  else
    echo "nodes        DOWN  $upn/$n responding ($idle idle)"; ok=1
  fi
  if (( ! ${CHECK_XEN1:-1} )); then
    :
  elif [[ -s "$XEN1_SKIPPED" ]]; then
    echo "xen1         SKIPPED  $(head -n1 "$XEN1_SKIPPED")"
  else
    VWS_TESTBED_DIR="$TB" "$XEN1" status || ok=1
    VWS_TESTBED_DIR="$TB" "$XEN1" slurm-status || ok=1
  fi
  return "$ok"
}

# ---------------------------------------------------------------- setup pieces

preflight() {
  [[ "$(id -u)" == 0 ]] || die "must run as root"
  local c missing=()
  for c in ip nsenter unshare munged slurmctld slurmd sinfo squeue scancel \
           dnsmasq dhcp_release dhcpd nft ssh ssh-keygen ssh-keyscan /usr/sbin/sshd flock; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
  done
  (( ${#missing[@]} == 0 )) || die "missing commands: ${missing[*]} (install testbed/debian-packages.txt)"
}

ensure_guest() {
  "$SCRIPT_DIR/guest/build.sh"
  [[ -s "$GUEST_DIR/vmlinuz" && -s "$GUEST_DIR/initrd.gz" ]] || die "guest build produced no kernel"
}

ensure_dirs() {
  local h hd
  mkdir -p "$TB"/{slurm/state,munge/run,ssh} "$NODE_MNT"
  chmod 755 "$TB" "$TB/munge" "$TB/munge/run"   # munged: socket dir must be 0755
  chmod 700 "$TB/ssh"
  for h in "$@"; do
    hd="$(host_dir "$h")"
    mkdir -p "$hd"/{log,home,slurmd-spool} "$hd/node/dhcp" "$hd/node/kernels/default"
  done
  # sshd's privilege-separation dir, normally made by its service unit.
  mkdir -p -m 0755 /run/sshd
}

ensure_keys() {
  local h hd
  if [[ ! -s "$TB/munge/munge.key" ]]; then
    head -c 1024 /dev/urandom > "$TB/munge/munge.key.tmp"
    chmod 400 "$TB/munge/munge.key.tmp"
    mv "$TB/munge/munge.key.tmp" "$TB/munge/munge.key"
  fi
  if [[ ! -s "$TB/ssh/id_ed25519" ]]; then
    rm -f "$TB/ssh/id_ed25519" "$TB/ssh/id_ed25519.pub"
    ssh-keygen -q -t ed25519 -N '' -C vws-testbed -f "$TB/ssh/id_ed25519"
  fi
  cp "$TB/ssh/id_ed25519.pub" "$TB/ssh/authorized_keys"
  # Host keys are kept across down/up, so clients can pin them.
  for h in "$@"; do
    hd="$(host_dir "$h")"
    if [[ ! -s "$hd/ssh_host_ed25519_key" ]]; then
      rm -f "$hd/ssh_host_ed25519_key" "$hd/ssh_host_ed25519_key.pub"
      ssh-keygen -q -t ed25519 -N '' -C "$h" -f "$hd/ssh_host_ed25519_key"
    fi
  done
  write_known_hosts "$@"
}

write_known_hosts() {
  local h key tmp="$TB/ssh/known_hosts.tmp"
  : > "$tmp"
  for h in "$@"; do
    read -r key < <(cut -d' ' -f1,2 "$(host_dir "$h")/ssh_host_ed25519_key.pub")
    printf '%s,%s %s\n' "$h" "$(host_ip "$h")" "$key" >> "$tmp"
  done
  mv "$tmp" "$TB/ssh/known_hosts"
  # Host names are not in /etc/hosts; this lets `ssh -F $TB/ssh/config vmm2` work.
  for h in "$@"; do
    printf 'Host %s %s\n  HostName %s\n  User root\n  IdentityFile %s\n  IdentitiesOnly yes\n  UserKnownHostsFile %s\n  HostKeyAlias %s\n  StrictHostKeyChecking yes\n  BatchMode yes\n\n' \
      "$h" "$(host_ip "$h")" "$(host_ip "$h")" "$TB/ssh/id_ed25519" "$TB/ssh/known_hosts" "$h"
  done > "$TB/ssh/config.tmp"
  mv "$TB/ssh/config.tmp" "$TB/ssh/config"
}

write_if_changed() { # write_if_changed FILE (content on stdin)
  local tmp="$1.tmp"
  cat > "$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

# One line per vmm host. vmm2 and up have the feature `pilot`: the nodes a multi-node pilot site test
# lends (lrm.constraints [pilot]); vmm1, where the other tests run, never gets a pilot job by feature.
vmm_node_lines() {
  local n="$1" i
  for (( i = 1; i <= n; i++ )); do
    printf 'NodeName=vmm%d NodeHostname=vmm%d NodeAddr=%s.1%d CPUs=4 RealMemory=4096%s State=UNKNOWN\n' \
      "$i" "$i" "$NET_PREFIX" "$i" "$( (( i >= 2 )) && echo ' Feature=pilot')"
  done
}

write_slurm_conf() {
  local n="$1" names first_job=1
  if (( n == 1 )); then names=vmm1; else names="vmm[1-$n]"; fi
  # Job IDs continue across down/up (state is wiped at down), so a test never
  # sees an old job ID come back.
  [[ -s "$TB/slurm/next-job-id" ]] && first_job="$(cat "$TB/slurm/next-job-id")"
  write_if_changed "$SLURM_CONF_FILE" <<EOF
# Generated by testbed/testbed.sh. Settings from shared/research/testbed-slurm-ssh.md.
ClusterName=vws
SlurmctldHost=$(hostname -s)($HEAD_IP)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation=$TB/slurm/state
SlurmctldPidFile=$TB/slurm/slurmctld.pid
SlurmctldLogFile=$TB/slurm/slurmctld.log
# %n = node name; the spool dir must exist before slurmd starts
SlurmdSpoolDir=$TB/hosts/%n/slurmd-spool
SlurmdPidFile=$TB/hosts/%n/slurmd.pid
SlurmdLogFile=$TB/hosts/%n/log/slurmd.log
# container-safe: no cgroup tracking, no accounting
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# without it a job without --mem takes the whole node's memory
DefMemPerCPU=100
SchedulerType=sched/backfill
# start jobs within ~1 s instead of ~3 s
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
# let a 2-core machine advertise CPUs=4 without being drained
SlurmdParameters=config_overrides
ReturnToService=2
SlurmdTimeout=30
# SIGTERM → SIGKILL grace: the pilot hands a node back within it. 15 s: in the emulated Xen dom0 under
# load the hand-back (list VMs, restore dom0 memory) took ~5 s, the whole of the former 5 s.
KillWait=15
# no accounting: keep finished jobs visible to squeue/scontrol for an hour
MinJobAge=3600
FirstJobId=$first_job
$(vmm_node_lines "$n")
# xen1 (testbed/xen/xen1.sh): slurmd in the Xen node's dom0, for pilots with --memory xen. Its own
# partition, so jobs for partition vws (the default) never land there.
NodeName=xen1 NodeHostname=xen1 NodeAddr=$NET_PREFIX.21 CPUs=2 RealMemory=512 Feature=xen State=UNKNOWN
PartitionName=vws Nodes=$names Default=YES MaxTime=INFINITE State=UP
PartitionName=xen Nodes=xen1 MaxTime=INFINITE State=UP
EOF
}

# After slurm.conf changed under a running slurmctld: node definitions need a restart (Slurm 22.05),
# which keeps its state (jobs go on); the slurmds re-read the file on `scontrol reconfigure` (no restart).
apply_slurm_conf() {
  pidfile_alive "$TB/slurm/slurmctld.pid" slurmctld >/dev/null || return 0
  stop_pidfiles "$TB/slurm/slurmctld.pid|slurmctld|slurmctld"
  ensure_slurmctld
  poll 10 bash -c 'timeout 5 scontrol ping 2>/dev/null | grep -q UP' || die "slurmctld does not answer after its restart"
  timeout 10 scontrol reconfigure || die "scontrol reconfigure failed"
  step "slurm.conf changed: slurmctld restarted (state kept), slurmds reconfigured"
}

write_sshd_config() {
  local h="$1" hd
  hd="$(host_dir "$h")"
  write_if_changed "$hd/sshd_config" <<EOF
# Generated by testbed/testbed.sh for $h
Port 22
ListenAddress $(host_ip "$h")
HostKey $hd/ssh_host_ed25519_key
PidFile $hd/sshd.pid
AuthorizedKeysFile $TB/ssh/authorized_keys
# the key file is not in ~root/.ssh, so skip sshd's ownership checks
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
UseDNS no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 100
# per-host HOME: root's ~/.bashrc (pyenv) costs ~110 ms per ssh command
SetEnv HOME=$hd/home VWS_TESTBED_HOST=$h
Subsystem sftp internal-sftp
EOF
}

ensure_munged() {
  if pidfile_alive "$TB/munge/munged.pid" munged >/dev/null; then return 0; fi
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  munged --socket="$MUNGE_SOCKET" --key-file="$TB/munge/munge.key" \
    --log-file="$TB/munge/munged.log" --pid-file="$TB/munge/munged.pid" \
    --seed-file="$TB/munge/munged.seed" </dev/null >/dev/null 2>&1 \
    || die "munged failed to start; see $TB/munge/munged.log"
  poll 5 test -S "$MUNGE_SOCKET" || die "munged socket did not appear"
  step "munged started (pid $(read_pid "$TB/munge/munged.pid"))"
}

# The head bridges of both networks. IP forwarding is left as it is (off on this machine), so the
# head does not route between them: a VM on one network cannot reach the other through the head.
ensure_head_bridge() {
  local br ip
  for br in "$HEAD_BR:$HEAD_IP" "$PRIV_BR:$PRIV_IP"; do
    ip="${br#*:}"; br="${br%%:*}"
    if ! ip link show dev "$br" >/dev/null 2>&1; then
      # No STP: ports forward at once instead of after the forward delay.
      ip link add "$br" type bridge stp_state 0 forward_delay 0
      step "bridge $br created"
    fi
    ip addr replace "$ip/24" dev "$br"
    ip link set "$br" up
  done
}

# Remember whether /run/netns was a mount point before our first `ip netns add`
# (ip makes it one), so down can remove that mount too and leave nothing.
note_run_netns() {
  [[ -e "$TB/run-netns-was-mounted" || -e "$TB/run-netns-ours" ]] && return 0
  if mountpoint -q /run/netns 2>/dev/null; then
    touch "$TB/run-netns-was-mounted"
  else
    touch "$TB/run-netns-ours"
  fi
}

# ensure_host_bridge HOST BRIDGE HOST_IF HEAD_VETH HEAD_BRIDGE IP: BRIDGE in the host with IP/24,
# joined to HEAD_BRIDGE on the head by the veth pair HEAD_VETH (head) / HOST_IF (host).
ensure_host_bridge() {
  local h="$1" br="$2" hif="$3" veth="$4" headbr="$5" ip="$6"
  if ! ip -n "$h" link show dev "$br" >/dev/null 2>&1; then
    ip -n "$h" link add "$br" type bridge stp_state 0 forward_delay 0
  fi
  if ! ip link show dev "$veth" >/dev/null 2>&1; then
    ip -n "$h" link del "$hif" 2>/dev/null || true
    ip link add "$veth" type veth peer name "$hif" netns "$h"
  fi
  ip -n "$h" link set "$hif" master "$br" up
  ip -n "$h" addr replace "$ip/24" dev "$br"
  ip -n "$h" link set "$br" up
  ip link set "$veth" master "$headbr" up
}

ensure_host_net() {
  local h="$1"
  if [[ ! -e "/run/netns/$h" ]]; then
    note_run_netns
    ip netns add "$h"
  fi
  ip -n "$h" link set lo up
  ensure_host_bridge "$h" br0 eth0 "$h-h" "$HEAD_BR" "$(host_ip "$h")"
  ensure_host_bridge "$h" br1 eth1 "$h-p" "$PRIV_BR" "$(host_priv_ip "$h")"
  # The default route is on the default network only.
  ip -n "$h" route replace default via "$HEAD_IP" dev br0
}

# Stop the per-host daemons by PID file (used by down, and by up when a
# host's anchor is gone and its daemons must move to a fresh one).
host_daemon_specs() { # "FILE|COMM|NAME" of each per-host daemon, for HOSTS
  local h hd
  for h in "$@"; do
    hd="$(host_dir "$h")"
    printf '%s\n' "$hd/sshd.pid|sshd|$h sshd" "$hd/slurmd.pid|slurmd|$h slurmd"
  done
}

# The DHCP servers vws started in HOSTS (one per network: node/dhcp/<network>/server.pid, dnsmasq or
# ISC dhcpd), plus the pid file of the testbed's own dnsmasq of old (node/dhcp/dnsmasq.pid).
dhcp_server_specs() { # "FILE|COMM|NAME" lines, for HOSTS
  local h hd f n
  for h in "$@"; do
    hd="$(host_dir "$h")"
    for f in "$hd"/node/dhcp/*/server.pid "$hd/node/dhcp/dnsmasq.pid"; do
      [[ -e "$f" ]] || continue
      n="${f%/server.pid}"; n="${n##*/}"
      [[ "$f" == */dnsmasq.pid ]] && n="(old testbed dnsmasq)"
      printf '%s\n' "$f|$DHCP_COMMS|$h DHCP server $n"
    done
  done
}

# Stops the DHCP servers by PID file, then, as a safety net, every dnsmasq or dhcpd still in the
# hosts' network namespaces (a server whose PID file was lost or overwritten).
stop_dhcp_servers() { # stop_dhcp_servers HOST...
  local specs h p pids=()
  mapfile -t specs < <(dhcp_server_specs "$@")
  (( ${#specs[@]} == 0 )) || stop_pidfiles "${specs[@]}"
  for h in "$@"; do
    [[ -e "/run/netns/$h" ]] || continue
    for p in $(ip netns pids "$h" 2>/dev/null); do
      pid_alive "$p" "$DHCP_COMMS" && pids+=("$p")
    done
  done
  (( ${#pids[@]} )) || return 0
  kill_wait "${pids[@]}" || true
  step "stopped ${#pids[@]} DHCP server(s) without a PID file in the hosts' namespaces (pid ${pids[*]})"
}

stop_host_daemons() { # stop_host_daemons HOST...
  local specs
  stop_dhcp_servers "$@"
  mapfile -t specs < <(host_daemon_specs "$@")
  stop_pidfiles "${specs[@]}"
}

ensure_anchor() {
  local h="$1" hd pid
  hd="$(host_dir "$h")"
  anchor_pid "$h" >/dev/null && return 0
  # A dead or stale anchor: daemons left in its old namespaces must go too.
  pid="$(pidfile_alive "$hd/anchor.pid" sleep)" && { kill_wait "$pid" || true; }
  stop_host_daemons "$h"
  rm -f "$hd/anchor.pid"
  # The anchor writes its own PID (it is the process inside the namespaces:
  # nsenter, unshare and sh all exec) and then sleeps forever. Its stdio goes
  # to a log so it never holds the caller's pipes open.
  setsid -f nsenter --net="/run/netns/$h" \
    unshare --uts --mount --propagation private \
    sh -ec 'hostname "$1"; mount --bind "$2" "$3"; echo $$ > "$4.tmp"; mv "$4.tmp" "$4"; exec sleep infinity' \
    anchor "$h" "$hd/node" "$NODE_MNT" "$hd/anchor.pid" \
    </dev/null >>"$hd/log/anchor.log" 2>&1
  poll 5 anchor_pid "$h" >/dev/null || die "$h: anchor did not start; see $hd/log/anchor.log"
  step "$h anchor started (pid $(anchor_pid "$h"), hostname $h, $NODE_MNT bound)"
}

# start_in_host HOST NAME PIDFILE LOG CMD...: starts a self-daemonizing CMD inside HOST's namespaces
# and waits until its PID file names a live NAME process; on failure, points at LOG.
start_in_host() {
  local h="$1" name="$2" pidfile="$3" log="$4"; shift 4
  rm -f "$pidfile"
  in_host "$h" "$@" </dev/null >/dev/null 2>>"$log" || die "$h: $name failed; see $log"
  poll 5 pidfile_alive "$pidfile" "$name" >/dev/null || die "$h: $name did not start; see $log"
}

ensure_sshd() {
  local h="$1" hd
  hd="$(host_dir "$h")"
  pidfile_alive "$hd/sshd.pid" sshd >/dev/null && return 0
  write_sshd_config "$h"
  # sshd re-executes itself: it needs its absolute path.
  start_in_host "$h" sshd "$hd/sshd.pid" "$hd/log/sshd.log" \
    /usr/sbin/sshd -f "$hd/sshd_config" -E "$hd/log/sshd.log"
  step "$h sshd started (pid $(read_pid "$hd/sshd.pid"), $(host_ip "$h"):22)"
}

ensure_slurmd() {
  local h="$1" hd
  hd="$(host_dir "$h")"
  pidfile_alive "$hd/slurmd.pid" slurmd >/dev/null && return 0
  # Entered with nsenter, not `ip netns exec`: the latter remounts /sys, which
  # hides /sys/fs/cgroup, and slurmd dies without it.
  start_in_host "$h" slurmd "$hd/slurmd.pid" "$hd/log/slurmd.err" \
    slurmd -f "$SLURM_CONF_FILE" -N "$h"
  step "$h slurmd started (pid $(read_pid "$hd/slurmd.pid"))"
}

ensure_slurmctld() {
  pidfile_alive "$TB/slurm/slurmctld.pid" slurmctld >/dev/null && return 0
  rm -f "$TB/slurm/slurmctld.pid"
  slurmctld -f "$SLURM_CONF_FILE" </dev/null >/dev/null 2>>"$TB/slurm/slurmctld.err" \
    || die "slurmctld failed; see $TB/slurm/slurmctld.log"
  poll 5 pidfile_alive "$TB/slurm/slurmctld.pid" slurmctld >/dev/null || die "slurmctld did not start"
  step "slurmctld started (pid $(read_pid "$TB/slurm/slurmctld.pid"))"
}

# Site-provided guest kernel: vws boots VMs with $NODE_MNT/kernels/default/*.
ensure_kernels() {
  local h="$1" f dst
  dst="$(host_dir "$h")/node/kernels/default"
  for f in vmlinuz initrd.gz; do
    if ! cmp -s "$GUEST_DIR/$f" "$dst/$f"; then
      ln -f "$GUEST_DIR/$f" "$dst/$f.tmp" 2>/dev/null || cp -f "$GUEST_DIR/$f" "$dst/$f.tmp"
      mv -f "$dst/$f.tmp" "$dst/$f"
    fi
  done
}

# On a cold start this means "N nodes idle". Busy nodes also count, so that
# restarting one dead daemon while jobs run elsewhere does not time out.
wait_nodes_ready() {
  local n="$1" c
  all_ready() { [[ "$(slurm_up_count)" == "$n" ]]; }
  if ! poll "$IDLE_TIMEOUT" all_ready; then
    c="$(slurm_up_count)"
    sinfo -N -l >&2 || true
    die "slurm: only $c of $n nodes idle (or busy) after ${IDLE_TIMEOUT}s; see $TB/slurm/slurmctld.log and $TB/hosts/*/log/slurmd.log"
  fi
  step "slurm: $n nodes up ($(slurm_idle_count) idle)"
}

# xen1 comes after the vmm hosts (it needs vwsbr0 and the client key). Without Xen packages (no apt
# mirror: xen1.sh exits 3) the testbed goes on without it, and says so; any other failure is fatal.
ensure_xen1() {
  local rc=0
  VWS_TESTBED_DIR="$TB" "$XEN1" up || rc=$?
  case "$rc" in
    0) rm -f "$XEN1_SKIPPED" ;;
    3)
      echo "Xen packages could not be downloaded (no apt mirror?); xen1 not started" > "$XEN1_SKIPPED"
      printf 'testbed: WARNING: going on WITHOUT xen1 (the Xen node): Xen packages could not be downloaded; tests that need xen1 will skip\n' >&2
      ;;
    *) die "xen1 (the Xen node) did not come up (exit $rc); see $TB/hosts/xen1/serial.log. The vmm hosts are up; 'testbed.sh up' retries" ;;
  esac
}

wait_sshd_port() {
  local h="$1" ip
  ip="$(host_ip "$h")"
  port_open() { timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/22"' _ "$ip" 2>/dev/null; }
  poll 5 port_open || die "$h: nothing listens on $ip:22"
}

# ---------------------------------------------------------------- commands

cmd_up() {
  local n="$DEFAULT_HOSTS" prev h hosts
  while (( $# )); do
    case "$1" in
      --hosts) [[ $# -ge 2 ]] || die "--hosts needs a number"; n="$2"; shift 2 ;;
      --hosts=*) n="${1#*=}"; shift ;;
      *) die "up: unknown argument: $1" ;;
    esac
  done
  [[ "$n" =~ ^[1-9]$ ]] || die "--hosts must be 1..9 (got '$n')"
  preflight
  prev="$(cat "$TB/nhosts" 2>/dev/null || true)"
  if [[ -n "$prev" && "$prev" != "$n" ]]; then
    mapfile -t hosts < <(known_hosts_list)
    if anything_up "${hosts[@]}"; then
      die "testbed is (partly) up with $prev hosts; run 'testbed.sh down' first to change to $n"
    fi
  fi
  # A skipped xen1 is retried on every up (the mirror may be back).
  if [[ "$prev" == "$n" && ! -e "$XEN1_SKIPPED" ]] && check_all >/dev/null 2>&1; then
    # The guest may have been rebuilt since (its script changed): hosts get the current kernel.
    ensure_guest >/dev/null
    mapfile -t hosts < <(configured_hosts)
    for h in "${hosts[@]}"; do ensure_kernels "$h"; done
    # A changed slurm.conf (this script's settings) reaches the running Slurm too.
    local conf_before
    conf_before="$(cat "$SLURM_CONF_FILE" 2>/dev/null || true)"
    write_slurm_conf "$n"
    [[ "$conf_before" == "$(cat "$SLURM_CONF_FILE")" ]] || apply_slurm_conf
    # xen1 syncs its kernel and slurm.conf too, and restarts if its dom0 build changed.
    VWS_TESTBED_DIR="$TB" "$XEN1" up >/dev/null || die "xen1 did not come up (testbed/xen/xen1.sh up)"
    step "testbed already up ($n hosts); guest kernels current"
    return 0
  fi
  mkdir -p "$TB"
  printf '%s\n' "$n" > "$TB/nhosts"
  mapfile -t hosts < <(configured_hosts)

  ensure_guest
  step "guest kernel ready ($GUEST_DIR)"
  ensure_dirs "${hosts[@]}"
  ensure_keys "${hosts[@]}"
  local conf_was
  conf_was="$(cat "$SLURM_CONF_FILE" 2>/dev/null || true)"
  write_slurm_conf "$n"
  [[ -z "$conf_was" || "$conf_was" == "$(cat "$SLURM_CONF_FILE")" ]] || apply_slurm_conf
  step "config and keys ready ($TB)"
  ensure_munged
  ensure_head_bridge
  for h in "${hosts[@]}"; do
    ensure_host_net "$h"
  done
  step "network ready: $HEAD_BR $HEAD_IP/24 + $PRIV_BR $PRIV_IP/24, hosts ${hosts[*]} on br0/br1 .11-.$((10 + n))"
  ensure_slurmctld
  for h in "${hosts[@]}"; do
    ensure_anchor "$h"
    ensure_kernels "$h"
    ensure_sshd "$h"
    ensure_slurmd "$h"
  done
  for h in "${hosts[@]}"; do wait_sshd_port "$h"; done
  step "sshd listening on all hosts"
  wait_nodes_ready "$n"
  ensure_xen1
  check_all >/dev/null || { check_all >&2 || true; die "testbed is not fully up"; }
  step "testbed up: $n hosts (total $(elapsed) s)"
}

# --without-xen1: the rest only. xen1's checks are two SSH sessions into a dom0 under TCG (2-6 s); a test
# stack that does not use xen1 need not wait for them.
cmd_status() {
  case "${1:-}" in
    "") check_all ;;
    --without-xen1) CHECK_XEN1=0 check_all ;;
    *) die "usage: testbed.sh status [--without-xen1]" ;;
  esac
}

# Job IDs go on across down/up: remember the next one before wiping state.
save_next_job_id() {
  local last
  last="$(timeout 5 squeue -h -t all -o '%i' 2>/dev/null | sed 's/_.*//' | sort -n | tail -n1 || true)"
  if [[ "$last" =~ ^[0-9]+$ ]]; then
    printf '%s\n' $((last + 1)) > "$TB/slurm/next-job-id"
  fi
}

cancel_all_jobs() {
  local jobs
  pidfile_alive "$TB/slurm/slurmctld.pid" slurmctld >/dev/null || return 0
  mapfile -t jobs < <(timeout 5 squeue -h -o '%A' 2>/dev/null || true)
  (( ${#jobs[@]} )) || return 0
  timeout 10 scancel "${jobs[@]}" 2>/dev/null || true
  # slurmstepd outlives slurmd: wait for the jobs to be gone before stopping it.
  no_jobs() { [[ -z "$(timeout 5 squeue -h -o '%A' 2>/dev/null)" ]]; }
  if poll 20 no_jobs; then
    step "cancelled ${#jobs[@]} job(s)"
  else
    printf 'testbed: warning: jobs still in squeue after 20 s; killing their processes\n' >&2
  fi
}

# Everything in a host's network namespace that is not one of its daemons:
# VMs, node workers, ssh sessions, job steps that vws or tests started there.
kill_host_strays() { # kill_host_strays HOST...
  local h hd keep=() pids=() p k skip what
  for h in "$@"; do
    hd="$(host_dir "$h")"
    keep+=("$(read_pid "$hd/anchor.pid")" "$(read_pid "$hd/sshd.pid")" "$(read_pid "$hd/slurmd.pid")")
  done
  for h in "$@"; do
    [[ -e "/run/netns/$h" ]] || continue
    for p in $(ip netns pids "$h" 2>/dev/null); do
      skip=0
      for k in "${keep[@]}"; do [[ "$p" == "$k" ]] && skip=1; done
      # DHCP servers are stopped next, by stop_host_daemons (by PID file, with their names).
      pid_alive "$p" "$DHCP_COMMS" && skip=1
      (( skip )) || { pid_alive "$p" && pids+=("$p"); }
    done
  done
  (( ${#pids[@]} )) || return 0
  what="$(ps -o comm= -p "$(IFS=,; echo "${pids[*]}")" 2>/dev/null | sort | uniq -c \
          | awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }')"
  kill_wait "${pids[@]}" || true
  step "stopped ${#pids[@]} other process(es) in the hosts' namespaces: $what"
}

# Last resort for anything in the namespace that had no PID file.
kill_netns_rest() {
  local h="$1" pids=()
  [[ -e "/run/netns/$h" ]] || return 0
  mapfile -t pids < <(ip netns pids "$h" 2>/dev/null || true)
  (( ${#pids[@]} )) || return 0
  kill_wait "${pids[@]}" || true
  step "$h: stopped ${#pids[@]} leftover process(es)"
}

# Processes inside namespace inodes we are about to delete (for verification).
procs_in_ns() { # procs_in_ns TYPE INODE...
  local type="$1" p link ino; shift
  (( $# )) || return 0
  for p in /proc/[0-9]*; do
    link="$(readlink "$p/ns/$type" 2>/dev/null)" || continue
    for ino in "$@"; do
      [[ "$link" == "$type:[$ino]" ]] && pid_alive "${p#/proc/}" && printf '%s ' "${p#/proc/}"
    done
  done
  return 0
}

cmd_down() {
  local hosts h hd net_inos=() mnt_inos=() left=() pid l specs
  # A reader that goes away (e.g. `down | head`) must not abort the teardown
  # half-way. (Only here: up would pass the ignored SIGPIPE on to daemons.)
  trap '' PIPE
  preflight
  mapfile -t hosts < <(known_hosts_list)

  if ! anything_up "${hosts[@]}"; then
    step "testbed is not up; nothing to stop"
    return 0
  fi

  # Remember the namespaces so we can prove afterwards no process kept them.
  for h in "${hosts[@]}"; do
    l="$(netns_inode "$h")" && net_inos+=("$l")
    pid="$(pidfile_alive "$(host_dir "$h")/anchor.pid" sleep)" \
      && l="$(stat -L -c %i "/proc/$pid/ns/mnt" 2>/dev/null)" && mnt_inos+=("$l")
  done

  # xen1 first: its dom0 is powered off over SSH, through vwsbr0.
  VWS_TESTBED_DIR="$TB" "$XEN1" down || left+=("xen1 (testbed/xen/xen1.sh down failed)")
  save_next_job_id
  cancel_all_jobs
  kill_host_strays "${hosts[@]}"
  (( ${#hosts[@]} == 0 )) || stop_host_daemons "${hosts[@]}"
  specs=()
  for h in "${hosts[@]}"; do specs+=("$(host_dir "$h")/anchor.pid|sleep|$h anchor"); done
  (( ${#specs[@]} == 0 )) || stop_pidfiles "${specs[@]}"
  for h in "${hosts[@]}"; do kill_netns_rest "$h"; done
  # The hosts' VMs are gone, so their records go too: per-VM files, DHCP host entries (entries.json, hosts, options)
  # and leases of every network (dhcpd also keeps leases~). server.conf, server.log and lock stay: vws
  # rewrites the configuration before it starts a server. The old layout (hosts.d/, leases and
  # dnsmasq.pid directly in dhcp/) goes entirely. (The image cache and the site kernels stay: they
  # are node state, not leftovers of a VM.)
  for h in "${hosts[@]}"; do
    hd="$(host_dir "$h")"
    rm -rf "$hd/node/workspaces" "$hd/node/dhcp/hosts.d" "$hd/node/dhcp/leases" "$hd/node/dhcp/dnsmasq.pid" \
      "$hd/node/dhcp/dnsmasq.log" "$hd/dnsmasq.conf"
    rm -f "$hd"/node/dhcp/*/{leases,leases~,hosts,options,server.pid,entries.json}
  done
  stop_pidfiles "$TB/slurm/slurmctld.pid|slurmctld|slurmctld"
  stop_pidfiles "$TB/munge/munged.pid|munged|munged"
  # A fresh cluster on the next up (no drained nodes or old jobs); job IDs
  # continue through next-job-id.
  rm -rf "$TB/slurm/state"

  for h in "${hosts[@]}"; do
    if [[ -e "/run/netns/$h" ]]; then ip netns del "$h"; fi
    ip link del "$h-h" 2>/dev/null || true
    ip link del "$h-p" 2>/dev/null || true
  done
  ip link del "$HEAD_BR" 2>/dev/null || true
  ip link del "$PRIV_BR" 2>/dev/null || true
  if [[ -e "$TB/run-netns-ours" ]] && mountpoint -q /run/netns \
      && [[ -z "$(ls -A /run/netns 2>/dev/null)" ]]; then
    umount /run/netns 2>/dev/null || true
    rm -f "$TB/run-netns-ours"
  fi
  # veths vanish asynchronously once their namespace is gone.
  no_links() { ! ip -br link 2>/dev/null | grep -Eq "^($HEAD_BR|$PRIV_BR|vmm[1-9]-[hp]|vws-[^ ]*)[ @]"; }
  poll 5 no_links || true
  step "network removed"

  # Verify: nothing of ours may be left.
  l="$(procs_in_ns net "${net_inos[@]}")"; [[ -z "$l" ]] || left+=("processes in host netns: $l")
  l="$(procs_in_ns mnt "${mnt_inos[@]}")"; [[ -z "$l" ]] || left+=("processes in host mount ns: $l")
  for h in "${hosts[@]}"; do
    [[ -e "/run/netns/$h" ]] && left+=("netns $h")
  done
  l="$(ip -br link 2>/dev/null | awk '{print $1}' | grep -E "^($HEAD_BR|$PRIV_BR|vmm[1-9]-[hp]|vws-.*|xen1-tap)(@.*)?$" | tr '\n' ' ' || true)"
  [[ -z "$l" ]] || left+=("links: $l")
  l="$(findmnt -rn -o TARGET 2>/dev/null | grep -E "^($NODE_MNT|/run/netns/vmm[1-9])$" | tr '\n' ' ' || true)"
  [[ -z "$l" ]] || left+=("mounts: $l")
  for l in "$TB/slurm/slurmctld.pid slurmctld" "$TB/munge/munged.pid munged" "$TB/hosts/xen1/qemu.pid qemu-system-x86"; do
    pid="$(pidfile_alive "${l% *}" "${l#* }")" && left+=("${l#* } pid $pid")
  done
  # Killed daemons were re-parented to PID 1, which reaps them lazily (~1-2 s
  # here); wait briefly so that `ps` right after down shows no <defunct> entries.
  all_reaped() { local q; for q in "${KILLED_PIDS[@]}"; do [[ -e "/proc/$q" ]] && return 1; done; return 0; }
  poll 3 all_reaped || step "note: some stopped processes are still <defunct>, waiting for PID 1 to reap them"
  if (( ${#left[@]} )); then
    printf 'testbed: error: left after down: %s\n' "${left[@]}" >&2
    exit 1
  fi
  step "testbed down: nothing left (total $(elapsed) s)"
}

# ---------------------------------------------------------------- clean

# What `clean` removes, per VM: its qemu (or Xen domain and loops), taps and anti-spoofing tables, DHCP
# host entries and leases, and its workspace directory. With --only-prefix P only the workspaces whose
# workflow ids start with "P-" on the Temporal server (CLEAN_IDS) are touched: nothing on a node names
# the prefix, so the server is asked which workspace ids are P's.
CLEAN_PREFIX=""
CLEAN_IDS=" "
CLEAN_MACS=()
WS_RE='ws-[0-9a-f]{12}'

clean_ours() { # clean_ours WORKSPACE_ID: true if clean may remove it
  [[ -z "$CLEAN_PREFIX" || "$CLEAN_IDS" == *" $1 "* ]]
}

temporal_cli() {
  local t
  for t in "$REPO_ROOT"/.cache/temporal/*/temporal; do [[ -x "$t" ]] && { printf '%s' "$t"; return 0; }; done
  command -v temporal 2>/dev/null || die "clean --only-prefix needs the temporal CLI (.cache/temporal/*/temporal); run ./run.sh once"
}

# The workspace ids of every workflow (open or closed) whose id is "<prefix>-ws-…" on the server at ADDRESS.
prefix_workspace_ids() { # prefix_workspace_ids PREFIX ADDRESS
  local out
  out="$(timeout 60 "$(temporal_cli)" workflow list --address "$2" --limit 100000 -o json \
          --query "WorkflowId STARTS_WITH '$1-ws-'")" || die "could not list the workflows of prefix $1 on $2"
  jq -r '.[]? | (.execution.workflowId // .execution.workflow_id // empty)' <<<"$out" \
    | sed -nE "s/^$1-($WS_RE)\$/\\1/p" | sort -u
}

# The workspace id in a qemu command line (its paths are under workspaces/<id>/).
qemu_workspace() { # qemu_workspace PID
  tr '\0' '\n' < "/proc/$1/cmdline" 2>/dev/null | grep -oE "/workspaces/$WS_RE/" | head -n1 | grep -oE "$WS_RE" || true
}

clean_host() { # clean_host HOST
  local h="$1" hd p argv0 ws pids=() names=() l t n
  hd="$(host_dir "$h")"
  anchor_pid "$h" >/dev/null || { step "$h: not up, skipped"; return 0; }
  # VMs: their qemu processes (renamed by -name ...,process=, so matched on argv[0]); MACs kept for DHCP.
  for p in $(ip netns pids "$h" 2>/dev/null); do
    argv0="$(tr '\0' '\n' < "/proc/$p/cmdline" 2>/dev/null | head -n1)" || continue
    [[ "$argv0" == *qemu-system* ]] || continue
    ws="$(qemu_workspace "$p")"
    if [[ -n "$ws" ]]; then clean_ours "$ws" || continue; else [[ -z "$CLEAN_PREFIX" ]] || continue; fi
    pids+=("$p"); names+=("${ws:-pid $p}")
    mapfile -t -O "${#CLEAN_MACS[@]}" CLEAN_MACS < <(tr '\0' '\n' < "/proc/$p/cmdline" | grep -oE 'mac=[0-9a-f:]{17}' | cut -d= -f2)
  done
  if (( ${#pids[@]} )); then
    kill -KILL "${pids[@]}" 2>/dev/null || true
    none_alive() { local q; for q in "${pids[@]}"; do pid_alive "$q" && return 1; done; return 0; }
    poll 10 none_alive || printf 'testbed: warning: %s: qemu still alive after KILL: %s\n' "$h" "${pids[*]}" >&2
    step "$h: killed ${#pids[@]} VM(s): ${names[*]}"
  fi
  # Taps vw<12 hex><NIC index> and their anti-spoofing tables bridge vws_<tap>.
  n=0
  for l in $(ip -n "$h" -o link show 2>/dev/null | sed -nE 's/^[0-9]+: (vw[0-9a-f]{12}[0-9])[:@].*/\1/p'); do
    clean_ours "ws-${l:2:12}" || continue
    ip -n "$h" link del dev "$l" 2>/dev/null && n=$((n + 1))
  done
  (( n == 0 )) || step "$h: removed $n tap(s)"
  n=0
  for t in $(ip netns exec "$h" nft list tables bridge 2>/dev/null | sed -nE 's/^table bridge (vws_\S+)$/\1/p'); do
    [[ "$t" =~ ^vws_vw([0-9a-f]{12})[0-9]$ ]] && ! clean_ours "ws-${BASH_REMATCH[1]}" && continue
    [[ "$t" =~ ^vws_vw[0-9a-f]{12}[0-9]$ || -z "$CLEAN_PREFIX" ]] || continue
    ip netns exec "$h" nft delete table bridge "$t" 2>/dev/null && n=$((n + 1))
  done
  (( n == 0 )) || step "$h: removed $n nft table(s)"
  clean_host_dhcp "$h"
  # Workspace directories (overlays, sockets, serial logs); partial copies and copy locks in the cache.
  n=0
  for l in "$hd"/node/workspaces/*; do
    [[ -e "$l" ]] || continue
    ws="${l##*/}"
    if [[ "$ws" =~ ^$WS_RE$ ]]; then clean_ours "$ws" || continue; else [[ -z "$CLEAN_PREFIX" ]] || continue; fi
    rm -rf "$l" && n=$((n + 1))
  done
  (( n == 0 )) || step "$h: removed $n workspace director(ies)"
  if [[ -z "$CLEAN_PREFIX" ]]; then
    rm -f "$hd"/node/cache/*.part "$hd"/node/cache/*.lock
  fi
}

# DHCP: without a prefix every server in the host stops and every entry and lease goes (as `down` does).
# With a prefix, the entries of the killed VMs' MACs are removed through vws's own code (dist/), under
# the network's lock, so the server is rewritten and reloaded, or stopped with its last entry.
clean_host_dhcp() { # clean_host_dhcp HOST
  local h="$1" hd
  hd="$(host_dir "$h")"
  if [[ -z "$CLEAN_PREFIX" ]]; then
    stop_dhcp_servers "$h"
    rm -f "$hd"/node/dhcp/*/{leases,leases~,hosts,options,server.pid,entries.json,lock,lock.takeover}
    return 0
  fi
  (( ${#CLEAN_MACS[@]} )) || return 0
  [[ -s "$REPO_ROOT/dist/activities/network/dhcp.js" ]] || { printf 'testbed: warning: no dist/ (npm run build): DHCP entries of %s left\n' "${CLEAN_MACS[*]}" >&2; return 0; }
  { in_host "$h" node -e "$CLEAN_DHCP_JS" "$REPO_ROOT" "$NODE_MNT/dhcp" "${CLEAN_MACS[@]}" || true; } | while read -r l; do step "$h: $l"; done
}

# argv: repo root, DHCP root, MACs. Each network directory's server.conf says its interface, subnet and server.
CLEAN_DHCP_JS='
const [root, dir, ...macs] = process.argv.slice(1);
const fs = require("node:fs");
const { join } = require("node:path");
const { createDhcpActivities } = require(join(root, "dist/activities/network/dhcp"));
const { LocalExecutor } = require(join(root, "dist/exec/local"));
const dhcp = createDhcpActivities({ exec: new LocalExecutor(), dir });
const bits = (mask) => mask.split(".").reduce((n, o) => n + (Number(o) >>> 0).toString(2).split("1").length - 1, 0);
(async () => {
  for (const network of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
    const read = (f) => { try { return fs.readFileSync(join(dir, network, f), "utf8"); } catch { return ""; } };
    const conf = read("server.conf");
    let entries = [];
    try { entries = JSON.parse(read("entries.json")).entries ?? []; } catch {}
    const gone = entries.filter((e) => macs.includes(e.mac));
    if (!gone.length) continue;
    const range = /^dhcp-range=([\d.]+),static,([\d.]+)/m.exec(conf);
    const isc = /^subnet ([\d.]+) netmask ([\d.]+)/m.exec(conf);
    const [base, mask] = range ? [range[1], range[2]] : isc ? [isc[1], isc[2]] : [];
    const iface = /^interface=(\S+)/m.exec(conf)?.[1] ?? /^#\s*interface:?\s*(\S+)/m.exec(conf)?.[1];
    if (!base || !iface) { console.log(`DHCP ${network}: cannot read server.conf; entries of ${gone.map((e) => e.mac).join(" ")} left`); continue; }
    const server = { network, subnet: `${base}/${bits(mask)}`, interface: iface, server: range ? "dnsmasq" : "isc-dhcpd" };
    for (const entry of gone) await dhcp.removeDhcpEntry({ server, entry });
    console.log(`DHCP ${network}: removed ${gone.length} entr(ies): ${gone.map((e) => `${e.mac} ${e.ip}`).join(", ")}`);
  }
})().catch((e) => { console.error(`testbed: warning: DHCP cleanup failed: ${e.message}`); process.exit(1); });
'

clean_xen1() {
  local s ssh_x l ws n dom
  [[ -s "$XEN1_SKIPPED" ]] && return 0
  pidfile_alive "$TB/hosts/xen1/qemu.pid" qemu-system-x86 >/dev/null || { step "xen1: not up, skipped"; return 0; }
  ssh_x() { timeout 30 ssh -n -F "$TB/ssh/config" -o ConnectTimeout=5 -o BatchMode=yes root@10.213.0.21 "$@"; }
  ssh_x true 2>/dev/null || { step "xen1: dom0 does not answer over SSH, skipped"; return 0; }
  # Guest domains (named by workspace id), then the loop devices over their disks.
  n=0
  for dom in $(ssh_x xl list 2>/dev/null | awk 'NR > 1 && $1 != "Domain-0" { print $1 }'); do
    if [[ "$dom" =~ ^$WS_RE$ ]]; then clean_ours "$dom" || continue; else [[ -z "$CLEAN_PREFIX" ]] || continue; fi
    ssh_x xl destroy "$dom" >/dev/null 2>&1 && n=$((n + 1))
  done
  (( n == 0 )) || step "xen1: destroyed $n domain(s)"
  n=0
  while IFS= read -r l; do
    [[ -n "$l" ]] || continue
    ws="$(grep -oE "/workspaces/$WS_RE/" <<<"$l" | grep -oE "$WS_RE" || true)"
    if [[ -n "$ws" ]]; then clean_ours "$ws" || continue; else [[ -z "$CLEAN_PREFIX" && "$l" == *"$NODE_MNT/"* ]] || continue; fi
    ssh_x losetup -d "${l%%:*}" 2>/dev/null && n=$((n + 1))
  done < <(ssh_x losetup -a 2>/dev/null)
  (( n == 0 )) || step "xen1: detached $n loop device(s)"
  n=0
  for l in $(ssh_x nft list tables bridge 2>/dev/null | sed -nE 's/^table bridge (vws_\S+)$/\1/p'); do
    [[ "$l" =~ ^vws_vw([0-9a-f]{12})[0-9]$ ]] && ! clean_ours "ws-${BASH_REMATCH[1]}" && continue
    [[ "$l" =~ ^vws_vw[0-9a-f]{12}[0-9]$ || -z "$CLEAN_PREFIX" ]] || continue
    ssh_x nft delete table bridge "$l" 2>/dev/null && n=$((n + 1))
  done
  (( n == 0 )) || step "xen1: removed $n nft table(s)"
  if [[ -z "$CLEAN_PREFIX" ]]; then
    # dom0's DHCP servers (by PID file, dnsmasq only), entries and leases.
    # One string: ssh hands it to dom0's shell as it is.
    ssh_x "for f in $NODE_MNT/dhcp/*/server.pid; do [ -s \"\$f\" ] && kill \"\$(cat \"\$f\")\" 2>/dev/null; done; cd $NODE_MNT/dhcp && rm -f */leases */leases~ */hosts */options */server.pid */entries.json" \
      && step "xen1: DHCP servers stopped, entries and leases removed"
  fi
  n=0
  for ws in $(ssh_x ls -1 "$NODE_MNT/workspaces" 2>/dev/null); do
    if [[ "$ws" =~ ^$WS_RE$ ]]; then clean_ours "$ws" || continue; else [[ -z "$CLEAN_PREFIX" && "$ws" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || continue; fi
    ssh_x rm -rf "$NODE_MNT/workspaces/$ws" && n=$((n + 1))
  done
  (( n == 0 )) || step "xen1: removed $n workspace director(ies)"
}

# clean [--only-prefix P] [--temporal ADDRESS]: removes vws's leftovers on the nodes (see clean_host).
cmd_clean() {
  local addr="${VWS_TEMPORAL_ADDRESS:-${TEMPORAL_ADDRESS:-127.0.0.1:7233}}" hosts h ids only=0
  while (( $# )); do
    case "$1" in
      --only-prefix) [[ $# -ge 2 ]] || die "--only-prefix needs a prefix"; CLEAN_PREFIX="$2"; only=1; shift 2 ;;
      --only-prefix=*) CLEAN_PREFIX="${1#*=}"; only=1; shift ;;
      --temporal) [[ $# -ge 2 ]] || die "--temporal needs host:port"; addr="$2"; shift 2 ;;
      *) die "clean: unknown argument: $1 (usage: clean [--only-prefix P] [--temporal HOST:PORT])" ;;
    esac
  done
  if (( only )); then
    [[ "$CLEAN_PREFIX" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "--only-prefix: '$CLEAN_PREFIX' is not a vws prefix (letters, digits, _ . -)"
    mapfile -t ids < <(prefix_workspace_ids "$CLEAN_PREFIX" "$addr")
    (( ${#ids[@]} )) && CLEAN_IDS=" ${ids[*]} "
    step "prefix $CLEAN_PREFIX: ${#ids[@]} workspace(s) on $addr; everything else is spared"
  fi
  preflight
  mapfile -t hosts < <(configured_hosts)
  (( ${#hosts[@]} )) || { step "testbed never brought up; nothing to clean"; return 0; }
  for h in "${hosts[@]}"; do clean_host "$h"; done
  clean_xen1
  step "clean done (total $(elapsed) s)"
}

cmd_exec() {
  local h="${1:-}" pid
  [[ "$h" =~ ^vmm[1-9]$ ]] || die "usage: testbed.sh exec vmmK -- CMD [ARGS...]"
  shift
  [[ "${1:-}" == "--" ]] && shift
  (( $# )) || die "usage: testbed.sh exec vmmK -- CMD [ARGS...]"
  pid="$(anchor_pid "$h")" || die "host $h is not up (run testbed.sh up)"
  # Entering the mount namespace resets the working directory to /; keep ours
  # so relative paths (e.g. dist/workers/node.js) still work.
  exec nsenter -t "$pid" --net --uts --mount --wd="$PWD" -- "$@"
}

# A node's reboot, as near as a namespace host comes to one (issue 7's kill matrix: "node reboot (the
# node's namespace restarted)"). Every process in the host dies at once, with SIGKILL and no warning, as in
# a power cut: VMs, the pilot and its job step, node workers, slurmd, sshd, DHCP servers. What is on its
# disk stays (its node directory, reservation files, locks). Then it boots: CMD, if given, runs first inside
# the host, as a unit ordered before slurmd does (`vws-pilot boot-reset`, deploy/systemd), then sshd and
# slurmd start again. Not like a real reboot: the kernel is shared, so the boot id and Slurm's node boot
# time do not change, and the network state (bridges, taps, nft rules) stays. Exits with CMD's status.
cmd_reboot() {
  local h="${1:-}" anchor pids=() p rc=0 left off=0
  local usage="usage: testbed.sh reboot vmmK [--off-seconds N] [-- CMD [ARGS...]]"
  [[ "$h" =~ ^vmm[1-9]$ ]] || die "$usage"
  shift
  if [[ "${1:-}" == "--off-seconds" ]]; then
    [[ "${2:-}" =~ ^[0-9]{1,3}$ ]] || die "$usage (--off-seconds: a whole number of seconds, 0-999)"
    off="$2"
    shift 2
  fi
  [[ "${1:-}" == "--" ]] && shift
  anchor="$(anchor_pid "$h")" || die "host $h is not up (run testbed.sh up)"
  for p in $(ip netns pids "$h" 2>/dev/null); do
    [[ "$p" == "$anchor" ]] || pids+=("$p")
  done
  (( ${#pids[@]} == 0 )) || kill -KILL "${pids[@]}" 2>/dev/null || true
  gone() { local q; for q in "${pids[@]}"; do pid_alive "$q" && return 1; done; return 0; }
  poll 10 gone || die "$h: processes still alive 10 s after SIGKILL: ${pids[*]}"
  step "$h: power cut (${#pids[@]} process(es) killed)"
  # A real node is off for a while: Slurm reads a job missing at the node's next registration as lost
  # only once the job has not been seen for BatchStartTimeout + MessageTimeout (20 s here); a node back
  # at once waits for slurmctld's next periodic registration request instead (~2 min).
  if (( off > 0 )); then
    sleep "$off"
    step "$h: off for $off s"
  fi
  if (( $# )); then
    nsenter -t "$anchor" --net --uts --mount --wd="$PWD" -- "$@" || rc=$?
    step "$h: boot command exited $rc: $*"
  fi
  ensure_sshd "$h"
  ensure_slurmd "$h"
  wait_sshd_port "$h"
  left="$(ip netns pids "$h" | wc -l)"
  step "$h: up again ($left process(es): anchor, sshd, slurmd)"
  return "$rc"
}

cmd_env() {
  printf 'export SLURM_CONF=%q\n' "$SLURM_CONF_FILE"
  printf 'export VWS_TESTBED_DIR=%q\n' "$TB"
}

usage() {
  cat <<EOF
usage: testbed.sh up [--hosts N] | status [--without-xen1] | down | clean [--only-prefix P] [--temporal HOST:PORT]
       | exec HOST -- CMD [ARGS...] | reboot HOST [-- CMD [ARGS...]] | env
state dir: $TB (VWS_TESTBED_DIR)
EOF
}

main() {
  local cmd="${1:-}"
  (( $# )) && shift
  case "$cmd" in
    up) cmd_up "$@" ;;
    status) cmd_status "$@" ;;
    down) cmd_down ;;
    clean) cmd_clean "$@" ;;
    exec) cmd_exec "$@" ;;
    reboot) cmd_reboot "$@" ;;
    env) cmd_env ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
