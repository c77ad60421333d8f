#!/usr/bin/env bash
# CI smoke of the load-test tool: builds ringlb-bench, starts its backends on 127.0.0.1
# (ephemeral ports), runs every load mode for DURATION (2s) against them, and fails on any
# error or an empty result. No proxies, no installs. Every process is stopped by PID on exit.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-2s}
PROFILE=${PROFILE:-debug}
cd "$ROOT"
if [ "$PROFILE" = release ]; then
    cargo build --release -q -p ringlb-bench
else
    cargo build -q -p ringlb-bench
fi
BENCH=$ROOT/target/$PROFILE/ringlb-bench

init_workdir ringlb-bench-smoke

# start NAME ARGS...: runs a backend on port 0 and sets ADDR to the TCP (or UDP) address it bound.
start() {
    local name=$1 i
    shift
    "$BENCH" "$@" --listen 127.0.0.1:0 2>"$WORK/$name.log" &
    PIDS+=($!)
    for i in $(seq 200); do
        ADDR=$(awk '/listening on/ {print $NF; exit}' "$WORK/$name.log" 2>/dev/null || true)
        [ -n "$ADDR" ] && return 0
        kill -0 "${PIDS[-1]}" 2>/dev/null || break
        sleep 0.05
    done
    echo "bench-smoke: backend $name did not start:" >&2
    cat "$WORK/$name.log" >&2
    exit 1
}
start respond respond --request 32 --response 64; RESPOND=$ADDR
start echo echo --proto both --tag smoke; ECHO=$ADDR
start sink sink; SINK=$ADDR
start source source; SOURCE=$ADDR

FAILED=0
# check NAME FIELD ARGS...: one run; fails on errors (exit 3) or when FIELD is zero/null.
check() {
    local name=$1 field=$2 out
    shift 2
    if ! out=$("$BENCH" "$@" -d "$DURATION" --json --fail-on-errors); then
        echo "FAIL $name: $out" >&2
        FAILED=$((FAILED + 1))
        return
    fi
    if python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r[sys.argv[2]] else 1)' "$out" "$field"; then
        echo "ok   $name: $out"
    else
        echo "FAIL $name: $field is empty: $out" >&2
        FAILED=$((FAILED + 1))
    fi
}
check rr requests rr --target "$RESPOND" -c 8 --request 32 --response 64
check rr-tags tags rr --target "$ECHO" -c 4 --count-tags
check connect requests connect --target "$RESPOND" -c 4 --request 32 --response 64
check bulk-send gbit_s bulk --target "$SINK" -s 2
check bulk-recv gbit_s bulk --target "$SOURCE" -s 1 --direction recv
check udp-rr requests udp-rr --target "$ECHO" -f 4
check idle requests idle --target "$RESPOND" -c 500 --request 32 --response 64
if [ "$FAILED" -gt 0 ]; then
    echo "bench-smoke: $FAILED mode(s) failed" >&2
    exit 1
fi
echo "bench-smoke: all load modes ran without errors"
