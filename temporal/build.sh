#!/usr/bin/env bash
# Builds the Temporal CLI (dev server + embedded Web UI) from Go source, pinned by go.mod/go.sum in this
# directory (github.com/temporalio/cli v1.5.1: server 1.29.1, UI 2.42.1). Never downloads a binary:
# modules come from the Go module proxy and are checked against go.sum.
# The binary is cached under $VWS_CACHE_DIR/temporal/<key>/ (key = hash of the pin and the Go version)
# and reused while the key is unchanged. Prints the binary's path on stdout.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${VWS_CACHE_DIR:-$(dirname "$here")/.cache}

# This machine kind installs Go in /usr/local/go; a non-login shell may not have it on PATH.
command -v go >/dev/null || [ ! -x /usr/local/go/bin/go ] || PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "temporal/build.sh: Go is not installed (need Go >= 1.24, as on this machine kind: /usr/local/go)" >&2; exit 1; }
gover=$(go env GOVERSION)
key=$(cat "$here/go.mod" "$here/go.sum" <(echo "$gover") | sha256sum | cut -c1-16)
out=$cache/temporal/$key/temporal
if [ -x "$out" ]; then
  echo "temporal: cached build $key ($gover)" >&2
  echo "$out"
  exit 0
fi
mkdir -p "$(dirname "$out")"
start=$(date +%s)
echo "temporal: building github.com/temporalio/cli (pinned in temporal/go.mod) with $gover ..." >&2
# -mod=readonly: fail rather than silently change the pin; GOFLAGS from the environment are kept.
(cd "$here" && GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false" \
  go build -trimpath -o "$out.tmp" github.com/temporalio/cli/cmd/temporal)
mv "$out.tmp" "$out"
echo "temporal: built in $(( $(date +%s) - start )) s: $out" >&2
echo "$out"
