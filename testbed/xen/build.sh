#!/usr/bin/env bash
# Build the files that boot the testbed's Xen node xen1 (see testbed/README.md and
# /work/shared/research/testbed-xen-node.md), from Debian packages only:
#   xen         Xen 4.17 hypervisor, plain ELF (QEMU's multiboot loader takes it as -kernel)
#   vmlinuz     Debian's generic kernel for the PV dom0 (the cloud kernel lacks CONFIG_XEN_DOM0)
#   initrd.gz   dom0 initramfs: busybox, the real xl toolstack (xl, xenstored, xenconsoled, hotplug
#               scripts), sshd, dnsmasq + dhcp_release (vws starts its DHCP servers itself), nft (vws's
#               anti-spoofing rules, bridge family), util-linux losetup, coreutils timeout and
#               sha256sum, bash + flock (hotplug scripts), e2fsprogs mkfs.ext4, kernel modules, and /init;
#               for Slurm: slurmd, slurmstepd, their plugins and munged (the host's own, same version as
#               slurmctld), coreutils date (time sync over SSH); for the pilot: the shared libraries of the
#               host's node binary (the binary comes on a read-only disk, the project over SSH: see xen1.sh)
#   stamp       the cache key
# Nothing is installed: the .debs are fetched with `apt-get download` and extracted; the other
# programs and all shared libraries come from this (bookworm) host through their ldd closure.
# The initramfs holds no keys and no addresses: xen1.sh appends a small per-host cpio (host key,
# authorized_keys) and passes the address on the dom0 kernel command line.
#
# Output: ${VWS_CACHE_DIR:-<repo>/.cache}/xen/<key>, key = hash of this script and every package
# version used. Prints the output directory on stdout (logs go to stderr). Cached and atomic: built
# in a temp dir, then renamed. Exit 3: the packages are not available from apt.
set -euo pipefail
export LC_ALL=C
umask 022

SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
REPO_ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE_DIR="${VWS_CACHE_DIR:-$REPO_ROOT/.cache}"
XEN_CACHE="$CACHE_DIR/xen"
DL_DIR="$CACHE_DIR/downloads/xen"
XENV=4.17
XEN_PKGS=(xen-hypervisor-$XENV-amd64 xen-utils-$XENV xen-utils-common xenstore-utils libxenmisc$XENV
  libxencall1 libxendevicemodel1 libxenevtchn1 libxenforeignmemory1 libxengnttab1 libxenhypfs1
  libxenstore4 libxentoolcore1 libxentoollog1 libyajl2)
# Host packages whose binaries are copied in (their versions are part of the key).
HOST_PKGS=(busybox-static openssh-server dnsmasq-base dnsmasq-utils util-linux mount coreutils bash libc6
  e2fsprogs nftables libnftables1 libnftnl11 libmnl0 libjansson4 libxtables12
  slurmd slurm-wlm-basic-plugins munge libmunge2 libstdc++6)
# Host programs copied into dom0 (with their ldd closure). mkfs.ext4 (a copy of mke2fs, which picks ext4
# by its name) makes blank ext4 partitions: busybox's mke2fs makes ext2 only.
HOST_BINS=(/usr/sbin/sshd /usr/sbin/dnsmasq /usr/bin/dhcp_release /usr/sbin/losetup /usr/bin/flock
  /usr/bin/timeout /usr/bin/sha256sum /bin/bash /usr/sbin/mkfs.ext4 /usr/sbin/nft
  /usr/sbin/slurmd /usr/sbin/slurmstepd /usr/sbin/munged /usr/bin/date)
# Slurm's plugins (dlopen()ed, so ldd of slurmd does not name them) and libslurmfull.
SLURM_LIBDIR=/usr/lib/x86_64-linux-gnu/slurm-wlm
# Loaded by /init; their dependencies are added from modules.dep. crc32c_generic is a soft
# dependency of ext4 (crypto API), so modules.dep does not name it. nf_tables holds the bridge
# family's filter chain type (with bridge loaded, `nft add table bridge t` works); nft_meta_bridge
# adds the bridge meta keys (ibrname, obrname). br_netfilter is not needed (no iptables on bridges).
MODULES=(xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xen-blkback xen-netback loop bridge tun
  virtio_pci virtio_net virtio_blk ext4 crc32c_generic nf_tables nft_meta_bridge)

