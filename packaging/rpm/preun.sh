# %preun (rpm). $1 is 0 on erase, 1 or more on upgrade: only an erase stops and disables the unit.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now datadog-delegated-auth.service >/dev/null 2>&1 || :
fi
exit 0
