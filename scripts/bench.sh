#!/usr/bin/env bash
# Comparative benchmark: direct (no proxy), ringlb (copy, splice, auto), HAProxy (mode tcp)
# and nginx (stream), interleaved in one run with identical backends, pinning and load.
# Writes bench/results/<date>-<machine>.md (and the raw .jsonl beside it).
#
# Usage: scripts/bench.sh [--quick]
# Env:   DURATION=10s REPEATS=3 SCENARIOS="idle idle-warm rr rr25 rr50 connect conn25 bulk1 bulk4 udp-rr"
#        TARGETS="direct ringlb-copy ringlb-splice ringlb-auto haproxy nginx"
#        PROXY_CPU=0 LOAD_CPU=1 BASE_PORT=19000 IDLE_CONNS=10000 UDP_FLOWS=16
#        CONNECT_CONCURRENCY=16 RINGLB=target/release/ringlb OUT=<file.md>
#        RINGLB_BASELINE=<another ringlb binary>: adds target ringlb-base (copy mode, that
#        binary), to compare two builds side by side in one run
# Every process it starts is stopped by PID on exit. Traffic stays on 127.0.0.1.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
for a in "$@"; do
    case "$a" in
    --quick) QUICK=1 ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $a" >&2; exit 2 ;;
    esac
done
if [ "$QUICK" = 1 ]; then
    DURATION=${DURATION:-2s}
    REPEATS=${REPEATS:-1}
    IDLE_CONNS=${IDLE_CONNS:-2000}
fi
# 10,000 idle connections through a proxy take 20,000+ descriptors in the proxy: raise the
# limit where allowed (root with CAP_SYS_RESOURCE), else fit the scenario under it.
ulimit -Hn 200000 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
IDLE_MAX=$(((NOFILE - 1000) / 2 / 1000 * 1000))
if [ -z "${IDLE_CONNS:-}" ] && [ "$IDLE_MAX" -lt 10000 ]; then
    echo "bench.sh: open-file limit $NOFILE (cannot raise it): idle scenario uses $IDLE_MAX connections, not 10000" >&2
    IDLE_CONNS=$IDLE_MAX
fi
DURATION=${DURATION:-10s}
REPEATS=${REPEATS:-3}
# idle first: its RSS growth is measured before earlier scenarios leave freed memory to reuse.
# rr25/rr50/conn25: open-loop fixed load at that percentage of what direct sustained in
# this run's closed-loop rr/connect (measured first if the scenario list lacks them).
SCENARIOS=${SCENARIOS:-"idle idle-warm rr rr25 rr50 connect conn25 bulk1 bulk4 udp-rr"}
TARGETS=${TARGETS:-"direct ringlb-copy ringlb-splice ringlb-auto haproxy nginx"}
if [ -n "${RINGLB_BASELINE:-}" ]; then
    case " $TARGETS " in *" ringlb-base "*) ;; *) TARGETS="$TARGETS ringlb-base" ;; esac
fi
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BASE_PORT=${BASE_PORT:-19000}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_HOLD=${IDLE_HOLD:-3s}
UDP_FLOWS=${UDP_FLOWS:-16}
CONNECT_CONCURRENCY=${CONNECT_CONCURRENCY:-16}
RINGLB=${RINGLB:-$ROOT/target/release/ringlb}
BENCH=$ROOT/target/release/ringlb-bench
CLK_TCK=$(getconf CLK_TCK)

init_workdir ringlb-bench
log() { echo "bench.sh: $*" >&2; }

# ---- prerequisites ---------------------------------------------------------------------
needs_install() {
    case " $TARGETS " in *" haproxy "*) command -v haproxy >/dev/null || return 0 ;; esac
    case " $TARGETS " in *" nginx "*)
        command -v nginx >/dev/null || return 0
        [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || nginx -V 2>&1 | grep -q -- '--with-stream ' || return 0 ;;
    esac
    return 1
}
if needs_install; then
    log "installing haproxy nginx libnginx-mod-stream (apt-get)"
    # Keep Debian's maintainer scripts from starting the system services: the anchors run
    # in the foreground with our own configs, and nothing is left listening on port 80.
    POLICY=/usr/sbin/policy-rc.d
    ADDED_POLICY=0
    if [ ! -e "$POLICY" ]; then printf '#!/bin/sh\nexit 101\n' >"$POLICY"; chmod +x "$POLICY"; ADDED_POLICY=1; fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx libnginx-mod-stream >/dev/null
    [ "$ADDED_POLICY" = 1 ] && rm -f "$POLICY"
