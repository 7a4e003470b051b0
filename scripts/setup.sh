#!/usr/bin/env bash
# Installs whatever vws needs that is missing, idempotently and cached, so a second run takes seconds:
# Debian packages (only if one is missing), npm packages (only if package-lock.json changed), the
# Temporal server built from pinned Go source, the tiny guest image, and vws's own build.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
t0=$(date +%s)
say() { printf '[setup %3ss] %s\n' $(( $(date +%s) - t0 )) "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "setup: run as root (vws manages network namespaces, bridges and VMs)" >&2; exit 1; }

# 1. Toolchains that come with the machine: Node.js >= 20 and Go >= 1.24.
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
[ "$node_major" -ge 20 ] || { echo "setup: Node.js >= 20 is required (found: $(node --version 2>/dev/null || echo none))" >&2; exit 1; }
command -v go >/dev/null || [ ! -x /usr/local/go/bin/go ] || PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "setup: Go >= 1.24 is required to build the Temporal server (found none)" >&2; exit 1; }

# 2. Debian packages: apt only when something is missing.
mapfile -t want < <(cat scripts/debian-packages.txt testbed/debian-packages.txt | sed 's/#.*//; /^\s*$/d' | sort -u)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}" >/dev/null
fi
say "Debian packages ok"

# 3. npm packages, keyed on package-lock.json.
stamp=node_modules/.vws-lock.sha256
lock=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock" ]; then
  # `npm install` against the committed lock, not `npm ci`: the registry reachable here has no
  # builds of @swc/core for other platforms, so the lock lacks those optional entries and npm ci
  # refuses it. The versions installed are still the lock's.
  say "npm install (package-lock.json changed)"
  npm install --no-audit --no-fund --loglevel=error
  echo "$lock" > "$stamp"
fi
say "npm packages ok"

# 4. The Temporal server from pinned source, and the guest image (both cached by their own keys).
temporal/build.sh >/dev/null
say "Temporal server ok"
testbed/guest/build.sh >/dev/null
say "guest image ok"

# 5. vws itself, when any source is newer than the build.
if [ ! -f dist/workers/node.js ] || [ -n "$(find src tsconfig.json tsconfig.build.json package-lock.json -newer dist/workers/node.js -print -quit)" ]; then
  say "compiling TypeScript"
  npx tsc -p tsconfig.build.json
  touch dist/workers/node.js
fi
say "vws built; setup done"
