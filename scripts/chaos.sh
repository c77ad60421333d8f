#!/usr/bin/env bash
# Reliability under faults: each scenario starts its own backends and ringlb on loopback,
# runs bounded load with ringlb-bench, injects one fault, and prints one line:
#   PASS|FAIL  <scenario>  <figure>
# Every scenario asserts nothing was lost: ringlb-bench counts every request that failed
# (reset, refused, timeout, wrong bytes), and a scenario passes only with the errors it
# allows (usually none). Every process is started here and stopped by PID.
#
# Usage: scripts/chaos.sh [SCENARIO...]     (default: all)
#   QUICK=1        shorter runs and smaller counts (CI)
#   PROFILE=release|debug (default debug)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PROFILE=${PROFILE:-debug}
QUICK=${QUICK:-0}
if [ "$PROFILE" = release ]; then cargo build --release -q --bins; else cargo build -q --bins; fi
LB=$ROOT/target/$PROFILE/ringlb
BENCH=$ROOT/target/$PROFILE/ringlb-bench
init_workdir ringlb-chaos

if [ "$QUICK" = 1 ]; then DUR=4; MANY=2000; else DUR=10; MANY=20000; fi

RESULTS=()
FAILED=0
report() { # report PASS|FAIL NAME FIGURE
    RESULTS+=("$(printf '%-4s  %-22s  %s' "$1" "$2" "$3")")
    printf '%-4s  %-22s  %s\n' "$1" "$2" "$3"
    [ "$1" = PASS ] || FAILED=$((FAILED + 1))
}

# backend NAME ARGS...: ringlb-bench backend on 127.0.0.1 (port from ARGS or 0); sets ADDR, BPID.
backend() {
    local name=$1 i; shift
    "$BENCH" "$@" 2>"$WORK/$name.log" &
    BPID=$!; PIDS+=("$BPID")
    for i in $(seq 200); do
        ADDR=$(awk '/listening on/ {print $NF; exit}' "$WORK/$name.log" 2>/dev/null || true)
        [ -n "$ADDR" ] && return 0
        sleep 0.05
    done
    echo "chaos: backend $name did not start" >&2; cat "$WORK/$name.log" >&2; exit 1
}

# ringlb NAME YAML: start ringlb; sets LBPID and LOG. Waits for `ready:`.
ringlb() {
    local name=$1 i
    printf '%s\n' "$2" >"$WORK/$name.yaml"
    LOG=$WORK/$name.log
    "$LB" run --config "$WORK/$name.yaml" >/dev/null 2>"$LOG" &
    LBPID=$!; PIDS+=("$LBPID")
    for i in $(seq 200); do grep -q '] ready: ' "$LOG" 2>/dev/null && return 0; sleep 0.05; done
    echo "chaos: ringlb $name did not start" >&2; cat "$LOG" >&2; exit 1
}

# listener NAME: the address ringlb logged for listener NAME.
listener() { grep -o "listener \"$1\" listening on [^ ]*" "$LOG" | head -1 | awk '{print $NF}' || true; }

# field JSON KEY[.KEY]: one value of a ringlb-bench JSON report (-1 if missing or unreadable).
field() {
    python3 -c '
import json, sys
v = json.loads(sys.argv[1])
for k in sys.argv[2].split("."):
    v = v.get(k, -1) if isinstance(v, dict) else -1
print(json.dumps(v, separators=(",", ":")) if isinstance(v, dict) else v)' "$1" "$2" 2>/dev/null || echo -1
}

# ---------------------------------------------------------------- scenarios

scenario_kill9_backend() {
    backend a echo --listen 127.0.0.1:0 --tag a; local a=$ADDR apid=$BPID
    backend b echo --listen 127.0.0.1:0 --tag b; local b=$ADDR
    ringlb k9 "listeners:
  - name: t
    bind: 127.0.0.1:0
    connect_attempts: 2
    health_check: {interval: 200ms, timeout: 200ms, rise: 2, fall: 2}
    backends: [{addr: $a}, {addr: $b}]"
    local out
    "$BENCH" connect --target "$(listener t)" -c 8 -d "${DUR}s" --json >"$WORK/k9.json" &
    local load=$!
    sleep $((DUR / 3)); kill -9 "$apid"
    sleep $((DUR / 3)); backend a2 echo --listen "$a" --tag a
    wait "$load" || true; out=$(cat "$WORK/k9.json")
    local err; err=$(field "$out" errors)
    local down; down=$(grep -c 'backend down' "$LOG" || true)
    local up; up=$(grep -c 'backend up' "$LOG" || true)
    # The connections open on the killed backend at that instant are reset (each client
    # sees it: ringlb-bench counts it); no new connect may fail.
    [ "$err" -ge 0 ] && [ "$err" -le 8 ] && [ "$down" -ge 1 ] && [ "$up" -ge 1 ] \
        && report PASS kill9_backend "$(field "$out" requests) connects; $err failed ($(field "$out" error_kinds)), all links in flight on the killed backend (≤ 8); backend down, then up again" \
        || report FAIL kill9_backend "errors=$err (> 8 in flight) down=$down up=$up"
    stop_pids "$LBPID"
}