fi
log "building ringlb-bench (release)"
(cd "$ROOT" && cargo build --release -q -p ringlb-bench)

# ---- ports -------------------------------------------------------------------------------
RR_BACKEND=$((BASE_PORT + 1))
BULK_BACKEND=$((BASE_PORT + 2))
UDP_BACKEND=$((BASE_PORT + 3))
port_base() { # target -> first of its three ports (rr, bulk, udp)
    case "$1" in
    ringlb-copy) echo $((BASE_PORT + 100)) ;;
    ringlb-splice) echo $((BASE_PORT + 110)) ;;
    ringlb-auto) echo $((BASE_PORT + 120)) ;;
    haproxy) echo $((BASE_PORT + 130)) ;;
    nginx) echo $((BASE_PORT + 140)) ;;
    ringlb-base) echo $((BASE_PORT + 150)) ;;
    esac
}
STATS_PORT=$((BASE_PORT + 139))

fill() { # template out port_base [extra sed args...]
    local tmpl=$1 out=$2 b=$3
    shift 3
    sed -e "s|@RR_PORT@|$b|g" -e "s|@BULK_PORT@|$((b + 1))|g" -e "s|@UDP_PORT@|$((b + 2))|g" \
        -e "s|@RR_BACKEND@|$RR_BACKEND|g" -e "s|@BULK_BACKEND@|$BULK_BACKEND|g" \
        -e "s|@UDP_BACKEND@|$UDP_BACKEND|g" -e "s|@STATS_PORT@|$STATS_PORT|g" \
        -e "s|@DIR@|$WORK|g" -e "s|@MAXCONN@|$((IDLE_CONNS + 500))|g" \
        -e "s|@NOFILE@|$NOFILE|g" -e "s|@WORKER_CONNECTIONS@|$((2 * IDLE_CONNS + 1000))|g" \
        "$@" "$tmpl" >"$out"
}

# wait_line FILE PATTERN COUNT PID: until FILE has COUNT lines matching, PID dies, or 15 s.
wait_line() {
    local i
    for i in $(seq 300); do
        [ "$(grep -c -- "$2" "$1" 2>/dev/null || true)" -ge "$3" ] && return 0
        kill -0 "$4" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
wait_port() { # PORT PID
    local i
    for i in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# ---- backends (on the load CPU) ------------------------------------------------------------
start_backend() { # name args...
    local name=$1
    shift
    taskset -c "$LOAD_CPU" "$BENCH" "$@" 2>"$WORK/$name.log" &
    PIDS+=($!)
    wait_line "$WORK/$name.log" "listening on" 1 $! || { cat "$WORK/$name.log" >&2; log "backend $name did not start"; exit 1; }
}
start_backend respond respond --listen 127.0.0.1:$RR_BACKEND --request 32 --response 64
start_backend sink sink --listen 127.0.0.1:$BULK_BACKEND
start_backend udp-echo echo --proto udp --listen 127.0.0.1:$UDP_BACKEND

# ---- proxies (on the proxy CPU) -------------------------------------------------------------
declare -A PID_OF
ACTIVE=()
for t in $TARGETS; do
    b=$(port_base "$t" || true)
    case "$t" in
    direct) ACTIVE+=(direct) ;;
    ringlb-*)
        bin=$RINGLB mode=${t#ringlb-}
        [ "$t" = ringlb-base ] && bin=${RINGLB_BASELINE:-} mode=copy
        if [ ! -x "$bin" ]; then log "skipping $t: '$bin' not built"; continue; fi
        fill "$ROOT/bench/anchors/ringlb.yaml.tmpl" "$WORK/$t.yaml" "$b" -e "s|@FORWARDING@|$mode|g"
        taskset -c "$PROXY_CPU" "$bin" run --config "$WORK/$t.yaml" --workers 1 2>"$WORK/$t.log" &
        PIDS+=($!)
        if wait_line "$WORK/$t.log" "listening on" 3 $!; then
            PID_OF[$t]=$!
            ACTIVE+=("$t")
        else
            log "skipping $t: it did not report its 3 listeners (log follows)"
            tail -5 "$WORK/$t.log" >&2
        fi
        ;;
    haproxy)
        fill "$ROOT/bench/anchors/haproxy.cfg.tmpl" "$WORK/haproxy.cfg" "$b"
        haproxy -c -q -f "$WORK/haproxy.cfg"
        taskset -c "$PROXY_CPU" haproxy -db -f "$WORK/haproxy.cfg" 2>"$WORK/haproxy.log" &
        PIDS+=($!)
        wait_port "$b" $! || { cat "$WORK/haproxy.log" >&2; exit 1; }
        PID_OF[haproxy]=$!
        ACTIVE+=(haproxy)
        ;;
    nginx)
        lm=""
        if [ -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
            lm="load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
        fi
        fill "$ROOT/bench/anchors/nginx.conf.tmpl" "$WORK/nginx.conf" "$b" -e "s|@LOAD_MODULE@|$lm|"
        nginx -q -t -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log"
        taskset -c "$PROXY_CPU" nginx -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" &
        PIDS+=($!)
        wait_port "$b" $! || { cat "$WORK/nginx-error.log" >&2; exit 1; }
        PID_OF[nginx]=$!
        ACTIVE+=(nginx)
        ;;
    *) log "unknown target $t"; exit 2 ;;
    esac
