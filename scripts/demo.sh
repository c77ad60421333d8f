#!/usr/bin/env bash
# ringlb in two minutes: three tagged echo backends (127.0.0.1:9101-9103), ringlb on
# configs/demo.yaml (listener 127.0.0.1:9000, admin 127.0.0.1:9901, health checks 200ms),
# a load showing the spread, one backend killed while the load runs (no client errors:
# ringlb retries another backend and its health check takes the dead one out), the backend
# restarted (traffic returns), and the /metrics lines that show it.
# Every process it starts is stopped by PID on exit. Traffic stays on 127.0.0.1.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CONFIG=${CONFIG:-configs/demo.yaml}
LISTENER=127.0.0.1:9000
ADMIN=127.0.0.1:9901
VICTIM=b2
VICTIM_ADDR=127.0.0.1:9102

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

[ -f "$CONFIG" ] || { echo "demo.sh: $CONFIG not found" >&2; exit 1; }
say "building (cargo build --release)"
cargo build --release -q
RINGLB=$ROOT/target/release/ringlb
BENCH=$ROOT/target/release/ringlb-bench

WORK=$(mktemp -d /tmp/ringlb-demo.XXXXXX)
declare -A PID_OF
cleanup() {
    stop_pids "${PID_OF[@]}"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_line FILE PATTERN PID [SECONDS]: until FILE has a line matching PATTERN, or PID dies.
wait_line() {
    local i
    for i in $(seq $((${4:-10} * 20))); do
        grep -q -- "$2" "$1" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

start_backend() { # bN
    local n=${1#b}
    "$BENCH" echo --listen "127.0.0.1:910$n" --tag "$1" 2>"$WORK/$1.log" &
    PID_OF[$1]=$!
    wait_line "$WORK/$1.log" "listening on" "${PID_OF[$1]}" || { cat "$WORK/$1.log" >&2; exit 1; }
    echo "backend $1 on 127.0.0.1:910$n (pid ${PID_OF[$1]})"
}

metrics() {
    if command -v curl >/dev/null; then
        curl -fsS "http://$ADMIN/metrics"
    else
        python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "http://$ADMIN/metrics"
    fi
}

say "starting three echo backends, each tagging its replies with its name"
for b in b1 b2 b3; do start_backend "$b"; done

say "starting ringlb on $CONFIG"
"$RINGLB" run --config "$CONFIG" 2>"$WORK/ringlb.log" &
PID_OF[ringlb]=$!
if ! wait_line "$WORK/ringlb.log" "listening on" "${PID_OF[ringlb]}"; then
    echo "demo.sh: ringlb did not start; its log:" >&2
    cat "$WORK/ringlb.log" >&2
    exit 1
fi
grep "listening on" "$WORK/ringlb.log"

say "2 s of load through ringlb: a new connection per request, counted by the backend that answered"
"$BENCH" connect --target "$LISTENER" -c 4 --rate 600 --count-tags -d 2s

say "6 s of load; $VICTIM is stopped at 1.5 s and restarted at 4 s"
"$BENCH" connect --target "$LISTENER" -c 4 --rate 600 --count-tags -d 6s >"$WORK/failover.txt" &
PID_OF[load]=$!
LOG_MARK=$(wc -l <"$WORK/ringlb.log")
sleep 1.5
echo "stopping $VICTIM (pid ${PID_OF[$VICTIM]})"
kill -TERM "${PID_OF[$VICTIM]}"
wait "${PID_OF[$VICTIM]}" 2>/dev/null || true
unset "PID_OF[$VICTIM]"
sleep 2.5
echo "restarting $VICTIM"
start_backend "$VICTIM"
wait "${PID_OF[load]}" || true
unset "PID_OF[load]"
cat "$WORK/failover.txt"
ERRORS=$(awk '/^errors/ {print $2}' "$WORK/failover.txt")

say "ringlb's log about $VICTIM_ADDR during the failover"
# Access-log lines (one per connection) are left out: the health transitions are the story.
tail -n +"$((LOG_MARK + 1))" "$WORK/ringlb.log" | grep -v 'ringlb::access' | grep -- "$VICTIM_ADDR" ||
    echo "(no line names $VICTIM_ADDR)"

say "2 s more: $VICTIM is back in the spread"
"$BENCH" connect --target "$LISTENER" -c 4 --rate 600 --count-tags -d 2s

say "GET http://$ADMIN/metrics (the lines that show it)"
if metrics >"$WORK/metrics.txt"; then
    grep -E '^ringlb_(backend_up|connect_failures_total|connections_total|active_connections)' "$WORK/metrics.txt" ||
        echo "(no ringlb_ lines in /metrics)"
else
    echo "(the admin endpoint $ADMIN did not answer)"
fi

if [ "${ERRORS:-1}" != 0 ]; then
    echo "demo.sh: the client saw ${ERRORS:-unknown} error(s) during the failover (expected 0)" >&2
    exit 1
fi
say "done: 0 client errors through the failover"