scenario_reload_storm() {
    backend e echo --listen 127.0.0.1:0; local e=$ADDR
    ringlb rs "listeners:
  - {name: t, bind: 127.0.0.1:0, backends: [{addr: $e}]}"
    "$BENCH" rr --target "$(listener t)" -c 16 -d "${DUR}s" --json >"$WORK/rs.json" &
    local load=$! n=0
    while kill -0 "$load" 2>/dev/null && [ $n -lt 200 ]; do kill -HUP "$LBPID"; n=$((n + 1)); sleep 0.04; done
    wait "$load" || true
    local out; out=$(cat "$WORK/rs.json"); local err; err=$(field "$out" errors)
    local applied; applied=$(grep -c 'reload applied' "$LOG" || true)
    [ "$err" = 0 ] && [ "$applied" -ge 10 ] \
        && report PASS reload_storm "$applied reloads under 16 persistent links, $(field "$out" requests) requests, 0 errors" \
        || report FAIL reload_storm "errors=$err reloads=$applied"
    stop_pids "$LBPID"
}

scenario_upgrade_under_load() {
    backend e echo --listen 127.0.0.1:0; local e=$ADDR
    ringlb up "workers: 2
shutdown_timeout: 20s
listeners:
  - {name: t, bind: 127.0.0.1:0, backends: [{addr: $e}]}
  - {name: s, bind: 127.0.0.1:0, forwarding: splice, backends: [{addr: $e}]}"
    local t s; t=$(listener t); s=$(listener s)
    "$BENCH" rr --target "$t" -c 16 -d "${DUR}s" --json >"$WORK/up-rr.json" &
    local rr=$!
    "$BENCH" rr --target "$s" -c 8 --request 16384 -d "${DUR}s" --json >"$WORK/up-rr2.json" &
    local rr2=$!
    "$BENCH" connect --target "$t" -c 4 -d "${DUR}s" --json >"$WORK/up-conn.json" &
    local conn=$! pid=$LBPID n=0 i
    sleep 1
    for n in 1 2 3; do
        kill -USR2 "$pid"
        for i in $(seq 200); do
            local next; next=$(grep -o 'upgrade: pid [0-9]* took over' "$LOG" | sed -n "${n}p" | awk '{print $3}' || true)
            [ -n "$next" ] && break; sleep 0.05
        done
        [ -n "${next:-}" ] || { report FAIL upgrade_under_load "upgrade $n did not finish"; return; }
        PIDS+=("$next"); pid=$next; sleep 0.5
    done
    wait "$rr" "$rr2" "$conn" || true
    local e1 e2 e3; e1=$(field "$(cat "$WORK/up-rr.json")" errors); e2=$(field "$(cat "$WORK/up-rr2.json")" errors); e3=$(field "$(cat "$WORK/up-conn.json")" errors)
    local pauses; pauses=$(grep -o 'pause per connection.*' "$LOG" | tr '\n' ';' || true)
    [ "$e1" = 0 ] && [ "$e2" = 0 ] && [ "$e3" = 0 ] \
        && report PASS upgrade_under_load "3 upgrades, rr/bulk-rr/connect errors 0/0/0; $pauses" \
        || report FAIL upgrade_under_load "errors rr=$e1 bulk=$e2 connect=$e3"
    stop_pids "$pid"
}