done

# The proxy's processes: nginx's master and its worker(s); others are one process.
proc_pids() {
    local p=${PID_OF[$1]:-}
    [ -n "$p" ] || return 0
    echo "$p"
    [ "$1" = nginx ] && pgrep -P "$p" || true
}
cpu_ticks() { # utime+stime of every thread (io-wq workers included), summed over processes
    local sum=0 p f
    for p in $(proc_pids "$1"); do
        f=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        set -- $f
        sum=$((sum + ${12} + ${13}))
    done
    echo "$sum"
}
rss_kb() {
    local sum=0 p v
    for p in $(proc_pids "$1"); do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        sum=$((sum + v))
    done
    echo "$sum"
}
pipe_fds() {
    local n=0 p
    for p in $(proc_pids "$1"); do
        n=$((n + $(find "/proc/$p/fd" -lname 'pipe:*' 2>/dev/null | wc -l)))
    done
    echo "$n"
}
haproxy_pipes() { # "used free" from the stats socket
    local out
    out=$(exec 3<>"/dev/tcp/127.0.0.1/$STATS_PORT" && printf 'show info\n' >&3 && timeout 2 cat <&3) || true
    echo "$(awk -F': ' '/^PipesUsed/ {print $2}' <<<"$out") $(awk -F': ' '/^PipesFree/ {print $2}' <<<"$out")"
}

addr_of() { # target scenario -> address, or nothing when the target cannot run it
    local t=$1 s=$2 b off
    case "$s" in rr* | conn* | idle*) off=0 ;; bulk*) off=1 ;; udp-rr) off=2 ;; esac
    if [ "$t" = direct ]; then
        case $off in 0) echo 127.0.0.1:$RR_BACKEND ;; 1) echo 127.0.0.1:$BULK_BACKEND ;; 2) echo 127.0.0.1:$UDP_BACKEND ;; esac
        return
    fi
    [ "$t" = haproxy ] && [ $off = 2 ] && return # HAProxy does not proxy UDP
    b=$(port_base "$t")
    echo "127.0.0.1:$((b + off))"
}
load_args() {
    case "$1" in
    rr) echo "rr -c 64 --request 32 --response 64 -d $DURATION" ;;
    rr25 | rr50) echo "rr -c 64 --request 32 --response 64 -d $DURATION --rate $(fixed_rate rr "${1#rr}")" ;;
    connect) echo "connect -c $CONNECT_CONCURRENCY --request 32 --response 64 -d $DURATION" ;;
    conn25) echo "connect -c $CONNECT_CONCURRENCY --request 32 --response 64 -d $DURATION --rate $(fixed_rate connect 25)" ;;
    bulk1) echo "bulk -s 1 -d $DURATION" ;;
    bulk4) echo "bulk -s 4 -d $DURATION" ;;
    udp-rr) echo "udp-rr -f $UDP_FLOWS --request 32 -d $DURATION" ;;
    idle) echo "idle -c $IDLE_CONNS --request 32 --response 64 -d $IDLE_HOLD --timeout 10s" ;;
    idle-warm) echo "idle -c $IDLE_CONNS --request 32 --response 64 -d $IDLE_HOLD --timeout 10s --warm" ;;
    *) log "unknown scenario $1"; exit 2 ;;
    esac
}

