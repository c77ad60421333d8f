#!/usr/bin/env bash
# Does ringlb give memory back after a burst? Loopback only, bounded in time.
#
# Starts an echo backend and ringlb on 127.0.0.1 (ephemeral ports), warms up, takes the
# pre-burst RSS, then runs a burst: CONNS connections held at once (each carries one
# request/response, as a real link does), and a connect burst (one connection per
# request). After the burst it samples ringlb's RSS every 5 s for SETTLE seconds and
# checks that it came back within 2x the pre-burst figure.
#
# Usage: scripts/memory-return.sh       (env: CONNS=10000 (or what fds allow) SETTLE=60 PROFILE=release|debug
#                                        RINGLB=path/to/ringlb to measure another build)
# Exit 0 when RSS is back within 2x in time, 1 when it is not, 2 on a setup failure.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# ringlb holds two fds per connection: as many as its fd hard limit allows, up to 10,000.
HARD=$(ulimit -Hn)
[ "$HARD" = unlimited ] && HARD=1048576
CONNS=${CONNS:-$(( (HARD - 1000) / 2 < 10000 ? (HARD - 1000) / 2 : 10000 ))}
SETTLE=${SETTLE:-60}
PROFILE=${PROFILE:-release}
cd "$ROOT"
if [ "$PROFILE" = release ]; then
    cargo build --release -q -p ringlb -p ringlb-bench
else
    cargo build -q -p ringlb -p ringlb-bench
fi
BENCH=$ROOT/target/$PROFILE/ringlb-bench
RINGLB=${RINGLB:-$ROOT/target/$PROFILE/ringlb}
# The client and the backend hold one fd per connection each; ringlb raises its own.
ulimit -n "$HARD"

init_workdir ringlb-memory

# wait_line FILE PATTERN: prints the last field of the first line matching PATTERN.
wait_line() {
    local i v
    for i in $(seq 400); do
        v=$(awk -v p="$2" '$0 ~ p {print $NF; exit}' "$1" 2>/dev/null || true)
        [ -n "$v" ] && { echo "$v"; return 0; }
        sleep 0.05
    done
    echo "memory-return: no line matching '$2' in $1:" >&2
    cat "$1" >&2
    exit 2
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

"$BENCH" echo --listen 127.0.0.1:0 --threads 2 2>"$WORK/backend.log" &
PIDS+=($!)
BACKEND=$(wait_line "$WORK/backend.log" "listening on tcp")

cat >"$WORK/ringlb.yaml" <<EOF
access_log: false
listeners:
  - name: mem
    bind: 127.0.0.1:0
    backends:
      - addr: $BACKEND
EOF
RUST_LOG=${RUST_LOG:-info,ringlb_dataplane::memory=debug} "$RINGLB" run --config "$WORK/ringlb.yaml" 2>"$WORK/ringlb.log" &
LB_PID=$!
PIDS+=($LB_PID)
wait_line "$WORK/ringlb.log" "listening on" >/dev/null
LB=$(awk '/listening on/ {for (i = 1; i <= NF; i++) if ($i == "on") {print $(i + 1); exit}}' "$WORK/ringlb.log")

"$BENCH" rr --target "$LB" -c 16 -d 1s --fail-on-errors >/dev/null
PRE=$(rss_kib "$LB_PID")
echo "pre-burst RSS: $PRE KiB (after a 1 s warm-up)"

"$BENCH" idle --target "$LB" -c "$CONNS" -d 3s --timeout 10s --fail-on-errors \
    2>"$WORK/idle.log" >"$WORK/idle.out" &
IDLE=$!
PIDS+=($IDLE)
wait_line "$WORK/idle.log" "idle: holding" >/dev/null
HELD=$(rss_kib "$LB_PID")
wait "$IDLE" || { echo "memory-return: the idle burst failed:" >&2; cat "$WORK/idle.out" "$WORK/idle.log" >&2; tail -5 "$WORK/ringlb.log" >&2; exit 2; }
PEAK=$(rss_kib "$LB_PID")
echo "burst: $CONNS connections held: $HELD KiB while held, $PEAK KiB after each carried a request"
"$BENCH" connect --target "$LB" -c 64 -d 3s --fail-on-errors >"$WORK/connect.out"
echo "burst: connect (one connection per request, 3 s): $(rss_kib "$LB_PID") KiB"

LIMIT=$((2 * PRE))
for t in $(seq 5 5 "$SETTLE"); do
    sleep 5
    NOW=$(rss_kib "$LB_PID")
    echo "after the burst +${t}s: $NOW KiB"
    if [ "$NOW" -le "$LIMIT" ]; then
        grep -h "returned free memory" "$WORK/ringlb.log" || true
        echo "memory-return: OK: back to $NOW KiB within ${t}s (pre-burst $PRE KiB, limit 2x = $LIMIT KiB)"
        exit 0
    fi
done
grep -h "returned free memory" "$WORK/ringlb.log" || true
echo "memory-return: FAIL: still $NOW KiB after ${SETTLE}s (pre-burst $PRE KiB, limit 2x = $LIMIT KiB)" >&2
exit 1
