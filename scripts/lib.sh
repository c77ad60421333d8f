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
