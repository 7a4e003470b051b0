#!/usr/bin/env bash
# vws on one machine, as root:
#   ./run.sh start    set up what is missing, start vws on its embedded defaults (Temporal dev server,
#                     head worker, API, one VMM node vmm1 with the qemu driver) and deploy a sample VM
#   ./run.sh test     set up what is missing and run every test (unit, workflow, end-to-end)
#   ./run.sh stop     stop everything `start` started (by PID files) and the testbed
#   ./run.sh status   what is running
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Go and npm keep their caches under HOME; a bare CI environment may not set it.
export HOME=${HOME:-/root}
cd "$root"
state=${VWS_STATE_DIR:-/var/lib/vws}
run=$state/run
logs=$state/log
export VWS_RUN_DIR=$run

# ---- helpers ------------------------------------------------------------------------------------
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# start_bg NAME CMD...: starts CMD in the background with a PID file and a log, unless it runs.
start_bg() {
  local name=$1; shift
  if alive "$run/$name.pid"; then echo "vws: $name already running (pid $(cat "$run/$name.pid"))"; return 0; fi
  mkdir -p "$run" "$logs"
  setsid "$@" >>"$logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$run/$name.pid"
  echo "vws: started $name (pid $!, log $logs/$name.log)"
}

# stop_bg NAME: stops a process by its PID file (TERM, then KILL after 10 s).
stop_bg() {
  local f=$run/$1.pid pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "vws: stopped $1"
  fi
  rm -f "$f"
}

# wait_for SECONDS WHAT CMD...: polls CMD until it succeeds.
wait_for() {
  local secs=$1 what=$2; shift 2
  for _ in $(seq 1 $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "vws: $what not ready after $secs s" >&2
  return 1
}

ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# One `start` or `test` at a time on this machine: both use the testbed's hosts and node directories,
# and a demo's reconciler would take a test's VMs for orphans. A PID file, not flock: the daemons
# `start` and the testbed leave running would inherit a lock descriptor and hold it forever.
take_run_lock() {
  local f=$run/run.lock other said=
  mkdir -p "$run"
  while ! ( set -o noclobber; echo $$ > "$f" ) 2>/dev/null; do
    other=$(cat "$f" 2>/dev/null || true)
    if [ -n "$other" ] && [ "$other" != $$ ] && kill -0 "$other" 2>/dev/null; then
      [ -n "$said" ] || echo "vws: waiting for ./run.sh (pid $other) to finish: one start or test at a time"
      said=1
      sleep 2
    else
      rm -f "$f" # its holder died
    fi
  done
}
release_run_lock() { [ "$(cat "$run/run.lock" 2>/dev/null)" != $$ ] || rm -f "$run/run.lock"; }

# Whether vws's own processes from `start` still run (a Temporal server alone, on 7233, is harmless:
# the tests use their own on 7234).
demo_running() {
  local n
  for n in head api node-vmm1; do alive "$run/$n.pid" && return 0; done
  return 1
}

# ---- start --------------------------------------------------------------------------------------
cmd_start() {
  local t0 t1 sample id out
  t0=$(date +%s%N)
  take_run_lock
  trap release_run_lock EXIT
  scripts/setup.sh
  # The standard 3-host testbed (vws's default configuration uses vmm1), so ./run.sh test can share it.
  testbed/testbed.sh up
  temporal/start.sh
  # The head's memory settings, measured with bench/api.bench.ts (issue 8; see HEAD_MAX_CACHED_WORKFLOWS
  # in src/config/schema.ts): two malloc arenas that give freed memory back (no dynamic mmap threshold),
  # a 2 MiB young generation and V8 favouring size over speed. It runs workflow tasks, not request bursts.
  start_bg head env MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072 \
    node --max-semi-space-size=2 --optimize-for-size dist/workers/head.js
  start_bg api node dist/api/server.js
  # The node worker runs on its node: inside vmm1's namespaces, reaching Temporal over the bridge.
  start_bg node-vmm1 env VWS_NODE=vmm1 VWS_TEMPORAL_ADDRESS=10.213.0.1:7233 testbed/testbed.sh exec vmm1 -- node dist/workers/node.js
  wait_for 30 "the API" curl -sf http://127.0.0.1:8080/healthz
  wait_for 30 "the node worker" grep -q 'node worker running' "$logs/node-vmm1.log"
  node dist/repository/stage.js sample "${VWS_CACHE_DIR:-$root/.cache}/guest/disk.raw"

  # The sample workspace: reuse the one a previous start deployed while it still runs.
  sample=$run/sample-workspace
  id=$(cat "$sample" 2>/dev/null || true)
  if [ -n "$id" ] && node dist/cli/vws.js --json show "$id" 2>/dev/null | grep -q '"state": "Running"'; then
    echo "vws: sample workspace $id is already running"
  else
    t1=$(date +%s%N)
    out=$(node dist/cli/vws.js --json deploy --image sample --memory 128 --wait)
    id=$(node -e 'console.log(JSON.parse(process.argv[1]).id)' "$out")
    echo "$id" > "$sample"
    echo "vws: deployed sample workspace $id: POST to Running with its DHCP address in $(ms_since "$t1") ms"
  fi
  node dist/cli/vws.js show "$id"
  cat <<EOF

vws is running (started in $(ms_since "$t0") ms).
  API          http://127.0.0.1:8080   (token: $state/secrets/demo.token)
  Temporal UI  http://127.0.0.1:8233
  sample VM    $(node dist/cli/vws.js --json show "$id" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).obtainedIp))')   (ping it; serial log under $state/testbed/hosts/vmm1/node/workspaces/$id/)
