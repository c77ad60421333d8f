#!/usr/bin/env bash
# Installs the .deb from scripts/package.sh on this machine and removes it again, checking
# what a Debian host sees (docs/packaging.md); then inspects the .rpm. Needs root.
#   scripts/package-test.sh            the packages in target/packages/
#   PACKAGE=1 scripts/package-test.sh  build them first (scripts/package.sh)
#
# Checks: dpkg -i installs the binary, unit, conffile, man pages, completions and the
# ringlb user; the installed example passes `ringlb check`; `ringlb doctor` runs; the
# service user can run ringlb with the packaged directories (a copy of the example on
# ephemeral ports, since this machine may be serving the example's ports); the unit passes
# `systemd-analyze verify` (systemd is installed for that if missing; it need not be PID 1)
# and its security exposure stays below 3.0; man pages render without warnings; a second
# dpkg -i (an upgrade) works; dpkg -r keeps only the conffile; dpkg -P leaves nothing but
# the ringlb user (as Debian does). The .rpm: its files, config files, scriptlets and
# requirements (with the rpm tool, installed for that if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
fail() {
    echo "package-test: FAIL: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || {
    echo "package-test: needs root (dpkg -i)" >&2
    exit 2
}
command -v dpkg >/dev/null || {
    echo "package-test: needs dpkg (a Debian-like host)" >&2
    exit 2
}
if dpkg-query -W -f='${Status}' ringlb 2>/dev/null | grep -q installed; then
    echo "package-test: a ringlb package is installed here already; it is not touched (dpkg -P ringlb first)" >&2
    exit 2
fi

if [ "${PACKAGE:-0}" = 1 ]; then
    scripts/package.sh
fi
out="${CARGO_TARGET_DIR:-target}/packages"
deb=$(ls -t "$out"/ringlb_*.deb 2>/dev/null | head -1)
rpm_file=$(ls -t "$out"/ringlb-*.rpm 2>/dev/null | head -1)
[ -n "$deb" ] && [ -n "$rpm_file" ] || fail "no packages in $out: run scripts/package.sh (or PACKAGE=1)"

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; }
}

run_pid=""
installed=false
cleanup() {
    local rc=$?
    [ -n "$run_pid" ] && kill "$run_pid" 2>/dev/null
    if [ "$installed" = true ]; then
        dpkg -P ringlb >/dev/null 2>&1 || true
    fi
    exit "$rc"
}
trap cleanup EXIT

expect_file() { [ -e "$1" ] || fail "$1 is missing"; }
expect_gone() { [ ! -e "$1" ] || fail "$1 is still there"; }

step "dpkg -i $deb"
installed=true
dpkg -i "$deb"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
for f in /usr/bin/ringlb /usr/libexec/ringlb/maint /usr/lib/systemd/system/ringlb.service \
    /etc/ringlb/ringlb.yaml /usr/share/man/man1/ringlb.1.gz /usr/share/man/man1/ringlb-doctor.1.gz \
    /usr/share/man/man5/ringlb.yaml.5.gz /usr/share/bash-completion/completions/ringlb \
    /usr/share/zsh/vendor-completions/_ringlb /usr/share/fish/vendor_completions.d/ringlb.fish \
    /usr/share/doc/ringlb/copyright /usr/share/doc/ringlb/docs/packaging.md; do
    expect_file "$f"
done
dpkg-query -W -f='${Conffiles}\n' ringlb | grep -q '/etc/ringlb/ringlb.yaml' || fail "ringlb.yaml is not a conffile"
getent passwd ringlb | grep -q ':/var/lib/ringlb:' || fail "no ringlb system user"
getent group ringlb >/dev/null || fail "no ringlb group"
[ "$(stat -c %U:%G /var/lib/ringlb)" = ringlb:ringlb ] || fail "/var/lib/ringlb is not ringlb's"
installed_files=$(dpkg -L ringlb)
if command -v objdump >/dev/null; then
    echo "highest glibc symbol version /usr/bin/ringlb needs: $(objdump -T /usr/bin/ringlb |
        grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)"
fi

step "the installed binary and example"
/usr/bin/ringlb --version
/usr/bin/ringlb check --config /etc/ringlb/ringlb.yaml
rc=0
/usr/bin/ringlb doctor --config /etc/ringlb/ringlb.yaml || rc=$?
[ "$rc" -le 2 ] || fail "doctor exited $rc"

step "the service user runs ringlb with the packaged directories (ephemeral ports)"
# What the unit does at start: /run/ringlb for the control socket, user ringlb, the
# capability to bind low ports. The example's ports may be taken on a shared machine.
install -d -m 0755 -o ringlb -g ringlb /run/ringlb
smoke_dir=$(mktemp -d)
chmod 0755 "$smoke_dir"
sed -e 's/^admin: .*/admin: 127.0.0.1:0/' -e 's/bind: 127.0.0.1:7000/bind: 127.0.0.1:0/' \
    -e 's#^control: .*#control: /run/ringlb/package-test.sock#' \
    /etc/ringlb/ringlb.yaml >"$smoke_dir/ringlb.yaml"
log="$smoke_dir/log"
setpriv --reuid ringlb --regid ringlb --init-groups --inh-caps +net_bind_service \
    --ambient-caps +net_bind_service /usr/bin/ringlb run --config "$smoke_dir/ringlb.yaml" 2>"$log" &
