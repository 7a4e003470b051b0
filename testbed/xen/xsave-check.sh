#!/bin/bash
# The dom0 register check (testbed/README.md, "dom0's faults"): for SECONDS (default 300), two Node.js
# checkers in xen1's dom0 recompute a SHA-256 and a float sum and count results that differ from their
# first, while dom0 creates and destroys a 2-vCPU PV guest (the node's default kernel, no disk) every 12 s.
# Prints each checker's rounds and wrong results, the guest cycles, and the fatal signals dom0's console
# logged meanwhile. Needs xen1 up (testbed/xen/xen1.sh up) and nothing else using it.
set -euo pipefail
SECS="${1:-300}"
[[ "$SECS" =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS]" >&2; exit 2; }
TB="${VWS_TESTBED_DIR:-/var/lib/vws/testbed}"
LOG="$TB/hosts/xen1/serial.log"
SSH=(ssh -F "$TB/ssh/config" xen1)
before=$(wc -l < "$LOG")
"${SSH[@]}" "cat > /tmp/xsave-check.js" <<'JS'
const crypto = require('crypto');
const secs = Number(process.argv[2]);
const buf = Buffer.alloc(1 << 20);
for (let i = 0; i < buf.length; i++) buf[i] = (i * 2654435761) >>> 24;
const sha = () => crypto.createHash('sha256').update(buf).digest('hex');
const sum = () => { let s = 0; for (let i = 1; i < 200000; i++) s += Math.sqrt(i) * 1.0000001 / (i + 0.5); return s; };
const S = sha(), F = sum();
let rounds = 0, wrong = 0;
for (const end = Date.now() + secs * 1000; Date.now() < end; rounds++) {
  if (sha() !== S) wrong++;
  if (sum() !== F) wrong++;
}
console.log(`checker ${process.pid}: ${rounds} rounds, ${wrong} wrong results`);
JS
"${SSH[@]}" sh -s "$SECS" <<'SH'
secs=$1; K=/var/lib/vws/node/kernels/default
node /tmp/xsave-check.js "$secs" > /tmp/xsave-c1.out 2>&1 &
node /tmp/xsave-check.js "$secs" > /tmp/xsave-c2.out 2>&1 &
end=$(( $(date +%s) + secs )); i=0; failed=0
while [ "$(date +%s)" -lt "$end" ]; do
  i=$((i + 1))
  printf 'name = "xsave-check-%s"\ntype = "pv"\nkernel = "%s/vmlinuz"\nramdisk = "%s/initrd.gz"\nextra = "console=hvc0"\nmemory = 128\nvcpus = 2\n' "$i" "$K" "$K" > /tmp/xsave-check.cfg
  xl create /tmp/xsave-check.cfg > /dev/null 2>&1 || failed=$((failed + 1))
  sleep 12
  xl destroy "xsave-check-$i" > /dev/null 2>&1 || true
done
wait
cat /tmp/xsave-c1.out /tmp/xsave-c2.out
echo "guests: $i created, $failed creates failed"
rm -f /tmp/xsave-check.js /tmp/xsave-check.cfg /tmp/xsave-c1.out /tmp/xsave-c2.out
SH
echo "fatal signals on dom0's console: $(tail -n +"$((before + 1))" "$LOG" | grep -c 'potentially unexpected fatal signal' || true)"