scenario_sigterm_drain() {
    backend e echo --listen 127.0.0.1:0; local e=$ADDR
    ringlb dr "shutdown_timeout: 60s
listeners:
  - {name: t, bind: 127.0.0.1:0, backends: [{addr: $e}]}"
    "$BENCH" idle --target "$(listener t)" -c 200 -d "${DUR}s" --json >"$WORK/dr.json" &
    local load=$!
    sleep $((DUR / 2)); kill -TERM "$LBPID"
    wait "$load" || true
    local out; out=$(cat "$WORK/dr.json"); local err; err=$(field "$out" errors)
    local code=0; wait "$LBPID" || code=$?
    [ "$err" = 0 ] && [ "$code" = 0 ] \
        && report PASS sigterm_drain "200 idle links answered after SIGTERM, ringlb exited 0 when they closed" \
        || report FAIL sigterm_drain "errors=$err exit=$code"
}

scenario_fd_exhaustion() {
    backend e echo --listen 127.0.0.1:0; local e=$ADDR
    printf 'admin: 127.0.0.1:0\nlisteners:\n  - {name: t, bind: 127.0.0.1:0, backends: [{addr: %s}]}\n' "$e" >"$WORK/fd.yaml"
    LOG=$WORK/fd.log
    (ulimit -n 256; exec "$LB" run --config "$WORK/fd.yaml") 2>"$LOG" &
    LBPID=$!; PIDS+=("$LBPID")
    for _ in $(seq 200); do grep -q '] ready: ' "$LOG" && break; sleep 0.05; done
    # 400 held connections need ~800 fds: some are refused, none crash ringlb.
    "$BENCH" idle --target "$(listener t)" -c 400 -d 3s --timeout 1s --json >"$WORK/fd-idle.json" || true
    local out; out=$("$BENCH" rr --target "$(listener t)" -c 8 -d 2s --json || true)
    local err; err=$(field "$out" errors)
    kill -0 "$LBPID" 2>/dev/null && [ "$err" = 0 ] \
        && report PASS fd_exhaustion "ulimit -n 256, 400 links tried: $(field "$(cat "$WORK/fd-idle.json")" errors) refused; afterwards rr 0 errors" \
        || report FAIL fd_exhaustion "alive=$(kill -0 "$LBPID" 2>/dev/null && echo yes || echo no) rr errors=$err"
    stop_pids "$LBPID"
}

scenario_slowloris() {
    backend e echo --listen 127.0.0.1:0; local e=$ADDR
    ringlb sl "listeners:
  - {name: t, bind: 127.0.0.1:0, idle_timeout: 60s, backends: [{addr: $e}]}"
    local t; t=$(listener t)
    "$BENCH" idle --target "$t" -c 1000 -d "${DUR}s" --json >"$WORK/sl-idle.json" &
    local idle=$!
    sleep 1
    local out; out=$("$BENCH" rr --target "$t" -c 8 -d "$((DUR - 2))s" --json || true)
    wait "$idle" || true
    local err; err=$(field "$out" errors)
    [ "$err" = 0 ] \
        && report PASS slowloris "1000 silent links held; rr beside them: $(field "$out" requests) requests, p99 $(field "$out" latency_us.p99) µs, 0 errors" \
        || report FAIL slowloris "rr errors=$err"
    stop_pids "$LBPID"
}

scenario_many_connections() {
    backend e echo --listen 127.0.0.1:0; local e=$ADDR
    ringlb mc "listeners:
  - {name: t, bind: 127.0.0.1:0, max_connections: 100000, backends: [{addr: $e}]}"
    local out; out=$("$BENCH" idle --target "$(listener t)" -c "$MANY" -d "${DUR}s" --timeout 10s --json || true)
    local err; err=$(field "$out" errors)
    local rss; rss=$(awk '/VmRSS/ {print $2}' "/proc/$LBPID/status")
    [ "$err" = 0 ] \
        && report PASS many_connections "$MANY concurrent links held and answered, 0 errors; ringlb RSS afterwards $rss KiB" \
        || report FAIL many_connections "errors=$err of $MANY"
    stop_pids "$LBPID"
}

ALL=(kill9_backend reload_storm upgrade_under_load sigterm_drain fd_exhaustion slowloris many_connections)
WANT=("$@"); [ ${#WANT[@]} -gt 0 ] || WANT=("${ALL[@]}")
for s in "${WANT[@]}"; do
    declare -F "scenario_$s" >/dev/null || { echo "chaos: unknown scenario $s (have: ${ALL[*]})" >&2; exit 2; }
    "scenario_$s"
done
echo
echo "chaos summary ($(date -u +%FT%TZ), $(git rev-parse --short HEAD 2>/dev/null), PROFILE=$PROFILE QUICK=$QUICK):"
printf '%s\n' "${RESULTS[@]}"
[ "$FAILED" = 0 ]
