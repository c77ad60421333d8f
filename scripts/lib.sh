# Shared by the scripts in this folder (source it; it does nothing on its own).
#
# stop_pids PID...: SIGTERM every PID, wait up to 5 s each, then SIGKILL and reap. Used by
# each script's EXIT trap, so only processes the script started are ever signalled.
stop_pids() {
    local p
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "$@"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}

# init_workdir NAME: make $WORK (a fresh temp dir) and an EXIT trap that stops every PID
# in the PIDS array (append to it as processes start) and removes $WORK.
init_workdir() {
    WORK=$(mktemp -d "/tmp/$1.XXXXXX")
    PIDS=()
    trap 'stop_pids "${PIDS[@]}"; rm -rf "$WORK"' EXIT
    trap 'exit 130' INT TERM
}
