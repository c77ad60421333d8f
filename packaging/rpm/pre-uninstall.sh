# %preun: on erase ($1 = 0) stop the service and drop its enablement; on an upgrade
# nothing, the service keeps serving.
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop ringlb.service >/dev/null 2>&1 || :
    fi
    systemctl --no-reload disable ringlb.service >/dev/null 2>&1 || :
fi
exit 0
