# %postun (rpm). $1 is 0 on erase, 1 or more on upgrade: pick up the new binary if it was running.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart datadog-delegated-auth.service >/dev/null 2>&1 || :
    fi
fi
exit 0
