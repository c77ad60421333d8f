#!/usr/bin/env bash
# least_latency against least_connections, side by side in one run: three tagged echo
# backends, one of them answering 20 ms late (its kernel still completes handshakes at
# once), behind one ringlb with two listeners — one per algorithm — over the same
# backends. Load: a new connection per request (`ringlb-bench connect --count-tags`),
# the two listeners interleaved per repeat. Reports, per algorithm, the median over the
# repeats of the share of connections that reached the slow backend and the client-side
# request p50/p99, to bench/results/<date>-least-latency.md (raw JSON beside it).
#
# Environment: DURATION (10s), REPEATS (3), CONCURRENCY (8), DELAY (20ms),
# BASE_PORT (19500; uses BASE_PORT..+5 on 127.0.0.1), OUT (the .md path).
# Every process it starts is stopped by PID on exit. Traffic stays on 127.0.0.1.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-10s}
REPEATS=${REPEATS:-3}
CONCURRENCY=${CONCURRENCY:-8}
DELAY=${DELAY:-20ms}
BASE_PORT=${BASE_PORT:-19500}
OUT=${OUT:-bench/results/$(date -u +%F)-least-latency.md}

cargo build --release -q -p ringlb -p ringlb-bench
RINGLB=$ROOT/target/release/ringlb
BENCH=$ROOT/target/release/ringlb-bench
init_workdir ringlb-bench-ll

# wait_line FILE PATTERN PID: until FILE has a line matching PATTERN (10 s), or PID dies.
wait_line() {
    local i
    for i in $(seq 200); do
        grep -q -- "$2" "$1" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

start() { # NAME COMMAND...: run in the background, log to $WORK/NAME.log, wait for "listening on"
    local name=$1
    shift
    "$@" 2>"$WORK/$name.log" &
    PIDS+=($!)
    wait_line "$WORK/$name.log" "listening on" "$!" || { cat "$WORK/$name.log" >&2; exit 1; }
}

B=(127.0.0.1:$BASE_PORT 127.0.0.1:$((BASE_PORT + 1)) 127.0.0.1:$((BASE_PORT + 2)))
start fast1 "$BENCH" echo --listen "${B[0]}" --tag fast1
start fast2 "$BENCH" echo --listen "${B[1]}" --tag fast2
start slow "$BENCH" echo --listen "${B[2]}" --tag slow --delay "$DELAY"

LL=127.0.0.1:$((BASE_PORT + 3))
LC=127.0.0.1:$((BASE_PORT + 4))
listener() { # NAME BIND ALGORITHM
    printf '  - name: %s\n    bind: %s\n    algorithm: %s\n    backends:\n' "$1" "$2" "$3"
    for b in "${B[@]}"; do printf '      - addr: %s\n' "$b"; done
}
{
    printf 'workers: 1\naccess_log: false\ncontrol: %s/ringlb.sock\nlisteners:\n' "$WORK"
    listener least_latency "$LL" least_latency
    listener least_connections "$LC" least_connections
} >"$WORK/ringlb.yaml"
"$RINGLB" run --config "$WORK/ringlb.yaml" 2>"$WORK/ringlb.log" &
PIDS+=($!)
wait_line "$WORK/ringlb.log" "ready:" "$!" || { cat "$WORK/ringlb.log" >&2; exit 1; }

RAW=${OUT%.md}.jsonl
: >"$RAW"
for r in $(seq "$REPEATS"); do
    # Alternate the order, so a slow minute on the box hits both alike.
    if [ $((r % 2)) -eq 1 ]; then order="least_latency least_connections"; else order="least_connections least_latency"; fi
    for alg in $order; do
        target=$LL
        [ "$alg" = least_connections ] && target=$LC
        "$BENCH" connect --target "$target" -c "$CONCURRENCY" -d "$DURATION" --count-tags --json \
            --timeout 5s >"$WORK/run.json"
        python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["algorithm"]=sys.argv[2]; d["repeat"]=int(sys.argv[3]); print(json.dumps(d))' \
            "$WORK/run.json" "$alg" "$r" >>"$RAW"
        echo "repeat $r $alg: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["tags"], "p99", d["latency_us"]["p99"], "µs")' "$WORK/run.json")"
    done
done

python3 - "$RAW" "$DURATION" "$REPEATS" "$CONCURRENCY" "$DELAY" "$(uname -r)" >"$OUT" <<'PY'
import json, statistics, sys
raw, duration, repeats, conc, delay, kernel = sys.argv[1:]
runs = [json.loads(l) for l in open(raw)]
rows = {}
for alg in ("least_latency", "least_connections"):
    rs = [r for r in runs if r["algorithm"] == alg]
    share = [r["tags"].get("slow", 0) / max(1, sum(r["tags"].values())) for r in rs]
    rows[alg] = dict(
        share=statistics.median(share),
        p50=statistics.median(r["latency_us"]["p50"] for r in rs),
        p99=statistics.median(r["latency_us"]["p99"] for r in rs),
        rate=statistics.median(r["rate"] for r in rs),
        errors=sum(r["errors"] for r in rs),
    )
ll, lc = rows["least_latency"], rows["least_connections"]
print(f"# least_latency vs least_connections, one backend answering {delay} late\n")
print(f"Three tagged echo backends on 127.0.0.1, one answering every request {delay} late;")
print("one ringlb (1 worker) with one listener per algorithm over the same backends. Load:")
print(f"a new connection per request, {conc} loops, {duration} per run, the two listeners")
print(f"interleaved, {repeats} repeats; medians. Kernel {kernel}.\n")
print("| algorithm | share of connections to the slow backend | request p50 | request p99 | requests/s | errors |")
print("|---|---|---|---|---|---|")
for alg, v in rows.items():
    print(f"| {alg} | {v['share']*100:.1f} % | {v['p50']/1000:.2f} ms | {v['p99']/1000:.2f} ms | {v['rate']:.0f} | {v['errors']} |")
ratio = lambda a, b: a / b if b else float("nan")
print(f"\nleast_latency / least_connections: slow share {ratio(ll['share'], lc['share']):.3f}, "
      f"p99 {ratio(ll['p99'], lc['p99']):.3f}, requests/s {ratio(ll['rate'], lc['rate']):.2f}\n")
print("Command: `scripts/bench-least-latency.sh` "
      f"(DURATION={duration} REPEATS={repeats} CONCURRENCY={conc} DELAY={delay}); raw runs in the .jsonl beside this file.")
PY
cat "$OUT"
