#!/usr/bin/env bash
# Stops the dev server started by start.sh, by its PID file only. A no-op if it is not running.
set -euo pipefail
port=${VWS_TEMPORAL_PORT:-7233}
pidfile=${VWS_RUN_DIR:-/var/lib/vws/run}/temporal-$port.pid
[ -f "$pidfile" ] || { echo "temporal: not running (no $pidfile)" >&2; exit 0; }
pid=$(cat "$pidfile")
if kill -0 "$pid" 2>/dev/null; then
  kill -TERM "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { echo "temporal: pid $pid ignored TERM for 10 s; killing" >&2; kill -KILL "$pid"; }
fi
rm -f "$pidfile"
echo "temporal: stopped" >&2