Try:  node dist/cli/vws.js show $id       node dist/cli/vws.js destroy $id --wait
Stop: ./run.sh stop
EOF
}

# ---- stop / status ------------------------------------------------------------------------------
# Destroys every open workspace through vws (the Temporal CLI sends the same `destroy` Update the API
# does) and waits until their workflows have cleaned up, so stopping the testbed under them leaves no
# workflow that believes its VM still runs.
destroy_open_workspaces() {
  local bin ids id q='WorkflowType="workspaceWorkflow" AND ExecutionStatus="Running"'
  bin=$(temporal/build.sh 2>/dev/null)
  "$bin" operator cluster health --address 127.0.0.1:7233 >/dev/null 2>&1 || return 0
  mapfile -t ids < <("$bin" workflow list --address 127.0.0.1:7233 --query "$q" -o json |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{for(const w of JSON.parse(s||"[]"))console.log(w.execution.workflowId)})')
  [ ${#ids[@]} -gt 0 ] || return 0
  if ! alive "$run/head.pid" || ! alive "$run/node-vmm1.pid"; then
    echo "vws: ${#ids[@]} workspace(s) are open but the workers are not running; start vws again to clean them up" >&2
    return 1
  fi
  for id in "${ids[@]}"; do
    "$bin" workflow update execute --address 127.0.0.1:7233 --workflow-id "$id" --name destroy >/dev/null 2>&1 || true
    echo "vws: destroying $id"
  done
  # `workflow count` omits the count when it is zero.
  for _ in $(seq 1 240); do
    [ "$("$bin" workflow count --address 127.0.0.1:7233 --query "$q" -o json | node -p 'Number(JSON.parse(require("fs").readFileSync(0)).count ?? 0)')" = 0 ] && return 0
    sleep 0.5
  done
  echo "vws: workspaces still open after 120 s; see $logs/head.log" >&2
  return 1
}

# cmd_stop [force]: force goes on when the workspaces cannot be destroyed (the testbed's end removes their VMs).
cmd_stop() {
  destroy_open_workspaces || [ "${1:-}" = force ] || return 1
  stop_bg node-vmm1
  stop_bg api
  stop_bg head
  temporal/stop.sh
  testbed/testbed.sh down
  rm -f "$run/sample-workspace"
}

cmd_status() {
  local n
  for n in head api node-vmm1; do
    if alive "$run/$n.pid"; then echo "$n: running (pid $(cat "$run/$n.pid"))"; else echo "$n: stopped"; fi
  done
  if alive "$run/temporal-7233.pid"; then echo "temporal: running (pid $(cat "$run/temporal-7233.pid"))"; else echo "temporal: stopped"; fi
  testbed/testbed.sh status || true
}

# ---- test ---------------------------------------------------------------------------------------
cmd_test() {
  local t0 testbed_was_up=0 rc=0 port=${VWS_TEST_TEMPORAL_PORT:-7234} tmp tsc_pid tsc_log
  t0=$(date +%s%N)
  take_run_lock
  trap release_run_lock EXIT
  scripts/setup.sh
  # The tests need the testbed to themselves (test/helpers/stack.ts takes each node's state as its
  # baseline; a demo's reconciler would destroy their VMs as orphans): a running demo goes first.
  if demo_running; then
    echo "vws: stopping what ./run.sh start left running (its workspaces destroyed, the testbed down): the tests need the testbed to themselves"
    cmd_stop force
  fi
  # jest only transpiles (tsconfig.jest.json); the types of src, test and bench are checked here, once,
  # alongside the testbed's start, and a type error fails the run before any test.
  tsc_log=$(mktemp /tmp/vws-tsc-XXXXXX)
  npx tsc -p tsconfig.json --noEmit >"$tsc_log" 2>&1 &
  tsc_pid=$!
  testbed/testbed.sh status >/dev/null 2>&1 && testbed_was_up=1
  testbed/testbed.sh up
  if ! wait "$tsc_pid"; then
    cat "$tsc_log"
    rm -f "$tsc_log"
    echo "vws: type check failed (npx tsc -p tsconfig.json --noEmit); no tests run"
    [ "$testbed_was_up" = 1 ] || testbed/testbed.sh down || true
    return 1
  fi
  rm -f "$tsc_log"
  # One dev server for the whole run, on its own port and a fresh database.
  tmp=$(mktemp -d /tmp/vws-test-XXXXXX)
  cleanup() {
    VWS_TEMPORAL_PORT=$port temporal/stop.sh || true
    [ "$testbed_was_up" = 1 ] || testbed/testbed.sh down || rc=1
    rm -rf "$tmp"
    release_run_lock
  }
  trap cleanup EXIT
  VWS_TEMPORAL_PORT=$port VWS_TEMPORAL_UI_PORT=off VWS_TEMPORAL_DB=$tmp/temporal.sqlite temporal/start.sh

  # --forceExit: the SDK's native runtime can keep an idle handle open (sdk-typescript#928).
  TEMPORAL_ADDRESS=127.0.0.1:$port VWS_LOG_LEVEL=${VWS_LOG_LEVEL:-warn} \
    npx jest --runInBand --ci --forceExit --json --outputFile="$tmp/jest.json" "$@" || rc=$?
  # The closing line CI reads (jest's own summary is not one it recognises).
  node -e '
    const r = require(process.argv[1]);
    // The slowest tests, so the time budget of the suite can be watched from any CI log.
    const tests = r.testResults.flatMap((f) => f.assertionResults.map((a) => ({
      ms: a.duration ?? 0, name: `${f.name.replace(process.cwd() + "/", "")} › ${a.fullName}` })));
    tests.sort((a, b) => b.ms - a.ms);
    console.log("vws: slowest tests");
    for (const t of tests.slice(0, 20)) console.log(`  ${(t.ms / 1000).toFixed(1).padStart(7)} s  ${t.name}`);
    // Per file, set-up and tear-down included (a stack, a VM kept for several tests): where the time goes.
    const files = r.testResults.map((f) => ({ ms: f.endTime - f.startTime, name: f.name.replace(process.cwd() + "/", "") }));
    files.sort((a, b) => b.ms - a.ms);
    const total = files.reduce((n, f) => n + f.ms, 0);
    console.log(`vws: slowest files (all ${files.length}: ${(total / 1000).toFixed(0)} s)`);
    for (const f of files.slice(0, 15)) console.log(`  ${(f.ms / 1000).toFixed(1).padStart(7)} s  ${f.name}`);
    // Every failure in a few lines, last, where a CI log that keeps only its tail still shows them.
    const failed = r.testResults.flatMap((f) => f.assertionResults.filter((a) => a.status === "failed").map((a) => ({ f, a })));
    const suiteErrors = r.testResults.filter((f) => f.status === "failed" && f.assertionResults.every((a) => a.status !== "failed"));
    if (failed.length || suiteErrors.length) console.log("vws: failures");
    const gist = (m) => m.replace(/\x1b\[[0-9;]*m/g, "").split("\n").map((l) => l.trim()).filter(Boolean).slice(0, 4).join(" | ").slice(0, 400);
    for (const { f, a } of failed.slice(0, 60)) console.log(`  ${f.name.replace(process.cwd() + "/", "")} › ${a.fullName}\n      ${gist(a.failureMessages.join("\n"))}`);
    for (const f of suiteErrors) console.log(`  ${f.name.replace(process.cwd() + "/", "")} (suite)\n      ${gist(f.message)}`);
    console.log(`vws: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests} skipped`);
  ' "$tmp/jest.json" || rc=1
  trap - EXIT
  cleanup
  echo "vws: test run took $(ms_since "$t0") ms"
  return $rc
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  test) shift; cmd_test "$@" ;;
  *) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
