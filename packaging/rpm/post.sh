# %post (rpm). $1 is 1 on first install, 2 or more on upgrade.
# Create /run/datadog (and keys/) now rather than at next boot, and make systemd see the unit.
# The unit is enabled but not started on a first install: it needs delegated_auth.org_uuid
# configured first (docs/deploy-ec2.md). On upgrade, %postun restarts it if it was running.
if [ -d /run/systemd/system ]; then
    systemd-tmpfiles --create datadog-delegated-auth.conf >/dev/null 2>&1 || :
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    systemctl enable datadog-delegated-auth.service >/dev/null 2>&1 || :
fi
exit 0
