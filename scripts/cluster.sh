#!/usr/bin/env bash
# Several ringlb hosts behind one VIP, in network namespaces: BGP (BIRD 2) announcements
# that follow /ready, ECMP at the router through a resilient nexthop group, and the
# scenarios of docs/scale-out.md. Prints one line per scenario:
#   PASS|FAIL|SKIP  <scenario>  <figure>
#
# Topology (namespaces named rlbc-<pid>-*, deleted by name at exit):
#   client (10.100.0.2, client IPs 10.100.0.100+) -- router -- lb1..lbN (10.101.I.2)
#                                                        \--- backends (10.102.0.11..13)
# The VIP 10.200.0.1 is on each LB's lo (no dummy driver needed). Each LB runs ringlb
# (maglev listener "vip" on :80, source_hash listener "vip_sh" on :81, admin on its own
# 127.0.0.1:9901), BIRD 2 (eBGP to the router, BFD) and contrib/bgp/ringlb-announce,
# which enables BIRD's static VIP route while /ready is 200. The router runs BIRD 2
# (multipath: `merge paths on`, exported to table 100) and contrib/bgp/resilient-sync,
# which routes the VIP by a resilient nexthop group copied from that table, with
# fib_multipath_hash_policy=3 and fib_multipath_hash_fields=0x37 (the 5-tuple, so a
# flow's path is the same for every packet). Backends answer each connection with their
# name and the LB it came through, then echo lines; scripts/cluster-helper.py is both
# the backends and the client load.
#
# Needs root, ip, python3, bird and birdc (Debian: bird2), nft (for host_loss). Without
# them: "SKIP: reason" and exit 0; with CI=true a skip is a failure (exit 1).
#
# Usage: scripts/cluster.sh [SCENARIO...]   (default: all, in order:
#          contrib agreement drain add_back upgrade kill9 host_loss_bfd
#          [host_loss_nobfd ecmp_plain])
#   QUICK=1         shorter runs (CI, run by scripts/test.sh); the last two scenarios
#                   run only without QUICK
#   N=3             LB hosts
#   RINGLB_BIN=...  the ringlb binary (default target/$PROFILE/ringlb, built if needed)
#   PROFILE=debug|release
#   CLUSTER_KEEP=1  keep the work directory (configs, logs, reports)
#   CLUSTER_BOUND=S stop and fail the run past S seconds (default 420 with QUICK, else 900)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
QUICK=${QUICK:-0}
N=${N:-3}
PROFILE=${PROFILE:-debug}
HELPER=$ROOT/scripts/cluster-helper.py
ANNOUNCE=$ROOT/contrib/bgp/ringlb-announce
SYNC=$ROOT/contrib/bgp/resilient-sync
P=rlbc-$$
VIP=10.200.0.1
FAILED=0
T_START=$(date +%s)

if [ "$QUICK" = 1 ]; then
    NIPS=50; PORTS=4; LOAD_S=7; HELD=60; SHUTDOWN=3s; EXPLAIN_PER_IP=1
else
    NIPS=50; PORTS=20; LOAD_S=12; HELD=150; SHUTDOWN=5s; EXPLAIN_PER_IP=3
fi
CLIENT_IPS=$(seq -s, -f '10.100.0.%g' 100 $((100 + NIPS - 1)))

report() { printf '%-4s  %-16s  %s\n' "$1" "$2" "$3"; [ "$1" != FAIL ] || FAILED=$((FAILED + 1)); }
verdict() { if [ "$1" = 1 ]; then report PASS "$2" "$3"; else report FAIL "$2" "$3${4:+; $4}"; fi; }
now_ms() { date +%s%3N; }