# Direct's closed-loop capacity per scenario (rr, connect), from the latest run of it; the
# fixed-load scenarios run at a percentage of it, so every target sees the same offered load.
declare -A CAPACITY
capacity_of() { # scenario -> requests/s direct sustained (measured now if not yet)
    local s=$1 out=$WORK/capacity.json
    if [ -z "${CAPACITY[$s]:-}" ]; then
        # shellcheck disable=SC2046
        taskset -c "$LOAD_CPU" "$BENCH" $(load_args "$s") --target "$(addr_of direct "$s")" --json >"$out"
        CAPACITY[$s]=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rate"])' "$out")
    fi
    echo "${CAPACITY[$s]}"
}
fixed_rate() { # scenario percent -> requests/s
    awk -v c="$(capacity_of "$1")" -v p="$2" 'BEGIN { printf "%d", c * p / 100 }'
}

# A fixed-load scenario whose closed-loop base is not in the list: measure the base once
# here (in this shell, so the figure is kept).
for s in $SCENARIOS; do
    case "$s" in rr25 | rr50) base=rr ;; conn25) base=connect ;; *) continue ;; esac
    case " $SCENARIOS " in *" $base "*) ;; *) capacity_of "$base" >/dev/null ;; esac
done

# ---- the run: repeats × scenarios × targets, interleaved --------------------------------------
RAW=$WORK/raw.jsonl
: >"$RAW"
log "targets: ${ACTIVE[*]}; scenarios: $SCENARIOS; duration $DURATION; repeats $REPEATS"
for rep in $(seq "$REPEATS"); do
    for s in $SCENARIOS; do
        for t in "${ACTIVE[@]}"; do
            addr=$(addr_of "$t" "$s")
            [ -n "$addr" ] || continue
            args=$(load_args "$s")
            out=$WORK/run.json err=$WORK/run.err
            c0=$(cpu_ticks "$t"); r0=$(rss_kb "$t"); rheld=0 pfds=0
            # shellcheck disable=SC2086
            taskset -c "$LOAD_CPU" "$BENCH" $args --target "$addr" --json >"$out" 2>"$err" &
            lp=$!
            PIDS+=($lp)
            if [ "${s#idle}" != "$s" ]; then
                wait_line "$err" "idle: holding" 1 $lp && rheld=$(rss_kb "$t")
            elif [ "${s#bulk}" != "$s" ]; then
                sleep "$(awk -v d="${DURATION%s}" 'BEGIN {print d / 2}')"
                pfds=$(pipe_fds "$t")
            fi
            wait $lp || { log "load failed: $s on $t"; cat "$err" >&2; }
            if [ "$t" = direct ] && { [ "$s" = rr ] || [ "$s" = connect ]; }; then
                CAPACITY[$s]=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rate"])' "$out" 2>/dev/null || true)
            fi
            c1=$(cpu_ticks "$t")
            hp=""
            [ "$t" = haproxy ] && hp=$(haproxy_pipes)
            printf '{"rep":%s,"scenario":"%s","target":"%s","cpu_ticks":%s,"rss_before_kb":%s,"rss_held_kb":%s,"pipe_fds":%s,"haproxy_pipes":"%s","args":"%s","result":%s}\n' \
                "$rep" "$s" "$t" "$((c1 - c0))" "$r0" "$rheld" "$pfds" "$hp" "$args" "$(cat "$out" 2>/dev/null || echo null)" >>"$RAW"
            log "rep $rep $s $t: $(head -c 200 "$out" 2>/dev/null)"
        done
    done
done

