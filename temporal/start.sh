#!/usr/bin/env bash
# Starts the Temporal dev server in the background (SQLite in WAL mode, Web UI, vws's search
# attributes) and waits until it serves. A no-op if it already runs. Settings (environment):
#   VWS_TEMPORAL_DB       SQLite file            (default /var/lib/vws/temporal/vws.sqlite)
#   VWS_TEMPORAL_IP       frontend address      (default 0.0.0.0: node workers in other namespaces
#                                                or on other machines must reach it; see README.md)
#   VWS_TEMPORAL_PORT     frontend gRPC port    (default 7233)
#   VWS_TEMPORAL_UI_PORT  Web UI port, or "off" (default 8233; bound to 127.0.0.1)
#   VWS_RUN_DIR           PID and log files     (default /var/lib/vws/run)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
db=${VWS_TEMPORAL_DB:-/var/lib/vws/temporal/vws.sqlite}
ip=${VWS_TEMPORAL_IP:-0.0.0.0}
port=${VWS_TEMPORAL_PORT:-7233}
ui=${VWS_TEMPORAL_UI_PORT:-8233}
run=${VWS_RUN_DIR:-/var/lib/vws/run}
pidfile=$run/temporal-$port.pid
bin=$("$here/build.sh")
health() { "$bin" operator cluster health --address "127.0.0.1:$port" >/dev/null 2>&1; }

if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && health; then
  echo "temporal: already serving on :$port (pid $(cat "$pidfile"))" >&2
  exit 0
fi
mkdir -p "$run" "$(dirname "$db")"
args=(server start-dev --db-filename "$db" --ip "$ip" --port "$port"
  --sqlite-pragma journal_mode=WAL --sqlite-pragma synchronous=NORMAL
  --log-format json --log-level warn)
if [ "$ui" = off ]; then args+=(--headless); else args+=(--ui-ip 127.0.0.1 --ui-port "$ui"); fi
while IFS= read -r line; do
  case "$line" in ''|'#'*) ;; *) args+=(--search-attribute "$line") ;; esac
done < "$here/search-attributes.txt"

# --search-attribute registers only when the database is created: add any that an older database lacks.
register_search_attributes() {
  local have line
  have=$("$bin" operator search-attribute list --address "127.0.0.1:$port" -o json)
  while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    grep -q "\"${line%%=*}\"" <<<"$have" && continue
    "$bin" operator search-attribute create --address "127.0.0.1:$port" --name "${line%%=*}" --type "${line#*=}" >/dev/null
    echo "temporal: registered search attribute $line" >&2
  done < "$here/search-attributes.txt"
}

t0=$(date +%s%N)
# setsid: the server must outlive this script and the shell that ran it.
setsid "$bin" "${args[@]}" >>"$run/temporal-$port.log" 2>&1 < /dev/null &
echo $! > "$pidfile"
for _ in $(seq 1 600); do
  if health; then
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    register_search_attributes
    echo "temporal: serving on $ip:$port after ${ms} ms (pid $(cat "$pidfile"), db $db)" >&2
    exit 0
  fi
  kill -0 "$(cat "$pidfile")" 2>/dev/null || { echo "temporal: the server exited; last log lines:" >&2; tail -n 20 "$run/temporal-$port.log" >&2; rm -f "$pidfile"; exit 1; }
  sleep 0.1
done
echo "temporal: not serving after 60 s; see $run/temporal-$port.log" >&2
exit 1