# Why this cannot run here (empty when it can).
missing() {
    local c
    [ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)"; return; }
    for c in ip python3 bird birdc; do
        command -v "$c" >/dev/null || { echo "needs $c (Debian: apt-get install bird2)"; return; }
    done
    ip netns add "$P-probe" 2>/dev/null || { echo "cannot create a network namespace"; return; }
    ip -n "$P-probe" link set lo up  # a blackhole nexthop needs it
    if ! ip -n "$P-probe" nexthop add id 1 blackhole 2>/dev/null \
        || ! ip -n "$P-probe" nexthop add id 2 group 1 type resilient buckets 8 2>/dev/null; then
        echo "this kernel has no resilient nexthop groups (Linux >= 5.13)"
    fi
    ip netns del "$P-probe" 2>/dev/null || true
}
why=$(missing)
if [ -n "$why" ]; then
    if [ "${CI:-}" = true ]; then echo "FAIL: cluster.sh cannot run: $why, and CI=true: CI must run it" >&2; exit 1; fi
    echo "SKIP: cluster.sh: $why"
    exit 0
fi

if [ -n "${RINGLB_BIN:-}" ]; then
    LB=$RINGLB_BIN
else
    LB=$ROOT/target/$PROFILE/ringlb
    if [ "$PROFILE" = release ]; then cargo build --release -q --bins; else cargo build -q --bins; fi
fi
[ -x "$LB" ] || { echo "cluster.sh: no ringlb binary at $LB" >&2; exit 1; }

