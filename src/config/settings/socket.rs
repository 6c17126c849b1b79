//! The `socket` section, and the warning for an open socket without access rules.

use std::path::PathBuf;
use std::time::Duration;

use super::{
    Check, DEFAULT_MAX_CONNECTIONS, DEFAULT_SOCKET_MODE, ENV_SOCKET, MAX_MAX_CONNECTIONS,
    MAX_SOCKET_PATH_BYTES, RawSocket, Settings, SettingsRead, line,
};
use crate::config::problem::Problem;

/// Validates `socket` (`DD_DELEGATED_AUTH_SOCKET` wins over `socket.path`); returns the line of
/// `socket.mode`.
pub(super) fn validate(
    c: &mut Check<'_>,
    socket: RawSocket,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut SettingsRead,
) -> Option<usize> {
    let file = c.file;
    let s = &mut out.settings;
    if let Some(var) = env(ENV_SOCKET).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(&var);
        if !p.is_absolute() {
            c.problems.error(
                Problem::new(
                    file,
                    "socket.path",
                    "must be an absolute path",
                    format!("set {ENV_SOCKET} to a full path starting with /"),
                )
                .from_env(Some(ENV_SOCKET))
                .value(var.clone()),
            );
        } else {
            s.socket.path = p;
        }
        check_socket_len(c, &var, None, Some(ENV_SOCKET));
    } else if let Some(raw_path) = &socket.path
        && let Some(p) = c.absolute_path(raw_path, "socket.path")
    {
        check_socket_len(c, raw_path.value.trim(), line(raw_path), None);
        s.socket.path = p;
    }
    let (mode, mode_line) = c.mode(&socket.mode, "socket.mode", DEFAULT_SOCKET_MODE);
    s.socket.mode = mode;
    s.socket.group = socket.group.as_ref().and_then(|g| c.id(g, "socket.group"));
    if let Some((d, at)) = c.duration(&socket.idle_timeout, "socket.idle_timeout") {
        if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
            c.error(
                "socket.idle_timeout",
                at,
                &humantime::format_duration(d).to_string(),
                "is out of range".to_owned(),
                "use a duration between 100ms and 1h (default 60s)",
            );
        } else {
            s.socket.idle_timeout = d;
        }
    }
    if let Some(raw_max) = &socket.max_connections {
        match raw_max.value.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_MAX_CONNECTIONS).contains(&n) => s.socket.max_connections = n,
            _ => c.error(
                "socket.max_connections",
                line(raw_max),
                raw_max.value.trim(),
                "is not a connection count".to_owned(),
                &format!("use a whole number from 1 to {MAX_MAX_CONNECTIONS} (default {DEFAULT_MAX_CONNECTIONS})"),
            ),
        }
    }
    mode_line
}

/// Warns when every local user may open the socket and no access rules are set.
pub(super) fn warn_if_open(c: &mut Check<'_>, s: &Settings, mode_line: Option<usize>) {
    if s.access.is_none() && s.socket.mode & 0o007 != 0 {
        c.warn(
            "socket.mode",
            mode_line,
            "the socket is open to every local user and no access rules are set, so any local \
             process can read the keys",
            "use mode \"0660\" with a group, or add `access` rules",
        );
    }
}

fn check_socket_len(c: &mut Check<'_>, path: &str, at: Option<usize>, env: Option<&str>) {
    if path.len() > MAX_SOCKET_PATH_BYTES {
        c.problems.error(
            Problem::new(
                c.file,
                "socket.path",
                format!(
                    "is {} bytes long; a Unix socket path can hold at most {MAX_SOCKET_PATH_BYTES}",
                    path.len()
                ),
                "choose a shorter path, e.g. /run/datadog/delegated-auth.sock",
            )
            .at(at)
            .from_env(env)
            .value(path),
        );
    }
}