# ---- report --------------------------------------------------------------------------------------
MACHINE=$(hostname -s 2>/dev/null || echo machine)
SUFFIX=""
[ "$QUICK" = 1 ] && SUFFIX="-quick"
OUT=${OUT:-$ROOT/bench/results/$(date +%Y-%m-%d)-$MACHINE$SUFFIX.md}
mkdir -p "$(dirname "$OUT")"
cp "$RAW" "${OUT%.md}.jsonl"
{
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- machine: $MACHINE, $(nproc) CPUs, $(lscpu 2>/dev/null | awk -F': *' '/Model name/ {print $2; exit}')"
    echo "- kernel: $(uname -r)"
    echo "- rustc: $(rustc -V 2>/dev/null)"
    echo "- git: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo ' (dirty)')"
    command -v haproxy >/dev/null && echo "- haproxy: $(haproxy -v 2>/dev/null | head -1)"
    command -v nginx >/dev/null && echo "- nginx: $(nginx -v 2>&1)"
    [ -x "$RINGLB" ] && echo "- ringlb: $("$RINGLB" --version 2>/dev/null || echo "built $(date -r "$RINGLB" +%F)")"
    [ -n "${RINGLB_BASELINE:-}" ] && echo "- ringlb-base: $RINGLB_BASELINE ($("$RINGLB_BASELINE" --version 2>/dev/null | head -2 | tr "\n" " "))"
    echo "- pinning: proxy on CPU $PROXY_CPU (one worker/thread), load and backends on CPU $LOAD_CPU"
    echo "- run: DURATION=$DURATION REPEATS=$REPEATS SCENARIOS=\"$SCENARIOS\" TARGETS=\"$TARGETS\" scripts/bench.sh$([ "$QUICK" = 1 ] && echo ' --quick')"
    echo "- backends: ringlb-bench respond --request 32 --response 64; sink; echo --proto udp"
} >"$WORK/meta.md"
python3 - "$RAW" "$WORK/meta.md" "$CLK_TCK" "$QUICK" >"$OUT" <<'PY'
import json, statistics, sys
raw, meta, clk, quick = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
rows = [json.loads(l) for l in open(raw) if l.strip()]
order_s, order_t = [], []
for r in rows:
    if r["scenario"] not in order_s: order_s.append(r["scenario"])
    if r["target"] not in order_t: order_t.append(r["target"])
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def metrics(r):
    res = r["result"] or {}
    lat = res.get("latency_us") or {}
    req, cpu_s = res.get("requests") or 0, r["cpu_ticks"] / clk
    bulk = res.get("gbit_s") is not None
    m = {"rate": None if bulk or r["scenario"].startswith("idle") else res.get("rate"), "p50": lat.get("p50"), "p99": lat.get("p99"),
         "p999": lat.get("p999"), "gbit": res.get("gbit_s"), "errors": res.get("errors"),
         "cpu_us": None, "cpu_s_gb": None, "rss_conn": None}
    if r["target"] != "direct":
        if res.get("gbit_s") is not None and res.get("bytes"):
            m["cpu_s_gb"] = cpu_s / (res["bytes"] / 1e9)
        elif req and not r["scenario"].startswith("idle"):
            m["cpu_us"] = cpu_s / req * 1e6
        if r["scenario"].startswith("idle") and req and r["rss_held_kb"]:
            m["rss_conn"] = (r["rss_held_kb"] - r["rss_before_kb"]) / req
    return m
agg = {}
for s in order_s:
    for t in order_t:
        rs = [metrics(r) for r in rows if r["scenario"] == s and r["target"] == t]
        if rs:
            agg[(s, t)] = {k: (sum(x[k] or 0 for x in rs) if k == "errors" else med([x[k] for x in rs]))
                           for k in rs[0]} | {"n": len(rs)}
PRIMARY = {"rr": ("rate", "req/s"), "connect": ("rate", "conn/s"), "rr25": ("p999", "p99.9 µs"),
           "rr50": ("p999", "p99.9 µs"), "conn25": ("p50", "p50 µs"), "bulk1": ("gbit", "Gbit/s"),
           "bulk4": ("gbit", "Gbit/s"), "udp-rr": ("rate", "datagrams/s"), "idle": ("rss_conn", "proxy KiB/conn"),
           "idle-warm": ("rss_conn", "proxy KiB/conn")}
def f(v, d=1):
    return "–" if v is None else f"{v:,.{d}f}"