init_workdir ringlb-cluster
NSS=()
teardown() {
    local ns p pids=()
    # Everything in our namespaces was started by this script (an upgraded ringlb is the
    # child of the one it replaced); of PIDS, only those still our children: a PID of
    # ours that has exited may already name another process on a busy box.
    for ns in "${NSS[@]}"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do pids+=("$p"); done
    done
    for p in "${PIDS[@]}"; do
        [ "$(ps -o ppid= -p "$p" 2>/dev/null | tr -d ' ')" = "$$" ] && pids+=("$p")
    done
    stop_pids "${pids[@]}"
    for ns in "${NSS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    if [ "${CLUSTER_KEEP:-0}" = 1 ]; then echo "cluster: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap teardown EXIT

# Every wait below is bounded; this bounds the whole run as well (a stuck run fails).
BOUND=${CLUSTER_BOUND:-$([ "$QUICK" = 1 ] && echo 420 || echo 900)}
(
    for _ in $(seq "$BOUND"); do sleep 1; done
    echo "cluster: still running after ${BOUND} s: stopping (FAIL)" >&2
    kill -TERM $$
) &
PIDS+=($!)

in_ns() { local ns=$1; shift; ip netns exec "$P-$ns" "$@"; }

# ---------------------------------------------------------------- topology

ns_new() {
    ip netns add "$P-$1"; NSS+=("$P-$1")
    ip -n "$P-$1" link set lo up
    in_ns "$1" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
}

# link A IFA ADDR_A B IFB ADDR_B: a veth pair between namespaces A and B.
link() {
    ip -n "$P-$1" link add "$2" type veth peer name "$5" netns "$P-$4"
    ip -n "$P-$1" addr add "$3" dev "$2"; ip -n "$P-$1" link set "$2" up
    ip -n "$P-$4" addr add "$6" dev "$5"; ip -n "$P-$4" link set "$5" up
}

# BFD and BGP timers shared by both sides. BFD at 300 ms x 3 (faster flapped on this
# loaded 2-core box); hold 9 s is what a session without BFD takes to notice a silent
# peer. Short retry timers so a session comes back within seconds after a host returns.
bgp_timers='hold time 9; keepalive time 3; connect retry time 1; connect delay time 1; error wait time 1, 5;'
bfd_iface() { echo "protocol bfd { interface \"$1\" { min rx interval 300 ms; min tx interval 300 ms; multiplier 3; }; }"; }

router_conf() { # router_conf [LB_INDEX_WITHOUT_BFD]
    local i
    cat <<EOF
log stderr all;
router id 10.100.0.1;
protocol device { scan time 10; }
$(bfd_iface "r-lb*")
# Every LB's VIP route, merged into one multipath route, into table 100 (resilient-sync
# copies it into a resilient nexthop group in the main table).
protocol kernel vipfib { kernel table 100; merge paths on; ipv4 { import none; export all; }; }
template bgp lbs {
    local as 65000;
    $bgp_timers
    ipv4 { import where net = $VIP/32; export none; };
}
EOF
    for i in $(seq "$N"); do
        echo "protocol bgp lb$i from lbs { neighbor 10.101.$i.2 as 65001; source address 10.101.$i.1; bfd $([ "${1:-}" = "$i" ] && echo off || echo on); }"
    done
}

lb_conf() { # lb_conf I
    cat <<EOF
log stderr all;
router id 10.101.$1.2;
protocol device { scan time 10; }
$(bfd_iface l0)
# Starts disabled: ringlb-announce enables it once /ready answers 200.
protocol static vip { disabled; ipv4; route $VIP/32 via "lo"; }
protocol bgp uplink {
    local 10.101.$1.2 as 65001;
    neighbor 10.101.$1.1 as 65000;
    $bgp_timers
    bfd on;
    ipv4 { import none; export where proto = "vip"; };
}
EOF
}

# ringlb config of LB I: the same backend set on every LB, written in reverse order on lb2.
BACKENDS=(10.102.0.11:8080 10.102.0.12:8080 10.102.0.13:8080)
ringlb_conf() {
    local order=("${BACKENDS[@]}") b port
    [ "$1" != 2 ] || order=("${BACKENDS[2]}" "${BACKENDS[1]}" "${BACKENDS[0]}")
    cat <<EOF
workers: 1
admin: 127.0.0.1:9901
control: $WORK/lb$1.sock
shutdown_timeout: $SHUTDOWN
withdraw_delay: 2s
access_log: false
listeners:
EOF
    for port in 80 81; do
        printf '  - name: %s\n    bind: %s:%s\n    algorithm: %s\n    backends:\n' \
            "$([ $port = 80 ] && echo vip || echo vip_sh)" "$VIP" "$port" \
            "$([ $port = 80 ] && echo maglev || echo source_hash)"
        for b in "${order[@]}"; do printf '      - addr: %s\n' "$b"; done
    done
}

declare -A LBPID=()
start_ringlb() { # start_ringlb I: waits for `ready`
    local i=$1 log=$WORK/ringlb$1.log
    ip netns exec "$P-lb$i" "$LB" run --config "$WORK/lb$i.yaml" >/dev/null 2>>"$log" &
    LBPID[$i]=$!; PIDS+=($!)
    for _ in $(seq 300); do grep -q '] ready: ' "$log" 2>/dev/null && return 0; sleep 0.05; done
    echo "cluster: ringlb on lb$i did not start" >&2; cat "$log" >&2; exit 1
}

build() {
    local i
    ns_new client; ns_new router; ns_new backends
    in_ns router sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=3 \
        net.ipv4.fib_multipath_hash_fields=0x37
    link router r-c 10.100.0.1/24 client c0 10.100.0.2/24
    for a in ${CLIENT_IPS//,/ }; do ip -n "$P-client" addr add "$a/24" dev c0; done
    ip -n "$P-client" route add default via 10.100.0.1
    link router r-b 10.102.0.1/24 backends b0 10.102.0.11/24
    ip -n "$P-backends" addr add 10.102.0.12/24 dev b0
    ip -n "$P-backends" addr add 10.102.0.13/24 dev b0
    ip -n "$P-backends" route add default via 10.102.0.1
    ip netns exec "$P-backends" python3 "$HELPER" backends 10.102.0.11:8080=be1 10.102.0.12:8080=be2 \
        10.102.0.13:8080=be3 >"$WORK/backends.log" 2>&1 &
    PIDS+=($!)

    router_conf >"$WORK/bird-router.conf"
    ip netns exec "$P-router" bird -f -c "$WORK/bird-router.conf" -s "$WORK/bird-router.ctl" \
        -P "$WORK/bird-router.pid" 2>"$WORK/bird-router.log" &
    PIDS+=($!)
    ip netns exec "$P-router" "$SYNC" $VIP/32 --table 100 --idle-timer 2 2>"$WORK/sync.log" &
    SYNCPID=$!; PIDS+=($!)

    for i in $(seq "$N"); do
        ns_new "lb$i"
        link router "r-lb$i" "10.101.$i.1/24" "lb$i" l0 "10.101.$i.2/24"
        ip -n "$P-lb$i" addr add $VIP/32 dev lo
        ip -n "$P-lb$i" route add default via "10.101.$i.1"
        lb_conf "$i" >"$WORK/bird-lb$i.conf"
        ip netns exec "$P-lb$i" bird -f -c "$WORK/bird-lb$i.conf" -s "$WORK/bird-lb$i.ctl" \
            -P "$WORK/bird-lb$i.pid" 2>"$WORK/bird-lb$i.log" &
        PIDS+=($!)
        ringlb_conf "$i" >"$WORK/lb$i.yaml"
        start_ringlb "$i"
        ip netns exec "$P-lb$i" python3 "$ANNOUNCE" --url http://127.0.0.1:9901/ready \
            --socket "$WORK/bird-lb$i.ctl" --protocol vip 2>"$WORK/announce-lb$i.log" &
        PIDS+=($!)
    done
    for _ in $(seq 300); do grep -q 'listening' "$WORK/backends.log" && break; sleep 0.05; done
}

# Paths of the VIP route the router forwards by (members of the resilient group).
paths() {
    local n
    n=$(ip -n "$P-router" nexthop show id 1000 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "group") print split($(i + 1), a, "/")}')
    echo "${n:-0}"
}

# wait_paths COUNT BOUND_S: until the router's group has COUNT members; prints the ms it
# took, returns 1 past BOUND_S.
wait_paths() {
    local t0; t0=$(now_ms)
    while [ "$(paths)" != "$1" ]; do
        [ $(($(now_ms) - t0)) -lt $(($2 * 1000)) ] || return 1
        sleep 0.01
    done
    echo $(($(now_ms) - t0))
}

# all_up: every LB's ringlb running and in the router's group (a scenario may have
# left one stopped).
all_up() {
    local i
    for i in $(seq "$N"); do kill -0 "${LBPID[$i]}" 2>/dev/null || start_ringlb "$i"; done
    wait_paths "$N" 30 >/dev/null || { echo "cluster: the router does not have $N paths" >&2; return 1; }
}

# load SECONDS NAME [EXTRA...]: the client load in the background; returns once its held
# connections are open. Sets LOADPID; the report goes to $WORK/NAME.json.
load() {
    local secs=$1 name=$2; shift 2
    rm -f "$WORK/$name.ready"
    ip netns exec "$P-client" python3 "$HELPER" load --vip $VIP --port 80 --ips "$CLIENT_IPS" \
        --duration "$secs" --held "$HELD" --ready-file "$WORK/$name.ready" "$@" \
        >"$WORK/$name.json" 2>"$WORK/$name.err" &
    LOADPID=$!; PIDS+=($!)
    for _ in $(seq 600); do [ -s "$WORK/$name.ready" ] && return 0; sleep 0.05; done
    echo "cluster: load $name did not start" >&2; cat "$WORK/$name.err" >&2; return 1
}

# q NAME PYEXPR: evaluate PYEXPR over the load report r of NAME (helpers: lb(i) is LB i's
# address, held(pred), failed()).
q() {
    python3 - "$WORK/$1.json" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
def lb(i): return "10.101.%s.2" % i
def held(pred=lambda h: True): return sum(1 for h in r["held"] if pred(h))
def failed(): return sum(r["failed"].values())
print(eval(sys.argv[2]))
PY
}


# ---------------------------------------------------------------- scenarios

# The example configs of contrib/bgp parse (bird -p; vtysh --dryrun when FRR is here).
scenario_contrib() {
    local ok=1 checked="" f
    for f in contrib/bgp/bird-lb.conf contrib/bgp/bird-router.conf; do
        bird -p -c "$f" >"$WORK/contrib.log" 2>&1 || { ok=0; checked+="$f: $(cat "$WORK/contrib.log"); "; }
    done
    checked+="bird -p: 2 files"
    if command -v vtysh >/dev/null; then
        for f in contrib/bgp/frr-lb.conf contrib/bgp/frr-router.conf; do
            vtysh --dryrun -f "$f" >"$WORK/contrib.log" 2>&1 || { ok=0; checked+="; $f: $(cat "$WORK/contrib.log")"; }
        done
        checked+=", vtysh --dryrun: 2 files"
    else
        checked+=", FRR files not checked (no vtysh)"
    fi
    verdict $ok contrib "$checked"
}

scenario_agreement() {
    local port listener f ok=1 detail="" ips one flows n_explain=0 mismatch=0 fps i
    all_up || return 1
    for port in 80 81; do
        listener=$([ $port = 80 ] && echo vip || echo vip_sh)
        f=$WORK/agree-$port.json
        in_ns client python3 "$HELPER" agree --vip $VIP --port $port --ips "$CLIENT_IPS" \
            --ports "$PORTS" >"$f"
        ips=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ips"])' "$f")
        one=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ips_one_backend"])' "$f")
        flows=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["flows"]))' "$f")
        lbs=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["per_lb"]))' "$f")
        [ "$one" = "$NIPS" ] && [ "$ips" = "$NIPS" ] && [ "$lbs" = "$N" ] || { ok=0; detail+="$listener: $one/$ips IPs on one backend through $lbs LBs; "; }
        detail_l[$port]="$listener $one/$NIPS IPs one backend ($flows flows via $lbs LBs)"
        # explain on every instance, for EXPLAIN_PER_IP flows of each client IP (maglev and
        # source_hash hash the client address, so the other flows of an IP are covered by
        # "one backend per IP" above); ~0.1 s a run, hence not every flow.
        python3 -c '