run_pid=$!
deadline=$((SECONDS + 30))
until grep -q 'ready:' "$log"; do
    kill -0 "$run_pid" 2>/dev/null || { cat "$log"; fail "ringlb as user ringlb exited before it was ready"; }
    [ "$SECONDS" -lt "$deadline" ] || { cat "$log"; fail "ringlb as user ringlb not ready within 30 s"; }
    sleep 0.2
done
/usr/bin/ringlb ctl --config "$smoke_dir/ringlb.yaml" drain example 127.0.0.1:7001
[ -s /var/lib/ringlb/state.json ] || fail "the service user did not write state_file"
kill -TERM "$run_pid"
wait "$run_pid" || fail "ringlb did not exit 0 on SIGTERM"
run_pid=""
grep -E 'ready:|SIGTERM' "$log"
rm -rf "$smoke_dir" /var/lib/ringlb/state.json /run/ringlb

step "systemd-analyze verify and security"
if ! command -v systemd-analyze >/dev/null; then
    apt_install systemd || true
fi
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /usr/lib/systemd/system/ringlb.service
    score=$(systemd-analyze security --offline=yes /usr/lib/systemd/system/ringlb.service 2>/dev/null |
        sed -n 's/.*Overall exposure level for ringlb.service: \([0-9.]*\).*/\1/p')
    echo "systemd-analyze security: exposure $score"
    awk -v s="$score" 'BEGIN { exit !(s != "" && s < 3.0) }' || fail "security exposure ${score:-unknown} is not below 3.0"
else
    echo "SKIPPED: systemd-analyze not available and could not be installed"
fi

step "man pages and completions"
if command -v man >/dev/null; then
    for page in /usr/share/man/man1/ringlb.1.gz /usr/share/man/man5/ringlb.yaml.5.gz; do
        warnings=$(MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null || true)
        [ -z "$warnings" ] || fail "$page: $warnings"
    done
    MANWIDTH=80 man -l /usr/share/man/man1/ringlb.1.gz 2>/dev/null | sed -n '/EXIT STATUS/,+4p'
else
    echo "SKIPPED: no man here"
fi
bash -c 'source /usr/share/bash-completion/completions/ringlb && complete -p ringlb'

step "dpkg -i again (an upgrade: postinst configure with the old version)"
dpkg -i "$deb"

step "dpkg -r: the conffile stays"
dpkg -r ringlb
for f in /usr/bin/ringlb /usr/lib/systemd/system/ringlb.service /usr/libexec/ringlb /usr/share/man/man1/ringlb.1.gz; do
    expect_gone "$f"
done
expect_file /etc/ringlb/ringlb.yaml

step "dpkg -P: nothing of ringlb is left but its user"
dpkg -P ringlb
installed=false
left=""
while IFS= read -r f; do
    # Directories other packages share (/usr/share/man/man1, ...) stay; ours must not.
    if [ -e "$f" ] && { [ ! -d "$f" ] || [[ "$f" == *ringlb* ]]; }; then
        left="$left $f"
    fi
done <<<"$installed_files"
for f in /etc/ringlb /var/lib/ringlb /run/ringlb; do
    [ -e "$f" ] && left="$left $f"
done
[ -z "$left" ] || fail "left after purge:$left"
getent passwd ringlb >/dev/null && echo "the ringlb user stays (Debian keeps system users; deluser --system ringlb removes it)"

step "the .rpm: $rpm_file"
if ! command -v rpm >/dev/null; then
    apt_install rpm || true
fi
if command -v rpm >/dev/null; then
    rpm -qpi "$rpm_file" 2>/dev/null | sed -n '1,/^Description/p'
    files=$(rpm -qpl "$rpm_file" 2>/dev/null)
    for f in /usr/bin/ringlb /usr/libexec/ringlb/maint /usr/lib/systemd/system/ringlb.service \
        /etc/ringlb/ringlb.yaml /usr/share/man/man1/ringlb.1.gz /usr/share/man/man5/ringlb.yaml.5.gz \
        /usr/share/bash-completion/completions/ringlb /usr/share/zsh/site-functions/_ringlb \
        /usr/share/fish/vendor_completions.d/ringlb.fish; do
        grep -qx "$f" <<<"$files" || fail "the rpm lacks $f"
    done
    rpm -qpc "$rpm_file" 2>/dev/null | grep -qx /etc/ringlb/ringlb.yaml || fail "ringlb.yaml is not a config file in the rpm"
    rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm_file" 2>/dev/null | grep -q '^cn /etc/ringlb/ringlb.yaml' ||
        fail "ringlb.yaml is not %config(noreplace) in the rpm"
    scripts=$(rpm -qp --scripts "$rpm_file" 2>/dev/null)
    for want in 'postinstall scriptlet' '/usr/libexec/ringlb/maint setup' 'preuninstall scriptlet' \
        'systemctl --no-reload disable ringlb.service' 'postuninstall scriptlet' 'rm -rf /var/lib/ringlb'; do
        grep -qF "$want" <<<"$scripts" || fail "the rpm's scriptlets lack: $want"
    done
    rpm -qpR "$rpm_file" 2>/dev/null
else
    echo "SKIPPED: no rpm tool here"
fi

echo
echo "package-test: all checks passed"
