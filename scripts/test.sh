#!/usr/bin/env bash
# The one test entry point: formatting, lints, every test, config checks, bench smoke.
# Usage: scripts/test.sh            (from anywhere inside the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build binaries (integration tests spawn them)"
cargo build --workspace --locked --bins

step "cargo test (unit + integration on 127.0.0.1)"
# Integration tests spawn ringlb processes; two at a time keeps a 2-core box responsive.
cargo test --workspace --locked -- --test-threads=2

step "ringlb check over configs/"
for f in configs/*.yaml; do
    target/debug/ringlb check --config "$f"
done

step "documentation builds"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

if [ -x scripts/bench-smoke.sh ]; then
    step "bench tool smoke"
    scripts/bench-smoke.sh
fi

step "all checks passed"