import json, sys
seen = {}
for ip, sport, name, lb in json.load(open(sys.argv[1]))["flows"]:
    seen[ip] = seen.get(ip, 0) + 1
    if seen[ip] <= int(sys.argv[2]): print(ip, sport, name)' "$f" "$EXPLAIN_PER_IP" >"$WORK/explain-$port.in"
        for i in $(seq "$N"); do
            while read -r ip sport name; do
                echo "$name $("$LB" explain --config "$WORK/lb$i.yaml" --listener "$listener" --client "$ip:$sport" 2>&1 | head -1)"
            done <"$WORK/explain-$port.in"
        done >"$WORK/explain-$port.out"
        n_explain=$((n_explain + $(grep -c . "$WORK/explain-$port.out")))
        mismatch=$((mismatch + $(awk '{ want = "10.102.0.1" substr($1, 3) ":8080"; if ($NF != want) n++ } END { print n + 0 }' "$WORK/explain-$port.out")))
        fps=$(for i in $(seq "$N"); do
            in_ns "lb$i" python3 -c '
import json, sys, urllib.request
s = json.load(urllib.request.urlopen("http://127.0.0.1:9901/status", timeout=5))
def find(o):
    if isinstance(o, dict):
        if o.get("name") == sys.argv[1] and "table_fingerprint" in o: return o["table_fingerprint"]
        for v in o.values():
            x = find(v)
            if x: return x
    if isinstance(o, list):
        for v in o:
            x = find(v)
            if x: return x
print(find(s))' "$listener"
        done | sort -u)
        [ "$(echo "$fps" | wc -l)" = 1 ] && [ "$fps" != None ] || { ok=0; detail+="$listener fingerprints differ: $(echo $fps); "; }
        fp_l[$port]=$fps
    done
    [ "$mismatch" = 0 ] || { ok=0; detail+="explain disagreed on $mismatch of $n_explain; "; }
    verdict $ok agreement "${detail_l[80]}; ${detail_l[81]}; explain matched $((n_explain - mismatch))/$n_explain on $N instances (lb2 lists backends reversed); fingerprints equal per listener (${fp_l[80]:0:12}…, ${fp_l[81]:0:12}…)" "$detail"
}
declare -A detail_l=() fp_l=()

