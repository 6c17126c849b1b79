//! The `refresh` section: interval override, retry bounds, start-up grace.

use super::{
    Check, MAX_REFRESH_INTERVAL, MAX_RETRY, MAX_STARTUP_GRACE, MIN_REFRESH_INTERVAL, RawRefresh,
    RefreshSettings, line,
};

/// Validates `refresh` into `s` (defaults stay for what is absent or invalid).
pub(super) fn validate(c: &mut Check<'_>, refresh: RawRefresh, s: &mut RefreshSettings) {
    if let Some((interval, at)) = c.duration(&refresh.interval, "refresh.interval") {
        if !(MIN_REFRESH_INTERVAL..=MAX_REFRESH_INTERVAL).contains(&interval) {
            c.error(
                "refresh.interval",
                at,
                &humantime::format_duration(interval).to_string(),
                "must be between 1s and 7 days".to_owned(),
                "set a value such as 60m, or remove it to use refresh_interval_mins",
            );
        } else {
            s.interval = Some(interval);
        }
    }
    let mut retry_min_ok = true;
    if let Some((d, at)) = c.duration(&refresh.retry_min, "refresh.retry_min") {
        if d.is_zero() || d > MAX_RETRY {
            retry_min_ok = false;
            c.error(
                "refresh.retry_min",
                at,
                &humantime::format_duration(d).to_string(),
                "must be more than 0 and at most 24h".to_owned(),
                "set a value such as 1s",
            );
        } else {
            s.retry_min = d;
        }
    }
    if let Some((d, at)) = c.duration(&refresh.retry_max, "refresh.retry_max") {
        if d.is_zero() || d > MAX_RETRY {
            c.error(
                "refresh.retry_max",
                at,
                &humantime::format_duration(d).to_string(),
                "must be more than 0 and at most 24h".to_owned(),
                "set a value such as 5m",
            );
        } else {
            s.retry_max = d;
            if retry_min_ok && s.retry_min > d {
                c.error(
                    "refresh.retry_max",
                    at,
                    &humantime::format_duration(d).to_string(),
                    format!(
                        "is shorter than refresh.retry_min ({})",
                        humantime::format_duration(s.retry_min)
                    ),
                    "make retry_max at least as long as retry_min",
                );
            }
        }
    } else if retry_min_ok && s.retry_min > s.retry_max {
        let at = refresh.retry_min.as_ref().and_then(line);
        c.error(
            "refresh.retry_min",
            at,
            &humantime::format_duration(s.retry_min).to_string(),
            format!(
                "is longer than refresh.retry_max ({})",
                humantime::format_duration(s.retry_max)
            ),
            "lower retry_min, or set retry_max at least as long",
        );
    }
    if let Some((d, at)) = c.duration(&refresh.startup_grace, "refresh.startup_grace") {
        if d > MAX_STARTUP_GRACE {
            c.error(
                "refresh.startup_grace",
                at,
                &humantime::format_duration(d).to_string(),
                "must be at most 10m (key reads block for this long at startup)".to_owned(),
                "set a value such as 10s, or 0s to serve the fallback at once",
            );
        } else {
            s.startup_grace = d;
        }
    }
}