log() { printf 'xen-build: %s\n' "$*" >&2; }
die() { printf 'xen-build: error: %s\n' "$*" >&2; exit 1; }
# Exit 3 means "no Xen packages from apt" (no mirror or lists): xen1.sh and testbed.sh go on without xen1.
die_noapt() { printf 'xen-build: error: %s\n' "$*" >&2; exit 3; }

# Prints "PKG=VERSION" for each package apt would download now (one apt-cache call).
resolve_versions() {
  apt-cache show --no-all-versions "$@" 2>/dev/null \
    | awk '$1 == "Package:" { p = $2 } $1 == "Version:" { print p "=" $2 }'
}

# The generic kernel's ABI package behind the linux-image-amd64 metapackage.
resolve_dom0_kernel() {
  apt-cache show --no-all-versions linux-image-amd64 2>/dev/null | awk '
    $1 == "Depends:" && match($0, /linux-image-[0-9][^ ,]*-amd64 \(= [^)]+\)/) {
      dep = substr($0, RSTART, RLENGTH); gsub(/[()=]/, "", dep); split(dep, a, " +")
      print a[1] "=" a[2]; exit
    }'
}

resolve_all() {
  local k
  k="$(resolve_dom0_kernel)"
  if [[ -z "$k" ]]; then
    log "apt lists do not know linux-image-amd64; running apt-get update"
    apt-get update -qq >/dev/null 2>&1 || true
    k="$(resolve_dom0_kernel)"
  fi
  [[ -n "$k" ]] || die_noapt "cannot resolve linux-image-amd64 (no apt lists or mirror?)"
  mapfile -t DEB_SPECS < <(resolve_versions "${XEN_PKGS[@]}"; printf '%s\n' "$k")
  (( ${#DEB_SPECS[@]} == ${#XEN_PKGS[@]} + 1 )) \
    || die_noapt "apt does not know all Xen packages (found: ${DEB_SPECS[*]})"
  KPKG="${k%%=*}"
}

compute_key() {
  local hv
  hv="$(dpkg-query -W -f='${Package}=${Version}\n' "${HOST_PKGS[@]}" 2>/dev/null)" \
    || die "host packages missing: ${HOST_PKGS[*]} (see testbed/debian-packages.txt)"
  { cat "$SELF"; printf '%s\n' "${DEB_SPECS[@]}" "$hv"; node_libs; } | sha256sum | cut -c1-16
}

# The shared libraries of the host's node binary (dom0 runs that binary over virtio-9p), one a line.
node_libs() {
  local n
  n="$(command -v node 2>/dev/null)" || return 0
  ldd "$(readlink -f "$n")" 2>/dev/null | awk '/=> \//{print $3} /^\t\/lib64/{print $1}' | sort -u
}

# Downloads each PKG=VERSION into DL_DIR unless present; prints nothing.
fetch_debs() {
  local spec p v deb tmp missing=()
  mkdir -p "$DL_DIR"
  for spec in "${DEB_SPECS[@]}"; do
    p="${spec%%=*}"; v="${spec#*=}"
    deb="$DL_DIR/${p}_${v//:/%3a}_amd64.deb"
    [[ -s "$deb" ]] || missing+=("$spec")
  done
  (( ${#missing[@]} )) || return 0
  tmp="$(mktemp -d "$DL_DIR/.dl.XXXXXX")"
  log "downloading ${#missing[@]} package(s)"
  # Sandbox user root: as root, apt's _apt user could not write our dir.
  (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "${missing[@]}") >&2 \
    || { rm -rf "$tmp"; die_noapt "apt-get download failed: ${missing[*]}"; }
  mv -f "$tmp"/*.deb "$DL_DIR/"
  rm -rf "$tmp"
}

deb_of() { local p="${1%%=*}" v="${1#*=}"; printf '%s/%s_%s_amd64.deb' "$DL_DIR" "$p" "${v//:/%3a}"; }

# Copies FILE to the same path below ROOT, following symlinks.
copy_in() { local root="$1" f="$2"; mkdir -p "$root$(dirname "$f")"; cp -L "$f" "$root$f"; }

# Shared libraries of every ELF below ROOT (and the host programs), resolved against ROOT's own
# libxen* first, then the host; the ones from the host are copied in. (Libraries found below ROOT, e.g.
# through xl's RUNPATH, are already in place: copying them too put the build dir's path into dom0.)
copy_lib_closure() {
  local root="$1" libp="$1/usr/lib/x86_64-linux-gnu" e out
  while IFS= read -r -d '' e; do
    file -b "$e" | grep -q '^ELF.*dynamically linked' || continue
    out="$(LD_LIBRARY_PATH="$libp" ldd "$e" 2>&1)" || die "ldd failed for $e: $out"
    grep -q 'not found' <<<"$out" && die "missing library for $e: $out"
    awk '/=> \//{print $3} /^\t\/lib64/{print $1}' <<<"$out"
  done < <(find "$root/bin" "$root/sbin" "$root/usr" -type f \( -perm -u+x -o -name '*.so' \) -print0) \
    | sort -u | grep -v "^$root/" | while read -r l; do copy_in "$root" "$l"; done
  # glibc dlopen()s libgcc_s for pthread_cancel; without it xl's domain monitor aborts.
  copy_in "$root" /lib/x86_64-linux-gnu/libgcc_s.so.1
}

# Extracts the dom0 kernel and the module closure of MODULES into ROOT; prints the release.
extract_kernel() {
  local deb="$1" root="$2" tmp="$3" kver m rel dep
  mkdir -p "$tmp/k"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp/k" --wildcards './boot/vmlinuz-*' './lib/modules/*'
  kver="$(basename "$(find "$tmp/k/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)")"
  find "$tmp/k/lib/modules" -name '*.ko.xz' -exec xz -d {} +
  busybox depmod -b "$tmp/k" "$kver"
  cp "$tmp/k/boot/vmlinuz-$kver" "$tmp/vmlinuz"
  # Module closure from modules.dep ("path: dep dep ...").
  local want=() have=() queue=()
  for m in "${MODULES[@]}"; do
    rel="$(awk -F: -v n="/${m//-/_}.ko" -v d="/$m.ko" '{ p = $1; q = p; gsub(/-/, "_", q) }
      substr(q, length(q) - length(n) + 1) == n || substr(p, length(p) - length(d) + 1) == d { print p; exit }' \
      "$tmp/k/lib/modules/$kver/modules.dep")"
    [[ -n "$rel" ]] || die "module $m not in $kver"
    queue+=("$rel")
  done
  declare -A seen=()
  while (( ${#queue[@]} )); do
    rel="${queue[0]}"; queue=("${queue[@]:1}")
    [[ -n "${seen[$rel]:-}" ]] && continue
    seen[$rel]=1; want+=("$rel")
    for dep in $(awk -F: -v p="$rel" '$1 == p { print $2; exit }' "$tmp/k/lib/modules/$kver/modules.dep"); do
      queue+=("$dep")
    done
  done
  for rel in "${want[@]}"; do
    mkdir -p "$root/lib/modules/$kver/$(dirname "$rel")"
    cp "$tmp/k/lib/modules/$kver/$rel" "$root/lib/modules/$kver/$rel"
  done
  cp "$tmp/k/lib/modules/$kver"/modules.{order,builtin} "$root/lib/modules/$kver/" 2>/dev/null || true
  busybox depmod -b "$root" "$kver"
  rm -rf "$tmp/k"
  log "dom0 kernel $kver, ${#want[@]} modules"
  printf '%s\n' "$kver"
}

write_etc() {
  local root="$1"
  mkdir -p "$root/etc/ssh" "$root/root/.ssh" "$root/etc/xen"
  # bash as login shell: Debian's busybox sh prefers its own applets over PATH, so over ssh
  # `losetup`/`timeout` would be busybox's (no losetup -j/--show) instead of the real ones.
  printf 'root:x:0:0:root:/root:/bin/bash\nsshd:x:100:65534::/run/sshd:/bin/false\nnobody:x:65534:65534::/nonexistent:/bin/false\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
  printf 'root:*:1::::::\n' > "$root/etc/shadow"; chmod 600 "$root/etc/shadow"
  printf 'export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n' > "$root/etc/profile"
  printf 'hosts: files\npasswd: files\ngroup: files\nshadow: files\n' > "$root/etc/nsswitch.conf"
  printf '127.0.0.1 localhost\n' > "$root/etc/hosts"
  # Key-only root login; the host key and authorized_keys come from xen1.sh's per-host cpio.
  cat > "$root/etc/ssh/sshd_config" <<'EOF'
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
AuthorizedKeysFile /root/.ssh/authorized_keys
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
SetEnv PATH=/usr/sbin:/usr/bin:/sbin:/bin
Subsystem sftp internal-sftp
EOF
}

write_init() {
  local root="$1"
  cat > "$root/init" <<'EOF'
#!/bin/busybox sh
# xen1 dom0: PID 1. Does what Debian's /etc/init.d/xen does, then network, node disk, sshd.
# No DHCP server: vws starts one per network under /var/lib/vws/node/dhcp/<network>/.
# Parameters from the kernel command line: vws.ip=A.B.C.D/NN vws.gw=A.B.C.D vws.hostname=NAME
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin /var /tmp /run
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
exec </dev/console >/dev/console 2>&1
# The hotplug scripts' locking.sh stats /dev/stdin; devtmpfs has no /dev/fd or /dev/stdin.
ln -sf /proc/self/fd /dev/fd
for i in 0:stdin 1:stdout 2:stderr; do ln -sf /proc/self/fd/${i%:*} /dev/${i#*:}; done
ln -sfn /run /var/run
mkdir -p /run/xen /run/xenstored /run/sshd /var/log/xen/console /var/lib/xen/save /var/lib/vws/node
chmod 755 /run/sshd
arg() { sed -n "s/.*[ ]$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
IP=$(arg vws.ip); GW=$(arg vws.gw); HN=$(arg vws.hostname)
hostname "${HN:-xen-dom0}"
for m in xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xen-blkback xen-netback loop bridge tun \
         virtio_pci virtio_net virtio_blk crc32c_generic ext4 nf_tables nft_meta_bridge; do
  modprobe "$m" || echo "VWS-DOM0: modprobe $m failed"
done
mount -t xenfs xenfs /proc/xen
XENSTORED_ROOTDIR=/run/xenstored /usr/lib/xen-4.17/bin/xenstored --pid-file /run/xen/xenstored.pid
until xenstore-read -s / >/dev/null 2>&1; do sleep 0.1; done
/usr/lib/xen-4.17/bin/xen-init-dom0
/usr/lib/xen-4.17/bin/xenconsoled --pid-file=/run/xen/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console
# Node disk (virtio) at the node dir. No domain survives a reboot, so their records go: per-VM files,
# and the DHCP host entries and leases of every network (no DHCP server runs yet; vws starts them).
# server.conf, server.log and lock stay. The old layout (hosts.d/, leases, dnsmasq.pid in dhcp/) goes.
for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
if mount -t ext4 /dev/vda /var/lib/vws/node; then
  D=/var/lib/vws/node/dhcp
  rm -rf /var/lib/vws/node/workspaces $D/hosts.d $D/leases $D/dnsmasq.pid $D/dnsmasq.log
  rm -f $D/*/leases $D/*/leases~ $D/*/hosts $D/*/options $D/*/server.pid
else
  echo "VWS-DOM0: no node disk; /var/lib/vws/node is in RAM"
fi
mkdir -p /var/lib/vws/node/dhcp /var/lib/vws/node/workspaces /var/lib/vws/node/kernels/default
# xenbr0 carries eth0 (the head's L2), so guest vifs share the testbed segment.
ip link set lo up
ip link add xenbr0 type bridge stp_state 0 forward_delay 0
ip link set eth0 master xenbr0
ip link set eth0 up
ip link set xenbr0 up
[ -n "$IP" ] && ip addr add "$IP" dev xenbr0
[ -n "$GW" ] && ip route add default via "$GW" dev xenbr0
# sshd in the foreground, restarted when it exits, as a real node's init keeps it running: in one A-trial
# run its listener died without a word (no OOM, no segfault) and the node was cut off from vws. Each exit
# is reported on the console (serial.log) and in /var/log/sshd-exits.log: status 128+N = killed by signal N.
( while :; do
    /usr/sbin/sshd -D -E /var/log/sshd.log; s=$?
    echo "VWS-DOM0: sshd exited with status $s at uptime $(cut -d' ' -f1 /proc/uptime) s; restarting" | tee -a /var/log/sshd-exits.log
    sleep 1
  done ) &
# The host's node binary: a small read-only ext4 disk (xen1.sh's host-node.img, the second virtio disk).
# (virtio-9p was tried first: under TCG it read ~1.5 MB/s and node took minutes to start.) The vws
# project comes over SSH (xen1.sh sync-project) to the node disk, linked at its own path.
for i in $(seq 50); do [ -b /dev/vdb ] && break; sleep 0.1; done
mkdir -p /opt/host-node
if mount -t ext4 -o ro /dev/vdb /opt/host-node && [ -x /opt/host-node/node ]; then
  ln -sf /opt/host-node/node /usr/bin/node
else echo "VWS-DOM0: no host-node disk: node is not available"; fi
PROJECT=$(arg vws.project)
if [ -n "$PROJECT" ]; then
  mkdir -p /var/lib/vws/node/host/project "${PROJECT%/*}"
  [ -L "$PROJECT" ] || rmdir "$PROJECT" 2>/dev/null
  ln -sfn /var/lib/vws/node/host/project "$PROJECT" || echo "VWS-DOM0: cannot link $PROJECT"
fi
# Slurm: slurmd (node xen1) + munged with the testbed's key, at the paths of the shared slurm.conf
# (xen1.sh puts slurm.conf, the key and the testbed dir in the per-host cpio; it re-syncs them over SSH).
# slurmd wants a cgroup filesystem even with proctrack/linuxproc: a v1 layout (tmpfs), like the head's.
mount -t tmpfs -o mode=755 cgroup_root /sys/fs/cgroup
for c in freezer cpuset memory devices; do mkdir -p /sys/fs/cgroup/$c; mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c; done
mkdir -p /sys/fs/cgroup/systemd; mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
/usr/local/sbin/vws-slurm-start
echo "VWS-DOM0-READY host=$(hostname) ip=$IP up=$(cut -d' ' -f1 /proc/uptime)"
# Reap orphans; never exit (the kernel panics if PID 1 does, and Xen then reboots forever).
while true; do sleep 3600 & wait $!; done
EOF
  chmod 755 "$root/init"
  mkdir -p "$root/usr/local/sbin"
  cat > "$root/usr/local/sbin/vws-slurm-start" <<'EOF'
#!/bin/bash
# Starts munged and slurmd (node = hostname) if they are not running, with the slurm.conf and munge key
# under the testbed dir named in /etc/vws/testbed-dir; "restart" restarts slurmd (a changed slurm.conf).
# Run by /init at boot and by xen1.sh over SSH. Never fails the caller: it says what it did not start.
set -u
TB=$(cat /etc/vws/testbed-dir 2>/dev/null) || { echo "vws-slurm-start: no /etc/vws/testbed-dir"; exit 0; }
CONF=$TB/slurm/slurm.conf KEY=$TB/munge/munge.key N=$(hostname)
[ -s "$CONF" ] && [ -s "$KEY" ] || { echo "vws-slurm-start: no $CONF or $KEY; Slurm not started"; exit 0; }
alive() { local p; p=$(cat "$1" 2>/dev/null) && [ -n "$p" ] && [ "$(cat /proc/$p/comm 2>/dev/null)" = "$2" ]; }
mkdir -p "$TB/munge/run" "$TB/hosts/$N/log" "$TB/hosts/$N/slurmd-spool"
chmod 755 "$TB" "$TB/munge" "$TB/munge/run"; chmod 400 "$KEY"
if ! alive "$TB/munge/munged.pid" munged; then
  rm -f "$TB/munge/run/munge.socket.2" "$TB/munge/run/munge.socket.2.lock"
  munged --socket="$TB/munge/run/munge.socket.2" --key-file="$KEY" --log-file="$TB/munge/munged.log" \
    --pid-file="$TB/munge/munged.pid" --seed-file="$TB/munge/munged.seed" </dev/null >/dev/null 2>&1 \
    || echo "vws-slurm-start: munged failed; see $TB/munge/munged.log"
fi
if [ "${1:-}" = restart ] && alive "$TB/hosts/$N/slurmd.pid" slurmd; then
  kill "$(cat "$TB/hosts/$N/slurmd.pid")"
  for i in $(seq 50); do alive "$TB/hosts/$N/slurmd.pid" slurmd || break; sleep 0.1; done
fi
if ! alive "$TB/hosts/$N/slurmd.pid" slurmd; then
  slurmd -f "$CONF" -N "$N" </dev/null >/dev/null 2>>"$TB/hosts/$N/log/slurmd.err" \
    || echo "vws-slurm-start: slurmd failed; see $TB/hosts/$N/log/slurmd.log"
fi
exit 0
EOF
  chmod 755 "$root/usr/local/sbin/vws-slurm-start"
}

build() {
  local tmp="$1" root="$1/root" spec kver b
  mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin"
  for spec in "${DEB_SPECS[@]}"; do
    [[ "${spec%%=*}" == "$KPKG" ]] && continue
    dpkg-deb -x "$(deb_of "$spec")" "$tmp/x"
  done
  zcat "$tmp/x/boot/xen-$XENV-amd64.gz" > "$tmp/xen"   # multiboot wants the plain ELF
  cp -a "$tmp/x/etc" "$tmp/x/usr" "$root/"
  rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/lib/xen-$XENV/lib/python" \
    "$root/usr/lib/xen-$XENV/bin/pygrub" "$root/usr/lib/xen-$XENV/bin/oxenstored" "$root/etc/init.d"
  cp /bin/busybox "$root/bin/busybox"
  for b in "${HOST_BINS[@]}"; do copy_in "$root" "$b"; done
  mkdir -p "$root$SLURM_LIBDIR"; cp -L "$SLURM_LIBDIR"/*.so "$root$SLURM_LIBDIR/"
  local l; node_libs | while read -r l; do copy_in "$root" "$l"; done
  copy_lib_closure "$root"
  kver="$(extract_kernel "$(deb_of "$(printf '%s\n' "${DEB_SPECS[@]}" | grep "^$KPKG=")")" "$root" "$tmp")"
  write_etc "$root"
  write_init "$root"
  (cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) | gzip -1 > "$tmp/initrd.gz"
  rm -rf "$root" "$tmp/x"
  printf '%s\n' "$kver" > "$tmp/kernel-release"
  printf '%s\n' "${DEB_SPECS[@]}" > "$tmp/packages"
}

main() {
  resolve_all
  local key out t0=$SECONDS tmp
  key="$(compute_key)"
  out="$XEN_CACHE/$key"
  if [[ -s "$out/stamp" ]]; then log "cached ($out)"; printf '%s\n' "$out"; return 0; fi
  mkdir -p "$XEN_CACHE"
  exec 9>"$XEN_CACHE/build.lock"
  flock 9   # serialise concurrent builds
  if [[ -s "$out/stamp" ]]; then log "cached ($out)"; printf '%s\n' "$out"; return 0; fi
  fetch_debs
  tmp="$(mktemp -d "$XEN_CACHE/.tmp.XXXXXX")"
  chmod 755 "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  log "building $key"
  build "$tmp"
  printf '%s\n' "$key" > "$tmp/stamp"
  mv "$tmp" "$out"
  trap - EXIT
  # QEMU reads kernel and initrd once at start, but xen1.sh falls back to the last build that came up
  # (its good-base) when a new one does not: keep the newest older build, drop the rest.
  find "$XEN_CACHE" -mindepth 1 -maxdepth 1 -type d ! -name "$key" ! -name '.tmp.*' -printf '%T@ %p\n' \
    | sort -rn | tail -n +2 | cut -d' ' -f2- | while read -r d; do rm -rf "$d"; done
  log "built in $((SECONDS - t0)) s: $(cd "$out" && du -h xen vmlinuz initrd.gz | tr '\t\n' ': ')"
  printf '%s\n' "$out"
}

main "$@"