# Held connections of LB I that ended, by how (kind:count).
ends_of() { q "$1" "','.join(sorted('%s:%d' % (k, sum(1 for h in r['held'] if h[0] == lb($2) and h[2] == k)) for k in set(h[2] for h in r['held'] if h[0] == lb($2))))"; }

scenario_drain() {
    local i=1 t0 twd tgone deadline ok=1 own others failed moved cut open stranded
    all_up || return 1
    load "$LOAD_S" drain
    sleep 1
    t0=$(now_ms)
    kill -TERM "${LBPID[$i]}"
    twd=$(wait_paths $((N - 1)) 10) || twd=-1
    for _ in $(seq 400); do kill -0 "${LBPID[$i]}" 2>/dev/null || break; sleep 0.05; done
    tgone=$(($(now_ms) - t0)); wait "${LBPID[$i]}" 2>/dev/null || true
    wait "$LOADPID" || true
    # Deadline: withdraw_delay (2 s) + shutdown_timeout after SIGTERM.
    deadline=$((t0 + 2000 + ${SHUTDOWN%s} * 1000))
    failed=$(q drain "failed()")
    own=$(q drain "held(lambda h: h[0] == lb(1))")
    others=$(q drain "held(lambda h: h[0] != lb(1) and h[2] != 'open')")
    moved=$(q drain "held(lambda h: h[0] == lb(1) and h[2] != 'open' and h[3] < $deadline - 200)")
    cut=$(q drain "held(lambda h: h[0] == lb(1) and h[2] != 'open' and h[3] >= $deadline - 200)")
    open=$(q drain "held(lambda h: h[0] == lb(1) and h[2] == 'open')")
    [ "$failed" = 0 ] && [ "$others" = 0 ] && [ "$twd" != -1 ] && [ "$open" = 0 ] || ok=0
    # What lb1 itself saw: the connections whose packets went elsewhere stay open there
    # until the deadline cuts them.
    stranded=$(grep -o 'shutdown: [0-9]* connection(s) still open' "$WORK/ringlb1.log" | tail -1 | awk '{print $2}')
    verdict $ok drain "SIGTERM lb1: router dropped it after ${twd} ms, process gone after ${tgone} ms; $(q drain "r['ok']") connects ok, $failed failed $(q drain "r['failed']"); held on other LBs ended: $others of $(q drain "held(lambda h: h[0] != lb(1))"); lb1's $own held: $moved reset before the deadline (after the withdrawal their packets hash to another LB, which resets them), $cut cut at the drain deadline, $open still open; lb1 cut ${stranded:-0} stranded at its deadline"
}

