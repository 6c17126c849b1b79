//! The `sinks` section: files kept up to date with a key.

use serde_saphyr::Spanned;

use super::{Check, DEFAULT_SINK_MODE, RawSink, SettingsRead, SinkSettings, line};

/// Validates `sinks`; the line of each sink's `instance` goes to `out.sink_lines`.
pub(super) fn validate(c: &mut Check<'_>, sinks: &[Spanned<RawSink>], out: &mut SettingsRead) {
    let s = &mut out.settings;
    for (i, sink) in sinks.iter().enumerate() {
        let key = format!("sinks[{i}]");
        let r = &sink.value;
        let instance = r.instance.value.trim().to_owned();
        if instance.is_empty() {
            c.error(
                &format!("{key}.instance"),
                line(&r.instance),
                "",
                "is empty".to_owned(),
                "name the instance whose key this file receives, e.g. api_key",
            );
        }
        let path = c.absolute_path(&r.path, &format!("{key}.path"));
        let (mode, mode_at) = c.mode(&r.mode, &format!("{key}.mode"), DEFAULT_SINK_MODE);
        if mode & !0o660 != 0 {
            c.error(
                &format!("{key}.mode"),
                mode_at,
                &format!("{mode:04o}"),
                "gives other users or execute permission on a file that holds a key".to_owned(),
                "use \"0600\" or \"0640\" (at most \"0660\")",
            );
        }
        let group = r
            .group
            .as_ref()
            .and_then(|g| c.id(g, &format!("{key}.group")));
        if let Some(path) = path {
            if path == s.socket.path {
                c.error(
                    &format!("{key}.path"),
                    line(&r.path),
                    &path.display().to_string(),
                    "is the socket path".to_owned(),
                    "write the key to a different file",
                );
            } else if s.sinks.iter().any(|other| other.path == path) {
                c.error(
                    &format!("{key}.path"),
                    line(&r.path),
                    &path.display().to_string(),
                    "is already used by another sink".to_owned(),
                    "give every sink its own file",
                );
            } else {
                s.sinks.push(SinkSettings {
                    instance,
                    path,
                    mode,
                    group,
                });
                out.sink_lines.push(line(&r.instance));
            }
        }
    }
}
