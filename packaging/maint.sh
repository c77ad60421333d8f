#!/bin/sh
# Shared by the .deb and .rpm install scripts, installed as /usr/libexec/ringlb/maint
# (docs/packaging.md):
#   maint setup     the ringlb system user and group, /var/lib/ringlb, systemctl daemon-reload
#   maint upgrade   after a package upgrade: if ringlb.service runs, move it to the new binary
#                   live (no connection dropped); never fails the package operation
set -u

CONFIG=/etc/ringlb/ringlb.yaml

systemd_running() {
    [ -d /run/systemd/system ]
}

setup() {
    if ! getent group ringlb >/dev/null; then
        groupadd --system ringlb
    fi
    if ! getent passwd ringlb >/dev/null; then
        nologin=/usr/sbin/nologin
        [ -x "$nologin" ] || nologin=/sbin/nologin
        useradd --system --gid ringlb --home-dir /var/lib/ringlb --no-create-home \
            --shell "$nologin" --comment "ringlb load balancer" ringlb
    fi
    # The unit's StateDirectory= creates it too; here so `ringlb doctor` and a run by hand
    # find it before the service first starts.
    install -d -m 0750 -o ringlb -g ringlb /var/lib/ringlb
    if systemd_running; then
        systemctl daemon-reload >/dev/null 2>&1 || true
    fi
}

upgrade() {
    systemd_running || return 0
    systemctl is-active --quiet ringlb.service || return 0
    if [ -n "${RINGLB_NO_LIVE_UPGRADE:-}" ]; then
        echo "ringlb: RINGLB_NO_LIVE_UPGRADE is set: the service keeps running the old binary until 'ringlb upgrade --config $CONFIG' or a restart"
        return 0
    fi
    echo "ringlb: moving the running service to the new binary (live upgrade, no connection dropped)"
    /usr/bin/ringlb upgrade --config "$CONFIG"
    rc=$?
    [ "$rc" -eq 0 ] && return 0
    if [ "$rc" -eq 3 ]; then
        # No instance serves $CONFIG: the unit was pointed at another file. Its main
        # process upgrades on SIGUSR2 all the same; the journal says how it went.
        if systemctl kill --kill-who=main --signal=SIGUSR2 ringlb.service; then
            echo "ringlb: sent SIGUSR2 to the service's main process; 'journalctl -u ringlb' shows the upgrade"
            return 0
        fi
    fi
    echo "ringlb: the live upgrade did not happen (exit $rc): the service still runs the old binary and serves everything; see 'journalctl -u ringlb', then 'ringlb upgrade --config $CONFIG' or 'systemctl restart ringlb'" >&2
    return 0
}

case "${1:-}" in
    setup) setup ;;
    upgrade) upgrade ;;
    *)
        echo "usage: $0 setup|upgrade" >&2
        exit 2
        ;;
esac
