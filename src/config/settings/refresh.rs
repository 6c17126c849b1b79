//! The `refresh` section: interval override, retry bounds, start-up grace.

use std::time::Duration;

use serde_saphyr::Spanned;

use super::{
    Check, MAX_REFRESH_INTERVAL, MAX_RETRY, MAX_STARTUP_GRACE, MIN_REFRESH_INTERVAL, RawRefresh,
    RefreshSettings, line,
};

/// Validates `refresh` into `s` (defaults stay for what is absent or invalid).
pub(super) fn validate(c: &mut Check<'_>, refresh: RawRefresh, s: &mut RefreshSettings) {
    let interval = within(
        c,
        &refresh.interval,
        "refresh.interval",
        |d| (MIN_REFRESH_INTERVAL..=MAX_REFRESH_INTERVAL).contains(&d),
        (
            "must be between 1s and 7 days",
            "set a value such as 60m, or remove it to use refresh_interval_mins",
        ),
    );
    if let Some(Ok((d, _))) = interval {
        s.interval = Some(d);
    }
    let retry = |d: Duration| !d.is_zero() && d <= MAX_RETRY;
    const RETRY_RANGE: &str = "must be more than 0 and at most 24h";
    let retry_min = within(
        c,
        &refresh.retry_min,
        "refresh.retry_min",
        retry,
        (RETRY_RANGE, "set a value such as 1s"),
    );
    let retry_min_ok = !matches!(retry_min, Some(Err(())));
    if let Some(Ok((d, _))) = retry_min {
        s.retry_min = d;
    }
    match within(
        c,
        &refresh.retry_max,
        "refresh.retry_max",
        retry,
        (RETRY_RANGE, "set a value such as 5m"),
    ) {
        Some(Ok((d, at))) => {
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
        Some(Err(())) => {}
        // Absent, or not a duration (already reported): the default retry_max stands.
        None => {
            if retry_min_ok && s.retry_min > s.retry_max {
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
        }
    }
    let grace = within(
        c,
        &refresh.startup_grace,
        "refresh.startup_grace",
        |d| d <= MAX_STARTUP_GRACE,
        (
            "must be at most 10m (key reads block for this long at startup)",
            "set a value such as 10s, or 0s to serve the fallback at once",
        ),
    );
    if let Some(Ok((d, _))) = grace {
        s.startup_grace = d;
    }
}

/// A duration at `key` that `ok` accepts, with its line: `Some(Ok(..))`. One it refuses is
/// reported with `(message, fix)`: `Some(Err(()))`. Absent, or not a duration (reported by
/// [`Check::duration`]): `None`.
fn within(
    c: &mut Check<'_>,
    raw: &Option<Spanned<String>>,
    key: &str,
    ok: impl Fn(Duration) -> bool,
    (message, fix): (&str, &str),
) -> Option<Result<(Duration, Option<usize>), ()>> {
    let (d, at) = c.duration(raw, key)?;
    if ok(d) {
        return Some(Ok((d, at)));
    }
    let shown = humantime::format_duration(d).to_string();
    c.error(key, at, &shown, message.to_owned(), fix);
    Some(Err(()))
}
