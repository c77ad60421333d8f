# %postun: on erase ($1 = 0) remove the state ringlb kept (an RPM has no separate purge);
# the ringlb user and group stay (`userdel ringlb` removes them).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 0 ]; then
    rm -rf /var/lib/ringlb /run/ringlb
fi
exit 0
