#!/usr/bin/env bash
# Builds ringlb's packages from this checkout (docs/packaging.md):
#   target/packages/ringlb_<version>-1_<arch>.deb        (cargo-deb)
#   target/packages/ringlb-<version>-1.<arch>.rpm        (cargo-generate-rpm)
# and prints where they are. PACKAGE_PROFILE=dev packages the debug build instead of the
# `dist` profile, quickly, for tests (scripts/test.sh); never ship that. No static (musl)
# build: tokio-uring 0.5 does not compile for musl (docs/packaging.md).
#
# cargo-deb and cargo-generate-rpm are installed (pinned versions, `cargo install --locked`)
# when missing. Idempotent: a second run rebuilds only what changed and replaces the
# packages. The man pages and shell completions are generated from the binary being
# packaged (`ringlb generate`) into packaging/generated/, which git ignores.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

step() { printf '\n==> %s\n' "$*"; }

# `tool` is the cargo subcommand's binary; installed (again) unless that exact version is.
ensure_tool() {
    local tool="$1" crate="$2" version="$3"
    if "$tool" --version 2>/dev/null | grep -qx "$tool $version"; then
        return
    fi
    step "cargo install --locked $crate $version"
    cargo install --locked "$crate" --version "$version"
}

ensure_tool cargo-deb cargo-deb "$CARGO_DEB_VERSION"
ensure_tool cargo-generate-rpm cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"

target_dir="${CARGO_TARGET_DIR:-target}"
out="$target_dir/packages"
generated=packaging/generated
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)

# The `dist` profile (Cargo.toml): release without line tables. cargo-deb and
# cargo-generate-rpm map the assets' `target/release/` to it.
profile="${PACKAGE_PROFILE:-dist}"
profile_dir="$profile"
deb_flags=()
rpm_flags=()
if [ "$profile" = dev ]; then
    profile_dir=debug
    # A debug binary is large (80 MB); compressing it well takes minutes, and this
    # package is only for tests.
    deb_flags=(--fast)
    rpm_flags=(--payload-compress none)
fi
step "cargo build --profile $profile"
cargo build --profile "$profile" --locked -p ringlb --bin ringlb
bin="$target_dir/$profile_dir/ringlb"
"$bin" --version

step "man pages and shell completions (ringlb generate)"
rm -rf "$generated"
"$bin" generate man "$generated/man" >/dev/null
# Debian policy and RPM both want man pages compressed; -n keeps the output reproducible.
gzip -9n "$generated"/man/*
"$bin" generate completions "$generated/completions" >/dev/null
ls "$generated"/man "$generated"/completions

mkdir -p "$out"
step "cargo deb"
rm -f "$out"/ringlb_*.deb
cargo deb -p ringlb --profile "$profile" --no-build --locked "${deb_flags[@]}" --output "$out/"

step "cargo generate-rpm"
rm -f "$out"/ringlb-*.rpm
cargo generate-rpm -p crates/ringlb --profile "$profile" "${rpm_flags[@]}" --output "$out/"

step "packages"
ls -l "$out"/ringlb_*.deb "$out"/ringlb-*.rpm
for f in "$out"/ringlb_*.deb "$out"/ringlb-*.rpm; do
    realpath "$f"
done