print(f"# ringlb benchmark{' (quick run: indicative only)' if quick else ''}\n")
print(open(meta).read())
print("Values are medians over the repeats; errors are summed. CPU is the proxy's utime+stime "
      "(all threads) over the run; RSS/conn is the proxy's VmRSS growth while the idle "
      "connections are held, divided by them.\n")
for s in order_s:
    print(f"## {s}\n")
    print("| target | runs | rate /s | p50 µs | p99 µs | p99.9 µs | Gbit/s | proxy CPU µs/req | proxy CPU s/GB | RSS KiB/conn | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for t in order_t:
        a = agg.get((s, t))
        if not a:
            continue
        print(f"| {t} | {a['n']} | {f(a['rate'])} | {f(a['p50'])} | {f(a['p99'])} | {f(a['p999'])} | "
              f"{f(a['gbit'], 2)} | {f(a['cpu_us'], 2)} | {f(a['cpu_s_gb'], 3)} | {f(a['rss_conn'], 2)} | {a['errors']} |")
    print()
ringlbs = [t for t in order_t if t.startswith("ringlb")]
print("## Ratios (ringlb / other; higher is better for rates, lower for latency, CPU and memory)\n")
if not ringlbs:
    print("No ringlb column in this run (binary missing or not started): ratios not computed.\n")
else:
    print("| scenario | metric | ringlb variant | / haproxy | / nginx | / direct |")
    print("|---|---|---|---|---|---|")
    for s in order_s:
        key, unit = PRIMARY.get(s, ("rate", ""))
        for k, label in dict.fromkeys([(key, unit), ("p50", "p50 µs"), ("p99", "p99 µs"), ("cpu_us", "CPU µs/req")]):
            for v in ringlbs:
                a = agg.get((s, v), {}).get(k)
                if a is None:
                    continue
                cells = []
                for o in ("haproxy", "nginx", "direct"):
                    b = agg.get((s, o), {}).get(k)
                    cells.append(f"{a / b:.2f}" if a is not None and b else "–")
                print(f"| {s} | {label} | {v} | " + " | ".join(cells) + " |")
    print()
fixed = [s for s in order_s if s in ("rr25", "rr50", "conn25")]
if fixed and (fixed[0], "direct") in agg:
    print("## Added latency at fixed load (target − direct, open loop)\n")
    print("Each request is due on a fixed schedule; one due while the previous reply is late "
          "counts from when it was due (coordinated omission corrected).\n")
    print("| scenario | target | +p50 µs | +p99 µs | +p99.9 µs | +p99.9 / HAProxy's | +p99.9 / nginx's |")
    print("|---|---|---|---|---|---|---|")
    def added(s, t, k):
        a, d = agg.get((s, t), {}).get(k), agg.get((s, "direct"), {}).get(k)
        return None if a is None or d is None else a - d
    for s in fixed:
        for t in order_t:
            if t == "direct" or (s, t) not in agg:
                continue
            cells = []
            for o in ("haproxy", "nginx"):
                a, b = added(s, t, "p999"), added(s, o, "p999")
                cells.append(f"{a / b:.2f}" if a is not None and b and b > 0 else "–")
            print(f"| {s} | {t} | {f(added(s, t, 'p50'))} | {f(added(s, t, 'p99'))} | "
                  f"{f(added(s, t, 'p999'))} | " + " | ".join(cells) + " |")
    print()
hp = [r["haproxy_pipes"] for r in rows if r["target"] == "haproxy" and r["scenario"].startswith("bulk")]
pf = {t: max((r["pipe_fds"] for r in rows if r["target"] == t and r["scenario"].startswith("bulk")), default=0)
      for t in order_t if t != "direct"}
print("## Splice check\n")
if hp:
    print(f"- HAProxy stats `show info` after bulk runs (PipesUsed PipesFree): {', '.join(hp)} "
          "— a non-zero total means `option splice-auto` really spliced.")
print("- pipe fds open mid-bulk: " + ", ".join(f"{t} {n}" for t, n in pf.items()))
print()
print("## Commands\n")
for s in order_s:
    r = next(r for r in rows if r["scenario"] == s)
    print(f"- {s}: `taskset -c LOAD_CPU ringlb-bench {r['args']} --target ADDR --json`")
PY
log "wrote $OUT"
cat "$OUT"