scenario_add_back() {
    local i=1 t0 tpath tfirst ok=1 others
    if kill -0 "${LBPID[$i]}" 2>/dev/null; then  # run on its own: take lb1 out first
        kill -TERM "${LBPID[$i]}"; wait "${LBPID[$i]}" 2>/dev/null || true
    fi
    wait_paths $((N - 1)) 30 >/dev/null || return 1
    load $((LOAD_S + 4)) addback --threads 2 --pace 0.1
    t0=$(now_ms)
    start_ringlb $i
    tpath=$(wait_paths "$N" 20) || tpath=-1
    wait "$LOADPID" || true
    tfirst=$(q addback "r['per_lb_first_ms'].get(lb(1), 0) - $t0")
    others=$(q addback "held(lambda h: h[2] != 'open')")
    [ "$tpath" != -1 ] && [ "$others" = 0 ] && [ "$(q addback "failed()")" = 0 ] && [ "$tfirst" -gt 0 ] || ok=0
    verdict $ok add_back "lb1 restarted: in the router's group ${tpath} ms after its ready, first new connection on it ${tfirst} ms after its start ($(q addback "r['per_lb'].get(lb(1), 0)") of $(q addback "r['ok']") connects); held connections disturbed: $others of $(q addback "held()"), failed connects $(q addback "failed()")"
}

