//! Log setup: `tracing` to stderr, text or JSON, level changeable on reload.
//!
//! Secrets never reach this layer whole: they live in [`crate::secret::Secret`], whose
//! formatting shows at most the last five characters.

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Registry, reload};

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log pipelines).
    Json,
}

/// Changes the level filter after start-up (config reload).
pub struct LogHandle(reload::Handle<Targets, Registry>);

impl LogHandle {
    /// Applies a new level (`info`, `debug`, …).
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = parse_filter(level)?;
        self.0.modify(|f| *f = filter).map_err(|e| e.to_string())
    }
}

/// A per-target level filter: all the configuration can ask for (`log.level` is one level), and
/// unlike `EnvFilter` it needs no regex engine, a quarter of a megabyte of code that every idle
/// daemon would map.
fn parse_filter(level: &str) -> Result<Targets, String> {
    level.trim().parse::<Targets>().map_err(|e| {
        format!("invalid log level {level:?}: {e}; use error, warn, info, debug or trace")
    })
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(level: &str, format: Format) -> Result<LogHandle, String> {
    let (filter, handle) = reload::Layer::new(parse_filter(level)?);
    let registry = tracing_subscriber::registry().with(filter);
    // Colours only for a person at a terminal: journald, log files and pipelines get plain text.
    let base = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let result = match format {
        Format::Text => registry.with(base).try_init(),
        Format::Json => registry.with(base.json().flatten_event(true)).try_init(),
    };
    result.map_err(|e| e.to_string())?;
    Ok(LogHandle(handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_level_parses() {
        for level in ["trace", "debug", "info", "warn", "error", "off"] {
            parse_filter(level).unwrap();
        }
    }
}
