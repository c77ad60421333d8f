#!/usr/bin/env bash
# The one test entry point: formatting, lints, every test, config checks, the monitoring
# kit (promtool), bench smoke, the chaos suite and the several-hosts suite (quick runs).
# Usage: scripts/test.sh                      (from anywhere inside the checkout)
#        scripts/test.sh --check-skips FILE   (only check a skip log, see below)
#
# Skipped tests: a test that cannot run here (`skip_unless!` in crates/testkit) appends
# `<test>\t<reason>\t<requirement>` to the file named by RINGLB_SKIP_LOG. After the tests
# this script lists every skip, and fails if a skip's requirement is in fact available
# here (root, a network namespace, io_uring, a command, an architecture): such a test
# could have run, and its `ok` would have been a vacuous pass.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# Whether what a skip says it needed is available on this machine. Each probe is made
# here, independently of the test's own: the point is to catch a test that skipped when
# it did not have to.
io_uring_works() {
    command -v python3 >/dev/null 2>&1 || return 2
    python3 - <<'PY'
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
fd = libc.syscall(425, 1, params)  # io_uring_setup: 425 on every architecture
if fd < 0:
    sys.exit(1)
os.close(fd)
PY
}

netns_works() {
    local ns="ringlb-skipcheck-$$"
    command -v ip >/dev/null 2>&1 || return 1
    ip netns add "$ns" >/dev/null 2>&1 || return 1
    ip netns del "$ns" >/dev/null 2>&1 || true
}

# 0: available (the skip was wrong), 1: not available (the skip is fine),
# 2: cannot be checked.
requirement_available() {
    case "$1" in
        root) [ "$(id -u)" -eq 0 ] ;;
        netns) netns_works ;;
        io_uring) io_uring_works ;;
        command:*) command -v "${1#command:}" >/dev/null 2>&1 ;;
        arch:*) [[ ",${1#arch:}," == *",$(uname -m),"* ]] ;;
        *) return 2 ;;
    esac
}

# Prints the skip summary of FILE; returns non-zero if any skip was unwarranted.
check_skips() {
    local log="$1" n=0 bad=0 test reason kind verdict rc
    [ -f "$log" ] && n=$(grep -c . "$log" || true)
    if [ "$n" -eq 0 ]; then
        echo "skipped tests: none"
        return 0
    fi
    echo "skipped tests ($n):"
    while IFS=$'\t' read -r test reason kind; do
        [ -n "$test" ] || continue
        rc=0
        requirement_available "$kind" || rc=$?
        case "$rc" in
            0) verdict="UNEXPECTED: $kind is available here"; bad=$((bad + 1)) ;;
            1) verdict="ok: no $kind here" ;;
            *)
                if [ "${CI:-}" = "true" ]; then
                    verdict="UNEXPECTED: CI cannot check requirement '$kind'"
                    bad=$((bad + 1))
                else
                    verdict="unchecked: requirement '$kind'"
                fi
                ;;
        esac
        printf '  %s\t%s\t%s\t[%s]\n' "$test" "$reason" "$kind" "$verdict"
    done <"$log"
    if [ "$bad" -gt 0 ]; then
        echo "error: $bad test(s) skipped although this environment can run them;" \
            "an ok from them proves nothing" >&2
        return 1
    fi
}

if [ "${1:-}" = "--check-skips" ]; then
    check_skips "${2:?usage: scripts/test.sh --check-skips FILE}"
    exit
fi

skip_log=$(mktemp "${TMPDIR:-/tmp}/ringlb-skips.XXXXXX")
export RINGLB_SKIP_LOG="$skip_log"
tests_ran=false
finish() {
    local rc=$?
    if [ "$tests_ran" = true ]; then
        step "skip summary"
        check_skips "$skip_log" || rc=1
    fi
    rm -f "$skip_log"
    exit "$rc"
}
trap finish EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build binaries (integration tests spawn them)"
cargo build --workspace --locked --bins

step "cargo test (unit + integration on 127.0.0.1)"
tests_ran=true
# Integration tests spawn ringlb processes; two at a time keeps a 2-core box responsive.
cargo test --workspace --locked -- --test-threads=2

step "skipped tests"
# Fail now rather than after the slower steps; the summary is printed again at the end.
check_skips "$skip_log"

step "ringlb check over configs/ and the packaged example"
for f in configs/*.yaml packaging/ringlb.yaml; do
    target/debug/ringlb check --config "$f"
done

step "monitoring kit: contrib/ rules and dashboard (promtool; scripts/check-monitoring.sh)"
scripts/check-monitoring.sh
# The .deb installed and removed with dpkg, the .rpm inspected (docs/packaging.md). Built
# from the debug binary above: a release build of its own would take minutes.
if [ "$(id -u)" -eq 0 ] && command -v dpkg >/dev/null 2>&1; then
    step "packages (scripts/package-test.sh on a debug-build package)"
    PACKAGE_PROFILE=dev scripts/package.sh
    scripts/package-test.sh
else
    step "packages: not tested (scripts/package-test.sh needs root and dpkg)"
fi

step "documentation builds"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

if [ -x scripts/bench-smoke.sh ]; then
    step "bench tool smoke"
    scripts/bench-smoke.sh
fi

step "chaos suite, quick (faults on loopback: scripts/chaos.sh)"
QUICK=1 scripts/chaos.sh

# Needs root and BIRD 2: elsewhere it prints "SKIP: reason" and exits 0; with CI=true
# that skip is a failure.
step "several hosts, quick (BGP + ECMP in network namespaces: scripts/cluster.sh)"
QUICK=1 scripts/cluster.sh

step "all checks passed"