scenario_upgrade() {
    local i=2 ok=1 out lines alines changes withdrawn
    all_up || return 1
    load "$LOAD_S" upgrade
    sleep 1
    lines=$(wc -l <"$WORK/sync.log")
    alines=$(wc -l <"$WORK/announce-lb$i.log")
    out=$(in_ns "lb$i" "$LB" upgrade --config "$WORK/lb$i.yaml" 2>&1) || { ok=0; }
    wait "$LOADPID" || true
    # The new process is the old one's child: found by the binary's name in lb2's namespace.
    LBPID[$i]=$(for p in $(ip netns pids "$P-lb$i"); do
        [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$(readlink -f "$LB")" ] && echo "$p"; done | head -1)
    PIDS+=("${LBPID[$i]}")
    changes=$(tail -n +$((lines + 1)) "$WORK/sync.log" | grep -c 'path(s)' || true)
    withdrawn=$(tail -n +$((alines + 1)) "$WORK/announce-lb$i.log" | grep -c withdraw || true)
    [ "$(q upgrade "failed()")" = 0 ] && [ "$(q upgrade "held(lambda h: h[2] != 'open')")" = 0 ] \
        && [ "$changes" = 0 ] && [ "$withdrawn" = 0 ] || ok=0
    verdict $ok upgrade "ringlb upgrade on lb2: $(q upgrade "r['ok']") connects ok, $(q upgrade "failed()") failed; held: $(q upgrade "held(lambda h: h[2] != 'open')") of $(q upgrade "held()") ended ($(q upgrade "held(lambda h: h[0] == lb(2))") on lb2); route changes at the router: $changes; withdrawals by the agent: $withdrawn" "$(echo "$out" | tail -1)"
}

scenario_kill9() {
    local i=$N t0 twd ok=1 own lost survivors
    all_up || return 1
    load "$LOAD_S" kill9
    sleep 1
    t0=$(now_ms)
    kill -9 "${LBPID[$i]}"; wait "${LBPID[$i]}" 2>/dev/null || true
    twd=$(wait_paths $((N - 1)) 10) || twd=-1
    wait "$LOADPID" || true
    survivors=$(q kill9 "held(lambda h: h[0] != lb($i) and h[2] != 'open')")
    own=$(q kill9 "held(lambda h: h[0] == lb($i))")
    lost=$(q kill9 "held(lambda h: h[0] == lb($i) and h[2] != 'open')")
    [ "$twd" != -1 ] && [ "$survivors" = 0 ] || ok=0
    verdict $ok kill9 "kill -9 ringlb on lb$i: router dropped it after ${twd} ms (agent polling /ready every 200 ms); failed connects $(q kill9 "failed()") of $(q kill9 "r['ok'] + failed()") $(q kill9 "r['failed']") (sent to lb$i before the withdrawal); held on survivors ended: $survivors of $(q kill9 "held(lambda h: h[0] != lb($i))"); lb$i's own: $lost of $own lost"
    start_ringlb "$i"
    wait_paths "$N" 20 >/dev/null || true
}

# host_loss NAME BFD(on|off): a silent host failure of lb$N (a frozen or unplugged host):
# every packet in or out of its namespace dropped (nft); the router notices by BFD or by
# the BGP hold time. Then the packets flow again and the host comes back.
host_loss() {
    local name=$1 bfd=$2 i=$N t0 twd ok=1 survivors
    command -v nft >/dev/null || { if [ "${CI:-}" = true ]; then report FAIL "$name" "needs nft, and CI=true"; else report SKIP "$name" "needs nft"; fi; return; }
    all_up || return 1
    if [ "$bfd" = off ]; then
        router_conf "$i" >"$WORK/bird-router.conf"
        birdc -s "$WORK/bird-router.ctl" configure >/dev/null
        sleep 1; wait_paths "$N" 30 >/dev/null || true
    fi
    load $((LOAD_S + 8)) "$name" --timeout 3
    sleep 1
    t0=$(now_ms)
    in_ns "lb$i" nft -f - <<'EOF'
table inet rlbc_freeze {
    chain in { type filter hook input priority -300; policy drop; }
    chain out { type filter hook output priority -300; policy drop; }
}
EOF
    twd=$(wait_paths $((N - 1)) 30) || twd=-1
    wait "$LOADPID" || true
    survivors=$(q "$name" "held(lambda h: h[0] != lb($i) and h[2] != 'open')")
    [ "$twd" != -1 ] && [ "$survivors" = 0 ] || ok=0
    verdict $ok "$name" "lb$i frozen (all packets dropped), BFD $bfd: router dropped it after ${twd} ms; failed connects $(q "$name" "failed()") of $(q "$name" "r['ok'] + failed()") $(q "$name" "r['failed']"), $(q "$name" "r['slow']") took over 0.9 s (SYN retransmitted after the move; slowest $(q "$name" "r['max_ms']") ms); held on survivors ended: $survivors of $(q "$name" "held(lambda h: h[0] != lb($i))"); lb$i's held: $(q "$name" "held(lambda h: h[0] == lb($i) and h[2] != 'open')") of $(q "$name" "held(lambda h: h[0] == lb($i))") ended by the end of the run"
    in_ns "lb$i" nft delete table inet rlbc_freeze
    if [ "$bfd" = off ]; then
        router_conf >"$WORK/bird-router.conf"
        birdc -s "$WORK/bird-router.ctl" configure >/dev/null
    fi
    wait_paths "$N" 60 >/dev/null || echo "cluster: lb$i did not come back after $name" >&2
}
scenario_host_loss_bfd() { host_loss host_loss_bfd on; }
scenario_host_loss_nobfd() { host_loss host_loss_nobfd off; }

# The same kill -9 with a plain multipath route at the router (what BIRD installs), for
# comparison: flows of the surviving LBs move too.
scenario_ecmp_plain() {
    local i=$N survivors
    all_up || return 1
    kill -TERM "$SYNCPID"; wait "$SYNCPID" 2>/dev/null || true
    ip netns exec "$P-router" "$SYNC" $VIP/32 --table 100 --group 1000 --plain 2>>"$WORK/sync.log" &
    SYNCPID=$!; PIDS+=($!)
    sleep 0.5
    load "$LOAD_S" ecmp
    sleep 1
    kill -9 "${LBPID[$i]}"; wait "${LBPID[$i]}" 2>/dev/null || true
    wait "$LOADPID" || true
    survivors=$(q ecmp "held(lambda h: h[0] != lb($i) and h[2] != 'open')")
    report INFO ecmp_plain "plain ECMP route, kill -9 ringlb on lb$i: held on survivors ended: $survivors of $(q ecmp "held(lambda h: h[0] != lb($i))") (moved to another LB, reset); failed connects $(q ecmp "failed()")"
    start_ringlb "$i"
    # Back to the resilient group for whatever runs next.
    kill -TERM "$SYNCPID"; wait "$SYNCPID" 2>/dev/null || true
    ip netns exec "$P-router" "$SYNC" $VIP/32 --table 100 --idle-timer 2 2>>"$WORK/sync.log" &
    SYNCPID=$!; PIDS+=($!)
    wait_paths "$N" 30 >/dev/null || echo "cluster: the resilient group did not come back after ecmp_plain" >&2
}

# ---------------------------------------------------------------- run

build
if ! t=$(wait_paths "$N" 60); then
    echo "cluster: the router did not get $N paths to $VIP within 60 s" >&2
    tail -n 5 "$WORK"/bird-*.log "$WORK"/announce-*.log "$WORK/sync.log" >&2
    exit 1
fi
report INFO topology "$N LBs up: router has $N paths to $VIP ${t} ms after the last ringlb was ready (BIRD 2 $(bird --version 2>&1 | awk '{print $NF}'), $(basename "$(dirname "$LB")") ringlb)"

if [ $# -gt 0 ]; then
    scenarios=("$@")
elif [ "$QUICK" = 1 ]; then
    scenarios=(contrib agreement drain add_back upgrade kill9 host_loss_bfd)
else
    scenarios=(contrib agreement drain add_back upgrade kill9 host_loss_bfd host_loss_nobfd ecmp_plain)
fi
for s in "${scenarios[@]}"; do
    declare -f "scenario_$s" >/dev/null || { echo "cluster: no scenario $s" >&2; exit 2; }
    "scenario_$s" || report FAIL "$s" "aborted"
done
echo "cluster: ${#scenarios[@]} scenario(s), $FAILED failed, $(($(date +%s) - T_START)) s"
[ "$FAILED" = 0 ]
