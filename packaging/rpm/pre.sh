# %pre (rpm): create the service account before the files are laid down, so the secret-helper
# asset's group (dd-agent) and the tmpfiles.d entry resolve. Same accounts as packaging/deb/preinst:
#   dd-delegated-auth  system user and group the daemon runs as
#   dd-agent           the Datadog Agent's group (socket, sinks, read access to datadog.yaml)
getent group dd-agent >/dev/null || groupadd --system dd-agent
getent group dd-delegated-auth >/dev/null || groupadd --system dd-delegated-auth
if ! getent passwd dd-delegated-auth >/dev/null; then
    useradd --system --gid dd-delegated-auth --groups dd-agent \
        --home-dir /nonexistent --no-create-home --shell /sbin/nologin \
        --comment "Datadog delegated authentication daemon" dd-delegated-auth
fi
id -nG dd-delegated-auth | tr ' ' '\n' | grep -qx dd-agent || usermod -a -G dd-agent dd-delegated-auth
exit 0
