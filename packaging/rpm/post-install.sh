# %post: the user, the state directory and systemd's view of the unit; on an upgrade
# ($1 >= 2) the running service moves to the new binary live. A first install neither
# enables nor starts the service: the example /etc/ringlb/ringlb.yaml is to be edited first.
/usr/libexec/ringlb/maint setup
if [ "$1" -ge 2 ]; then
    /usr/libexec/ringlb/maint upgrade
fi
exit 0
