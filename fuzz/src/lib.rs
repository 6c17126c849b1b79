//! Checks shared by the fuzz targets. Every target drives a real library entry point and then
//! asserts properties that must hold for *any* input, beyond "does not panic".

use std::collections::HashSet;
use std::path::PathBuf;

use datadog_delegated_auth::config::{self, Config, ConfigErrors, Paths};
use datadog_delegated_auth::secret::Secret;

/// File names the config targets report problems against (nothing is read from them).
pub fn fuzz_paths() -> Paths {
    Paths {
        config: PathBuf::from("/fuzz/datadog.yaml"),
        settings: PathBuf::from("/fuzz/delegated-auth.yaml"),
        settings_required: false,
    }
}

/// Environment variables as `NAME=value` lines (the part of a config input after its first NUL).
pub fn env_from_lines(text: &str) -> impl Fn(&str) -> Option<String> + '_ {
    move |name: &str| {
        text.lines()
            .filter_map(|line| line.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    }
}

/// Properties of the outcome of `config::load_from_strings`.
pub fn check_load(outcome: Result<Config, ConfigErrors>) {
    let cfg = match outcome {
        Ok(cfg) => cfg,
        Err(errors) => {
            assert!(
                !errors.0.is_empty(),
                "a failed load names at least one problem"
            );
            let _ = errors.to_string();
            return;
        }
    };

    // Instance names are unique: they are the socket API's and the sinks' addresses.
    let mut seen = HashSet::new();
    for spec in &cfg.instances {
        assert!(
            seen.insert(spec.name.as_str()),
            "duplicate instance {:?}",
            spec.name
        );
        // An inert entry (wire spec §10.2) never exchanges and never serves a key.
        if spec.invalid.is_some() {
            assert!(
                spec.delegated.is_none() && spec.fallback.is_none(),
                "{}: an invalid entry can serve",
                spec.name
            );
        }
        if let Some(d) = &spec.delegated {
            assert!(
                is_hyphenated_uuid(&d.org_uuid),
                "org {:?} accepted",
                d.org_uuid
            );
            assert!(!d.exchange_target.is_empty());
            assert!(
                !d.refresh_interval.is_zero(),
                "zero refresh interval accepted"
            );
        }
        if let Some(key) = &spec.fallback {
            assert!(
                !key.is_empty(),
                "{}: empty fallback key accepted",
                spec.name
            );
            assert!(
                !config::dela::is_directive(key.expose()),
                "{}: a DELA directive became a key",
                spec.name
            );
            assert!(
                spec.fallback_origin.is_some(),
                "{}: fallback without origin",
                spec.name
            );
        }
    }
    // Cross-checked: every sink names an instance.
    for sink in &cfg.settings.sinks {
        assert!(
            seen.contains(sink.instance.as_str()),
            "sink for unknown {:?}",
            sink.instance
        );
    }
    assert!(cfg.settings.refresh.retry_min <= cfg.settings.refresh.retry_max);

    // Nothing a check-config or a log line prints depends on a key beyond its visible suffix:
    // swapping every other character of every fallback key must not change `describe` or `Debug`.
    let mut other = cfg.clone();
    let mut changed = false;
    for spec in &mut other.instances {
        if let Some(key) = &spec.fallback {
            spec.fallback = Some(same_suffix_other_key(key));
            changed = true;
        }
    }
    if changed {
        assert_ne!(cfg, other);
        assert_eq!(
            config::describe(&cfg),
            config::describe(&other),
            "describe shows a key"
        );
        assert_eq!(
            format!("{cfg:?}"),
            format!("{other:?}"),
            "Debug shows a key"
        );
    } else {
        let _ = config::describe(&cfg);
    }
    // Problems carry values that are never secrets.
    for w in &cfg.warnings {
        for spec in &cfg.instances {
            if let (Some(key), Some(value)) = (&spec.fallback, &w.value) {
                assert_ne!(key.expose(), value, "a warning shows {}'s key", spec.name);
            }
        }
    }
}

/// A different key with the same length and the same visible suffix.
fn same_suffix_other_key(key: &Secret) -> Secret {
    let text = key.expose();
    let keep = text.len() - key.suffix().len();
    let mut out: String = text[..keep]
        .chars()
        .map(|c| if c == 'X' { 'Y' } else { 'X' })
        .collect();
    out.push_str(key.suffix());
    Secret::new(out)
}

/// The 8-4-4-4-12 hex form, the only one the config accepts.
fn is_hyphenated_uuid(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}
