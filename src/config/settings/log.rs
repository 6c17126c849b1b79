//! The `log` section (`DD_LOG_LEVEL` wins over `log.level`).

use super::{Check, ENV_LOG_LEVEL, LogFormat, LogSettings, RawLog, line, parse_level};
use crate::config::problem::Problem;

/// Validates `log` into `s`.
pub(super) fn validate(
    c: &mut Check<'_>,
    log: RawLog,
    env: &dyn Fn(&str) -> Option<String>,
    s: &mut LogSettings,
) {
    let file = c.file;
    if let Some(level) = env(ENV_LOG_LEVEL).filter(|v| !v.is_empty()) {
        match parse_level(&level) {
            Some(l) => s.level = l.to_owned(),
            None => c.problems.error(
                Problem::new(
                    file,
                    "log.level",
                    "is not a log level",
                    format!("set {ENV_LOG_LEVEL} to trace, debug, info, warn, error or off"),
                )
                .from_env(Some(ENV_LOG_LEVEL))
                .value(level),
            ),
        }
    } else if let Some(level) = &log.level {
        match parse_level(&level.value) {
            Some(l) => s.level = l.to_owned(),
            None => c.error(
                "log.level",
                line(level),
                level.value.trim(),
                "is not a log level".to_owned(),
                "use trace, debug, info, warn, error or off",
            ),
        }
    }
    if let Some(format) = &log.format {
        match format.value.trim().to_ascii_lowercase().as_str() {
            "text" => s.format = LogFormat::Text,
            "json" => s.format = LogFormat::Json,
            _ => c.error(
                "log.format",
                line(format),
                format.value.trim(),
                "is not a log format".to_owned(),
                "use text or json",
            ),
        }
    }
}
